"""Views of a scene at the field's resolution: loading them from a dataset, rendering them,
scoring renders against the real images (PSNR, depth error, class accuracy), contact sheets.

Metrics (per view, then pooled):
- PSNR = 10 log10(1 / MSE) of RGB in [0, 1], averaged over views;
- depth: on pixels with a valid measured depth, |rendered surface depth - measured| in metres
  (rendered surface depth = expected depth / opacity, camera-frame z), pooled over all pixels of
  all views: median, mean, and the mean relative error |dz| / z;
- classes (when the dataset has class maps): pixel accuracy of the arg max of the rendered logits,
  and the mean IoU over the classes present in the ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ...atomic import write_bytes
from ...data.layout import Dataset, FrameRecord
from ...data.synth.preview import colorize_classes, colorize_depth
from ...geometry import PinholeCamera

log = logging.getLogger(__name__)


@dataclass
class View:
    """One camera at the field's resolution, with what the dataset measured there (if anything)."""

    name: str
    T_world_cam: np.ndarray  # (4, 4)
    camera: PinholeCamera
    rgb: np.ndarray | None = None  # uint8 (H, W, 3)
    depth: np.ndarray | None = None  # float32 (H, W) metres, 0 = invalid
    classes: np.ndarray | None = None  # uint8 (H, W)


def depth_ceiling_m(dataset: Dataset) -> float:
    """Depth at the uint16 ceiling of the layout: such pixels are clipped, not measured."""
    return 65535.0 / dataset.depth_scale


def load_view(
    dataset: Dataset, frame: FrameRecord, width: int, height: int, depth: bool = True, classes: bool = True
) -> View:
    """Resize the frame's images to (width, height) (area for RGB, nearest for depth and classes)."""
    cam = frame.camera.resized(width, height)
    rgb = cv2.resize(dataset.load_rgb(frame), (width, height), interpolation=cv2.INTER_AREA)
    d = c = None
    if depth and frame.depth:
        d = cv2.resize(dataset.load_depth(frame), (width, height), interpolation=cv2.INTER_NEAREST)
        d = np.where(d >= depth_ceiling_m(dataset) - 1e-6, 0.0, d).astype(np.float32)
    if classes and frame.semantic:
        c = cv2.resize(dataset.load_semantic(frame), (width, height), interpolation=cv2.INTER_NEAREST)
    return View(frame.key, frame.T_world_cam.copy(), cam, rgb, d, c)


@torch.no_grad()
def render_view(model, view: View, chunk: int = 8192) -> dict[str, np.ndarray]:
    """Render one view: ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W) surface depth in metres
    (0 where opacity < 0.5: nothing in the box), ``classes`` uint8 (H, W) (if the field has classes),
    ``acc`` float32 opacity."""
    dev = model.aabb.device
    T = torch.as_tensor(view.T_world_cam, dtype=torch.float32, device=dev)
    K = torch.as_tensor(view.camera.K, dtype=torch.float32, device=dev)
    r = model.render_camera(T, K, view.camera.width, view.camera.height, chunk=chunk)
    acc = r["acc"].cpu().numpy()
    depth = (r["depth"] / r["acc"].clamp_min(1e-6)).cpu().numpy()
    out = {
        "rgb": (r["rgb"].clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8),
        "depth": np.where(acc >= 0.5, depth, 0.0).astype(np.float32),
        "depth_any": depth.astype(np.float32),
        "acc": acc.astype(np.float32),
    }
    if "semantic" in r:
        out["classes"] = r["semantic"].argmax(-1).cpu().numpy().astype(np.uint8)
    return out


def score_views(views: list[View], renders: list[dict]) -> dict:
    """Metrics of renders against the views' measurements (module docstring); keys are absent when
    the views have no such measurement."""
    psnr, dz, dz_rel, opac, hit, tot = [], [], [], [], 0, 0
    conf: dict[tuple[int, int], int] = {}
    for v, r in zip(views, renders, strict=True):
        if v.rgb is not None:
            mse = np.mean((v.rgb.astype(np.float64) / 255.0 - r["rgb"].astype(np.float64) / 255.0) ** 2)
            psnr.append(10.0 * np.log10(1.0 / max(mse, 1e-10)))
        if v.depth is not None:
            m = v.depth > 0
            err = np.abs(r["depth_any"][m].astype(np.float64) - v.depth[m])
            dz.append(err)
            dz_rel.append(err / v.depth[m])
            opac.append(r["acc"][m])
        if v.classes is not None and "classes" in r:
            hit += int((r["classes"] == v.classes).sum())
            tot += v.classes.size
            pairs, counts = np.unique(
                np.stack([v.classes.ravel(), r["classes"].ravel()]).astype(np.int64), axis=1, return_counts=True
            )
            for (g, p), n in zip(pairs.T, counts, strict=True):
                conf[(int(g), int(p))] = conf.get((int(g), int(p)), 0) + int(n)
    out: dict = {"n_views": len(views)}
    if psnr:
        out["psnr_db"] = float(np.mean(psnr))
        out["psnr_db_min"] = float(np.min(psnr))
    if dz:
        e, er = np.concatenate(dz), np.concatenate(dz_rel)
        if e.size:
            out.update(
                depth_median_abs_m=float(np.median(e)),
                depth_mean_abs_m=float(np.mean(e)),
                depth_mean_rel=float(np.mean(er)),
                depth_within_5pct=float(np.mean(er < 0.05)),
                depth_pixels=int(e.size),
                opacity_median=float(np.median(np.concatenate(opac))),  # ~1: solid surfaces where depth was measured
            )
    if tot:
        out["class_accuracy"] = hit / tot
        ious = {}
        for g in sorted({g for g, _ in conf}):
            inter = conf.get((g, g), 0)
            union = sum(n for (a, b), n in conf.items() if a == g or b == g)
            ious[g] = inter / union if union else 0.0
        out["class_iou"] = {str(k): float(v) for k, v in ious.items()}
        out["class_miou"] = float(np.mean(list(ious.values())))
    return out


def render_and_score(model, views: list[View], desc: str = "render", progress: bool = True) -> tuple[list, dict]:
    renders = [render_view(model, v) for v in tqdm(views, desc=desc, unit="view", disable=not progress)]
    return renders, score_views(views, renders)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(
    views: list[View], renders: list[dict], path: str | Path, title: str, depth_range: tuple[float, float]
) -> Path:
    """PNG, one row per view: real | rendered colour | rendered classes | rendered depth (| real
    depth when measured). Same colour scales as `visloc synth --preview` (classes: fixed palette;
    depth: TURBO on log depth, black = nothing rendered). Written atomically."""
    rows = []
    for v, r in zip(views, renders, strict=True):
        h, w = r["rgb"].shape[:2]
        blank = np.zeros((h, w, 3), np.uint8)
        cells = [
            _label(v.rgb if v.rgb is not None else blank, "real"),
            _label(r["rgb"], "rendered"),
            _label(colorize_classes(r["classes"]) if "classes" in r else blank, "classes"),
            _label(colorize_depth(r["depth"], *depth_range), "depth"),
        ]
        if v.depth is not None:
            cells.append(_label(colorize_depth(v.depth, *depth_range), "real depth"))
        sep = np.full((h, 2, 3), 60, np.uint8)
        row = []
        for c in cells:
            row += [c, sep]
        rows.append(np.concatenate(row[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    head = np.full((18, width, 3), 30, np.uint8)
    cv2.putText(head, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    sheet = np.concatenate([head] + rows)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the contact sheet {path}")
    write_bytes(path, png.tobytes())
    return Path(path)
