"""Multi-view triangulation of points seen by cameras with KNOWN poses (batched over many tracks).

Convention: every observation ``m`` of a point (track) ``track_M[m]`` is a NORMALISED image point
``xy_M2[m]`` (``K^-1 [u, v, 1]``, undistorted) seen by a camera with world-to-camera rotation
``R_cam_world_M33[m]`` and translation ``t_cam_world_M3[m]`` (``x_cam = R X_world + t``). Points are
world coordinates (metres). Observations may be in any order; track ids run 0 .. n_tracks - 1.

- :func:`triangulate_dlt`: linear multi-view triangulation (the homogeneous DLT, smallest eigenvector
  of ``sum_m A_m^T A_m`` per track, rows ``x P_3 - P_1``, ``y P_3 - P_2``), with 0/1 weights per
  observation; NaN for tracks with fewer than two weighted observations.
- :func:`refine_points`: Gauss-Newton on the reprojection error (normalised units) of each point with
  the poses fixed, the "point-only bundle adjustment" COLMAP runs after triangulating with known poses.
- :func:`reprojection`: reprojection errors (normalised units) and depths of every observation.
- :func:`triangulation_angles_deg`: per track, the largest angle between two of its viewing rays.

Everything is vectorised with segment sums (``np.add.reduceat`` over observations sorted by track), so
a map of 1,000 keyframes (~10^5 tracks) triangulates in a fraction of a second.
"""

from __future__ import annotations

import numpy as np


def _segment_sum(values_M: np.ndarray, track_M: np.ndarray, n_tracks: int) -> np.ndarray:
    """Sum of ``values`` (M, ...) per track (n_tracks, ...); zeros for tracks without observations."""
    order = np.argsort(track_M, kind="stable")
    t_sorted = track_M[order]
    out = np.zeros((n_tracks, *values_M.shape[1:]), dtype=np.float64)
    if len(order) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
    out[t_sorted[starts]] = np.add.reduceat(values_M[order], starts, axis=0)
    return out


def _check(track_M, xy_M2, R_M33, t_M3) -> tuple[np.ndarray, ...]:
    track = np.asarray(track_M, dtype=np.int64).ravel()
    xy = np.asarray(xy_M2, dtype=np.float64).reshape(-1, 2)
    R = np.asarray(R_M33, dtype=np.float64).reshape(-1, 3, 3)
    t = np.asarray(t_M3, dtype=np.float64).reshape(-1, 3)
    if not (len(track) == len(xy) == len(R) == len(t)):
        raise ValueError(f"observation arrays differ in length: {len(track)}, {len(xy)}, {len(R)}, {len(t)}")
    return track, xy, R, t


def triangulate_dlt(
    track_M: np.ndarray,
    xy_M2: np.ndarray,
    R_cam_world_M33: np.ndarray,
    t_cam_world_M3: np.ndarray,
    n_tracks: int,
    weights_M: np.ndarray | None = None,
) -> np.ndarray:
    """(n_tracks, 3) world points by the linear multi-view DLT; NaN rows where undefined."""
    track, xy, R, t = _check(track_M, xy_M2, R_cam_world_M33, t_cam_world_M3)
    P = np.concatenate([R, t[:, :, None]], axis=2)  # (M, 3, 4) normalised projection matrices
    r1 = xy[:, 0:1] * P[:, 2] - P[:, 0]
    r2 = xy[:, 1:2] * P[:, 2] - P[:, 1]
    AtA = r1[:, :, None] * r1[:, None, :] + r2[:, :, None] * r2[:, None, :]  # (M, 4, 4)
    w = np.ones(len(track)) if weights_M is None else np.asarray(weights_M, dtype=np.float64)
    S = _segment_sum(AtA * w[:, None, None], track, n_tracks)
    count = _segment_sum((w > 0).astype(np.float64), track, n_tracks)
    X = np.full((n_tracks, 3), np.nan)
    ok = count >= 2
    if ok.any():
        _, V = np.linalg.eigh(S[ok])
        v = V[:, :, 0]  # eigenvector of the smallest eigenvalue
        with np.errstate(divide="ignore", invalid="ignore"):
            Xh = v[:, :3] / v[:, 3:4]
        Xh[np.abs(v[:, 3]) < 1e-12] = np.nan  # point at infinity: not triangulable
        X[ok] = Xh
    return X


def reprojection(
    X_T3: np.ndarray, track_M: np.ndarray, xy_M2: np.ndarray, R_cam_world_M33: np.ndarray, t_cam_world_M3: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per observation: reprojection error (normalised units; multiply by the focal length for pixels)
    and depth (z in the camera, metres). NaN points give NaN errors."""
    track, xy, R, t = _check(track_M, xy_M2, R_cam_world_M33, t_cam_world_M3)
    p = np.einsum("mij,mj->mi", R, np.asarray(X_T3, np.float64)[track]) + t
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = p[:, :2] / z[:, None]
    err = np.linalg.norm(proj - xy, axis=1)
    return err, z


def refine_points(
    X_T3: np.ndarray,
    track_M: np.ndarray,
    xy_M2: np.ndarray,
    R_cam_world_M33: np.ndarray,
    t_cam_world_M3: np.ndarray,
    weights_M: np.ndarray | None = None,
    iterations: int = 10,
    damping: float = 1e-9,
) -> np.ndarray:
    """Points (n_tracks, 3) minimising the sum of squared reprojection errors of their weighted
    observations, poses fixed (Gauss-Newton with a tiny Levenberg damping). A step that would
    increase a point's error is not taken (that point keeps its previous value)."""
    track, xy, R, t = _check(track_M, xy_M2, R_cam_world_M33, t_cam_world_M3)
    X = np.array(X_T3, dtype=np.float64, copy=True)
    n = len(X)
    w = np.ones(len(track)) if weights_M is None else np.asarray(weights_M, dtype=np.float64)

    def cost(Xc: np.ndarray) -> np.ndarray:
        e, z = reprojection(Xc, track, xy, R, t)
        e = np.where(np.isfinite(e) & (z > 0), e, 1e3)  # behind a camera: a large penalty
        return _segment_sum(w * e * e, track, n)

    c0 = cost(X)
    for _ in range(int(iterations)):
        p = np.einsum("mij,mj->mi", R, X[track]) + t
        z = p[:, 2]
        zs = np.where(np.abs(z) > 1e-9, z, 1e-9)
        u, v = p[:, 0] / zs, p[:, 1] / zs
        # d(proj)/dp = [[1/z, 0, -u/z], [0, 1/z, -v/z]]; d(p)/dX = R
        dpi = np.zeros((len(track), 2, 3))
        dpi[:, 0, 0] = 1 / zs
        dpi[:, 0, 2] = -u / zs
        dpi[:, 1, 1] = 1 / zs
        dpi[:, 1, 2] = -v / zs
        J = dpi @ R  # (M, 2, 3)
        r = np.stack([u - xy[:, 0], v - xy[:, 1]], axis=1)  # (M, 2)
        JtJ = _segment_sum(w[:, None, None] * np.einsum("mki,mkj->mij", J, J), track, n)
        Jtr = _segment_sum(w[:, None] * np.einsum("mki,mk->mi", J, r), track, n)
        ok = np.all(np.isfinite(X), axis=1) & np.all(np.isfinite(JtJ), axis=(1, 2))
        step = np.zeros_like(X)
        if ok.any():
            A = JtJ[ok] + damping * np.eye(3) * (1 + np.trace(JtJ[ok], axis1=1, axis2=2))[:, None, None]
            try:
                step[ok] = -np.linalg.solve(A, Jtr[ok][:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:  # a singular point among them: solve one by one
                for i in np.flatnonzero(ok):
                    try:
                        step[i] = -np.linalg.solve(JtJ[i] + 1e-9 * np.eye(3), Jtr[i])
                    except np.linalg.LinAlgError:
                        step[i] = 0
        X_new = X + step
        c1 = cost(X_new)
        better = c1 < c0
        X[better] = X_new[better]
        c0 = np.where(better, c1, c0)
        if np.max(np.abs(step[better]), initial=0.0) < 1e-10:
            break
    return X


def triangulation_angles_deg(
    X_T3: np.ndarray, track_M: np.ndarray, centers_M3: np.ndarray, weights_M: np.ndarray | None = None
) -> np.ndarray:
    """Per track, the largest angle (degrees) between two weighted viewing rays (camera centre ->
    point): the ray farthest from the mean ray is one end of the widest pair (exact for two rays, and
    within a few percent of the true maximum for more); 0 for tracks with fewer than two rays."""
    track = np.asarray(track_M, dtype=np.int64).ravel()
    n = len(X_T3)
    w = np.ones(len(track), bool) if weights_M is None else np.asarray(weights_M) > 0
    d = np.asarray(X_T3, np.float64)[track] - np.asarray(centers_M3, np.float64)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    d[~w] = 0
    mean = _segment_sum(d, track, n)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    cos_to_mean = np.where(w, np.einsum("mi,mi->m", d, mean[track]), 2.0)
    # the ray of each track farthest from the mean (smallest cosine)
    order = np.lexsort((cos_to_mean, track))
    t_sorted = track[order]
    first = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
    extreme = np.zeros((n, 3))
    extreme[t_sorted[first]] = d[order[first]]
    cos_pair = np.where(w, np.einsum("mi,mi->m", d, extreme[track]), 2.0)
    min_cos = np.full(n, 2.0)
    np.minimum.at(min_cos, track, cos_pair)
    ang = np.degrees(np.arccos(np.clip(min_cos, -1.0, 1.0)))
    ang[min_cos > 1.5] = 0.0
    return ang
