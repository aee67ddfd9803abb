"""The 3D structure of a relpose map: one world point per keyframe keypoint that has one.

A query is solved by PnP against these points (geometric.py), whatever their source:

- ``depth``: keyframes with depth registered to the colour image; every keypoint with a valid depth
  is lifted to the world (one point per keypoint, track length 1).
- ``triangulated``: keyframes WITHOUT depth (7-Scenes and Cambridge as distributed, most drone and
  phone recordings): a sparse model triangulated from the mapping images and their KNOWN poses, as
  hloc does with COLMAP's point triangulator:

  1. co-visible pairs: for each keyframe its ``pairs_from_poses`` nearest keyframes (camera centres)
     whose optical axes differ by less than ``max_view_angle_deg``, plus its ``pairs_from_retrieval``
     most similar keyframes by global descriptor (same angle limit);
  2. feature matches of each pair (the estimator's own matcher, mutual nearest neighbours for XFeat),
     kept when their Sampson distance to the epipolar geometry of the KNOWN relative pose is below
     ``epipolar_threshold_px``;
  3. tracks: union-find over the verified matches, best (smallest Sampson distance) first, refusing
     any merge that would give a track two keypoints of one keyframe;
  4. robust multi-view triangulation per track (geometry/triangulation.py): linear DLT, observations
     with a reprojection error above 4x, 2x, then 1x ``reprojection_threshold_px`` or behind a camera
     dropped in turn (one keypoint per keyframe: the one that reprojects best), then Gauss-Newton on
     each point with the poses fixed;
  5. filters: at least ``min_track_length`` observations, every one within
     ``reprojection_threshold_px`` and in front of its camera, a triangulation angle of at least
     ``min_triangulation_angle_deg``.

  Each keyframe keeps its keypoint -> point links, so a query's 2D-2D matches to a keyframe become
  2D-3D matches exactly as with depth.
- ``none``: direction-only map (essential matrices and the multi-reference triangulation of paper
  003's hypothesis filter), for maps where triangulation finds too little.

Stored in the artifact as ``points.npz``: ``xyz`` (P, 3) float32 world metres, per point
``track_length`` (int32), ``error_px`` (mean reprojection error, float32), ``angle_deg``
(triangulation angle, float32), and the links ``kf_point_ids`` (flat int32, -1 = no point) with
``kf_offsets`` (K + 1) so that keyframe k's ids are ``kf_point_ids[kf_offsets[k]:kf_offsets[k+1]]``
(one per keypoint of its cached features, in their order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...geometry import PinholeCamera, invert_T
from ...geometry.triangulation import (
    refine_points,
    reprojection,
    triangulate_dlt,
    triangulation_angles_deg,
)
from .base import ConfigSection
from .solvers import normalise_points

log = logging.getLogger(__name__)

SOURCES = ("auto", "depth", "triangulate", "none")


@dataclass
class StructureConfig(ConfigSection):
    """``structure:`` keys of a relpose config."""

    section = "structure"

    # auto: depth when every keyframe has depth registered to its colour image, else triangulate
    # (for estimators with local features; none for the learned one) | depth | triangulate | none
    source: str = "auto"
    pairs_from_poses: int = 10  # co-visible neighbours per keyframe, nearest camera centres first
    pairs_from_retrieval: int = 5  # plus the most similar keyframes by global descriptor (0 = off)
    max_view_angle_deg: float = 60.0  # pair only keyframes whose optical axes differ by less than this
    epipolar_threshold_px: float = 2.0  # Sampson distance bound of a match under the known relative pose
    reprojection_threshold_px: float = 2.0  # every observation of a point must reproject within this
    min_triangulation_angle_deg: float = 2.0  # widest angle between two rays of a point
    min_track_length: int = 2  # observations (keyframes) per point
    refine_iterations: int = 10  # Gauss-Newton iterations per point, poses fixed (0 = DLT only)

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"structure.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.min_track_length < 2:
            raise ValueError("structure.min_track_length must be >= 2 (one view does not fix a point)")


class _Slices(Sequence):
    """``flat[off[k] : off[k + 1]]`` for k in range(len(off) - 1), without making the list."""

    def __init__(self, flat: np.ndarray, off: np.ndarray) -> None:
        self.flat, self.off = flat, off

    def __len__(self) -> int:
        return len(self.off) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k %= len(self)
        return np.asarray(self.flat[self.off[k] : self.off[k + 1]])


@dataclass
class SparseModel:
    """World points and the keypoint -> point links of every keyframe (see the module docstring)."""

    source: str  # "depth" | "triangulated"
    xyz_P3: np.ndarray  # noqa: N815  (shape suffix, STYLE.md)
    track_length_P: np.ndarray  # noqa: N815  (shape suffix, STYLE.md)
    error_px_P: np.ndarray  # noqa: N815  (shape suffix, STYLE.md)
    angle_deg_P: np.ndarray  # noqa: N815  (shape suffix, STYLE.md)
    kf_point_ids: list[np.ndarray]  # per keyframe (N_k,) int32, -1 = no point
    stats: dict = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return len(self.xyz_P3)

    def keyframe_points(self, k: int) -> np.ndarray:
        """(N_k, 3) world points of keyframe k's keypoints, NaN where there is none."""
        ids = self.kf_point_ids[k]
        out = np.full((len(ids), 3), np.nan)
        ok = ids >= 0
        out[ok] = self.xyz_P3[ids[ok]]
        return out

    def save(self, path: Path) -> None:
        offsets = np.r_[0, np.cumsum([len(i) for i in self.kf_point_ids])].astype(np.int64)
        flat = np.concatenate(self.kf_point_ids) if self.kf_point_ids else np.zeros(0, np.int32)
        np.savez(
            path,
            source=np.array(self.source),
            xyz=self.xyz_P3.astype(np.float32),
            track_length=self.track_length_P.astype(np.int32),
            error_px=self.error_px_P.astype(np.float32),
            angle_deg=self.angle_deg_P.astype(np.float32),
            kf_point_ids=flat.astype(np.int32),
            kf_offsets=offsets,
        )

    @classmethod
    def load(cls, path: Path, mmap: bool = False) -> SparseModel:
        """Read ``points.npz``; ``mmap``: points and links stay memory-mapped (float32 points,
        returned by :meth:`keyframe_points` as float64 like the eager load)."""
        if mmap:
            from .store import npz_memmap

            z = npz_memmap(path)
            return cls(str(np.asarray(z["source"])), z["xyz"], z["track_length"], z["error_px"], z["angle_deg"],
                       _Slices(z["kf_point_ids"], np.asarray(z["kf_offsets"])))  # fmt: skip
        with np.load(path) as z:
            off = z["kf_offsets"]
            flat = z["kf_point_ids"]
            return cls(
                str(z["source"]),
                z["xyz"].astype(np.float64),
                z["track_length"],
                z["error_px"],
                z["angle_deg"],
                [flat[off[k] : off[k + 1]] for k in range(len(off) - 1)],
            )


# ------------------------------------------------------------------------------------------ depth
def model_from_depth(
    keypoints: Sequence[np.ndarray], depths: Sequence[np.ndarray], T_world_cam_K44: np.ndarray, cameras
) -> SparseModel:
    """One point per keypoint with a valid depth (z > 0), lifted with the keyframe pose."""
    xyz, ids, start = [], [], 0
    for kp, z, T, cam in zip(keypoints, depths, T_world_cam_K44, cameras):
        z = np.asarray(z, np.float64)
        ok = np.isfinite(z) & (z > 0)
        x = normalise_points(np.asarray(kp)[ok], cam)
        p_cam = np.c_[x, np.ones(len(x))] * z[ok, None]
        xyz.append(p_cam @ T[:3, :3].T + T[:3, 3])
        kid = np.full(len(z), -1, np.int32)
        kid[ok] = start + np.arange(int(ok.sum()), dtype=np.int32)
        ids.append(kid)
        start += int(ok.sum())
    pts = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    n = len(pts)
    model = SparseModel("depth", pts, np.ones(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32), ids)
    model.stats = {"source": "depth", "n_points": n, **_per_keyframe_stats(ids)}
    return model


# ------------------------------------------------------------------------------------------ pairs
def covisible_pairs(T_world_cam_K44: np.ndarray, global_desc_KD: np.ndarray | None, cfg: StructureConfig) -> np.ndarray:
    """(P, 2) keyframe index pairs i < j (see the module docstring, step 1)."""
    T = np.asarray(T_world_cam_K44, np.float64)
    k = len(T)
    if k < 2:
        return np.zeros((0, 2), np.int64)
    c = T[:, :3, 3]
    z = T[:, :3, 2]  # optical axes in the world
    view_ok = z @ z.T >= np.cos(np.radians(cfg.max_view_angle_deg))
    np.fill_diagonal(view_ok, False)
    pairs = set()
    if cfg.pairs_from_poses > 0:
        d = np.linalg.norm(c[:, None] - c[None], axis=2)
        d[~view_ok] = np.inf
        n = min(cfg.pairs_from_poses, k - 1)
        nearest = np.argsort(d, axis=1)[:, :n]
        for i in range(k):
            for j in nearest[i]:
                if np.isfinite(d[i, j]):
                    pairs.add((min(i, j), max(i, j)))
    if cfg.pairs_from_retrieval > 0 and global_desc_KD is not None:
        g = np.asarray(global_desc_KD, np.float32)
        sim = g @ g.T
        sim[~view_ok] = -np.inf
        n = min(cfg.pairs_from_retrieval, k - 1)
        best = np.argsort(-sim, axis=1)[:, :n]
        for i in range(k):
            for j in best[i]:
                if np.isfinite(sim[i, j]):
                    pairs.add((min(i, j), max(i, j)))
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


def sampson_distance(x_i_N2: np.ndarray, x_j_N2: np.ndarray, T_j_i: np.ndarray) -> np.ndarray:
    """First-order geometric error (normalised units) of correspondences x_i <-> x_j under the
    relative pose ``T_j_i`` (x_j = R x_i + t): sqrt of the Sampson distance of ``E = [t]x R``."""
    R, t = T_j_i[:3, :3], T_j_i[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ R
    a = np.c_[x_i_N2, np.ones(len(x_i_N2))]
    b = np.c_[x_j_N2, np.ones(len(x_j_N2))]
    Ea = a @ E.T  # E x_i
    Etb = b @ E  # E^T x_j
    num = np.einsum("ni,ni->n", b, Ea) ** 2
    den = Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Etb[:, 0] ** 2 + Etb[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(num / den)


# ------------------------------------------------------------------------------------------ tracks
def _tracks(edges_E2: np.ndarray, node_kf_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tracks from matches, best first: union-find that refuses a merge which would put two keypoints
    of one keyframe into one track (a wrong match would otherwise chain distinct points into one
    giant component). Returns (node ids in tracks of >= 2 nodes, their track id)."""
    n = len(node_kf_N)
    parent = list(range(n))
    kfs: dict[int, set] = {}  # root -> keyframes of its component (only roots of merged components)
    kf_of = node_kf_N.tolist()

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    for a, b in edges_E2.tolist():
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        sa = kfs.get(ra) or {kf_of[ra]}
        sb = kfs.get(rb) or {kf_of[rb]}
        if len(sa) < len(sb):
            ra, rb, sa, sb = rb, ra, sb, sa
        if not sa.isdisjoint(sb):
            continue  # conflict: the two tracks share a keyframe
        parent[rb] = ra
        sa |= sb
        kfs[ra] = sa
        kfs.pop(rb, None)
    roots = np.array([find(a) for a in range(n)], np.int64)
    size = np.bincount(roots, minlength=n)
    nodes = np.flatnonzero(size[roots] >= 2)
    _, track = np.unique(roots[nodes], return_inverse=True)
    return nodes, track.astype(np.int64)


def _best_per_keyframe(track_M: np.ndarray, kf_M: np.ndarray, err_M: np.ndarray, keep_M: np.ndarray) -> np.ndarray:
    """``keep`` restricted to one observation per (track, keyframe): the smallest error."""
    idx = np.flatnonzero(keep_M)
    if len(idx) == 0:
        return keep_M
    order = idx[np.lexsort((err_M[idx], kf_M[idx], track_M[idx]))]
    first = np.r_[True, (track_M[order][1:] != track_M[order][:-1]) | (kf_M[order][1:] != kf_M[order][:-1])]
    out = np.zeros_like(keep_M)
    out[order[first]] = True
    return out


def triangulate_model(
    keypoints: Sequence[np.ndarray],
    T_world_cam_K44: np.ndarray,
    cameras: Sequence[PinholeCamera],
    match: Callable[[int, int], np.ndarray],
    global_desc_KD: np.ndarray | None,
    cfg: StructureConfig,
    progress: Callable | None = None,
) -> SparseModel:
    """A sparse model from keyframes with known poses (module docstring, steps 1-5).

    ``keypoints[k]`` are keyframe k's keypoints (N_k, 2) in pixels of ``cameras[k]``; ``match(i, j)``
    returns (M, 2) index pairs into keypoints[i], keypoints[j]. ``progress`` wraps the pair loop
    (e.g. a tqdm factory taking (iterable, total, desc)).
    """
    t_start = time.perf_counter()
    T = np.asarray(T_world_cam_K44, np.float64)
    T_cw = np.stack([invert_T(x) for x in T])
    K = len(T)
    n_kp = np.array([len(k) for k in keypoints], np.int64)
    offsets = np.r_[0, np.cumsum(n_kp)]
    xy = [normalise_points(np.asarray(k, np.float64), cam) for k, cam in zip(keypoints, cameras)]
    focal = np.array([0.5 * (cam.fx + cam.fy) for cam in cameras])

    # 1-2. pairs, matches, epipolar verification with the known poses
    pairs = covisible_pairs(T, global_desc_KD, cfg)
    edges, n_matches = [], 0
    it = progress(pairs, len(pairs), "pair matches") if progress else pairs
    for i, j in it:
        m = match(int(i), int(j))
        if len(m) == 0:
            continue
        n_matches += len(m)
        T_j_i = T_cw[j] @ T[i]
        if np.linalg.norm(T_j_i[:3, 3]) < 1e-9:  # no baseline: epipolar geometry undefined
            continue
        d = sampson_distance(xy[i][m[:, 0]], xy[j][m[:, 1]], T_j_i)
        thr = cfg.epipolar_threshold_px / min(focal[i], focal[j])
        ok = np.isfinite(d) & (d <= thr)
        edges.append(np.c_[offsets[i] + m[ok, 0], offsets[j] + m[ok, 1], d[ok] * min(focal[i], focal[j])])
    edges_E3 = np.concatenate(edges) if edges else np.zeros((0, 3))
    edges_E2 = edges_E3[np.argsort(edges_E3[:, 2], kind="stable"), :2].astype(np.int64)  # best matches first
    t_match = time.perf_counter() - t_start

    # 3. tracks
    node_kf = np.repeat(np.arange(K), n_kp)
    nodes, track = _tracks(edges_E2, node_kf)
    n_tracks = int(track.max()) + 1 if len(track) else 0
    kf = np.searchsorted(offsets, nodes, side="right") - 1
    kp = nodes - offsets[kf]
    obs_xy = np.concatenate(xy)[nodes] if len(nodes) else np.zeros((0, 2))
    R_cw, t_cw = T_cw[kf, :3, :3], T_cw[kf, :3, 3]
    f_obs = focal[kf]

    # 4. robust triangulation, then point-only refinement with the poses fixed
    thr = cfg.reprojection_threshold_px
    keep = np.ones(len(nodes), bool)
    X = np.full((n_tracks, 3), np.nan)
    for factor in (4.0, 2.0, 1.0):
        X = triangulate_dlt(track, obs_xy, R_cw, t_cw, n_tracks, keep.astype(float))
        err, z = reprojection(X, track, obs_xy, R_cw, t_cw)
        err_px = err * f_obs
        keep = keep & np.isfinite(err_px) & (err_px <= factor * thr) & (z > 0)
        keep = _best_per_keyframe(track, kf, np.nan_to_num(err_px, nan=np.inf), keep)
    if cfg.refine_iterations > 0 and n_tracks:
        X = refine_points(X, track, obs_xy, R_cw, t_cw, keep.astype(float), cfg.refine_iterations)
        err, z = reprojection(X, track, obs_xy, R_cw, t_cw)
        err_px = err * f_obs
        keep = keep & np.isfinite(err_px) & (err_px <= thr) & (z > 0)

    # 5. filters per point
    n_obs = np.bincount(track[keep], minlength=n_tracks)
    angle = triangulation_angles_deg(X, track, T[kf, :3, 3], keep)
    err_sum = np.bincount(track[keep], weights=err_px[keep], minlength=n_tracks)
    good = (n_obs >= cfg.min_track_length) & (angle >= cfg.min_triangulation_angle_deg) & np.all(np.isfinite(X), 1)
    new_id = np.full(n_tracks, -1, np.int64)
    new_id[good] = np.arange(int(good.sum()))
    kf_ids = [np.full(n, -1, np.int32) for n in n_kp]
    sel = keep & good[track]
    for k_, p_, t_ in zip(kf[sel], kp[sel], track[sel]):
        kf_ids[k_][p_] = new_id[t_]
    model = SparseModel(
        "triangulated",
        X[good],
        n_obs[good].astype(np.int32),
        (err_sum[good] / np.maximum(n_obs[good], 1)).astype(np.float32),
        angle[good].astype(np.float32),
        kf_ids,
    )
    model.stats = {
        "source": "triangulated",
        "config": asdict(cfg),
        "n_keyframes": K,
        "n_pairs": len(pairs),
        "n_matches": int(n_matches),
        "n_verified_matches": len(edges_E2),
        "n_tracks": n_tracks,
        "n_points": model.n_points,
        "track_length_median": float(np.median(model.track_length_P)) if model.n_points else 0.0,
        "track_length_mean": float(np.mean(model.track_length_P)) if model.n_points else 0.0,
        "error_px_median": float(np.median(model.error_px_P)) if model.n_points else None,
        "angle_deg_median": float(np.median(model.angle_deg_P)) if model.n_points else None,
        **_per_keyframe_stats(kf_ids),
        "seconds_matching": t_match,
        "seconds_total": time.perf_counter() - t_start,
    }
    log.info(
        "triangulated %d points from %d keyframes (%d pairs, %d/%d matches verified): track length median %.0f, "
        "reprojection error median %.2f px, angle median %.1f deg, %.1f s",
        model.n_points, K, len(pairs), len(edges_E2), n_matches, model.stats["track_length_median"],
        model.stats["error_px_median"] or 0.0, model.stats["angle_deg_median"] or 0.0, model.stats["seconds_total"],
    )  # fmt: skip
    return model


def _per_keyframe_stats(kf_ids: list[np.ndarray]) -> dict:
    n = np.array([int((i >= 0).sum()) for i in kf_ids])
    return {
        "points_per_keyframe_median": float(np.median(n)) if len(n) else 0.0,
        "keyframes_with_fewer_than_25_points": int((n < 25).sum()),
    }


def depth_check(model: SparseModel, T_world_cam_K44: np.ndarray, depth_at_keypoints: Sequence[np.ndarray]) -> dict:
    """Triangulated points against reference depth (e.g. the renderer's): for every keypoint linked to
    a point and with a valid reference depth at that keypoint, the distance (metres) between the point
    and the point moved along its own viewing ray to the reference depth, and the relative depth
    error |z_point - z_ref| / z_ref (the reprojection error is measured separately)."""
    dist, rel = [], []
    for k, ids in enumerate(model.kf_point_ids):
        z_ref = np.asarray(depth_at_keypoints[k], np.float64)
        ok = (ids >= 0) & np.isfinite(z_ref) & (z_ref > 0)
        if not ok.any():
            continue
        T_cw = invert_T(T_world_cam_K44[k])
        p = model.xyz_P3[ids[ok]] @ T_cw[:3, :3].T + T_cw[:3, 3]
        ray = p / p[:, 2:3]  # the point's own ray; the reference lifts the keypoint
        lifted = ray * z_ref[ok, None]
        dist.append(np.linalg.norm(p - lifted, axis=1))
        rel.append(np.abs(p[:, 2] - z_ref[ok]) / z_ref[ok])
    if not dist:
        return {"n": 0}
    d, r = np.concatenate(dist), np.concatenate(rel)
    return {
        "n": len(d),
        "distance_m_median": float(np.median(d)),
        "distance_m_p90": float(np.percentile(d, 90)),
        "relative_depth_error_median": float(np.median(r)),
        "relative_depth_error_p90": float(np.percentile(r, 90)),
        "fraction_within_5_percent": float(np.mean(r <= 0.05)),
    }
