"""``visloc map update MAP --data NEW_DATASET``: add a new recording's keyframes to a relpose map."""

from __future__ import annotations

import argparse
import json

from . import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Add the frames of a new recording (a dataset in the visloc layout, e.g. from `visloc dataset from-bag`, "
        "with poses in the map's world frame) to a relpose map without rebuilding it: the retrieval index gets the "
        "new descriptors added, features and depth points are appended, unchanged files are hard-linked; the map "
        "calibrates itself again. Atomic: MAP (or --out) is replaced only when the grown map is complete. Prints "
        "what was added and how many new keyframes show views the map did not have."
    )
    parser.add_argument("map", help="relpose map artifact folder (visloc map build)")
    parser.add_argument("--data", required=True, help="dataset folder of the new recording")
    parser.add_argument("--split", default="train", help="dataset split to add (default: train)")
    parser.add_argument("--out", default=None, help="write the grown map here instead of replacing MAP")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="add only the first N frames")
    parser.add_argument("--no-calibrate", action="store_true", help="keep no calibration (faster; not for use)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def print_report(rep: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    print(f"map: {rep['keyframes_before']} + {rep['keyframes_added']} = {rep['keyframes_after']} keyframes "
          f"({rep['structure']} structure) in {rep['seconds']:.1f} s")  # fmt: skip
    rule = rep["new_view_rule"]
    print(f"new views: {rep['new_views']} of the added keyframes have no map keyframe within {rule['near_m']:.2f} m "
          f"looking within {rule['near_deg']:.0f} deg")  # fmt: skip
    for key in rep["new_view_keys"][:20]:
        print(f"  {key}")
    if len(rep["new_view_keys"]) > 20:
        print(f"  ... and {len(rep['new_view_keys']) - 20} more")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..localizers.relpose.update import update_map

    rep = update_map(Path(args.map), args.data, split=args.split, out=args.out, device=args.device,
                     progress=not args.no_progress, max_frames=args.max_frames, calibrate=not args.no_calibrate)  # fmt: skip
    print_report(rep, args.json)
    return 0
