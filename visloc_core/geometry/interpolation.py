"""Pose interpolation at timestamps: linear in translation, SLERP in rotation.

Timestamps are integer nanoseconds (int64) as in ROS; quaternions are (w, x, y, z).
"""

from __future__ import annotations

import numpy as np

from .pose import T_from_R_t
from .quaternion import R_from_quat_wxyz, quat_canonical_wxyz, quat_wxyz_from_R


def slerp_quat_wxyz(q0_wxyz: np.ndarray, q1_wxyz: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions (..., 4) at fractions s (...) in [0, 1].

    Takes the short way (flips q1 when <q0, q1> < 0); falls back to normalised lerp when the two
    are within ~1e-6 rad, where SLERP's division is ill-conditioned.
    """
    q0 = quat_canonical_wxyz(q0_wxyz)
    q1 = quat_canonical_wxyz(q1_wxyz)
    s = np.asarray(s, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    small = sin_theta < 1e-6
    safe = np.where(small, 1.0, sin_theta)
    w0 = np.where(small, 1.0 - s, np.sin((1.0 - s) * theta) / safe)
    w1 = np.where(small, s, np.sin(s * theta) / safe)
    return quat_canonical_wxyz(w0 * q0 + w1 * q1)


def interpolate_poses(
    stamps_ns: np.ndarray,
    T_N44: np.ndarray,
    query_stamps_ns: np.ndarray,
    max_gap_ns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Poses at query stamps from a time series of poses.

    Args:
        stamps_ns: (N,) int64 nanoseconds, strictly increasing.
        T_N44: (N, 4, 4) poses at those stamps (any frames, e.g. T_map_base).
        query_stamps_ns: (M,) int64 nanoseconds.
        max_gap_ns: a query is valid only if it lies between two samples at most this far apart,
            or exactly on a sample. None accepts any gap.

    Returns:
        (T_M44, valid_M): interpolated poses (NaN where invalid) and a boolean mask. Queries
        outside [stamps[0], stamps[-1]] are invalid (no extrapolation).
    """
    t = np.asarray(stamps_ns, dtype=np.int64)
    T = np.asarray(T_N44, dtype=np.float64)
    q = np.asarray(query_stamps_ns, dtype=np.int64)
    if t.ndim != 1 or T.shape != (t.size, 4, 4):
        raise ValueError(f"need stamps (N,) and poses (N, 4, 4), got {t.shape} and {T.shape}")
    if t.size == 0:
        return np.full((q.size, 4, 4), np.nan), np.zeros(q.size, dtype=bool)
    if np.any(np.diff(t) <= 0):
        raise ValueError("pose stamps must be strictly increasing (sort them and drop duplicates)")
    idx = np.searchsorted(t, q, side="right")  # t[idx-1] <= q < t[idx]
    exact = (idx > 0) & (t[np.clip(idx - 1, 0, t.size - 1)] == q)
    inside = (idx > 0) & (idx < t.size)
    i0 = np.clip(idx - 1, 0, t.size - 1)
    i1 = np.clip(idx, 0, t.size - 1)
    gap = t[i1] - t[i0]
    valid = exact | inside
    if max_gap_ns is not None:
        valid &= exact | (gap <= max_gap_ns)
    # Fractions as float64 of int64 differences: exact for gaps below 2^53 ns (~104 days).
    s = np.where(gap > 0, (q - t[i0]).astype(np.float64) / np.maximum(gap, 1), 0.0)
    s = np.where(exact, 0.0, s)
    p = (1.0 - s)[:, None] * T[i0, :3, 3] + s[:, None] * T[i1, :3, 3]
    qa = quat_wxyz_from_R(T[i0, :3, :3])
    qb = quat_wxyz_from_R(T[i1, :3, :3])
    R = R_from_quat_wxyz(slerp_quat_wxyz(qa, qb, s))
    out = T_from_R_t(R, p)
    out[exact] = T[i0[exact]]  # bit-exact at sample stamps
    out[~valid] = np.nan
    return out, valid
