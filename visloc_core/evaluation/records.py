"""The per-frame record every evaluation path produces (``visloc eval``, ``visloc replay``, benches)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
