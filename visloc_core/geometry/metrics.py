"""Pose errors and recall as the benchmarks' reference code defines them.

Rotation error: angle of R_est R_gt^T in degrees. Translation error: distance between camera
centres in metres (not between the t of world-to-camera poses). A frame that was not localized
is passed as NaN/None pose and gets infinite errors, so it counts as a miss at every threshold.
"""

from __future__ import annotations

import numpy as np

from .quaternion import rotation_angle_deg

# (metres, degrees) thresholds reported by visloc: the benchmark set of DATASETS.md plus 5 m/10 deg.
RECALL_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (0.01, 1.0),
    (0.02, 2.0),
    (0.05, 5.0),
    (0.25, 2.0),
    (0.5, 5.0),
    (5.0, 10.0),
)


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Angle (degrees) of R_est R_gt^T for rotation matrices (..., 3, 3); NaN input (either) gives inf."""
    R_est = np.asarray(R_est, dtype=np.float64)
    R_gt = np.asarray(R_gt, dtype=np.float64)
    bad = ~np.all(np.isfinite(R_est), axis=(-1, -2)) | ~np.all(np.isfinite(R_gt), axis=(-1, -2))
    eye = np.eye(3)
    R_rel = np.where(bad[..., None, None], eye, R_est) @ np.swapaxes(np.where(bad[..., None, None], eye, R_gt), -1, -2)
    return np.where(bad, np.inf, rotation_angle_deg(R_rel))


def translation_error_m(T_world_cam_est: np.ndarray, T_world_cam_gt: np.ndarray) -> np.ndarray:
    """Distance (metres) between the camera centres of poses (..., 4, 4); NaN input gives inf."""
    d = np.linalg.norm(np.asarray(T_world_cam_est)[..., :3, 3] - np.asarray(T_world_cam_gt)[..., :3, 3], axis=-1)
    return np.where(np.isfinite(d), d, np.inf)


def pose_errors(T_world_cam_est: np.ndarray, T_world_cam_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(translation error m, rotation error deg) of estimated vs true T_world_cam (..., 4, 4)."""
    est = np.asarray(T_world_cam_est, dtype=np.float64)
    gt = np.asarray(T_world_cam_gt, dtype=np.float64)
    return translation_error_m(est, gt), rotation_error_deg(est[..., :3, :3], gt[..., :3, :3])


def recall_at_thresholds(
    t_err_m: np.ndarray,
    r_err_deg: np.ndarray,
    thresholds: tuple[tuple[float, float], ...] = RECALL_THRESHOLDS,
) -> dict[str, float]:
    """Fraction of frames with t_err <= m and r_err <= deg for each threshold.

    Keys are like ``"0.25m_2deg"``. Infinite errors (not localized) always miss. Empty input gives 0.
    """
    t = np.asarray(t_err_m, dtype=np.float64).ravel()
    r = np.asarray(r_err_deg, dtype=np.float64).ravel()
    out = {}
    for m, deg in thresholds:
        key = f"{m:g}m_{deg:g}deg"
        out[key] = float(np.mean((t <= m) & (r <= deg))) if t.size else 0.0
    return out
