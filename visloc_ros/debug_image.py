"""The localizer's debug image: the query next to the map keyframe it was matched against.

Left: the query image as the node received it; right (relpose maps): the top retrieved keyframe, resized
to the query's height, its key and whether it was an inlier reference of the pose-hypothesis filter.
A banner on top says status, method, confidence, feature inliers and the reason; the border is coloured
by status (green LOCALIZED, orange REJECTED, red NOT_LOCALIZED). APR artifacts have no keyframes: the
query alone with the banner. RGB uint8 (H, W, 3).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from visloc_core.localizers.base import LocalizationResult, Status

BANNER_PX = 34
_STATUS_RGB = {Status.LOCALIZED: (30, 200, 60), Status.REJECTED: (255, 140, 0), Status.NOT_LOCALIZED: (230, 30, 30)}


@lru_cache(maxsize=8)
def _read_rgb(path: str) -> np.ndarray | None:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def keyframe_images(localizer) -> dict[str, str]:
    """key -> image path of a relpose map's keyframes ({} for localizers without keyframes)."""
    return {kf.key: kf.image_path for kf in getattr(localizer, "keyframes", []) if getattr(kf, "image_path", "")}


def _fit_height(img: np.ndarray, h: int) -> np.ndarray:
    if img.shape[0] == h:
        return img
    w = max(1, round(img.shape[1] * h / img.shape[0]))
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def compose(query_rgb: np.ndarray, result: LocalizationResult, keyframe_paths: dict[str, str]) -> np.ndarray:
    """The debug image of one localization (see the module docstring)."""
    q = np.ascontiguousarray(query_rgb[..., :3], dtype=np.uint8)
    h = q.shape[0]
    panels = [q]
    ref_note = ""
    top = result.reference_ids[0] if result.reference_ids else ""
    ref = _read_rgb(keyframe_paths[top]) if top in keyframe_paths else None
    if ref is not None:
        panels.append(np.full((h, 4, 3), 255, np.uint8))
        panels.append(_fit_height(ref, h))
        inlier = top in result.extras.get("inlier_references", [])
        ref_note = f" | ref {top} ({'inlier' if inlier else 'outlier'})"
    body = np.concatenate(panels, axis=1)
    scale = max(1, round(480 / max(body.shape[1], 1)))  # tiny test images: enlarge so the text is legible
    if scale > 1:
        body = cv2.resize(body, (body.shape[1] * scale, body.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    status = Status(result.status)
    colour = _STATUS_RGB.get(status, _STATUS_RGB[Status.NOT_LOCALIZED])
    banner = np.zeros((BANNER_PX, body.shape[1], 3), np.uint8)
    line1 = f"{status.name} {result.method} conf {result.confidence:.2f} inliers {result.num_inliers}{ref_note}"
    cv2.putText(banner, line1, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    if result.status_reason:
        cv2.putText(banner, result.status_reason[:110], (4, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 230, 230), 1)
    out = np.concatenate([banner, body], axis=0)
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), colour, 2)
    return out
