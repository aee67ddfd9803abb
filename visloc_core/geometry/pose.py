"""Rigid poses as 4x4 matrices, batched over leading dimensions (numpy).

Convention: ``T_a_b`` maps b-frame points into frame a (``p_a = T_a_b @ p_b``); a camera pose is
``T_world_cam``. Translations are metres. Quaternions are (w, x, y, z).
"""

from __future__ import annotations

import numpy as np

from .quaternion import R_from_quat_wxyz, quat_wxyz_from_R


def _check_T(T: np.ndarray, name: str = "T") -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {T.shape}")
    return T


def T_from_R_t(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stack rotations (..., 3, 3) and translations (..., 3) into poses (..., 4, 4)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if R.shape[-2:] != (3, 3) or t.shape[-1:] != (3,) or R.shape[:-2] != t.shape[:-1]:
        raise ValueError(f"R (...,3,3) and t (...,3) must match, got {R.shape} and {t.shape}")
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_T(T_a_b: np.ndarray) -> np.ndarray:
    """Inverse of rigid poses: T_b_a from T_a_b, using R^T (no general matrix inverse)."""
    T = _check_T(T_a_b, "T_a_b")
    R_t = np.swapaxes(T[..., :3, :3], -1, -2)
    return T_from_R_t(R_t, -np.einsum("...ij,...j->...i", R_t, T[..., :3, 3]))


def relative_pose(T_world_a: np.ndarray, T_world_b: np.ndarray) -> np.ndarray:
    """T_b_a = inv(T_world_b) @ T_world_a: maps a-camera points into the b-camera frame."""
    return invert_T(T_world_b) @ _check_T(T_world_a, "T_world_a")


def camera_center(T_world_cam: np.ndarray) -> np.ndarray:
    """Camera centres (..., 3) in world coordinates: the translation part of T_world_cam."""
    return _check_T(T_world_cam, "T_world_cam")[..., :3, 3].copy()


def transform_points(T_a_b: np.ndarray, p_b_N3: np.ndarray) -> np.ndarray:
    """Apply one pose (4, 4) to points (N, 3) given in frame b; returns (N, 3) in frame a."""
    T = _check_T(T_a_b, "T_a_b")
    p = np.asarray(p_b_N3, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {p.shape}")
    return p @ T[:3, :3].T + T[:3, 3]


def T_from_position_quat_wxyz(position: np.ndarray, q_wxyz: np.ndarray) -> np.ndarray:
    """Pose (..., 4, 4) from a position (..., 3) (the translation) and a quaternion (w, x, y, z)."""
    return T_from_R_t(R_from_quat_wxyz(q_wxyz), np.asarray(position, dtype=np.float64))


def position_quat_wxyz_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split poses (..., 4, 4) into translation (..., 3) and quaternion (..., 4) (w, x, y, z), w >= 0."""
    T = _check_T(T)
    return T[..., :3, 3].copy(), quat_wxyz_from_R(T[..., :3, :3])
