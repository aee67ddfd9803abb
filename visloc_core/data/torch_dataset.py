"""A torch Dataset over the visloc layout, with resizing/cropping that keeps intrinsics right.

Items are dicts of tensors (no batch dimension; the DataLoader adds B):

- ``image``: float32 (3, H, W) RGB in [0, 1] (models apply their own normalisation)
- ``T_world_cam``: float64 (4, 4); ``position``: float32 (3,); ``quat_wxyz``: float32 (4,), w >= 0
- ``K``: float32 (3, 3) intrinsics of the returned image
- ``scene_id``: int64 index into ``dataset.scene_names``
- ``depth`` (1, H, W) metres and ``semantic`` (H, W) int64, when requested and present
- ``key``: str scene/sequence/name; ``stamp_ns``: int
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..geometry import PinholeCamera, position_quat_wxyz_from_T
from .layout import Dataset, FrameRecord


@dataclass
class ImageTransform:
    """Resize so the image covers (width, height), then crop to exactly that size.

    ``crop``: 'center' or 'random' (training augmentation). ``scale_jitter`` > 0 enlarges the
    resize by a random factor in [1, 1 + scale_jitter] before the crop (random zoom). Colour
    jitter (brightness, contrast, saturation, hue as fractions, torchvision-style) applies to
    the RGB image only. Intrinsics follow every geometric step exactly.
    """

    width: int
    height: int
    crop: str = "center"
    scale_jitter: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def geometry(
        self, cam: PinholeCamera, rng: np.random.Generator
    ) -> tuple[PinholeCamera, tuple[int, int, int, int], PinholeCamera]:
        """Returns (resized camera, crop box x0 y0 w h, final camera)."""
        s = max(self.width / cam.width, self.height / cam.height)
        if self.scale_jitter > 0:
            s *= 1.0 + rng.uniform(0.0, self.scale_jitter)
        rw, rh = max(self.width, round(cam.width * s)), max(self.height, round(cam.height * s))
        resized = cam.resized(rw, rh)
        if self.crop == "random":
            x0 = int(rng.integers(0, rw - self.width + 1))
            y0 = int(rng.integers(0, rh - self.height + 1))
        elif self.crop == "center":
            x0, y0 = (rw - self.width) // 2, (rh - self.height) // 2
        else:
            raise ValueError(f"crop must be 'center' or 'random', got {self.crop!r}")
        box = (x0, y0, self.width, self.height)
        return resized, box, resized.cropped(*box)

    def color(self, img_HW3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Colour jitter on uint8 RGB; returns float32 in [0, 1]."""
        x = img_HW3.astype(np.float32) / 255.0
        if self.brightness > 0:
            x = x * rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast > 0:
            m = x.mean()
            x = (x - m) * rng.uniform(1 - self.contrast, 1 + self.contrast) + m
        if self.saturation > 0:
            g = x.mean(axis=2, keepdims=True)
            x = (x - g) * rng.uniform(1 - self.saturation, 1 + self.saturation) + g
        if self.hue > 0:
            hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
            hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-self.hue, self.hue)) % 360.0
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return np.clip(x, 0.0, 1.0)


def apply_geometry(
    img: np.ndarray, size_wh: tuple[int, int], box: tuple[int, int, int, int], interpolation: int
) -> np.ndarray:
    out = cv2.resize(img, size_wh, interpolation=interpolation)
    x0, y0, w, h = box
    return out[y0 : y0 + h, x0 : x0 + w]


class PoseDataset(torch.utils.data.Dataset):
    """Frames of one split (or all) of a visloc dataset, optionally restricted to some scenes."""

    def __init__(
        self,
        data: str | Dataset,
        split: str | None,
        transform: ImageTransform,
        scenes: list[str] | None = None,
        condition: str | None = None,
        with_depth: bool = False,
        with_semantic: bool = False,
        seed: int = 0,
    ) -> None:
        self.dataset = data if isinstance(data, Dataset) else Dataset(data)
        self.scene_names = list(scenes) if scenes is not None else self.dataset.scenes
        self.frames: list[FrameRecord] = [
            f for f in self.dataset.frames(split, condition=condition) if f.scene in self.scene_names
        ]
        if not self.frames:
            raise ValueError(f"{self.dataset.root}: no frames in split {split!r} for scenes {self.scene_names}")
        self.transform = transform
        self.with_depth = with_depth
        self.with_semantic = with_semantic
        self.seed = seed
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation per epoch while staying deterministic."""
        self._epoch = epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict:
        f = self.frames[i]
        rng = np.random.default_rng((self.seed, self._epoch, i))
        resized, box, cam = self.transform.geometry(f.camera, rng)
        rgb = apply_geometry(self.dataset.load_rgb(f), (resized.width, resized.height), box, cv2.INTER_AREA)
        rgb = self.transform.color(rgb, rng)
        pos, q = position_quat_wxyz_from_T(f.T_world_cam)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "T_world_cam": torch.from_numpy(f.T_world_cam.copy()),
            "position": torch.from_numpy(pos.astype(np.float32)),
            "quat_wxyz": torch.from_numpy(q.astype(np.float32)),
            "K": torch.from_numpy(cam.K.astype(np.float32)),
            "scene_id": torch.tensor(self.scene_names.index(f.scene), dtype=torch.int64),
            "key": f.key,
            "stamp_ns": f.stamp_ns,
        }
        if self.with_depth and f.depth:
            d = apply_geometry(self.dataset.load_depth(f), (resized.width, resized.height), box, cv2.INTER_NEAREST)
            item["depth"] = torch.from_numpy(d[None].astype(np.float32))
        if self.with_semantic and f.semantic:
            s = apply_geometry(self.dataset.load_semantic(f), (resized.width, resized.height), box, cv2.INTER_NEAREST)
            item["semantic"] = torch.from_numpy(s.astype(np.int64))
        return item
