"""Checks of a query image before any localizer sees it: is there anything to localize from?

A localizer asked about a black frame, a frame of pure noise or a 1x1 image still returns its
best guess (retrieval always has a top-1); these checks stop such frames first with a reason, so
they are never published as LOCALIZED. They look only at the pixels, never at the map or model:

- size: at least ``MIN_SIDE_PX`` pixels on each side;
- blank: the spread of grey values (99th - 1st percentile) is at most ``BLANK_SPREAD`` levels of
  255 (a covered lens, a black or saturated frame, an uninitialised buffer);
- noise: neighbouring pixels of a camera image are correlated (optics blur every edge over more
  than a pixel). The correlation coefficient of horizontally / vertically adjacent grey values,
  measured on scikit-image's photographs resized with INTER_AREA: 0.93-0.99 at 640x480, 0.82-0.96
  at 64x48, 0.68-0.92 at 32x24; a dim frame (10 % of the light) with sensor noise of sigma 3: 0.87;
  a sparse star field: 0.89 at 640x480 but 0.34 at 64x48 and 0.18 at 32x24. Independent noise
  (uniform, Gaussian, grey, after JPEG q50-95) gives -0.08 to 0.03. A frame with both below
  ``NOISE_MAX_CORRELATION`` is refused as noise (a broken sensor or link).
"""

from __future__ import annotations

import numpy as np

MIN_SIDE_PX = 16
BLANK_SPREAD = 2.0
NOISE_MAX_CORRELATION = 0.25


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def query_image_problem(image_rgb_HW3: np.ndarray) -> str | None:
    """Why this RGB uint8 image cannot be localized (one line), or None when it can be tried."""
    img = np.asarray(image_rgb_HW3)
    h, w = img.shape[:2]
    if h < MIN_SIDE_PX or w < MIN_SIDE_PX:
        return f"image is {w}x{h} pixels; need at least {MIN_SIDE_PX}x{MIN_SIDE_PX}"
    # grey on a grid of at most ~256x256 samples: cheap at any resolution, and enough for statistics
    step = max(1, min(h, w) // 256)
    grey = img[::step, ::step].astype(np.float32).mean(axis=2) if img.ndim == 3 else img[::step, ::step]
    lo, hi = np.percentile(grey, [1, 99])
    if hi - lo <= BLANK_SPREAD:
        return f"image is blank (grey values {lo:.0f}-{hi:.0f} of 255): covered lens, no light, or a broken camera"
    # adjacent pixels of the FULL-resolution image (subsampling would decorrelate them)
    g = img[: min(h, 512), : min(w, 512)].astype(np.float32)
    g = g.mean(axis=2) if g.ndim == 3 else g
    r_h = _corr(g[:, :-1], g[:, 1:])
    r_v = _corr(g[:-1, :], g[1:, :])
    if max(r_h, r_v) < NOISE_MAX_CORRELATION:
        return (
            f"image looks like noise (correlation of adjacent pixels {r_h:.2f} horizontally, {r_v:.2f} "
            f"vertically; camera images have > {NOISE_MAX_CORRELATION}): a broken sensor or link"
        )
    return None
