"""Two-view geometry: essential matrices, their decomposition, and triangulation.

Convention: for cameras a and b with relative pose (R, t) = T_b_a (``x_b = R x_a + t``, see
:func:`visloc_core.geometry.relative_pose`), the essential matrix is ``E = [t]x R`` and
normalised image points satisfy ``x_b^T E x_a = 0``. This is OpenCV's convention for
``findEssentialMat(points_a, points_b)`` / ``recoverPose``.
"""

from __future__ import annotations

import numpy as np


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3): skew(a) @ b == cross(a, b)."""
    v = np.asarray(v, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"v must have shape (..., 3), got {v.shape}")
    x, y, z = np.moveaxis(v, -1, 0)
    o = np.zeros_like(x)
    return np.stack([o, -z, y, z, o, -x, -y, x, o], axis=-1).reshape(v.shape[:-1] + (3, 3))


def essential_from_relative_pose(T_b_a: np.ndarray, normalize: bool = True) -> np.ndarray:
    """E = [t]x R of relative poses (..., 4, 4); with ``normalize`` t is scaled to unit length
    (the scale of E is not observable), so E has singular values (1, 1, 0).
    """
    T = np.asarray(T_b_a, dtype=np.float64)
    t = T[..., :3, 3]
    if normalize:
        n = np.linalg.norm(t, axis=-1, keepdims=True)
        if np.any(n < 1e-12):
            raise ValueError("relative translation is zero: E is undefined for a pure rotation")
        t = t / n
    return skew(t) @ T[..., :3, :3]


def decompose_essential(E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two rotations and the unit translation of an essential matrix (3, 3).

    Returns (R1, R2, t): the four (R, t) candidates are (R1, t), (R1, -t), (R2, t), (R2, -t),
    the same candidates as OpenCV's ``decomposeEssentialMat``. Which rotation is called R1 and
    the sign of t are NOT unique: E's two equal singular values leave the SVD free up to a
    rotation or reflection of the first two singular vectors, and a reflection swaps R1 and R2,
    so compare the set {R1, R2}, not the order. Only one candidate puts points in front of
    both cameras (the cheirality check of recoverPose).
    """
    E = np.asarray(E, dtype=np.float64)
    if E.shape != (3, 3) or not np.all(np.isfinite(E)):
        raise ValueError(f"E must be a finite (3, 3) matrix, got shape {E.shape}")
    U, _, Vt = np.linalg.svd(E)
    if np.linalg.det(U) < 0:
        U = -U
    if np.linalg.det(Vt) < 0:
        Vt = -Vt
    W = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # as OpenCV, so R1, R2 match it
    R1 = U @ W @ Vt
    R2 = U @ W.T @ Vt
    t = U[:, 2] / np.linalg.norm(U[:, 2])
    return R1, R2, t


def triangulate_point_from_rays(centers_N3: np.ndarray, directions_N3: np.ndarray) -> np.ndarray:
    """Least-squares intersection of N >= 2 rays ``c_i + s d_i``: the point minimising the sum of
    squared perpendicular distances to the rays. Raises ValueError when the rays are parallel.
    """
    c = np.asarray(centers_N3, dtype=np.float64)
    d = np.asarray(directions_N3, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3 or d.shape != c.shape or c.shape[0] < 2:
        raise ValueError(f"need (N>=2, 3) centers and directions, got {c.shape} and {d.shape}")
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(norms)) and np.all(norms > 1e-12)):
        raise ValueError("ray centers and directions must be finite, and directions non-zero")
    d = d / norms
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each ray
    A = P.sum(axis=0)
    b = np.einsum("nij,nj->i", P, c)
    if np.linalg.cond(A) > 1e10:
        raise ValueError("rays are (nearly) parallel: the intersection is not defined")
    return np.linalg.solve(A, b)


def triangulate_points_dlt(P1_34: np.ndarray, P2_34: np.ndarray, x1_N2: np.ndarray, x2_N2: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of N points seen by two 3x4 projection matrices.

    x1_N2, x2_N2 are pixel (or normalised) coordinates consistent with P1, P2. Returns (N, 3)
    Euclidean points; equals OpenCV's ``triangulatePoints`` followed by dehomogenisation.
    """
    P1 = np.asarray(P1_34, dtype=np.float64)
    P2 = np.asarray(P2_34, dtype=np.float64)
    x1 = np.asarray(x1_N2, dtype=np.float64)
    x2 = np.asarray(x2_N2, dtype=np.float64)
    A = np.stack(
        [
            x1[:, 0:1] * P1[2] - P1[0],
            x1[:, 1:2] * P1[2] - P1[1],
            x2[:, 0:1] * P2[2] - P2[0],
            x2[:, 1:2] * P2[2] - P2[1],
        ],
        axis=1,
    )  # (N, 4, 4)
    _, _, Vt = np.linalg.svd(A)
    X = Vt[:, -1, :]
    return X[:, :3] / X[:, 3:4]
