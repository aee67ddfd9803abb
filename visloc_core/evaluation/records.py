"""The per-frame record every evaluation path produces (``visloc eval``, ``visloc replay``, benches),
and its scored errors (what report.py and plots.py both read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..geometry import pose_errors


@dataclass
class FrameOutcome:
    """One query frame: estimate vs truth. Poses are 4x4 T_world_cam; ``T_world_cam_est`` is NaN-filled
    when the frame was not localized (status != 'LOCALIZED'), which counts as infinite error."""

    name: str  # frame key, scene/sequence/name
    stamp_ns: int
    T_world_cam_est: np.ndarray
    T_world_cam_gt: np.ndarray
    status: str  # LOCALIZED, NOT_LOCALIZED or REJECTED
    latency_ms: float
    method: str = ""
    scene: str = ""
    condition: str = "normal"
    confidence: float = 0.0
    num_inliers: int = 0
    covariance_66: np.ndarray | None = None
    extras: dict = field(default_factory=dict)  # e.g. stage timings, predicted scene


def frame_errors(outcomes: Sequence[FrameOutcome]) -> tuple[np.ndarray, np.ndarray]:
    """Scored (translation m, rotation deg) errors (N,): infinite unless LOCALIZED with a finite pose."""
    if not outcomes:
        return np.zeros(0), np.zeros(0)
    est = np.stack([np.asarray(o.T_world_cam_est, dtype=np.float64) for o in outcomes])
    gt = np.stack([np.asarray(o.T_world_cam_gt, dtype=np.float64) for o in outcomes])
    no_gt = ~np.all(np.isfinite(gt), axis=(1, 2))
    if no_gt.any():
        names = [o.name for o, b in zip(outcomes, no_gt) if b]
        raise ValueError(
            f"{len(names)} frame(s) have no finite ground-truth pose (e.g. {names[:3]}); "
            "drop them before scoring (a missing truth is not a localization failure)"
        )
    ok = np.array([o.status == "LOCALIZED" for o in outcomes]) & np.all(np.isfinite(est), axis=(1, 2))
    est = np.where(ok[:, None, None], est, np.nan)
    t, r = pose_errors(est, gt)
    return np.where(ok, t, np.inf), np.where(ok, r, np.inf)
