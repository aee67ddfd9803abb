"""The relpose localizer: retrieval -> relative poses -> pose-hypothesis filtering (paper 003).

``RelposeLocalizer.localize`` per query image:

1. resize to the map's processing size (intrinsics scaled), global descriptor, faiss search (only
   keyframes within ``retrieval.prior_radius_m`` of the prior when a prior is given and the radius
   is set), reference selection with the spacing rule [a, b];
2. the configured estimator (RELPOSE_ESTIMATORS) gives T_q_r for each reference;
3. :func:`hypotheses.filter_hypotheses` turns them into T_world_cam + 6x6 covariance (metric
   PnP estimates are hypotheses too); too few agreeing references -> the top retrieved pose
   (``filtering.fallback: top1``, paper) or NOT_LOCALIZED (``reject``);
4. metric case (map depth): the pose is re-estimated by ONE PnP over the 2D-3D inliers of all
   agreeing references (``joint_pnp: true``), the filter having removed the disagreeing ones.

Stage timings (seconds) in ``LocalizationResult.stage_seconds``: retrieval, features, matching,
geometry, filtering, total. ``num_inliers`` is the sum of feature inliers of the inlier references;
``extras`` holds ``inlier_references``, ``fallback``, ``metric`` and ``retrieval_similarity``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from ...config import deep_merge
from ...geometry import PinholeCamera
from ..base import LocalizationResult, Localizer, Status, check_query_image
from .base import RelPoseEstimate
from .calibration import MapCalibration
from .confidence import DecisionConfig, Evidence, coverage_fraction, decide, sigmas
from .hypotheses import FilterConfig, Observation, filter_hypotheses, metric_agreement
from .mapping import build_estimator, check_map_integrity, load_keyframes
from .retrieval import DescriptorIndex, RetrievalConfig, select_references

log = logging.getLogger(__name__)


class RelposeLocalizer(Localizer):
    """Loads a relpose map artifact (``visloc map build``); ``overrides`` patch its config (e.g.
    ``{"filtering": {"enabled": False}}`` for the paper's ablation)."""

    def __init__(self, artifact_dir: str | Path, device: str = "cpu", overrides: dict | None = None) -> None:
        from ...models.descriptors import load_descriptor

        self.artifact_dir = Path(artifact_dir)
        self.meta = json.loads((self.artifact_dir / "artifact.json").read_text())
        if self.meta.get("kind") != "relpose":
            raise ValueError(f"{self.artifact_dir} is a {self.meta.get('kind')!r} artifact, not relpose")
        check_map_integrity(self.artifact_dir, self.meta)
        cfg = yaml.safe_load((self.artifact_dir / "config.yaml").read_text())
        self.cfg = deep_merge(cfg, overrides)
        if self.cfg["estimator"]["name"] != self.meta["estimator"]:
            raise ValueError(
                f"this map caches features for estimator {self.meta['estimator']!r}; "
                f"build another map for {self.cfg['estimator']['name']!r}"
            )
        self.device = device
        self.image_size = tuple(self.meta["image_size"]) if self.meta.get("image_size") else None
        self.retrieval_cfg = RetrievalConfig.from_dict(self.cfg["retrieval"])
        self.filter_cfg = FilterConfig.from_dict(self.cfg["filtering"])
        self.decision_cfg = DecisionConfig.from_dict(self.cfg.get("decision"))
        self.calibration = MapCalibration.load(self.artifact_dir)
        if self.decision_cfg.calibrate:
            self.decision_cfg = self.calibration.apply_thresholds(self.decision_cfg)
        self.descriptor = load_descriptor(self.artifact_dir / "descriptor", device)
        rc = self.retrieval_cfg
        self.index = DescriptorIndex.load(self.artifact_dir / "index.faiss", self.descriptor_matrix).configure(
            rc.hnsw_ef_search, rc.ivf_nprobe, rc.rerank
        )
        self.keyframes = load_keyframes(self.artifact_dir)
        if self.index.size != len(self.keyframes):
            raise ValueError(
                f"{self.artifact_dir}: index has {self.index.size} rows for {len(self.keyframes)} keyframes"
            )
        self.centers_N3 = np.stack([kf.T_world_cam[:3, 3] for kf in self.keyframes])
        est_cfg = dict(self.cfg["estimator"])
        ckpt = est_cfg.get("checkpoint")
        if ckpt and not Path(ckpt).is_absolute() and (self.artifact_dir / ckpt).exists():
            est_cfg["checkpoint"] = str(self.artifact_dir / ckpt)  # copied into the artifact by map build
        self.estimator = build_estimator(est_cfg, device)
        self.method = f"relpose/{self.estimator.name}"
        # Retrieval by VLAD of the same XFeat features the estimator matches: extract them once.
        self.shared_features = (
            self.descriptor.name == "xfeat_vlad"
            and self.estimator.name == "xfeat"
            and int(self.descriptor.cfg["top_k"]) == self.estimator.cfg.top_k
            and float(self.descriptor.cfg["detection_threshold"]) == self.estimator.cfg.detection_threshold
        )
        log.info("relpose map %s: %d keyframes, %s", self.artifact_dir, len(self.keyframes), self.method)

    @property
    def descriptor_matrix(self) -> np.ndarray:
        """(K, D) global descriptors of the keyframes (descriptors.npy, memory-mapped)."""
        if getattr(self, "_descriptor_matrix", None) is None:
            self._descriptor_matrix = np.load(self.artifact_dir / "descriptors.npy", mmap_mode="r")
        return self._descriptor_matrix

    @property
    def uses_semantics(self) -> bool:
        """True when the estimator takes the query's class map (the learned one with BiasNet)."""
        return bool(getattr(self.estimator, "uses_semantics", False))

    def _prepare(self, image_rgb_HW3: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, PinholeCamera]:
        img = check_query_image(image_rgb_HW3, camera)
        if self.image_size is not None and self.image_size != (camera.width, camera.height):
            img = cv2.resize(img, self.image_size, interpolation=cv2.INTER_AREA)
            camera = camera.resized(*self.image_size)
        return img, camera

    def retrieve(
        self, image_rgb_HW3: np.ndarray, prior: np.ndarray | None = None, global_descriptor: np.ndarray | None = None
    ) -> tuple[list[int], np.ndarray]:
        """Selected keyframe indices (spacing rule) and the similarity of each, for a prepared image."""
        rc = self.retrieval_cfg
        q = self.descriptor.describe(image_rgb_HW3) if global_descriptor is None else global_descriptor
        allowed = None
        if prior is not None and rc.prior_radius_m is not None:
            p = np.asarray(prior, float)
            if p.shape == (4, 4) and np.all(np.isfinite(p)):
                allowed = np.linalg.norm(self.centers_N3 - p[:3, 3], axis=1) <= rc.prior_radius_m
                if not allowed.any():
                    log.info("no keyframe within %.2f m of the prior: searching the whole map", rc.prior_radius_m)
                    allowed = None
        idx, sims = self.index.search(q, rc.num_candidates, allowed)
        chosen = select_references(idx, self.centers_N3, rc.num_references, rc.spacing_m, rc.fill)
        sim_of = dict(zip(idx.tolist(), sims.tolist()))
        return chosen, np.array([sim_of[i] for i in chosen])

    def _metric_pose(self, ests: list, inlier_mask: np.ndarray, cam: PinholeCamera, T_filter: np.ndarray):
        """The final metric pose and its 2D-3D inliers: ONE pose refined over the inliers of all agreeing
        metric references (they share the world frame; ``joint_pnp``), or the agreeing reference's own PnP.
        Returns (T_world_cam, inlier query points (normalised), their world points, number of 2D-3D
        matches of the agreeing references, joint PnP used?)."""
        from ...geometry import invert_T
        from .solvers import refine_pnp

        agree = [e for e, m in zip(ests, inlier_mask) if m and e.metric and e.points2d_query_N2 is not None]
        n_matches = int(sum(e.num_inliers / max(e.confidence, 1e-9) for e in agree))  # confidence = inliers / matches
        if not agree:
            return T_filter, np.zeros((0, 2)), np.zeros((0, 3)), 0, False
        x = np.concatenate([e.points2d_query_N2 for e in agree])
        X = np.concatenate([e.points3d_world_N3 for e in agree])
        thr_px = float(self.cfg["estimator"].get("pnp_threshold_px", 3.0))
        f = 0.5 * (cam.fx + cam.fy)
        if len(agree) >= 2 and self.cfg.get("joint_pnp", True):
            # every match is an inlier of an agreeing reference's PnP: refine the filter's pose on all of
            # them at once (no second RANSAC), then keep those the refined pose reprojects within the bound
            T_cw = refine_pnp(x, X, invert_T(T_filter), thr_px / f)
            p = X @ T_cw[:3, :3].T + T_cw[:3, 3]
            err = np.linalg.norm(p[:, :2] / np.maximum(p[:, 2:], 1e-9) - x, axis=1) * f
            ok = (p[:, 2] > 0) & (err <= thr_px)
            if ok.sum() >= 0.5 * len(x):
                return invert_T(T_cw), x[ok], X[ok], n_matches, True
        if len(agree) == 1:  # the filter's pose is this reference's PnP pose
            return T_filter, agree[0].points2d_query_N2, agree[0].points3d_world_N3, n_matches, False
        # the filter's pose (mean of the agreeing centres): its inliers are those it reprojects well
        T_cw = invert_T(T_filter)
        p = X @ T_cw[:3, :3].T + T_cw[:3, 3]
        err = np.linalg.norm(p[:, :2] / np.maximum(p[:, 2:], 1e-9) - x, axis=1) * f
        ok = (p[:, 2] > 0) & (err <= thr_px)
        return T_filter, x[ok], X[ok], n_matches, False

    def _evidence(self, ests, res, x_in, X_in, T_world_cam, n_matches, cam, query_kp) -> tuple[Evidence, float]:
        """Evidence of the final pose (confidence.py) and the RMS reprojection error (normalised units)."""
        from ...geometry import invert_T

        n_agree = int(res.inlier_mask.sum())
        if res.metric:
            # one inlier per query keypoint (references may match the same keypoint to several points)
            x_u = np.unique(np.round(x_in, 9), axis=0) if len(x_in) else x_in
            T_cw = invert_T(T_world_cam)
            p = X_in @ T_cw[:3, :3].T + T_cw[:3, 3]
            r = p[:, :2] / np.maximum(p[:, 2:], 1e-9) - x_in if len(x_in) else np.zeros((0, 2))
            rms = float(np.sqrt(np.mean(np.sum(r * r, axis=1)))) if len(r) else float("nan")
            uv = np.c_[x_u[:, 0] * cam.fx + cam.cx, x_u[:, 1] * cam.fy + cam.cy] if len(x_u) else np.zeros((0, 2))
            n_in = len(x_u)
            ratio = n_in / n_matches if n_matches else 0.0
            cov = coverage_fraction(uv, query_kp, cam)
        else:
            n_in = int(sum(e.num_inliers for e, m in zip(ests, res.inlier_mask) if m))
            rms, ratio, cov = float("nan"), float("nan"), float("nan")
        f = 0.5 * (cam.fx + cam.fy)
        ev = Evidence(
            bool(res.metric), len(ests), int(sum(e.ok for e in ests)), n_agree, int(res.rival_inliers),
            float(res.rival_weight_ratio), int(n_in), float(ratio), float(cov),
            rms * f,
        )  # fmt: skip
        return ev, rms

    def localize(
        self,
        image_rgb_HW3: np.ndarray,
        camera: PinholeCamera,
        stamp_ns: int,
        prior: np.ndarray | None = None,
        query_semantic_HW: np.ndarray | None = None,
    ) -> LocalizationResult:
        """As :meth:`Localizer.localize`; ``query_semantic_HW`` (optional, our extension) is the query's
        class map for estimators that use semantics (the learned one with BiasNet)."""
        t_start = time.perf_counter()
        img, cam = self._prepare(image_rgb_HW3, camera)
        if query_semantic_HW is not None and self.image_size is not None:
            query_semantic_HW = cv2.resize(
                np.asarray(query_semantic_HW), self.image_size, interpolation=cv2.INTER_NEAREST
            )
        t_feat, kw, gdesc = 0.0, {}, None
        if hasattr(self.estimator, "extract"):  # local features, once (retrieval may share them)
            t0 = time.perf_counter()
            kw["query_features"] = self.estimator.extract(img)
            t_feat = time.perf_counter() - t0
            if self.shared_features:
                gdesc = self.descriptor.aggregate(kw["query_features"].descriptors_ND)
        t0 = time.perf_counter()
        chosen, sims = self.retrieve(img, prior, gdesc)
        t_retr = time.perf_counter() - t0
        stages = {"retrieval": t_retr, "features": t_feat, "matching": 0.0, "geometry": 0.0, "filtering": 0.0}
        if not chosen:
            return LocalizationResult.not_localized(self.method, "empty map", stage_seconds=stages)
        return self._localize_with(img, cam, chosen, sims, kw, query_semantic_HW, stages, t_start)

    def _localize_with(self, img, cam, chosen, sims, kw, query_semantic_HW, stages, t_start) -> LocalizationResult:
        """Relative poses to the chosen keyframes, hypothesis filtering, the decision (calibration.py
        calls this directly with its own reference choice)."""
        refs = [self.keyframes[i] for i in chosen]
        n_exit = self.filter_cfg.early_exit_agree
        sig = float(np.sqrt(self.calibration.scale_translation))  # calibrated PnP centre uncertainty
        if n_exit > 0 and "query_features" in kw:
            # one reference at a time; stop once enough metric estimates agree (FilterConfig.early_exit_agree)
            ests, obs = [], []
            for kf in refs:
                if len(ests) >= n_exit and metric_agreement(obs, self.filter_cfg) >= n_exit:
                    ests.append(RelPoseEstimate(np.eye(4), metric=False, ok=False))  # not estimated
                    obs.append(None)
                    continue
                (e,) = self.estimator.estimate(img, cam, [kf], query_semantic_HW, **kw)
                ests.append(e)
                obs.append(Observation.from_estimate(e, kf.T_world_cam, sig) if e.ok else None)
        else:
            ests = self.estimator.estimate(img, cam, refs, query_semantic_HW, **kw)
            obs = None
        for e in ests:
            for k, v in e.stage_seconds.items():
                stages[k] = stages.get(k, 0.0) + float(v)
        t0 = time.perf_counter()
        if obs is None:
            obs = [Observation.from_estimate(e, kf.T_world_cam, sig) if e.ok else None for e, kf in zip(ests, refs)]
        res = filter_hypotheses(obs, refs[0].T_world_cam, self.filter_cfg)
        ref_ids = [kf.key for kf in refs]
        scene = refs[0].key.split("/", 1)[0]
        extras = {
            "inlier_references": [kf.key for kf, m in zip(refs, res.inlier_mask) if m],
            "fallback": bool(res.fallback),
            "metric": bool(res.metric),
            "valid_estimates": int(sum(o is not None for o in obs)),
            "retrieval_similarity": [round(float(s), 4) for s in sims],
            "hypotheses": int(res.num_hypotheses),
            "joint_pnp": False,
        }
        common = {"reference_ids": ref_ids, "scene": scene, "stage_seconds": stages, "extras": extras}

        def done() -> None:
            stages["filtering"] = time.perf_counter() - t0
            stages["total"] = time.perf_counter() - t_start

        if not np.all(np.isfinite(res.T_world_cam)):  # no hypothesis and fallback: reject
            done()
            return LocalizationResult.not_localized(self.method, res.reason or "no pose", **common)
        if res.fallback:  # filtering.fallback: top1 (paper 003): published, flagged, zero confidence
            done()
            return LocalizationResult(
                res.T_world_cam, res.covariance_66, Status.LOCALIZED, self.method, confidence=0.0, num_inliers=0,
                status_reason=f"fallback to the top retrieved keyframe pose: {res.reason}", **common,
            )  # fmt: skip
        T, cov = res.T_world_cam, res.covariance_66
        x_in = X_in = np.zeros((0, 3))
        n_matches = 0
        if res.metric:
            T, x_in, X_in, n_matches, extras["joint_pnp"] = self._metric_pose(ests, res.inlier_mask, cam, T)
        qf = kw.get("query_features")
        ev, rms = self._evidence(ests, res, x_in, X_in, T, n_matches, cam, qf.keypoints_N2 if qf is not None else None)
        if res.metric and len(x_in) >= 6:
            cov = self.calibration.metric_covariance(T, x_in, X_in, rms, cam)
        else:
            cov = self.calibration.scale_covariance(cov, metric=False)
        ev.sigma_position_m, ev.sigma_rotation_deg = sigmas(cov)
        ok, why, conf = decide(ev, self.decision_cfg)
        extras["evidence"] = ev.to_dict()
        done()
        if not ok:
            extras["T_world_cam_refused"] = T.tolist()
            return LocalizationResult.not_localized(self.method, why, confidence=conf, num_inliers=ev.n_inliers,
                                                    **common)  # fmt: skip
        return LocalizationResult(
            T, cov, Status.LOCALIZED, self.method, confidence=conf, num_inliers=ev.n_inliers, **common
        )


def load_relpose_localizer(artifact_dir: Path, device: str = "cpu") -> Localizer:
    return RelposeLocalizer(artifact_dir, device)
