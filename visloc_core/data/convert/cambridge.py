"""Cambridge Landmarks -> visloc layout.

Source format (shared DATASETS.md)::

    SRC/<Scene>/dataset_train.txt, dataset_test.txt
        line 1  "Visual Landmark Dataset V1"
        line 2  "ImageFile, Camera Position [X Y Z W P Q R]"
        line 3  blank
        then    "seq13/frame00158.png 25.317 -0.228 54.494 0.3746 0.0021 0.9150 -0.1498"
    SRC/<Scene>/seqN/frameXXXXX.png                 1920x1080 (often distributed resized)
    SRC/<Scene>/reconstruction.nvm                  VisualSFM model: "name f qw qx qy qz cx cy cz k1 0"

X Y Z is the camera CENTRE in the world; W P Q R the quaternion (scalar first) of the WORLD-TO-CAMERA
rotation. Poses go through :func:`visloc_core.geometry.T_world_cam_from_cambridge`.

Intrinsics: the focal length of each image from reconstruction.nvm (VisualSFM reports it in pixels
of the images the model was built from, ``nvm_width`` pixels wide, default 1920; it is scaled to the
stored image width), principal point at the image centre ((w - 1) / 2, (h - 1) / 2 with pixel
centres at integers). Without an nvm entry for an image, ``focal`` (pixels at the stored image
width) is used, else it is an error. VisualSFM's radial distortion k1 is not an OpenCV coefficient
and is not applied (the distortion of these images is small); the manifest says so. Sequences are
the ``seqN`` folders; train/test come from the two files. No timestamps exist: ``stamp_ns`` is
synthesised from the frame number at 30 Hz.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from ...geometry import PinholeCamera, T_world_cam_from_cambridge
from ..layout import DatasetWriter
from . import CONVERTERS, Converter, ConvertError, ConvertSummary, image_file_size, read_text_lines, select_scenes

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "dataset_train.txt", "test": "dataset_test.txt"}
HEADER_LINES = 3
NVM_WIDTH = 1920
FPS = 30.0


def parse_dataset_file(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """Rows of ``dataset_*.txt``: (image path, centre (3,), q_wxyz world->camera (4,), line number)."""
    lines = read_text_lines(path)
    if len(lines) < HEADER_LINES:
        raise ConvertError(f"{path}: expected {HEADER_LINES} header lines, the file has {len(lines)} lines")
    if "Camera Position" not in lines[1]:
        raise ConvertError(
            f"{path}, line 2: expected the header 'ImageFile, Camera Position [X Y Z W P Q R]', got {lines[1]!r}"
        )
    rows = []
    for i, line in enumerate(lines[HEADER_LINES:], start=HEADER_LINES + 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 8:
            raise ConvertError(f"{path}, line {i}: expected 'image X Y Z W P Q R' (8 fields), got {len(parts)}")
        try:
            vals = np.array([float(v) for v in parts[1:]])
        except ValueError as err:
            raise ConvertError(f"{path}, line {i}: pose is not numeric: {' '.join(parts[1:])!r}") from err
        if not np.all(np.isfinite(vals)):
            raise ConvertError(f"{path}, line {i}: pose has non-finite values")
        if abs(np.linalg.norm(vals[3:]) - 1.0) > 1e-2:
            raise ConvertError(
                f"{path}, line {i}: quaternion W P Q R has norm {np.linalg.norm(vals[3:]):.4f}, expected 1"
            )
        rows.append((parts[0], vals[:3], vals[3:], i))
    if not rows:
        raise ConvertError(f"{path}: no image rows after the {HEADER_LINES} header lines")
    return rows


def _key(name: str) -> str:
    """Image key independent of the extension (the nvm names .jpg, the lists .png)."""
    return str(PurePosixPath(name.replace("\\", "/")).with_suffix(""))


def parse_nvm_focals(path: Path) -> dict[str, float]:
    """Per-image focal lengths (pixels) from the first model of an NVM_V3 file, keyed without extension."""
    lines = read_text_lines(path)
    if not lines or not lines[0].startswith("NVM_V3"):
        raise ConvertError(f"{path}, line 1: expected the NVM_V3 header")
    i = 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    try:
        n = int(lines[i].split()[0])
    except (IndexError, ValueError) as err:
        raise ConvertError(f"{path}, line {i + 1}: expected the number of cameras") from err
    out = {}
    for j in range(i + 1, i + 1 + n):
        if j >= len(lines):
            raise ConvertError(f"{path}: ends after {j - i - 1} of {n} camera lines")
        parts = lines[j].split()
        if len(parts) < 10:
            raise ConvertError(
                f"{path}, line {j + 1}: expected 'name f qw qx qy qz cx cy cz k1 0', got {len(parts)} fields"
            )
        try:
            f = float(parts[1])
        except ValueError as err:
            raise ConvertError(f"{path}, line {j + 1}: focal length {parts[1]!r} is not a number") from err
        if not f > 0:
            raise ConvertError(f"{path}, line {j + 1}: focal length must be > 0, got {f}")
        out[_key(parts[0])] = f
    return out


def parse_resize(text: str | None) -> tuple[int, int] | int | None:
    """'WxH' -> (W, H); 'S' -> S (shorter side); None -> None."""
    if not text:
        return None
    try:
        if "x" in text:
            w, h = (int(v) for v in text.lower().split("x"))
            if w > 0 and h > 0:
                return (w, h)
        elif int(text) > 0:
            return int(text)
    except ValueError:
        pass
    raise ConvertError(f"--resize needs WxH (e.g. 480x270) or the shorter side in pixels (e.g. 256), got {text!r}")


def _target_size(w: int, h: int, resize) -> tuple[int, int]:
    if resize is None:
        return w, h
    if isinstance(resize, tuple):
        return resize
    s = resize / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _scene_dirs(src: Path) -> dict[str, Path]:
    if any((src / f).is_file() for f in SPLIT_FILES.values()):
        return {src.name: src}
    return {d.name: d for d in sorted(src.iterdir()) if d.is_dir() and (d / SPLIT_FILES["train"]).is_file()}


def convert(
    src: str | Path,
    out: str | Path,
    scenes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resize: str | tuple[int, int] | int | None = None,
    focal: float | None = None,
    nvm_width: int = NVM_WIDTH,
) -> ConvertSummary:
    """Convert a Cambridge Landmarks download (root or one scene folder) into a visloc dataset."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"Cambridge source {src} is not a folder")
    size_opt = parse_resize(resize) if isinstance(resize, str) or resize is None else resize
    found = _scene_dirs(src)
    chosen = select_scenes(list(found), scenes, src, "Cambridge scene (folder with dataset_train.txt)")
    summary = ConvertSummary()
    # Parse every list and model before copying anything: malformed input fails fast.
    plan = []  # (scene, split, rows, focals)
    for scene in chosen:
        sdir = found[scene]
        nvm = sdir / "reconstruction.nvm"
        focals = parse_nvm_focals(nvm) if nvm.is_file() else {}
        if not focals and focal is None:
            raise ConvertError(f"{nvm} is missing; pass --focal F (pixels at the stored image width)")
        for split, fname in SPLIT_FILES.items():
            path = sdir / fname
            if not path.is_file():
                raise ConvertError(f"{path} is missing")
            plan.append((scene, split, path, parse_dataset_file(path), focals))
    # A sequence that appears in both lists gets a split suffix so that splits stay disjoint.
    seq_splits: dict[tuple[str, str], set[str]] = {}
    for scene, split, _p, rows, _f in plan:
        for name, *_ in rows:
            seq_splits.setdefault((scene, PurePosixPath(name).parent.name or "seq"), set()).add(split)
    source = {
        "type": "cambridge",
        "path": str(src.resolve()),
        "pose": "dataset_*.txt: camera centre X Y Z and world-to-camera quaternion W P Q R (scalar first)",
        "intrinsics": f"focal from reconstruction.nvm (for images {nvm_width} px wide, scaled to the stored width), "
        "principal point at the image centre; VisualSFM radial distortion k1 not applied",
        "stamps": f"synthesised: frame number / {FPS:g} Hz (the dataset has no timestamps)",
        "resize": None if size_opt is None else str(resize),
    }
    total = sum(len(rows) for *_a, rows, _f in plan)
    with DatasetWriter(out, source=source, overwrite=overwrite) as w:
        splits: dict[str, list[str]] = {"train": [], "test": []}
        bar = tqdm(total=total, unit="frame", desc="cambridge", disable=not progress)
        for scene, split, list_path, rows, focals in plan:
            w.set_scene(scene, source_scene=scene)
            for name, center, q_wxyz, line_no in rows:
                bar.update(1)
                rel = PurePosixPath(name.replace("\\", "/"))
                seq = rel.parent.name or "seq"
                if len(seq_splits[(scene, seq)]) > 1:
                    seq = f"{seq}_{split}"
                key = f"{scene}/{seq}"
                if key not in splits[split]:
                    splits[split].append(key)
                    w.set_sequence(scene, seq, condition="normal")
                img_path = found[scene] / rel
                if not img_path.is_file():
                    raise ConvertError(f"{list_path}, line {line_no}: image {img_path} does not exist")
                width, height = image_file_size(img_path)
                f_img = focals.get(_key(name))
                if f_img is not None:
                    f_px = f_img * width / nvm_width
                elif focal is not None:
                    f_px = float(focal)
                    summary.caveats["no camera in reconstruction.nvm: --focal used"] += 1
                else:
                    raise ConvertError(
                        f"{list_path}, line {line_no}: {name} has no camera in reconstruction.nvm; pass --focal"
                    )
                cam = PinholeCamera(width, height, f_px, f_px, (width - 1) / 2.0, (height - 1) / 2.0)
                T_world_cam = T_world_cam_from_cambridge(center, q_wxyz)
                digits = re.findall(r"\d+", rel.stem)
                stamp = round(int(digits[-1]) * 1e9 / FPS) if digits else line_no
                tw, th = _target_size(width, height, size_opt)
                if (tw, th) == (width, height):
                    w.add_frame(
                        scene, seq, rel.stem, stamp, T_world_cam, cam,
                        rgb_encoded=img_path.read_bytes(), rgb_ext=img_path.suffix.lstrip(".").lower(),
                    )  # fmt: skip
                else:
                    bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
                    if bgr is None:
                        raise ConvertError(f"cannot decode image {img_path}")
                    rgb = cv2.cvtColor(cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
                    w.add_frame(scene, seq, rel.stem, stamp, T_world_cam, cam.resized(tw, th), rgb)
                summary.n_frames += 1
                summary.scenes[scene] = summary.scenes.get(scene, 0) + 1
        bar.close()
        for split, keys in splits.items():
            w.set_split(split, keys)
    summary.out = Path(out)
    return summary


# ------------------------------------------------------------------------------ visloc convert cambridge
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resize",
        metavar="WxH|S",
        help="resize images to WxH, or so the shorter side is S pixels (intrinsics are scaled to match); "
        "default: keep the original files",
    )
    p.add_argument(
        "--focal",
        type=float,
        help="focal length in pixels at the stored image width, for images without an nvm camera",
    )
    p.add_argument(
        "--nvm-width",
        type=int,
        default=NVM_WIDTH,
        help="width in pixels of the images reconstruction.nvm was built from (its focal lengths refer to it; "
        f"default {NVM_WIDTH})",
    )


CONVERTERS.register("cambridge")(
    Converter(
        help="Cambridge Landmarks (dataset_train/test.txt with camera centre + world-to-camera quaternion)",
        description="Cambridge Landmarks: per-image focal from reconstruction.nvm, principal point at the "
        "image centre; stamps synthesised from the frame number at 30 Hz.",
        add_arguments=add_arguments,
        options=lambda args: {"resize": args.resize, "focal": args.focal, "nvm_width": args.nvm_width},
        convert=convert,
    )
)
