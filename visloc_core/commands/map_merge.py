"""``visloc map merge A B --out C``: one relpose map from two maps of the same site and world frame."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Merge two relpose maps of the same site (same world frame, built with the same estimator and image size) "
        "into a new map: A's keyframes, then B's, B's images described again with A's global descriptor, B's "
        "features and 3D points copied. Written atomically; the map calibrates itself again."
    )
    parser.add_argument("a", help="first map (its descriptor and config are kept)")
    parser.add_argument("b", help="second map")
    parser.add_argument("--out", required=True, help="new map folder")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-calibrate", action="store_true", help="keep no calibration (faster; not for use)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..localizers.relpose.update import merge_maps
    from .map_update import print_report

    rep = merge_maps(args.a, args.b, args.out, device=args.device, progress=not args.no_progress,
                     calibrate=not args.no_calibrate)  # fmt: skip
    print_report(rep, args.json)
    return 0
