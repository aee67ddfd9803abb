"""What a relpose localization measured, and whether that is enough to publish the pose.

"LOCALIZED" means a robot may fuse the pose, so the localizer publishes only poses that the map
supports, and says NOT_LOCALIZED with the reason otherwise (a fallback to the top retrieved
keyframe pose, paper 003's rule, is only published with ``filtering.fallback: top1``).

:class:`Evidence` (reported in ``LocalizationResult.extras["evidence"]``):

- ``n_agree``: references whose estimate agrees with the final pose (the hypothesis filter's inliers);
- ``n_rival``, ``rival_ratio``: references agreeing on another pose that none of those supports (e.g.
  a repeated texture), and their feature inliers over the winner's; as many references and at least
  ``max_rival_ratio`` of the support (Lowe's ratio test, 0.8) make the pose ambiguous: refused;
- ``n_inliers``: 2D-3D inliers of the final PnP pose, counted once per query keypoint (metric maps),
  or the feature inliers of the agreeing references (direction-only maps);
- ``inlier_ratio``: those inliers over the 2D-3D matches of the agreeing references;
- ``coverage``: the fraction of the query's textured image (cells of a grid holding at least one query
  keypoint) that holds an inlier: a view the map explains is explained all over; a wrong pose
  supported by one repeated pattern (a tiled floor, a poster seen elsewhere) covers a corner of it;
- ``reprojection_px``: RMS reprojection error of the inliers;
- ``sigma_position_m``, ``sigma_rotation_deg``: the largest standard deviation of the pose's own
  (calibrated) covariance: a pose is published only when it lies within ``accuracy_m`` /
  ``accuracy_deg`` of the truth (the precision class of the evaluation, 25 cm / 2 deg) with
  probability ``accuracy_level`` by that covariance, i.e. sigma * sqrt(chi2_3(level)) within them.
  The level is 0.68 (one "sigma" in 3-D), not 0.95: the precision target (99 % of published poses
  right) holds over the published set, most of whose poses are far more certain than the bound, and
  at 0.95 the large presets lost a third of their right poses (measured on the room, hall and plaza
  presets, docs/relpose.md).

:class:`DecisionConfig` (``decision:`` keys of a relpose config) holds the thresholds. Their values come
from the map itself (calibration.py: mapping keyframes localized against the rest of the map, with and
without their neighbourhood), never from evaluation queries; the config values are the floors.
``confidence`` in [0, 1] is the fraction of the thresholds' margins met (1 = every measure at twice
its threshold or more), reported in ``LocalizationResult.confidence``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ...geometry import PinholeCamera
from ..precision_class import PrecisionClass, sigmas, uncertain_reasons
from .base import ConfigSection

__all__ = ["DecisionConfig", "Evidence", "coverage_fraction", "decide", "sigmas"]

GRID = (8, 6)  # coverage cells across (width) and down (height) the image


@dataclass
class Evidence:
    """Measurements of one localization (see the module docstring)."""

    metric: bool
    n_references: int
    n_valid: int
    n_agree: int
    n_rival: int
    rival_ratio: float
    n_inliers: int
    inlier_ratio: float
    coverage: float
    reprojection_px: float
    sigma_position_m: float = float("nan")
    sigma_rotation_deg: float = float("nan")

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class DecisionConfig(ConfigSection):
    """``decision:`` keys of a relpose config: what a pose needs to be published as LOCALIZED."""

    section = "decision"

    enabled: bool = True  # false: publish every pose the filter gives (paper 003's behaviour, for its numbers)
    min_agreeing_references: int = 1  # references agreeing with the pose
    min_inliers: int = 30  # 2D-3D inliers (metric maps) / feature inliers (direction-only)
    min_coverage: float = 0.15  # fraction of the query's textured cells with an inlier (metric maps)
    min_inlier_ratio: float = 0.0  # inliers / matches of the agreeing references
    max_rival_ratio: float = 0.8  # a rival pose with as many references and this share of the support: ambiguous
    # publish only poses within these bounds with probability accuracy_level by their own covariance
    # (the precision class of `visloc eval`); null = no such gate
    accuracy_m: float | None = 0.25
    accuracy_deg: float | None = 2.0
    accuracy_level: float = 0.68
    calibrate: bool = True  # raise the thresholds from the map's own leave-one-out run (calibration.py)


def coverage_fraction(inlier_uv_N2: np.ndarray, keypoints_uv_M2: np.ndarray | None, camera: PinholeCamera) -> float:
    """Fraction of the grid cells holding a query keypoint (all cells when none are given) that also
    hold an inlier; pixel coordinates of ``camera``'s image."""
    gx, gy = GRID

    def cells(uv: np.ndarray) -> set:
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        i = np.clip((uv[:, 0] / camera.width * gx).astype(int), 0, gx - 1)
        j = np.clip((uv[:, 1] / camera.height * gy).astype(int), 0, gy - 1)
        return set((j * gx + i).tolist())

    textured = cells(keypoints_uv_M2) if keypoints_uv_M2 is not None and len(keypoints_uv_M2) else set(range(gx * gy))
    if not textured:
        return 0.0
    return len(cells(inlier_uv_N2) & textured) / len(textured)


def decide(ev: Evidence, cfg: DecisionConfig) -> tuple[bool, str, float]:
    """(publish?, reason when not, confidence in [0, 1]) for the evidence of one localization."""
    if not cfg.enabled:
        return True, "", 1.0
    checks = [("agreeing references", ev.n_agree, cfg.min_agreeing_references)]
    checks.append(("inliers", ev.n_inliers, cfg.min_inliers))
    if ev.metric:
        checks.append(("coverage", ev.coverage, cfg.min_coverage))
        checks.append(("inlier ratio", ev.inlier_ratio, cfg.min_inlier_ratio))
    failed = [f"{name} {value:.3g} < {thr:.3g}" for name, value, thr in checks if value < thr]
    bounds = PrecisionClass(cfg.accuracy_m, cfg.accuracy_deg, cfg.accuracy_level)
    failed += uncertain_reasons(ev.sigma_position_m, ev.sigma_rotation_deg, bounds)
    if ev.n_rival >= ev.n_agree and ev.rival_ratio >= cfg.max_rival_ratio:
        failed.append(
            f"ambiguous: {ev.n_rival} references agree on another pose with {ev.rival_ratio:.2f}x this one's "
            f"feature inliers ({ev.n_agree} references)"
        )
    # each measure contributes min(value / (2 threshold), 1); thresholds of 0 contribute 1
    parts = [min(float(v) / (2.0 * t), 1.0) if t > 0 else 1.0 for _, v, t in checks]
    conf = float(np.prod(parts) ** (1.0 / len(parts)))
    if failed:
        return False, "weak support: " + ", ".join(failed), conf
    return True, "", conf
