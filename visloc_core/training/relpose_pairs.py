"""Image pairs with overlapping views for training the relative-pose network (paper 003 / EssNet).

A pair (q, r) is kept when the camera centres are between ``min_distance_m`` and
``max_distance_m`` apart and the optical axes differ by at most ``max_angle_deg``: views that
overlap, with a baseline long enough for the translation direction (and so E) to be defined.

Label convention (visloc_core/localizers/relpose/base.py): ``T_q_r = relative_pose(T_world_r,
T_world_q)`` maps r-camera points into q; ``E_q_r = [t/|t|]x R`` so that ``x_q^T E x_r = 0``.
E lives in normalised image coordinates, so resizing and cropping the images does not change it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..data.layout import Dataset, FrameRecord
from ..data.torch_dataset import ImageTransform, apply_geometry
from ..geometry import camera_center, relative_pose
from ..geometry.torch_ops import essential_from_relative_pose

logger = logging.getLogger(__name__)


@dataclass
class PairSampling:
    """Which frame pairs count as overlapping views."""

    max_distance_m: float = 1.5  # camera centres at most this far apart
    min_distance_m: float = 0.05  # and at least this far (E is undefined for a pure rotation)
    max_angle_deg: float = 45.0  # angle between the optical axes (z of the cameras)
    max_pairs: int = 2000  # random subset of the eligible pairs (0 = all)
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: dict, max_pairs_key: str = "max_pairs") -> PairSampling:
        return cls(
            max_distance_m=float(cfg.get("max_distance_m", cls.max_distance_m)),
            min_distance_m=float(cfg.get("min_distance_m", cls.min_distance_m)),
            max_angle_deg=float(cfg.get("max_angle_deg", cls.max_angle_deg)),
            max_pairs=int(cfg.get(max_pairs_key, cls.max_pairs)),
            seed=int(cfg.get("seed", cls.seed)),
        )


def sample_pairs(
    queries: list[FrameRecord], refs: list[FrameRecord], s: PairSampling, same_set: bool = False
) -> list[tuple[int, int]]:
    """Index pairs (i into queries, j into refs) of overlapping views in the same scene.

    ``same_set``: queries and refs are the same list; then i != j and both orders are kept
    (the network is not symmetric in its inputs).
    """
    if not queries or not refs:
        return []
    c_q = camera_center(np.stack([f.T_world_cam for f in queries]))
    c_r = camera_center(np.stack([f.T_world_cam for f in refs]))
    z_q = np.stack([f.T_world_cam[:3, 2] for f in queries])
    z_r = np.stack([f.T_world_cam[:3, 2] for f in refs])
    scene_q = np.array([f.scene for f in queries])
    scene_r = np.array([f.scene for f in refs])
    cos_max = np.cos(np.deg2rad(s.max_angle_deg))
    pairs: list[tuple[int, int]] = []
    for i in range(len(queries)):  # rows one at a time: memory stays O(N) for big datasets
        d = np.linalg.norm(c_r - c_q[i], axis=1)
        ok = (d <= s.max_distance_m) & (d >= s.min_distance_m) & (z_r @ z_q[i] >= cos_max) & (scene_r == scene_q[i])
        if same_set:
            ok[i] = False
        pairs.extend((i, int(j)) for j in np.flatnonzero(ok))
    if s.max_pairs and len(pairs) > s.max_pairs:
        rng = np.random.default_rng(s.seed)
        keep = np.sort(rng.choice(len(pairs), s.max_pairs, replace=False))
        pairs = [pairs[k] for k in keep]
    return pairs


class RelPosePairDataset(torch.utils.data.Dataset):
    """Items (dicts of tensors) for one pair:

    - ``image_q``, ``image_r``: float32 (3, H, W) RGB in [0, 1]
    - ``semantic_q``, ``semantic_r``: int64 (H, W) class ids (-1 where the frame has no class map);
      only when ``with_semantic``
    - ``E``: float32 (3, 3) = [t/|t|]x R of ``T_q_r``; ``T_q_r``: float64 (4, 4)
    - ``key_q``, ``key_r``: frame keys
    """

    def __init__(
        self,
        dataset: Dataset,
        queries: list[FrameRecord],
        refs: list[FrameRecord],
        pairs: list[tuple[int, int]],
        transform: ImageTransform,
        with_semantic: bool = False,
        dilate_classes: list[int] | None = None,
        dilate_kernel: int = 7,
        seed: int = 0,
    ) -> None:
        if not pairs:
            raise ValueError(
                f"{dataset.root}: no image pairs with overlapping views; loosen pairs.max_distance_m / "
                "pairs.max_angle_deg (or check the split names)"
            )
        self.dataset, self.queries, self.refs, self.pairs = dataset, queries, refs, pairs
        self.transform = transform
        self.with_semantic = with_semantic
        self.dilate_classes = list(dilate_classes or [])
        self.dilate_kernel = dilate_kernel
        self.seed = seed
        self._epoch = 0
        # Decoded images are cached only when the transform is deterministic (no augmentation).
        self._deterministic = (
            transform.crop == "center"
            and transform.scale_jitter == 0
            and not any((transform.brightness, transform.contrast, transform.saturation, transform.hue))
        )
        self._cache: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, f: FrameRecord, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        if self._deterministic and f.key in self._cache:
            return self._cache[f.key]
        resized, box, _ = self.transform.geometry(f.camera, rng)
        size = (resized.width, resized.height)
        rgb = self.transform.color(apply_geometry(self.dataset.load_rgb(f), size, box, cv2.INTER_AREA), rng)
        sem = None
        if self.with_semantic:
            if f.semantic:
                raw = self.dataset.load_semantic(f)
                if self.dilate_classes:
                    from ..models.relpose.net import dilate_classes

                    raw = dilate_classes(raw, self.dilate_classes, self.dilate_kernel)
                sem = apply_geometry(raw, size, box, cv2.INTER_NEAREST).astype(np.int64)
            else:
                sem = np.full((self.transform.height, self.transform.width), -1, np.int64)
        out = (np.ascontiguousarray(rgb.transpose(2, 0, 1)), sem)
        if self._deterministic:
            self._cache[f.key] = out
        return out

    def __getitem__(self, k: int) -> dict:
        i, j = self.pairs[k]
        fq, fr = self.queries[i], self.refs[j]
        # Each image of the pair gets its own crop/jitter (as the paper's independent random crops).
        rng = np.random.default_rng((self.seed, self._epoch, k))
        img_q, sem_q = self._load(fq, rng)
        img_r, sem_r = self._load(fr, rng)
        T_q_r = relative_pose(fr.T_world_cam, fq.T_world_cam)
        T = torch.from_numpy(T_q_r)
        E = essential_from_relative_pose(T[None, :3, :3], T[None, :3, 3])[0]
        item = {
            "image_q": torch.from_numpy(img_q),
            "image_r": torch.from_numpy(img_r),
            "E": E.float(),
            "T_q_r": T,
            "key_q": fq.key,
            "key_r": fr.key,
        }
        if self.with_semantic:
            item["semantic_q"] = torch.from_numpy(sem_q)
            item["semantic_r"] = torch.from_numpy(sem_r)
        return item
