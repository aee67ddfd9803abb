"""Quaternions and rotations, batched over leading dimensions (numpy).

Convention: quaternions are (w, x, y, z), scalar first, Hamilton product, and represent the
rotation matrix R with ``R @ v == q * v * conj(q)``. ROS messages use (x, y, z, w): convert only
through :func:`quat_xyzw_to_wxyz` and :func:`quat_wxyz_to_xyzw`.
"""

from __future__ import annotations

import numpy as np


def _check_last(x: np.ndarray, n: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (n,):
        raise ValueError(f"{name} must have shape (..., {n}), got {x.shape}")
    return x


def _check_R(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {R.shape}")
    return R


def quat_xyzw_to_wxyz(q_xyzw: np.ndarray) -> np.ndarray:
    """Reorder (x, y, z, w) (ROS, scipy, TartanAir) to visloc's (w, x, y, z)."""
    q = _check_last(q_xyzw, 4, "q_xyzw")
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def quat_wxyz_to_xyzw(q_wxyz: np.ndarray) -> np.ndarray:
    """Reorder visloc's (w, x, y, z) to (x, y, z, w) (ROS messages)."""
    q = _check_last(q_wxyz, 4, "q_wxyz")
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def quat_canonical_wxyz(q_wxyz: np.ndarray) -> np.ndarray:
    """Unit-normalise and flip to the hemisphere w >= 0 (q and -q are the same rotation).

    Raises ValueError for a zero or non-finite quaternion.
    """
    q = _check_last(q_wxyz, 4, "q_wxyz")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(n)) or np.any(n < 1e-12):
        raise ValueError("quaternion has zero norm or non-finite entries")
    q = q / n
    return np.where(q[..., 0:1] < 0, -q, q)


def quat_multiply_wxyz(a_wxyz: np.ndarray, b_wxyz: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a), both (w, x, y, z)."""
    a = _check_last(a_wxyz, 4, "a_wxyz")
    b = _check_last(b_wxyz, 4, "b_wxyz")
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def R_from_quat_wxyz(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in (w, x, y, z); normalises first."""
    q = quat_canonical_wxyz(q_wxyz)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def quat_wxyz_from_R(R: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) in (w, x, y, z), w >= 0, from rotation matrices (..., 3, 3).

    Uses the eigenvector of Bar-Itzhack's symmetric 4x4 matrix, which is exact for rotation
    matrices and the closest unit quaternion (in the Frobenius sense) for slightly noisy ones.
    """
    R = _check_R(R)
    if not np.all(np.isfinite(R)):
        raise ValueError("rotation matrices have non-finite entries (a not-localized pose?)")
    m = R
    K = np.empty(R.shape[:-2] + (4, 4))
    K[..., 0, 0] = m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2]
    K[..., 1, 1] = m[..., 1, 1] - m[..., 0, 0] - m[..., 2, 2]
    K[..., 2, 2] = m[..., 2, 2] - m[..., 0, 0] - m[..., 1, 1]
    K[..., 3, 3] = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    K[..., 0, 1] = K[..., 1, 0] = m[..., 1, 0] + m[..., 0, 1]
    K[..., 0, 2] = K[..., 2, 0] = m[..., 2, 0] + m[..., 0, 2]
    K[..., 0, 3] = K[..., 3, 0] = m[..., 2, 1] - m[..., 1, 2]
    K[..., 1, 2] = K[..., 2, 1] = m[..., 2, 1] + m[..., 1, 2]
    K[..., 1, 3] = K[..., 3, 1] = m[..., 0, 2] - m[..., 2, 0]
    K[..., 2, 3] = K[..., 3, 2] = m[..., 1, 0] - m[..., 0, 1]
    _, vecs = np.linalg.eigh(K / 3.0)
    v = vecs[..., :, -1]  # (x, y, z, w) of the largest eigenvalue
    q = np.concatenate([v[..., 3:4], v[..., 0:3]], axis=-1)
    return quat_canonical_wxyz(q)


def R_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (..., 3) (axis * angle, radians) to matrices (..., 3, 3)."""
    r = _check_last(rotvec, 3, "rotvec")
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    half = 0.5 * theta
    # sin(theta/2)/theta with its limit 1/2 at 0, so small angles keep full precision.
    scale = np.where(theta > 1e-8, np.sin(half) / np.maximum(theta, 1e-300), 0.5 - theta**2 / 48.0)
    q = np.concatenate([np.cos(half), r * scale], axis=-1)
    return R_from_quat_wxyz(q)


def rotvec_from_R(R: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) (axis * angle, angle in [0, pi]) from matrices (..., 3, 3)."""
    q = quat_wxyz_from_R(R)
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., 0:1])
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-300), 2.0)
    return v * scale


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees, in [0, 180], of rotation matrices (..., 3, 3).

    Computed with atan2 of the quaternion (stable near 0 and 180 degrees, unlike acos of the trace).
    """
    q = quat_wxyz_from_R(R)
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(q[..., 1:], axis=-1), np.abs(q[..., 0])))
