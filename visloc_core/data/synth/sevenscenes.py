"""Write a synthetic scene in the layout of Microsoft 7-Scenes as distributed (``visloc synth --format 7scenes``).

So that 7-Scenes' traps can be exercised on data with known truth (real 7-Scenes cannot be
downloaded here): ``visloc convert 7scenes`` then reads it like the real thing.

    OUT/<scene>/TrainSplit.txt, TestSplit.txt   "sequenceN" lines: mapping (train) / query (test) sequences
    OUT/<scene>/seq-NN/frame-XXXXXX.color.png   colour camera, 640x480, f = 525, c = (320, 240)
    OUT/<scene>/seq-NN/frame-XXXXXX.depth.png   uint16 mm, 65535 = invalid, from the DEPTH camera
                                                (f = 585, c = (320, 240)), NOT registered to the colour image
    OUT/<scene>/seq-NN/frame-XXXXXX.pose.txt    4x4 camera-to-world of the DEPTH camera (KinectFusion's)

As on the Kinect, the depth camera sits ``depth_baseline_m`` (2.5 cm) to the side of the colour
camera (+x of the colour camera), parallel to it. The pose files hold the depth camera's pose, which
the benchmark (and ``visloc convert 7scenes``) takes as the colour camera's: every pose is off by
that baseline, as in the real dataset. Sequences of the split ``test_unmapped`` are not written
(7-Scenes has no such split). Appearance conditions, motion blur and noise are those of the scene
file. Written to a temporary folder, renamed when complete.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ...atomic import replace_folder
from ...geometry import PinholeCamera, T_from_R_t
from ..convert.sevenscenes import COLOR_CAMERA, DEPTH_CAMERA, DEPTH_INVALID
from .generate import SceneRenderer, plan_sequence
from .spec import SceneSpec

log = logging.getLogger(__name__)

DEPTH_BASELINE_M = 0.025  # Kinect v1: depth (IR) camera ~2.5 cm beside the colour camera


def write_7scenes(
    spec: SceneSpec,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    depth_baseline_m: float = DEPTH_BASELINE_M,
    max_frames: int | None = None,
) -> Path:
    """Render ``spec`` into ``out/<scene>/`` in the 7-Scenes layout (module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    seqs = [i for i, s in enumerate(spec.sequences) if s.split in ("train", "test")]
    spec = replace(spec, camera=replace(spec.camera, width=COLOR_CAMERA.width, height=COLOR_CAMERA.height))
    if max_frames:
        spec = replace(spec, sequences=[replace(s, n_frames=min(s.n_frames, int(max_frames))) for s in spec.sequences])
    T_color_depth = T_from_R_t(np.eye(3), np.array([depth_baseline_m, 0.0, 0.0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    ok = False
    try:
        root = tmp / spec.name
        root.mkdir()
        splits: dict[str, list[str]] = {"train": [], "test": []}
        sr = SceneRenderer(spec)
        total = sum(spec.sequences[i].n_frames for i in seqs)
        bar = tqdm(total=total, desc=f"7scenes {spec.name}", unit="frame", disable=not progress)
        try:
            for n, idx in enumerate(seqs, start=1):
                plan = plan_sequence(spec, idx)
                seq_dir = root / f"seq-{n:02d}"
                seq_dir.mkdir()
                splits[plan.seq.split].append(f"sequence{n}")
                for i in range(plan.seq.n_frames):
                    stem = seq_dir / f"frame-{i:06d}"
                    sr.camera = COLOR_CAMERA
                    frame = sr.render_frame(plan, i)  # colour: blur and noise of the condition
                    _write(Path(f"{stem}.color.png"), cv2.cvtColor(frame.rgb_HW3, cv2.COLOR_RGB2BGR))
                    T_world_depth = plan.T_world_cam[i] @ T_color_depth
                    depth = _render_depth(sr, plan, i, T_world_depth, DEPTH_CAMERA)
                    mm = np.where(depth > 0, np.round(depth * 1000.0), DEPTH_INVALID)
                    _write(Path(f"{stem}.depth.png"), np.clip(mm, 0, DEPTH_INVALID).astype(np.uint16))
                    Path(f"{stem}.pose.txt").write_text(
                        "\n".join(" ".join(f"{v:.9e}" for v in row) for row in T_world_depth) + "\n"
                    )
                    bar.update(1)
        finally:
            bar.close()
            sr.release()
        for split, lines in splits.items():
            name = "TrainSplit.txt" if split == "train" else "TestSplit.txt"
            (root / name).write_text("\n".join(lines) + "\n")
        (root / "README.txt").write_text(
            f"Synthetic scene {spec.name!r} (visloc synth --format 7scenes) in the 7-Scenes layout: colour "
            f"{COLOR_CAMERA.width}x{COLOR_CAMERA.height} f {COLOR_CAMERA.fx:g}; depth f {DEPTH_CAMERA.fx:g}, "
            f"not registered, {depth_baseline_m} m beside the colour camera; pose.txt = depth camera to world.\n"
        )
        replace_folder(tmp, out)
        ok = True
        return out
    finally:
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)


def _render_depth(sr: SceneRenderer, plan, i: int, T_world_depth: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    """Metric z-depth (m) seen by the depth camera at image i of a plan (actors where they are then)."""
    spec = sr.spec
    t = (int(plan.stamps_ns[i]) - int(plan.stamps_ns[0])) * 1e-9
    actors = sr._actor_poses(plan.actors, plan.seq.t0_s + t)
    sr.renderer.draw(T_world_depth, cam, plan.cond, actors=actors, near=spec.camera.near, far=spec.camera.far)
    d = sr.renderer.read().depth_HW
    return np.where(np.isfinite(d) & (d < spec.camera.far * 0.999), d, 0.0)


def _write(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
