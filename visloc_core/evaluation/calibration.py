"""Is a localizer's covariance calibrated? Normalised estimation error squared (NEES) on held-out frames.

Convention (localizers/base.py): ``covariance_66`` is over (x, y, z, rotation about world X, Y, Z) of
the camera pose in the world frame, m^2 and rad^2; the rotation part is a LEFT perturbation,
``R_gt = exp([w]x) R_est``. So the errors are

- translation ``e_t = C_gt - C_est`` (camera centres, world frame, metres), 3 dof;
- rotation ``e_w = log(R_gt R_est^T)`` (rotation vector, world frame, radians), 3 dof;

and ``NEES_t = e_t^T S_tt^-1 e_t`` with ``S_tt`` the top-left 3x3 block (``NEES_r`` with the
bottom-right block, ``NEES_6`` with the whole matrix and both errors). If the covariance is the true
covariance of Gaussian errors, NEES follows a chi-square distribution with 3 (or 6) degrees of
freedom: its mean is the dof, and 68 / 95 / 99 % of the frames lie below the chi-square quantiles.
A mean NEES well above the dof means an OVERCONFIDENT covariance (too small), well below means
UNDERCONFIDENT (``verdict``, from the 95 % interval of the mean, chi2(N dof) / N). The mean is ruled by
a few gross outliers, so ``verdict_median`` judges the core of the distribution: under calibration half
the frames lie below the chi-square median (binomial 95 % interval). ``scale_to_calibrate`` = mean NEES /
dof (``scale_to_calibrate_median`` = median NEES / chi-square median) is the factor that, multiplied
into the covariance, makes the mean (median) NEES match; ``fraction_beyond_99`` counts the outliers.

Only LOCALIZED frames with a finite, positive-definite covariance are used (others are counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import rotvec_from_R
from .records import FrameOutcome

#: probability levels of the chi-square bounds reported
LEVELS: tuple[float, ...] = (0.68, 0.95, 0.99)


def pose_residuals(T_world_cam_est: np.ndarray, T_world_cam_gt: np.ndarray) -> np.ndarray:
    """(N, 6) residuals (e_t [m], e_w [rad]) of poses (N, 4, 4), as in the module docstring."""
    est = np.asarray(T_world_cam_est, dtype=np.float64)
    gt = np.asarray(T_world_cam_gt, dtype=np.float64)
    e_t = gt[..., :3, 3] - est[..., :3, 3]
    e_w = rotvec_from_R(gt[..., :3, :3] @ np.swapaxes(est[..., :3, :3], -1, -2))
    return np.concatenate([e_t, e_w], axis=-1)


def nees(e_ND: np.ndarray, cov_NDD: np.ndarray) -> np.ndarray:
    """e^T S^-1 e per row (N,) for errors (N, D) and covariances (N, D, D) (Cholesky solve)."""
    L = np.linalg.cholesky(cov_NDD)
    y = np.linalg.solve(L, e_ND[..., None])[..., 0]
    return np.sum(y * y, axis=-1)


def _is_pd(cov: np.ndarray) -> bool:
    if cov is None:
        return False
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return False
    try:
        np.linalg.cholesky(0.5 * (cov + cov.T))
    except np.linalg.LinAlgError:
        return False
    return True


def _block_summary(values: np.ndarray, dof: int) -> dict:
    from scipy.stats import chi2  # here, not at import: scipy.stats takes seconds to import (CLI start-up)

    n = len(values)
    bounds = {f"{round(p * 100)}%": float(chi2.ppf(p, dof)) for p in LEVELS}
    within = {f"{round(p * 100)}%": float(np.mean(values <= b)) for p, b in zip(LEVELS, bounds.values())}
    mean = float(np.mean(values))
    # N * mean NEES ~ chi2(N * dof) for independent frames: the 95 % interval of the mean.
    lo, hi = (float(chi2.ppf(q, n * dof)) / n for q in (0.025, 0.975))
    if mean > hi:
        verdict = "overconfident"
    elif mean < lo:
        verdict = "underconfident"
    else:
        verdict = "consistent"
    # Robust to a few gross outliers (which dominate the mean): under calibration the fraction of
    # frames below the chi-square median is Binomial(N, 1/2)/N; outside 1/2 +- 1.96 sqrt(1/(4N)) it is not.
    med_expected = float(chi2.median(dof))
    below = float(np.mean(values <= med_expected))
    half_width = 1.96 * np.sqrt(0.25 / n)
    if below < 0.5 - half_width:
        verdict_median = "overconfident"
    elif below > 0.5 + half_width:
        verdict_median = "underconfident"
    else:
        verdict_median = "consistent"
    return {
        "dof": dof,
        "mean_nees": mean,
        "median_nees": float(np.median(values)),
        "expected_mean": float(dof),
        "expected_median": med_expected,
        "mean_nees_95_interval": [lo, hi],
        "chi2_bounds": bounds,
        "fraction_within": within,
        "expected_fraction_within": {k: p for k, p in zip(bounds, LEVELS)},
        "fraction_beyond_99": float(np.mean(values > bounds["99%"])),
        "scale_to_calibrate": mean / dof,
        "scale_to_calibrate_median": float(np.median(values)) / med_expected,
        "verdict": verdict,
        "fraction_below_expected_median": below,
        "verdict_median": verdict_median,
    }


def covariance_calibration(outcomes: Sequence[FrameOutcome]) -> dict | None:
    """NEES statistics of the frames that carry a covariance; None when no frame has one.

    Returns a dict with ``n_frames`` (used), ``n_skipped`` (localized but without a usable
    covariance) and blocks ``translation`` (3 dof), ``rotation`` (3 dof), ``pose`` (6 dof), each
    with mean/median NEES, the chi-square bounds at 68/95/99 %, the fraction of frames within
    them (expected: 0.68/0.95/0.99), ``scale_to_calibrate`` and a verdict.
    """
    used, skipped = [], 0
    for o in outcomes:
        if o.status != "LOCALIZED" or not np.all(np.isfinite(o.T_world_cam_est)):
            continue
        if _is_pd(o.covariance_66):
            used.append(o)
        else:
            skipped += 1
    if not used:
        return None
    e = pose_residuals(np.stack([o.T_world_cam_est for o in used]), np.stack([o.T_world_cam_gt for o in used]))
    cov = np.stack([0.5 * (o.covariance_66 + o.covariance_66.T) for o in used]).astype(np.float64)
    return {
        "n_frames": len(used),
        "n_skipped": skipped,
        "convention": (
            "e_t = C_gt - C_est (world, m); e_w = log(R_gt R_est^T) (world, rad, left perturbation); "
            "NEES = e^T S^-1 e with the matching block of covariance_66; chi-square with dof degrees"
        ),
        "translation": _block_summary(nees(e[:, :3], cov[:, :3, :3]), 3),
        "rotation": _block_summary(nees(e[:, 3:], cov[:, 3:, 3:]), 3),
        "pose": _block_summary(nees(e, cov), 6),
    }
