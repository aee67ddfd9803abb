"""Is a pose certain enough, by its own covariance, to be published as LOCALIZED? (every localizer)

LOCALIZED means a robot may fuse the pose. A localizer that reports a covariance says how far off
its pose may be; a pose is published only when, by that covariance, it lies within ``accuracy_m`` /
``accuracy_deg`` of the truth (the precision class of ``visloc eval``: 25 cm / 2 deg) with
probability ``accuracy_level``: the largest standard deviation of the position (rotation) block
times sqrt(chi2_3(level)) within the bound. Nothing here is fitted: the bounds are the user's (what
the robot can use), the covariance is the localizer's own calibrated one (relpose: calibration.py on
the map's own keyframes; APR: models/apr/familiarity.py on held-out training frames).

An absolute pose regressor whose error on its own held-out frames is ~0.7 m gives every pose a
covariance that wide, so it publishes nothing at 25 cm: NOT_LOCALIZED "uncertain", with the pose in
``extras["T_world_cam_refused"]``. A user who can use coarser poses (a drone's 2 m / 10 deg
relocalization prior) widens the bounds; ``null`` disables a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PrecisionClass:
    """The bounds a published pose must lie within with probability ``level`` by its covariance."""

    accuracy_m: float | None = 0.25
    accuracy_deg: float | None = 2.0
    accuracy_level: float = 0.68

    @classmethod
    def from_dict(cls, d: dict | None) -> PrecisionClass:
        d = dict(d or {})
        unknown = set(d) - {"accuracy_m", "accuracy_deg", "accuracy_level"}
        if unknown:
            raise ValueError(
                f"unknown precision-class keys {sorted(unknown)}; known: accuracy_m, accuracy_deg, accuracy_level"
            )
        out = cls(**d)
        if not 0.0 < out.accuracy_level < 1.0:
            raise ValueError(f"accuracy_level must be in (0, 1), got {out.accuracy_level}")
        return out


def chi2_ppf_3dof(p: float) -> float:
    """Quantile of the chi-square distribution with 3 degrees of freedom (scipy.stats.chi2.ppf)."""
    from scipy.stats import chi2

    return float(chi2.ppf(p, 3))


def sigmas(cov_66: np.ndarray) -> tuple[float, float]:
    """Largest standard deviation of the position (m) and rotation (deg) blocks of a covariance;
    NaN for a covariance that is not a finite 6x6."""
    cov = np.asarray(cov_66, np.float64)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return float("nan"), float("nan")
    st = float(np.sqrt(max(np.linalg.eigvalsh(cov[:3, :3]).max(), 0.0)))
    sr = float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(cov[3:, 3:]).max(), 0.0))))
    return st, sr


def uncertain_reasons(sigma_position_m: float, sigma_rotation_deg: float, cfg: PrecisionClass) -> list[str]:
    """Why a pose with these largest sigmas is NOT within the precision class (empty: it is). A NaN
    sigma (a localizer without a covariance) is not judged here."""
    k = float(np.sqrt(chi2_ppf_3dof(cfg.accuracy_level)))
    out = []
    if cfg.accuracy_m is not None and sigma_position_m * k > cfg.accuracy_m:
        out.append(f"uncertain: position sigma {sigma_position_m:.3g} m x {k:.2f} > {cfg.accuracy_m:g} m")
    if cfg.accuracy_deg is not None and sigma_rotation_deg * k > cfg.accuracy_deg:
        out.append(f"uncertain: rotation sigma {sigma_rotation_deg:.3g} deg x {k:.2f} > {cfg.accuracy_deg:g} deg")
    return out
