"""``visloc convert DATASET SRC --out DATASET``: one subcommand per converter in
:data:`visloc_core.data.convert.CONVERTERS` (each declares its own options and ``convert``).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.convert import CONVERTERS

    parser.description = (
        "Convert a public dataset download into the visloc dataset layout (docs/dataset_layout.md). "
        "Poses are converted from each dataset's documented convention to T_world_cam (OpenCV camera, "
        "metres); the output is written atomically (nothing is left at --out on failure)."
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name in CONVERTERS.names():
        conv = CONVERTERS.get(name)
        p = sub.add_parser(name, help=conv.help, description=conv.description)
        p.add_argument("src", metavar="SRC", help="the download's root folder (or one scene folder)")
        p.add_argument("--out", required=True, metavar="DATASET", help="output dataset folder")
        p.add_argument("--scenes", nargs="+", metavar="SCENE", help="convert only these scenes (default: all)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        conv.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..data.convert import CONVERTERS

    conv = CONVERTERS.get(args.dataset)
    summary = conv.convert(
        args.src,
        args.out,
        scenes=args.scenes,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **conv.options(args),
    )
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"dataset written to {summary.out}")
    return 0
