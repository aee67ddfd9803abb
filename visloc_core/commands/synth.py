"""``visloc synth SCENE.yaml --out DATASET [--bag BAGDIR]``: render a synthetic scene into a dataset.

Presets live in config/scenes/ (``indoor_room``, ``large_hall``, ``plaza``); a bare preset name works as SCENE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must look like 320x240, got {text!r}") from err


EPILOG = """\
examples:
  visloc synth indoor_room --out data/indoor --preview
  visloc synth config/scenes/plaza.yaml --out data/plaza --bag bags/ --storage mcap --size 640x480
  visloc synth indoor_room plaza --out data/two_scenes          (one dataset, two scenes)

writes DATASET (visloc layout: rgb, metric depth, semantic classes, T_world_cam, intrinsics;
split train = mapping sequences, test = query sequences, each with its appearance condition) and,
with --bag, BAGDIR/<scene>_<sequence>/ per sequence. The dataset appears only when complete; bags
of sequences finished before an interruption are kept, the unfinished one is removed.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "scene",
        metavar="SCENE.yaml",
        nargs="+",
        help="scene file, or a preset name from config/scenes/; several make one multi-scene dataset",
    )
    parser.add_argument("--out", required=True, metavar="DATASET", help="dataset folder to create (visloc layout)")
    parser.add_argument(
        "--bag",
        metavar="BAGDIR",
        help="also record one rosbag2 per sequence as BAGDIR/<scene>_<sequence>/ (camera, camera_info, "
        "/ground_truth/pose, /odom, /tf with a drifting odom frame, /tf_static)",
    )
    parser.add_argument(
        "--storage", choices=["sqlite3", "mcap"], default="sqlite3", help="rosbag2 storage plugin (default sqlite3)"
    )
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="record /camera/image_raw/compressed (JPEG) instead of raw rgb8 /camera/image_raw",
    )
    parser.add_argument(
        "--depth",
        action="store_true",
        help="also record /camera/depth/image_raw in the bags (16UC1 mm, registered to the colour camera, "
        "as an RGB-D camera's aligned depth); the dataset always has depth",
    )
    parser.add_argument(
        "--preview", action="store_true", help="write DATASET/preview.png, a contact sheet per sequence"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the scene file's seed)")
    parser.add_argument(
        "--size", type=_size, default=None, metavar="WxH", help="image size, e.g. 640x480 (default: scene file)"
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="at most N frames per sequence (same paths, sampled more sparsely; for quick runs)",
    )
    parser.add_argument(
        "--png-level",
        type=int,
        default=0,
        choices=range(10),
        metavar="0-9",
        help="deflate level of the RGB PNGs (default 0 = uncompressed: fastest, ~1.5x the disk of level 1; "
        "lossless at every level)",
    )
    parser.add_argument(
        "--format",
        choices=("visloc", "7scenes"),
        default="visloc",
        help="visloc: the dataset layout (default); 7scenes: the layout of Microsoft 7-Scenes as distributed "
        "(640x480 colour, depth NOT registered, pose.txt of the depth camera; one scene), to be read back by "
        "`visloc convert 7scenes` (data/synth/sevenscenes.py)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATASET and bags")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..data.synth import apply_overrides, generate, load_scene
    from ..data.synth.renderer import RendererUnavailableError

    if args.bag and Path(args.bag).exists() and not Path(args.bag).is_dir():  # checked before rendering
        raise FileExistsError(f"--bag {args.bag} is a file; give a folder (one bag per sequence is made in it)")
    specs = []
    for scene in args.scene:
        spec = load_scene(scene)
        if args.seed is not None:
            spec.seed = int(args.seed)
        specs.append(apply_overrides(spec, size=args.size, max_frames=args.max_frames))
    if args.format == "7scenes":
        from ..data.synth.sevenscenes import write_7scenes

        if len(specs) != 1 or args.bag or args.size:
            raise ValueError("--format 7scenes writes one scene at 640x480 without bags (drop --bag/--size)")
        spec = load_scene(args.scene[0])
        if args.seed is not None:
            spec.seed = int(args.seed)
        try:
            out = write_7scenes(spec, args.out, args.overwrite, not args.no_progress, max_frames=args.max_frames)
        except RendererUnavailableError as err:
            print(f"visloc synth: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {out} (7-Scenes layout; read it with `visloc convert 7scenes {out} --out DATASET`)")
        return 0
    try:
        out = generate(
            specs,
            args.out,
            bag_dir=args.bag,
            storage=args.storage,
            compressed=args.compressed,
            preview=args.preview,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            png_level=args.png_level,
            bag_depth=args.depth,
        )
    except RendererUnavailableError as err:
        print(f"visloc synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" and bags under {args.bag}" if args.bag else ""))
    return 0
