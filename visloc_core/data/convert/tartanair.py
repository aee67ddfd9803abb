"""TartanAir -> visloc layout.

Source format (shared DATASETS.md)::

    SRC/<ENV>/{Easy,Hard}/P00k/image_left/000000_left.png          640x480
    SRC/<ENV>/{Easy,Hard}/P00k/depth_left/000000_left_depth.npy    float32 metres
    SRC/<ENV>/{Easy,Hard}/P00k/pose_left.txt                       "tx ty tz qx qy qz qw" per frame

SRC may be the root (holding ENV folders) or one ENV folder. Poses are the camera body in an NED
world, quaternion scalar LAST; :func:`visloc_core.geometry.T_world_cam_from_tartanair` turns them
into T_world_cam with world and camera in OpenCV axes (T = P T_ned P^-1). Intrinsics fx = fy = 320,
cx = 320, cy = 240 at 640x480 (scaled if the images have another size). Depth (metres) is registered
to the left image and stored unless ``with_depth=False``; values beyond the uint16 millimetre range
(65.535 m, e.g. the sky) are stored as invalid (0). Scene = ENV, sequence = ``<Difficulty>_P00k``.

TartanAir has no relocalization split: by default the last trajectory (sorted) of each difficulty
of each environment is the test split when that difficulty has at least two, the rest is train;
``test_sequences`` (names like ``Easy_P001``) overrides this. No timestamps exist: ``stamp_ns`` is
synthesised as frame index / 10 Hz.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...geometry import PinholeCamera, T_world_cam_from_tartanair
from ..layout import DatasetWriter
from . import CONVERTERS, Converter, ConvertError, ConvertSummary, image_file_size, read_text_lines, select_scenes

log = logging.getLogger(__name__)

CAMERA = PinholeCamera(640, 480, 320.0, 320.0, 320.0, 240.0)
OFFICIAL_SIZE = (640, 480)
DIFFICULTIES = ("Easy", "Hard")
FPS = 10.0
MAX_DEPTH_M = 65.535  # uint16 millimetres


def parse_pose_file(path: Path) -> np.ndarray:
    """``pose_left.txt`` -> (N, 7) float64 rows ``tx ty tz qx qy qz qw``."""
    rows = []
    for i, line in enumerate(read_text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 7:
            raise ConvertError(f"{path}, line {i}: expected 'tx ty tz qx qy qz qw' (7 numbers), got {len(parts)}")
        try:
            vals = [float(v) for v in parts]
        except ValueError as err:
            raise ConvertError(f"{path}, line {i}: not numbers: {line.strip()!r}") from err
        if not np.all(np.isfinite(vals)):
            raise ConvertError(f"{path}, line {i}: non-finite values")
        if abs(np.linalg.norm(vals[3:]) - 1.0) > 1e-2:
            raise ConvertError(f"{path}, line {i}: quaternion qx qy qz qw has norm {np.linalg.norm(vals[3:]):.4f}")
        rows.append(vals)
    if not rows:
        raise ConvertError(f"{path} has no pose lines")
    return np.asarray(rows, dtype=np.float64)


def _find(src: Path) -> dict[str, list[tuple[str, Path]]]:
    """ENV -> [(sequence name, trajectory folder)], for SRC = root or one ENV folder."""

    def trajectories(env_dir: Path) -> list[tuple[str, Path]]:
        out = []
        for diff in DIFFICULTIES:
            d = env_dir / diff
            if d.is_dir():
                out += [(f"{diff}_{p.name}", p) for p in sorted(d.iterdir()) if (p / "pose_left.txt").is_file()]
        return out

    if any((src / d).is_dir() for d in DIFFICULTIES):
        return {src.name: trajectories(src)}
    return {e.name: t for e in sorted(src.iterdir()) if e.is_dir() and (t := trajectories(e))}


def default_test_sequences(seqs: list[str]) -> set[str]:
    """The last trajectory of each difficulty with at least two (see the module docstring)."""
    out = set()
    for diff in DIFFICULTIES:
        mine = sorted(s for s in seqs if s.startswith(diff + "_"))
        if len(mine) >= 2:
            out.add(mine[-1])
    return out


def convert(
    src: str | Path,
    out: str | Path,
    scenes: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    with_depth: bool = True,
    test_sequences: list[str] | None = None,
) -> ConvertSummary:
    """Convert a TartanAir download (root or one ENV folder) into a visloc dataset at ``out``."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"TartanAir source {src} is not a folder")
    found = _find(src)
    chosen = select_scenes(list(found), scenes, src, "TartanAir environment (ENV/{Easy,Hard}/P00k/pose_left.txt)")
    summary = ConvertSummary()
    plan = []  # (env, seq, dir, poses)
    for env in chosen:
        for seq, d in found[env]:
            poses = parse_pose_file(d / "pose_left.txt")
            images = [d / "image_left" / f"{i:06d}_left.png" for i in range(len(poses))]
            missing = [p for p in images if not p.is_file()]
            if missing:
                raise ConvertError(
                    f"{d / 'pose_left.txt'} has {len(poses)} poses but {len(missing)} images are missing, "
                    f"e.g. {missing[0]}"
                )
            plan.append((env, seq, d, poses))
    all_seqs = {env: [s for e, s, _d, _p in plan if e == env] for env in chosen}
    if test_sequences:
        unknown = [t for t in test_sequences if not any(t in v for v in all_seqs.values())]
        if unknown:
            raise ConvertError(f"--test-sequences {', '.join(unknown)}: no such trajectory (names like Easy_P001)")
    source = {
        "type": "tartanair",
        "path": str(src.resolve()),
        "pose": "pose_left.txt: tx ty tz qx qy qz qw (scalar last), camera body in an NED world; converted to "
        "OpenCV axes for world and camera (T = P T_ned P^-1)",
        "intrinsics": "fx = fy = 320, cx = 320, cy = 240 at 640x480",
        "stamps": f"synthesised: frame index / {FPS:g} Hz (the dataset has no timestamps)",
        "split_rule": "given --test-sequences"
        if test_sequences
        else "last trajectory of each difficulty (with >= 2) is test",
    }
    n_far = 0
    total = sum(len(p) for *_a, p in plan)
    with DatasetWriter(out, source=source, overwrite=overwrite) as w:
        if with_depth:
            w.manifest["conventions"]["depth"] += f"; TartanAir depth beyond {MAX_DEPTH_M} m (sky) stored as 0"
        splits: dict[str, list[str]] = {"train": [], "test": []}
        bar = tqdm(total=total, unit="frame", desc="tartanair", disable=not progress)
        for env, seq, d, poses in plan:
            tests = set(test_sequences) if test_sequences else default_test_sequences(all_seqs[env])
            split = "test" if seq in tests else "train"
            w.set_scene(env, source_scene=env)
            w.set_sequence(env, seq, condition="normal", difficulty=seq.split("_")[0], trajectory=d.name)
            splits[split].append(f"{env}/{seq}")
            for i, row in enumerate(poses):
                bar.update(1)
                img = d / "image_left" / f"{i:06d}_left.png"
                width, height = image_file_size(img)
                cam = CAMERA if (width, height) == OFFICIAL_SIZE else CAMERA.resized(width, height)
                depth = None
                if with_depth:
                    dp = d / "depth_left" / f"{i:06d}_left_depth.npy"
                    if dp.is_file():
                        depth = _read_depth(dp, (height, width))
                        n_far += int(np.count_nonzero(depth > MAX_DEPTH_M))
                        depth = np.where(depth > MAX_DEPTH_M, 0.0, depth)
                    else:
                        summary.caveats["depth .npy missing: frame written without depth"] += 1
                w.add_frame(
                    env,
                    seq,
                    f"{i:06d}",
                    round(i * 1e9 / FPS),
                    T_world_cam_from_tartanair(row[:3], row[3:]),
                    cam,
                    rgb_encoded=img.read_bytes(),
                    rgb_ext="png",
                    depth_m_HW=depth,
                )
                summary.n_frames += 1
                summary.scenes[env] = summary.scenes.get(env, 0) + 1
        bar.close()
        for split, keys in splits.items():
            w.set_split(split, keys)
    if n_far:
        summary.notes.append(f"{n_far} depth pixels beyond {MAX_DEPTH_M} m stored as invalid (0)")
    summary.out = Path(out)
    return summary


def _read_depth(path: Path, shape_hw: tuple[int, int]) -> np.ndarray:
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConvertError(f"cannot read depth {path}: {err}") from err
    if d.shape != shape_hw:
        raise ConvertError(f"{path}: depth shape {d.shape} differs from the image {shape_hw}")
    return np.where(np.isfinite(d) & (d > 0), d.astype(np.float64), 0.0)


# ------------------------------------------------------------------------------ visloc convert tartanair
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-depth", action="store_true", help="do not store the depth_left .npy files")
    p.add_argument(
        "--test-sequences",
        nargs="+",
        metavar="SEQ",
        help="trajectories for the test split, e.g. Easy_P001 Hard_P002 (default: the last trajectory of each "
        "difficulty that has at least two)",
    )


CONVERTERS.register("tartanair")(
    Converter(
        help="TartanAir (ENV/{Easy,Hard}/P00k with image_left, depth_left, pose_left.txt in NED)",
        description="TartanAir: NED poses (quaternion scalar last) converted to OpenCV axes; fx=fy=320, "
        "cx=320, cy=240 at 640x480; depth in metres; stamps synthesised at 10 Hz.",
        add_arguments=add_arguments,
        options=lambda args: {"with_depth": not args.no_depth, "test_sequences": args.test_sequences},
        convert=convert,
    )
)
