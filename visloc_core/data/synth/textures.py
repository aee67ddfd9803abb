"""Surface textures: real photographs shipped inside scikit-image (no network needed).

Only images stored in the scikit-image wheel are used (not the pooch-downloaded ones), so
rendering works offline. Every texture is centre-cropped to a square, resized to
``TEXTURE_SIZE`` and stacked into one RGB array (one layer per name, a GL texture array).
Grey photographs are replicated to RGB; surfaces colour them with a per-surface tint.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

TEXTURE_SIZE = 512

# name -> scikit-image loader name (all in skimage/data/, shipped in the wheel). "plain" is white.
TEXTURES: dict[str, str] = {
    "plain": "",
    "astronaut": "astronaut",
    "brick": "brick",
    "gravel": "gravel",
    "grass": "grass",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "camera": "camera",
    "text": "text",
    "moon": "moon",
    "page": "page",
    "coins": "coins",
    "hubble": "hubble_deep_field",
    "ihc": "immunohistochemistry",
    "retina": "retina",
    "cell": "cell",
    "logo": "logo",
    "clock": "clock",
    "colorwheel": "colorwheel",
    "horse": "horse",
}
TEXTURE_NAMES: list[str] = list(TEXTURES)  # layer index = position in this list


def _load(name: str) -> np.ndarray:
    """One texture as uint8 (TEXTURE_SIZE, TEXTURE_SIZE, 3) RGB."""
    loader = TEXTURES[name]
    if not loader:
        return np.full((TEXTURE_SIZE, TEXTURE_SIZE, 3), 235, np.uint8)
    import skimage.data

    img = np.asarray(getattr(skimage.data, loader)())
    if img.dtype == bool:
        img = np.where(img, 230, 40).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img * 255.0 if img.max() <= 1.0 else img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        # logo: composite its alpha onto white so transparent parts are not black
        a = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3] * a + 255.0 * (1 - a)).astype(np.uint8)
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0 : y0 + s, x0 : x0 + s]
    return cv2.resize(img, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=1)
def texture_stack() -> np.ndarray:
    """All textures as uint8 (L, TEXTURE_SIZE, TEXTURE_SIZE, 3); layer i is TEXTURE_NAMES[i]."""
    return np.stack([_load(n) for n in TEXTURE_NAMES])


def texture_layer(name: str) -> int:
    """Layer index of a texture name (KeyError with the known names otherwise)."""
    if name not in TEXTURES:
        raise KeyError(f"unknown texture {name!r}; known: {', '.join(TEXTURE_NAMES)}")
    return TEXTURE_NAMES.index(name)
