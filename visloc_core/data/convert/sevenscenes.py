"""Microsoft 7-Scenes -> visloc layout.

Source format (shared DATASETS.md)::

    SRC/<scene>/TrainSplit.txt, TestSplit.txt      lines "sequence1" = folder seq-01
    SRC/<scene>/seq-XX/frame-XXXXXX.color.png      640x480 RGB
    SRC/<scene>/seq-XX/frame-XXXXXX.depth.png      uint16 mm, 65535 = invalid, NOT registered to colour
    SRC/<scene>/seq-XX/frame-XXXXXX.pose.txt       4x4 camera-to-world (of the depth sensor)

SRC may also be one scene folder. Poses go through
:func:`visloc_core.geometry.T_world_cam_from_7scenes` (the benchmark treats the depth sensor's pose
as the colour camera's; we do the same and say so in the manifest). Colour intrinsics are the
commonly used f = 525, c = (320, 240) at 640x480 (scaled if the images have another size). The
dataset has no timestamps: ``stamp_ns`` is synthesised as frame index / 30 Hz.

Depth is not registered to the colour image, so it is left out by default. ``with_depth=True``
stores it as recorded (same pixel grid as the depth sensor, f = 585) and writes
``"depth_registered": false`` and the depth camera's intrinsics into the manifest, so nobody
mistakes it for per-colour-pixel depth.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ...geometry import PinholeCamera, T_world_cam_from_7scenes
from ..layout import DatasetWriter
from . import CONVERTERS, Converter, ConvertError, ConvertSummary, image_file_size, read_text_lines, select_scenes

log = logging.getLogger(__name__)

OFFICIAL_SIZE = (640, 480)
COLOR_CAMERA = PinholeCamera(640, 480, 525.0, 525.0, 320.0, 240.0)
DEPTH_CAMERA = PinholeCamera(640, 480, 585.0, 585.0, 320.0, 240.0)
DEPTH_INVALID = 65535
FPS = 30.0
SPLIT_FILES = {"train": "TrainSplit.txt", "test": "TestSplit.txt"}
_SEQ_LINE = re.compile(r"^sequence(\d+)$", re.IGNORECASE)


def parse_split_file(path: Path) -> list[str]:
    """``TrainSplit.txt`` / ``TestSplit.txt`` -> folder names ['seq-01', ...]."""
    out = []
    for i, line in enumerate(read_text_lines(path), start=1):
        text = line.strip()
        if not text:
            continue
        m = _SEQ_LINE.match(text)
        if not m:
            raise ConvertError(f"{path}, line {i}: expected 'sequenceN', got {text!r}")
        out.append(f"seq-{int(m.group(1)):02d}")
    if not out:
        raise ConvertError(f"{path} lists no sequence")
    return out


def read_pose_file(path: Path) -> np.ndarray:
    """A ``frame-XXXXXX.pose.txt``: 4 lines of 4 numbers -> 4x4 float64 (may hold inf/nan)."""
    rows = [ln for ln in read_text_lines(path) if ln.strip()]
    if len(rows) != 4:
        raise ConvertError(f"{path}: expected 4 lines of 4 numbers (a 4x4 matrix), got {len(rows)} lines")
    M = np.empty((4, 4))
    for i, ln in enumerate(rows):
        parts = ln.split()
        try:
            vals = [float(v) for v in parts]
        except ValueError as err:
            raise ConvertError(f"{path}, line {i + 1}: not numbers: {ln.strip()!r}") from err
        if len(vals) != 4:
            raise ConvertError(f"{path}, line {i + 1}: expected 4 numbers, got {len(vals)}")
        M[i] = vals
    if np.all(np.isfinite(M)) and not np.allclose(M[3], [0, 0, 0, 1], atol=1e-6):
        raise ConvertError(f"{path}: last row must be 0 0 0 1, got {M[3].tolist()}")
    return M


def _scene_dirs(src: Path) -> dict[str, Path]:
    if all((src / f).is_file() for f in SPLIT_FILES.values()):
        return {src.name: src}
    return {
        d.name: d for d in sorted(src.iterdir()) if d.is_dir() and all((d / f).is_file() for f in SPLIT_FILES.values())
    }


def convert(
    src: str | Path,
    out: str | Path,
    scenes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    with_depth: bool = False,
) -> ConvertSummary:
    """Convert a 7-Scenes download (root or one scene folder) into a visloc dataset at ``out``."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"7-Scenes source {src} is not a folder")
    found = _scene_dirs(src)
    chosen = select_scenes(list(found), scenes, src, "7-Scenes scene (folder with TrainSplit.txt and TestSplit.txt)")
    summary = ConvertSummary()
    source = {
        "type": "7scenes",
        "path": str(src.resolve()),
        "pose": "pose.txt is camera-to-world of the depth sensor (KinectFusion); used as the colour camera pose, "
        "as the benchmark does",
        "intrinsics": "f = 525, c = (320, 240) at 640x480 (the commonly used colour intrinsics)",
        "stamps": f"synthesised: frame index / {FPS:g} Hz (the dataset has no timestamps)",
    }
    # Plan everything first so malformed split files fail before any image is copied.
    jobs: list[tuple[str, str, str, Path]] = []  # (scene, split, seq, seq_dir)
    for scene in chosen:
        sdir = found[scene]
        for split, fname in SPLIT_FILES.items():
            for seq in parse_split_file(sdir / fname):
                seq_dir = sdir / seq
                if not seq_dir.is_dir():
                    hint = " (unzip it first)" if (sdir / f"{seq}.zip").is_file() else ""
                    raise ConvertError(f"{sdir / fname} lists {seq}, but {seq_dir} is not a folder{hint}")
                jobs.append((scene, split, seq, seq_dir))
    frame_lists = {}
    for scene, _split, seq, seq_dir in jobs:
        colors = sorted(seq_dir.glob("frame-*.color.png"))
        if not colors:
            raise ConvertError(f"{seq_dir}: no frame-XXXXXX.color.png images")
        frame_lists[(scene, seq)] = colors
    total = sum(len(v) for v in frame_lists.values())
    with DatasetWriter(out, source=source, overwrite=overwrite) as w:
        if with_depth:
            w.manifest["depth_registered"] = False
            w.manifest["depth_camera"] = DEPTH_CAMERA.to_dict()
            w.manifest["conventions"]["depth"] += (
                "; 7-Scenes depth is NOT registered to the colour image: it is the raw depth sensor image "
                "(intrinsics in depth_camera)"
            )
        splits: dict[str, list[str]] = {"train": [], "test": []}
        bar = tqdm(total=total, unit="frame", desc="7scenes", disable=not progress)
        for scene, split, seq, _seq_dir in jobs:
            w.set_scene(scene, source_scene=scene)
            w.set_sequence(scene, seq, condition="normal")
            splits[split].append(f"{scene}/{seq}")
            for color in frame_lists[(scene, seq)]:
                bar.update(1)
                stem = color.name[: -len(".color.png")]  # frame-000123
                try:
                    index = int(stem.split("-")[1])
                except (IndexError, ValueError) as err:
                    raise ConvertError(f"{color}: expected a name frame-XXXXXX.color.png") from err
                pose_path = color.with_name(f"{stem}.pose.txt")
                if not pose_path.is_file():
                    raise ConvertError(f"{pose_path} is missing (every colour image needs its pose)")
                try:
                    T_world_cam = T_world_cam_from_7scenes(read_pose_file(pose_path))
                except ValueError as err:
                    if isinstance(err, ConvertError):
                        raise
                    summary.skipped["pose with non-finite entries (as some 7-Scenes frames have)"] += 1
                    continue
                width, height = image_file_size(color)
                cam = COLOR_CAMERA.resized(width, height) if (width, height) != OFFICIAL_SIZE else COLOR_CAMERA
                depth_m = None
                if with_depth:
                    depth_m = _read_depth(color.with_name(f"{stem}.depth.png"))
                w.add_frame(
                    scene,
                    seq,
                    stem,
                    round(index * 1e9 / FPS),
                    T_world_cam,
                    cam,
                    rgb_encoded=color.read_bytes(),
                    rgb_ext="png",
                    depth_m_HW=depth_m,
                )
                summary.n_frames += 1
                summary.scenes[scene] = summary.scenes.get(scene, 0) + 1
        bar.close()
        for split, keys in splits.items():
            w.set_split(split, keys)
        if summary.n_frames == 0:
            raise ConvertError(f"{src}: no frame could be converted:\n" + "\n".join(summary.lines()))
    summary.out = Path(out)
    return summary


def _read_depth(path: Path) -> np.ndarray:
    """Depth PNG (uint16 mm, 65535 / 0 invalid) -> metres float64, 0 = invalid."""
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise ConvertError(f"cannot read depth image {path} (needed by --depth)")
    if d.dtype != np.uint16 or d.ndim != 2:
        raise ConvertError(f"{path}: expected a uint16 single-channel depth PNG, got {d.dtype} {d.shape}")
    return np.where(d == DEPTH_INVALID, 0.0, d.astype(np.float64) / 1000.0)


# ------------------------------------------------------------------------------ visloc convert 7scenes
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--depth",
        action="store_true",
        help="also store the depth images AS RECORDED: they are NOT registered to the colour image (the "
        'manifest says "depth_registered": false and gives the depth camera f=585); off by default',
    )


CONVERTERS.register("7scenes")(
    Converter(
        help="Microsoft 7-Scenes (seq-XX/frame-XXXXXX.{color.png,pose.txt}, TrainSplit/TestSplit.txt)",
        description="7-Scenes: poses are camera-to-world (of the depth sensor, used as the colour camera); "
        "colour intrinsics f=525, c=(320,240) at 640x480; stamps synthesised at 30 Hz.",
        add_arguments=add_arguments,
        options=lambda args: {"with_depth": args.depth},
        convert=convert,
    )
)
