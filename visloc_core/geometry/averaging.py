"""Rotation averaging."""

from __future__ import annotations

import numpy as np

from .quaternion import R_from_quat_wxyz, quat_wxyz_from_R


def average_rotations(R_N33: np.ndarray, weights_N: np.ndarray | None = None) -> np.ndarray:
    """Weighted chordal L2 mean of rotations (N, 3, 3): argmin_R sum w_i ||R - R_i||_F^2.

    Solved in closed form as the principal eigenvector of sum w_i q_i q_i^T (Markley et al. 2007),
    which is invariant to the sign of each q_i. Returns a (3, 3) rotation matrix.
    """
    R = np.asarray(R_N33, dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3) or R.shape[0] == 0:
        raise ValueError(f"need rotations of shape (N>=1, 3, 3), got {R.shape}")
    w = np.ones(R.shape[0]) if weights_N is None else np.asarray(weights_N, dtype=np.float64)
    if w.shape != (R.shape[0],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be N non-negative numbers with a positive sum")
    q = quat_wxyz_from_R(R)
    M = np.einsum("n,ni,nj->ij", w, q, q)
    _, vecs = np.linalg.eigh(M)
    return R_from_quat_wxyz(vecs[:, -1])
