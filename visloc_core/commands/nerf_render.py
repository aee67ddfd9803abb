"""``visloc nerf render ARTIFACT --out DIR (--data DATASET | --poses FILE)``: render a trained
radiance field (``visloc train config/models/nerf.yaml``) at given camera poses.

Poses come from either
- a dataset (``--data DATASET [--split S] [--condition C]``): the frames of the field's scene in
  that split (default: the held-out-free ``test`` split if present, else ``train``), with their
  intrinsics; the real images, depth and class maps are scored against the renders
  (``metrics.json``: PSNR, depth error, class accuracy; models/nerf/views.py) and shown in
  ``contact_sheet.png`` (real | rendered colour | classes | depth | real depth); or
- a CSV file (``--poses FILE``) with a header row and the columns ``name, tx, ty, tz, qw, qx, qy,
  qz``: T_world_cam (camera-to-world, OpenCV optical camera: x right, y down, z forward; metres;
  quaternion scalar first), the pose columns of a dataset's frames.csv, which is itself a valid
  file. Optional columns ``fx, fy, cx, cy, width, height`` give the intrinsics at that image size;
  without them the field's training camera is used.

Every view is rendered at ``--width`` x ``--height`` (default: the resolution of the artifact's
report; the intrinsics are scaled to it). Output (written to a temporary folder, renamed at the end):
``rgb/<name>.png``, ``classes/<name>.png`` (uint8 class ids; ``classes_color/`` with the fixed
palette), ``depth/<name>.png`` (uint16 millimetres of camera-frame z, 0 = nothing rendered), and
``poses.csv`` (what was rendered).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from . import positive_int

log = logging.getLogger(__name__)

POSE_COLUMNS = ["name", "tx", "ty", "tz", "qw", "qx", "qy", "qz"]
CAMERA_COLUMNS = ["fx", "fy", "cx", "cy", "width", "height"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="NeRF artifact folder (visloc train config/models/nerf.yaml)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset folder: render its frames of the field's scene and score them")
    src.add_argument("--poses", help="CSV of poses: name,tx,ty,tz,qw,qx,qy,qz[,fx,fy,cx,cy,width,height]")
    parser.add_argument("--split", default=None, help="dataset split (default: test if present, else train)")
    parser.add_argument("--condition", default=None, help="only sequences of this condition (e.g. day)")
    parser.add_argument("--every", type=positive_int, default=1, help="every N-th frame / pose")
    parser.add_argument("--max-views", type=positive_int, default=None, help="at most this many views (evenly spread)")
    parser.add_argument("--width", type=positive_int, default=None, help="render width (default: the report's)")
    parser.add_argument("--height", type=positive_int, default=None, help="render height")
    parser.add_argument("--sheet-views", type=positive_int, default=8, help="rows of the contact sheet")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def read_pose_csv(path: str | Path, default_camera) -> list:
    """Views (models/nerf/views.View, no measurements) from a pose CSV (module docstring)."""
    from ..geometry import PinholeCamera, T_from_position_quat_wxyz
    from ..models.nerf.views import View

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--poses {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        missing = [c for c in POSE_COLUMNS if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; need a header with {', '.join(POSE_COLUMNS)}")
        has_cam = all(c in cols for c in CAMERA_COLUMNS)
        views = []
        for i, r in enumerate(reader):
            try:
                q = np.array([float(r[k]) for k in ("qw", "qx", "qy", "qz")])
                if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
                    raise ValueError("quaternion must be finite and non-zero")
                T = T_from_position_quat_wxyz(
                    np.array([float(r[k]) for k in ("tx", "ty", "tz")]), q / np.linalg.norm(q)
                )
                if not np.isfinite(T).all():
                    raise ValueError("position must be finite")
                cam = default_camera
                if has_cam and r["fx"]:
                    cam = PinholeCamera.from_dict({k: r[k] for k in CAMERA_COLUMNS})
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}: row {i + 2} is malformed: {err}") from err
            views.append(View(str(r["name"]) or f"{i:06d}", T, cam))
    if not views:
        raise ValueError(f"{path} has no poses")
    return views


def _spread(items: list, every: int, max_n: int | None) -> list:
    items = items[::every]
    if max_n and len(items) > max_n:
        items = [items[i] for i in np.linspace(0, len(items) - 1, max_n).round().astype(int)]
    return items


def _file_name(name: str) -> str:
    return name.replace("/", "_")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_folder
    from ..data.layout import Dataset
    from ..data.synth.preview import colorize_classes
    from ..geometry import PinholeCamera, position_quat_wxyz_from_T
    from ..models.nerf.artifact import load_radiance_field
    from ..models.nerf.views import contact_sheet, load_view, render_and_score

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    model, meta = load_radiance_field(args.artifact, args.device)
    report_file = Path(args.artifact) / "report.json"
    res = json.loads(report_file.read_text()).get("resolution") if report_file.is_file() else None
    train_cam = PinholeCamera.from_dict(meta["camera"])
    w = args.width or (res[0] if res else train_cam.width)
    h = args.height or (res[1] if res else round(w * train_cam.height / train_cam.width))
    scored = args.data is not None
    if scored:
        ds = Dataset(args.data)
        split = args.split or ("test" if "test" in ds.manifest.get("splits", {}) else "train")
        frames = ds.frames(split, scene=meta["scene"], condition=args.condition)
        if not frames:
            raise ValueError(f"{args.data}: no frames of scene {meta['scene']!r} in split {split!r}")
        frames = _spread(frames, args.every, args.max_views)
        views = [load_view(ds, f, w, h) for f in frames]
    else:
        views = _spread(read_pose_csv(args.poses, train_cam), args.every, args.max_views)
        for v in views:
            v.camera = v.camera.resized(w, h)
    with torch.no_grad():  # scoped: switching autograd off for the process broke later pose gradients
        renders, metrics = render_and_score(model, views, "render")
    with atomic_folder(out, overwrite=args.overwrite) as tmp:
        for sub in ("rgb", "classes", "classes_color", "depth"):
            (tmp / sub).mkdir()
        rows = []
        for v, r in zip(views, renders, strict=True):
            name = _file_name(v.name)
            cv2.imwrite(str(tmp / "rgb" / f"{name}.png"), cv2.cvtColor(r["rgb"], cv2.COLOR_RGB2BGR))
            if "classes" in r:
                cv2.imwrite(str(tmp / "classes" / f"{name}.png"), r["classes"])
                cv2.imwrite(
                    str(tmp / "classes_color" / f"{name}.png"),
                    cv2.cvtColor(colorize_classes(r["classes"]), cv2.COLOR_RGB2BGR),
                )
            depth_mm = np.clip(np.round(r["depth"] * 1000.0), 0, 65535).astype(np.uint16)
            cv2.imwrite(str(tmp / "depth" / f"{name}.png"), depth_mm)
            t, q = position_quat_wxyz_from_T(v.T_world_cam)
            c = v.camera
            rows.append([v.name, *t.tolist(), *q.tolist(), c.fx, c.fy, c.cx, c.cy, c.width, c.height])
        with (tmp / "poses.csv").open("w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(POSE_COLUMNS + CAMERA_COLUMNS)
            wr.writerows(rows)
        if scored:
            (tmp / "metrics.json").write_text(json.dumps({"artifact": str(args.artifact), **metrics}, indent=2))
            n = min(int(args.sheet_views), len(views))
            idx = np.linspace(0, len(views) - 1, n).round().astype(int)
            aabb = np.asarray(meta["aabb"])
            contact_sheet(
                [views[i] for i in idx],
                [renders[i] for i in idx],
                tmp / "contact_sheet.png",
                f"{meta['scene']}: real | rendered | classes | depth | real depth  (PSNR {metrics.get('psnr_db', float('nan')):.1f} dB)",
                (0.3, float(max(1.0, np.linalg.norm(aabb[1] - aabb[0])))),
            )
    summary = {k: metrics[k] for k in ("psnr_db", "depth_median_abs_m", "class_accuracy") if k in metrics}
    print(f"rendered {len(views)} views into {out}" + (f": {summary}" if summary else ""))
    return 0
