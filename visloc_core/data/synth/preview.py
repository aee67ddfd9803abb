"""A PNG contact sheet of sample frames per sequence/condition: RGB, semantic classes, depth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...atomic import write_bytes
from .spec import CLASSES

THUMB_W = 160
LABEL_W = 150

# One colour per class id (RGB), fixed so sheets of different runs compare.
PALETTE: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (174, 199, 232),
    2: (140, 86, 75),
    3: (220, 220, 220),
    4: (255, 127, 14),
    5: (214, 39, 40),
    6: (148, 103, 189),
    7: (31, 119, 180),
    8: (44, 160, 44),
    9: (188, 189, 34),
    10: (227, 119, 194),
}


def colorize_classes(class_HW: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) with PALETTE colours (unknown ids grey)."""
    lut = np.full((256, 3), 128, np.uint8)
    for k, c in PALETTE.items():
        lut[k] = c
    return lut[class_HW]


def colorize_depth(depth_HW: np.ndarray, near_m: float = 0.3, far_m: float = 60.0) -> np.ndarray:
    """uint8 RGB (H, W, 3): TURBO on log depth between ``near_m`` (red) and ``far_m`` (blue),
    the same scale for every thumbnail; no depth = black."""
    d = depth_HW.astype(np.float32)
    valid = d > 0
    t = np.log(np.clip(d, near_m, far_m) / near_m) / np.log(far_m / near_m)
    col = cv2.applyColorMap(np.clip((1.0 - t) * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    col = cv2.cvtColor(col, cv2.COLOR_BGR2RGB)
    col[~valid] = 0
    return col


def _thumb(img: np.ndarray, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    th = round(h * THUMB_W / w)
    return cv2.resize(img, (THUMB_W, th), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _label(text_lines: list[str], height: int, width: int = LABEL_W) -> np.ndarray:
    img = np.full((height, width, 3), 30, np.uint8)
    for k, t in enumerate(text_lines):
        cv2.putText(img, t, (6, 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (240, 240, 240), 1, cv2.LINE_AA)
    return img


def write_contact_sheet(
    samples: dict[str, list], path: str | Path, title: str = "", depth_range: tuple[float, float] = (0.3, 60.0)
) -> Path:
    """One row per sequence: its name and condition, then (RGB, classes, depth) of each sample.

    ``samples``: sequence name -> list of (condition, RenderOutput); ``depth_range``: metres mapped
    to the ends of the depth colour scale. Writes ``path`` (PNG) atomically."""
    rows = []
    n_cols = max((len(v) for v in samples.values()), default=0)
    for seq, items in samples.items():
        cells = []
        for _cond, fr in items:
            cells += [
                _thumb(fr.rgb_HW3),
                _thumb(colorize_classes(fr.class_HW), True),
                _thumb(colorize_depth(fr.depth_HW, *depth_range)),
            ]
        th = cells[0].shape[0]
        blank = np.zeros((th, THUMB_W, 3), np.uint8)
        cells += [blank] * (3 * n_cols - len(cells))
        sep = np.full((th, 2, 3), 60, np.uint8)
        row = [_label([seq, f"cond: {items[0][0]}"], th)]
        for c in cells:
            row += [sep, c]
        rows.append(np.concatenate(row, axis=1))
    if not rows:
        raise ValueError("no frames to put in the contact sheet")
    width = rows[0].shape[1]
    legend = np.full((40, width, 3), 30, np.uint8)
    cv2.putText(
        legend,
        f"{title}   columns: RGB | classes | depth ({depth_range[0]:g} m red .. {depth_range[1]:.0f} m blue, log)",
        (6, 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    x = 6
    for k, name in CLASSES.items():
        cv2.rectangle(legend, (x, 24), (x + 10, 34), PALETTE[k], -1)
        cv2.putText(legend, name, (x + 13, 34), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (230, 230, 230), 1, cv2.LINE_AA)
        x += 16 + 8 * len(name)
    sheet = np.concatenate([legend] + [np.concatenate([r, np.full((2, width, 3), 60, np.uint8)]) for r in rows])
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    return write_bytes(path, png.tobytes())
