"""``visloc convert {7scenes,cambridge,tartanair} SRC --out DATASET``.

Thin wrapper over :mod:`visloc_core.data.convert` (one module per dataset).
"""

from __future__ import annotations

import argparse
import importlib
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Convert a public dataset download into the visloc dataset layout (docs/dataset_layout.md). "
        "Poses are converted from each dataset's documented convention to T_world_cam (OpenCV camera, "
        "metres); the output is written atomically (nothing is left at --out on failure)."
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("src", metavar="SRC", help="the download's root folder (or one scene folder)")
        p.add_argument("--out", required=True, metavar="DATASET", help="output dataset folder")
        p.add_argument("--scenes", nargs="+", metavar="SCENE", help="convert only these scenes (default: all)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "7scenes",
        help="Microsoft 7-Scenes (seq-XX/frame-XXXXXX.{color.png,pose.txt}, TrainSplit/TestSplit.txt)",
        description="7-Scenes: poses are camera-to-world (of the depth sensor, used as the colour camera); "
        "colour intrinsics f=525, c=(320,240) at 640x480; stamps synthesised at 30 Hz.",
    )
    common(p)
    p.add_argument(
        "--depth",
        action="store_true",
        help="also store the depth images AS RECORDED: they are NOT registered to the colour image (the "
        'manifest says "depth_registered": false and gives the depth camera f=585); off by default',
    )

    p = sub.add_parser(
        "cambridge",
        help="Cambridge Landmarks (dataset_train/test.txt with camera centre + world-to-camera quaternion)",
        description="Cambridge Landmarks: per-image focal from reconstruction.nvm, principal point at the "
        "image centre; stamps synthesised from the frame number at 30 Hz.",
    )
    common(p)
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
        default=1920,
        help="width in pixels of the images reconstruction.nvm was built from (its focal lengths refer to it; "
        "default 1920)",
    )

    p = sub.add_parser(
        "tartanair",
        help="TartanAir (ENV/{Easy,Hard}/P00k with image_left, depth_left, pose_left.txt in NED)",
        description="TartanAir: NED poses (quaternion scalar last) converted to OpenCV axes; fx=fy=320, "
        "cx=320, cy=240 at 640x480; depth in metres; stamps synthesised at 10 Hz.",
    )
    common(p)
    p.add_argument("--no-depth", action="store_true", help="do not store the depth_left .npy files")
    p.add_argument(
        "--test-sequences",
        nargs="+",
        metavar="SEQ",
        help="trajectories for the test split, e.g. Easy_P001 Hard_P002 (default: the last trajectory of each "
        "difficulty that has at least two)",
    )


def run(args: argparse.Namespace) -> int:
    from ..data.convert import CONVERTERS

    mod = importlib.import_module(f"visloc_core.data.convert.{CONVERTERS[args.dataset]}")
    kw = {"scenes": args.scenes, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.dataset == "7scenes":
        kw["with_depth"] = args.depth
    elif args.dataset == "cambridge":
        kw.update(resize=args.resize, focal=args.focal, nvm_width=args.nvm_width)
    else:
        kw.update(with_depth=not args.no_depth, test_sequences=args.test_sequences)
    summary = mod.convert(args.src, args.out, **kw)
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"dataset written to {summary.out}")
    return 0
