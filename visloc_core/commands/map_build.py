"""``visloc map build CONFIG --data DATASET --out ARTIFACT``: a retrieval + relative-pose map."""

from __future__ import annotations

import argparse
import json

from ..config import add_set_argument, apply_overrides
from . import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build a relpose map artifact from a dataset split: global descriptors of the mapping images, a "
        "faiss index, keyframes with poses and intrinsics, cached local features and depth. The result "
        "folder is loadable by `visloc eval`, `visloc replay` and the localizer node on its own. Written "
        "atomically: an interrupted build leaves ARTIFACT untouched (Ctrl-C keeps the partial folder beside it as "
        ".ARTIFACT.interrupted-PID; a killed build's temporaries are removed by the next); a second build into the "
        "same ARTIFACT stops at once. Every file's checksum is recorded and verified at load."
    )
    parser.add_argument("config", help="relpose config YAML (e.g. config/models/relpose_xfeat.yaml)")
    parser.add_argument("--data", required=True, help="dataset folder in the visloc layout")
    parser.add_argument("--out", required=True, help="artifact folder to create")
    parser.add_argument("--split", default="train", help="dataset split of the mapping images (default: train)")
    parser.add_argument("--scene", default=None, help="only this scene (overrides the config's 'scene')")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--max-frames", type=positive_int, default=None, help="use only the first N frames (quick tests)"
    )
    add_set_argument(parser, "estimator.matcher=lighterglue")
    parser.add_argument("--overwrite", action="store_true", help="replace ARTIFACT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..localizers.relpose.mapping import build_map, load_config

    cfg = apply_overrides(load_config(args.config), args.set)
    if args.scene:
        cfg["scene"] = args.scene
    out = build_map(
        cfg,
        args.data,
        args.out,
        split=args.split,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.no_progress,
        max_frames=args.max_frames,
    )
    meta = json.loads((out / "artifact.json").read_text())
    print(
        f"map: {out} ({meta['n_keyframes']} keyframes, estimator {meta['estimator']}, descriptor {meta['descriptor']})"
    )
    return 0
