"""Data for APR training: splits, held-out validation blocks, per-scene pose normalisation.

Per-scene normalisation (stored in the artifact, undone by the localizer):
``position_normalised = (position - mean_scene) / scale_scene`` with ``mean_scene`` the mean
training camera centre (3 values, metres) and ``scale_scene`` ONE number: the RMS distance of the
training camera centres from that mean divided by sqrt(3) (i.e. the average per-axis std). A single
scale keeps the loss a Euclidean distance (per-axis stds would blow up an axis the camera barely
moves along, e.g. the height of a ground robot). Quaternions are not normalised.

Validation: either a named split (``data.val_split``), or blocks of ``val_block`` consecutive frames
held out of every training sequence, spread evenly so that ``val_fraction`` of the frames are held
out. Blocks (not single frames) keep the held-out frames from being near-copies of their training
neighbours; they still lie inside the mapped region, so errors on them are typically smaller than on
a new query sequence (see docs/apr.md, covariance calibration).
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from ..data.layout import Dataset, FrameRecord
from ..data.torch_dataset import ImageTransform, PoseDataset
from ..models.apr.artifact import SceneStats

log = logging.getLogger(__name__)


def holdout_blocks(n: int, fraction: float, block: int) -> np.ndarray:
    """Boolean mask (n,) holding out runs of ``block`` frames, evenly spread, ~``fraction`` of n.

    Sequences shorter than 2 blocks still give at least one held-out frame (if n >= 2)."""
    mask = np.zeros(n, dtype=bool)
    if n < 2:
        return mask
    block = max(1, min(block, n // 2))
    n_blocks = max(1, round(n * fraction / block))
    # centres evenly spaced, away from both ends so that both ends stay in training
    starts = np.linspace(0, n - block, n_blocks + 2)[1:-1].round().astype(int)
    for s in starts:
        mask[s : s + block] = True
    return mask


def scene_stats(
    name: str, description: str, frames: list[FrameRecord], margin_m: float, margin_fraction: float
) -> SceneStats:
    c_N3 = np.stack([f.T_world_cam[:3, 3] for f in frames])
    mean = c_N3.mean(axis=0)
    scale = float(np.sqrt(((c_N3 - mean) ** 2).sum(axis=1).mean() / 3.0))
    scale = max(scale, 1e-3)  # a static camera: avoid dividing by zero
    lo, hi = c_N3.min(axis=0), c_N3.max(axis=0)
    margin = np.maximum(margin_m, margin_fraction * (hi - lo))
    return SceneStats(name, description, mean, scale, lo - margin, hi + margin, len(frames))


class APRDataModule(pl.LightningDataModule):
    """Train/val loaders over a visloc dataset, plus the per-scene statistics (``self.scenes``)."""

    def __init__(self, cfg: dict, data_root: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_root = str(data_root)
        self.dataset = Dataset(data_root)
        d = cfg["data"]
        aug = d["augment"]
        self.train_transform = ImageTransform(d["image_width"], d["image_height"], **aug)
        self.val_transform = ImageTransform(d["image_width"], d["image_height"], crop="center")
        self._build()

    def _build(self) -> None:
        d, c = self.cfg["data"], self.cfg["calibration"]
        names = d["scenes"]
        if names is None:
            names = sorted({f.scene for f in self.dataset.frames(d["train_split"])})
        unknown = set(names) - set(self.dataset.scenes)
        if unknown:
            raise ValueError(
                f"data.scenes {sorted(unknown)} are not in {self.data_root} (scenes: {self.dataset.scenes})"
            )
        self.scene_names: list[str] = list(names)
        seed = int(self.cfg["train"]["seed"])
        extra = {"with_depth": bool(d["with_depth"]), "with_semantic": bool(d["with_semantic"]), "seed": seed}
        train_all = PoseDataset(self.dataset, d["train_split"], self.train_transform, self.scene_names, **extra)
        if d["val_split"] is None:
            # hold out blocks per sequence (frames are grouped by sequence, in time order)
            keep = np.zeros(len(train_all.frames), dtype=bool)
            seq_of = [f.scene + "/" + f.sequence for f in train_all.frames]
            for key in dict.fromkeys(seq_of):
                idx = np.array([i for i, k in enumerate(seq_of) if k == key])
                keep[idx] = ~holdout_blocks(len(idx), float(d["val_fraction"]), int(d["val_block"]))
            train_idx, val_idx = np.flatnonzero(keep), np.flatnonzero(~keep)
            val_all = PoseDataset(self.dataset, d["train_split"], self.val_transform, self.scene_names, **extra)
            self.train_set = Subset(train_all, train_idx.tolist())
            self.val_set = Subset(val_all, val_idx.tolist())
        else:
            self.train_set = Subset(train_all, list(range(len(train_all))))
            self.val_set = PoseDataset(self.dataset, d["val_split"], self.val_transform, self.scene_names, **extra)
        if len(self.val_set) == 0:
            raise ValueError("no validation frames: use longer sequences, a larger data.val_fraction or data.val_split")
        self.train_frames = [train_all.frames[i] for i in self.train_set.indices]
        self.scenes: list[SceneStats] = []
        for name in self.scene_names:
            fr = [f for f in self.train_frames if f.scene == name]
            if not fr:
                raise ValueError(f"scene {name!r} has no training frames in split {d['train_split']!r}")
            desc = str(self.dataset.scene_info(name).get("description", ""))
            self.scenes.append(
                scene_stats(name, desc, fr, float(c["region_margin_m"]), float(c["region_margin_fraction"]))
            )
        # the training camera as the network sees it (validation preprocessing); the localizer
        # compares query cameras against it (APR does not model intrinsics)
        _, _, cam_in = self.val_transform.geometry(self.train_frames[0].camera, np.random.default_rng(0))
        self.training_camera_input = cam_in.to_dict()
        log.info(
            "data %s: %d scene(s), %d training and %d validation frames, input %dx%d",
            self.data_root,
            len(self.scenes),
            len(self.train_set),
            len(self.val_set),
            d["image_width"],
            d["image_height"],
        )

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation per epoch (deterministically)."""
        ds = self.train_set.dataset if isinstance(self.train_set, Subset) else self.train_set
        ds.set_epoch(epoch)

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        d = self.cfg["data"]
        g = torch.Generator()
        g.manual_seed(int(self.cfg["train"]["seed"]))
        return DataLoader(
            ds,
            batch_size=int(d["batch_size"]),
            shuffle=shuffle,
            num_workers=int(d["num_workers"]),
            drop_last=shuffle and len(ds) > int(d["batch_size"]),  # no BatchNorm batches of 1
            generator=g if shuffle else None,
            persistent_workers=False,  # workers must see set_epoch()
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
