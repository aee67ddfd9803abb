"""The learned relative-pose estimator of paper 003, registered as ``learned`` in RELPOSE_ESTIMATORS.

Estimator config (the ``estimator`` section of a relpose map config)::

    name: learned
    checkpoint: PATH            # folder written by `visloc train config/models/relpose_net.yaml ...`
    missing_semantic: zeros     # BiasNet models only: 'zeros' (feed an all-zero one-hot map, i.e. only
                                # BiasNet's constant bias, with one warning) or 'error'
    feature_cache: 512          # reference feature maps kept in memory (LRU), 0 = none
    resolve: filter             # 'filter' (paper): the hypothesis filter picks among E's rotations and t signs;
                                # 'best_guess' (ours): hand it T_q_r below as resolved (cheirality_checked=True)

Per query, the query and every reference whose features are not cached go through the siamese
branch in ONE batched forward pass; the correlation/regression head then runs on all pairs at once.

Output convention (base.py): one :class:`RelPoseEstimate` per reference with ``E`` = the regressed
E_q_r projected to the essential manifold (SVD, singular values (1, 1, 0)), ``metric=False``,
``cheirality_checked=False`` (a regressed E has no correspondences to check cheirality with: the
hypothesis filter disambiguates the rotation from pairs of references, as paper 003 sec. 2.3;
``resolve: best_guess`` instead passes the best guess as resolved, True), and
``T_q_r`` the best single guess: the sign of the regressed E fixes the sign of t (the label is
[t/|t|]x R with the true t), and of the two rotations the one with the smaller angle is taken.
``confidence`` measures how close the raw output is to an essential matrix:
1 - (|s1 - s2| + s3) / s1 for its singular values s1 >= s2 >= s3, clipped to [0, 1].

Semantic maps: the network was trained with a segmentation source (our synthetic datasets give
exact class maps). At evaluation the query's class map comes from the dataset
(``query_semantic_HW``) and the references' from ``Keyframe.semantic_path``. On the robot there is
no segmentation source unless one is configured: a BiasNet model then gets zeros (see
``missing_semantic``), which is a domain shift; deploy the ``relpose_net_no_biasnet`` variant there.
The query camera's intrinsics are not an input of the network: it learns E for the intrinsics of
its training data (after resizing/cropping to its input size), as EssNet does.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch

from ...data.torch_dataset import ImageTransform, apply_geometry
from ...geometry import PinholeCamera, T_from_R_t
from ...models.relpose.checkpoint import load_relpose_net
from ...models.relpose.net import dilate_classes, pose_candidates, project_to_essential
from .base import RELPOSE_ESTIMATORS, Keyframe, RelPoseEstimate, RelPoseEstimator

logger = logging.getLogger(__name__)


def essential_confidence(singular_values: np.ndarray) -> float:
    s1, s2, s3 = (float(v) for v in singular_values)
    if not np.isfinite(s1) or s1 <= 1e-12:
        return 0.0
    return float(np.clip(1.0 - (abs(s1 - s2) + s3) / s1, 0.0, 1.0))


class LearnedRelPoseEstimator(RelPoseEstimator):
    """Regresses E_q_r with the paper's network for a batch of references (see module docstring)."""

    name = "learned"

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        missing_semantic: str = "zeros",
        feature_cache: int = 512,
        resolve: str = "filter",
    ) -> None:
        if missing_semantic not in ("zeros", "error"):
            raise ValueError(f"missing_semantic must be 'zeros' or 'error', got {missing_semantic!r}")
        if resolve not in ("filter", "best_guess"):
            raise ValueError(f"resolve must be 'filter' (paper) or 'best_guess', got {resolve!r}")
        self.resolve = resolve
        self.model, self.meta = load_relpose_net(checkpoint, device)
        self.device = device
        self.checkpoint = str(checkpoint)
        c = self.model.conf
        self.transform = ImageTransform(int(c["image_width"]), int(c["image_height"]), "center")
        self.use_semantic = bool(c["use_biasnet"])
        self.missing_semantic = missing_semantic
        self._warned_missing = False
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = int(feature_cache)

    # ------------------------------------------------------------------------------ preprocessing
    def _prepare(
        self, rgb_HW3: np.ndarray, semantic_HW: np.ndarray | None, what: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        img = np.asarray(rgb_HW3)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{what}: image must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        cam = PinholeCamera(img.shape[1], img.shape[0], 1.0, 1.0, img.shape[1] / 2, img.shape[0] / 2)
        resized, box, _ = self.transform.geometry(cam, np.random.default_rng(0))
        size = (resized.width, resized.height)
        x = apply_geometry(img, size, box, cv2.INTER_AREA).astype(np.float32).transpose(2, 0, 1) / 255.0
        sem = None
        if self.use_semantic:
            if semantic_HW is None:
                if self.missing_semantic == "error":
                    raise ValueError(
                        f"{what}: this learned estimator uses BiasNet and needs a semantic class map; "
                        "give one, set missing_semantic: zeros, or use a model trained without BiasNet"
                    )
                if not self._warned_missing:
                    logger.warning("%s has no semantic map: BiasNet gets an all-zero class map (domain shift)", what)
                    self._warned_missing = True
                sem = np.full((self.transform.height, self.transform.width), -1, np.int64)
            else:
                s = np.asarray(semantic_HW)
                if s.shape[:2] != img.shape[:2]:
                    raise ValueError(f"{what}: semantic map {s.shape} does not match image {img.shape[:2]}")
                dil = list(self.model.conf["dilate_classes"])
                if dil:
                    s = dilate_classes(s, dil, int(self.model.conf["dilate_kernel"]))
                sem = apply_geometry(s, size, box, cv2.INTER_NEAREST).astype(np.int64)
        return np.ascontiguousarray(x), sem

    def _load_keyframe(self, kf: Keyframe) -> tuple[np.ndarray, np.ndarray | None]:
        img = cv2.imread(kf.image_path, cv2.IMREAD_COLOR) if kf.image_path else None
        if img is None:
            raise FileNotFoundError(f"keyframe {kf.key}: cannot read image {kf.image_path!r}")
        sem = None
        if self.use_semantic and kf.semantic_path:
            sem = cv2.imread(kf.semantic_path, cv2.IMREAD_UNCHANGED)
            if sem is None:
                raise FileNotFoundError(f"keyframe {kf.key}: cannot read semantic map {kf.semantic_path!r}")
        return self._prepare(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), sem, f"keyframe {kf.key}")

    @property
    def uses_semantics(self) -> bool:
        """True when the network has BiasNet: callers should pass the query's class map if they have one."""
        return self.use_semantic

    def _cache_key(self, kf: Keyframe) -> str:
        return f"{kf.key}|{kf.image_path}"

    # ---------------------------------------------------------------------------------- estimate
    @torch.no_grad()
    def predict_E(
        self, query_rgb_HW3: np.ndarray, refs: list[Keyframe], query_semantic_HW: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw network outputs E_q_r (N, 3, 3), one per reference, before projection."""
        x_q, s_q = self._prepare(query_rgb_HW3, query_semantic_HW, "query")
        todo = [kf for kf in refs if self._cache_key(kf) not in self._cache]
        imgs, sems = [x_q], [s_q]
        for kf in todo:
            x, s = self._load_keyframe(kf)
            imgs.append(x)
            sems.append(s)
        x_B = torch.from_numpy(np.stack(imgs)).to(self.device)
        s_B = torch.from_numpy(np.stack(sems)).to(self.device) if self.use_semantic else None
        f_B = self.model.features(x_B, s_B)  # one batched pass: query + uncached references
        new = dict(zip((self._cache_key(kf) for kf in todo), f_B[1:]))
        f_refs = torch.stack([new[k] if k in new else self._cache[k] for k in (self._cache_key(kf) for kf in refs)])
        if self._cache_size > 0:
            for k, f in new.items():
                self._cache[k] = f
            for kf in refs:
                self._cache.move_to_end(self._cache_key(kf))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        f_q = f_B[:1].expand(len(refs), -1, -1, -1)
        return self.model.head(f_q, f_refs).double().cpu().numpy()

    def estimate(
        self,
        query_rgb_HW3: np.ndarray,
        query_camera: PinholeCamera,
        refs: list[Keyframe],
        query_semantic_HW: np.ndarray | None = None,
    ) -> list[RelPoseEstimate]:
        if not refs:
            return []
        t0 = time.perf_counter()
        E_raw = self.predict_E(query_rgb_HW3, refs, query_semantic_HW)
        t_net = time.perf_counter() - t0
        out: list[RelPoseEstimate] = []
        for E in E_raw:
            t1 = time.perf_counter()
            if not np.all(np.isfinite(E)) or np.linalg.norm(E) < 1e-9:
                out.append(
                    RelPoseEstimate(np.eye(4), metric=False, ok=False, stage_seconds={"network": t_net / len(refs)})
                )
                continue
            E_proj, sv = project_to_essential(E)
            R, t = pose_candidates(E_proj)[0]
            out.append(
                RelPoseEstimate(
                    T_q_r=T_from_R_t(R, t),
                    metric=False,
                    E=E_proj,
                    confidence=essential_confidence(sv),
                    cheirality_checked=self.resolve == "best_guess",
                    stage_seconds={"network": t_net / len(refs), "decompose": time.perf_counter() - t1},
                )
            )
        return out


@RELPOSE_ESTIMATORS.register("learned")
def build_learned_estimator(cfg: dict, device: str = "cpu") -> LearnedRelPoseEstimator:
    """Factory (cfg, device): ``cfg['checkpoint']`` is the network checkpoint folder (required)."""
    if not cfg.get("checkpoint"):
        raise ValueError(
            "the learned relative-pose estimator needs 'checkpoint: PATH' (a folder made by "
            "`visloc train config/models/relpose_net.yaml --data DATASET --out PATH`)"
        )
    return LearnedRelPoseEstimator(
        cfg["checkpoint"],
        device=device,
        missing_semantic=str(cfg.get("missing_semantic", "zeros")),
        feature_cache=int(cfg.get("feature_cache", 512)),
        resolve=str(cfg.get("resolve", "filter")),
    )
