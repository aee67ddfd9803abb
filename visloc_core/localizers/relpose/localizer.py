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

from ...geometry import PinholeCamera
from ..base import LocalizationResult, Localizer, Status, check_query_image
from .hypotheses import FilterConfig, Observation, filter_hypotheses
from .mapping import build_estimator, check_map_integrity, load_keyframes, merge_config
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
        self.cfg = merge_config(cfg, overrides or {})
        if self.cfg["estimator"]["name"] != self.meta["estimator"]:
            raise ValueError(
                f"this map caches features for estimator {self.meta['estimator']!r}; "
                f"build another map for {self.cfg['estimator']['name']!r}"
            )
        self.device = device
        self.image_size = tuple(self.meta["image_size"]) if self.meta.get("image_size") else None
        self.retrieval_cfg = RetrievalConfig.from_dict(self.cfg["retrieval"])
        self.filter_cfg = FilterConfig.from_dict(self.cfg["filtering"])
        self.descriptor = load_descriptor(self.artifact_dir / "descriptor", device)
        self.index = DescriptorIndex.load(self.artifact_dir / "index.faiss")
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

    def _joint_pnp(self, ests: list, inlier_mask: np.ndarray, cam: PinholeCamera) -> np.ndarray | None:
        """One PnP over the 2D-3D inliers of all metric inlier references (they share the world
        frame), which uses every reference's points at once instead of averaging per-reference poses.
        Returns T_world_cam or None (too few points / failure)."""
        from ...geometry import invert_T
        from .solvers import solve_pnp

        x = [
            e.points2d_query_N2 for e, m in zip(ests, inlier_mask) if m and e.metric and e.points2d_query_N2 is not None
        ]
        X = [
            e.points3d_world_N3 for e, m in zip(ests, inlier_mask) if m and e.metric and e.points3d_world_N3 is not None
        ]
        if len(x) < 2:  # one reference: its own PnP already is the joint one
            return None
        thr_px = float(self.cfg["estimator"].get("pnp_threshold_px", 3.0))
        r = solve_pnp(np.concatenate(x), np.concatenate(X), thr_px / (0.5 * (cam.fx + cam.fy)), "poselib")
        if r is None or r[1].sum() < 0.5 * sum(len(a) for a in x):
            return None
        return invert_T(r[0])

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
        if self.shared_features:
            t0 = time.perf_counter()
            kw["query_features"] = self.estimator.extract(img)
            t_feat = time.perf_counter() - t0
            gdesc = self.descriptor.aggregate(kw["query_features"].descriptors_ND)
        chosen, sims = self.retrieve(img, prior, gdesc)
        t_retr = time.perf_counter() - t_start - t_feat
        stages = {"retrieval": t_retr, "features": t_feat, "matching": 0.0, "geometry": 0.0, "filtering": 0.0}
        if not chosen:
            return LocalizationResult.not_localized(self.method, "empty map", stage_seconds=stages)
        refs = [self.keyframes[i] for i in chosen]
        ests = self.estimator.estimate(img, cam, refs, query_semantic_HW, **kw)
        for e in ests:
            for k, v in e.stage_seconds.items():
                stages[k] = stages.get(k, 0.0) + float(v)
        t0 = time.perf_counter()
        obs = [Observation.from_estimate(e, kf.T_world_cam) if e.ok else None for e, kf in zip(ests, refs)]
        res = filter_hypotheses(obs, refs[0].T_world_cam, self.filter_cfg)
        joint = None
        if res.metric and not res.fallback and self.cfg.get("joint_pnp", True):
            joint = self._joint_pnp(ests, res.inlier_mask, cam)
            if joint is not None:
                res.T_world_cam = joint
        stages["filtering"] = time.perf_counter() - t0
        stages["total"] = time.perf_counter() - t_start
        ref_ids = [kf.key for kf in refs]
        scene = refs[0].key.split("/", 1)[0]
        extras = {
            "inlier_references": [kf.key for kf, m in zip(refs, res.inlier_mask) if m],
            "fallback": bool(res.fallback),
            "metric": bool(res.metric),
            "valid_estimates": int(sum(o is not None for o in obs)),
            "retrieval_similarity": [round(float(s), 4) for s in sims],
            "hypotheses": int(res.num_hypotheses),
            "joint_pnp": joint is not None,
        }
        if not np.all(np.isfinite(res.T_world_cam)):
            return LocalizationResult.not_localized(
                self.method, res.reason or "no pose", reference_ids=ref_ids, scene=scene, stage_seconds=stages,
                extras=extras,
            )  # fmt: skip
        n_feat = int(sum(e.num_inliers for e, m in zip(ests, res.inlier_mask) if m))
        conf = 0.0 if res.fallback else res.num_inliers / len(refs)
        reason = f"fallback to the top retrieved keyframe pose: {res.reason}" if res.fallback else ""
        return LocalizationResult(
            res.T_world_cam, res.covariance_66, Status.LOCALIZED, self.method, confidence=float(conf),
            num_inliers=n_feat, reference_ids=ref_ids, scene=scene, status_reason=reason, stage_seconds=stages,
            extras=extras,
        )  # fmt: skip


def load_relpose_localizer(artifact_dir: Path, device: str = "cpu") -> Localizer:
    return RelposeLocalizer(artifact_dir, device)
