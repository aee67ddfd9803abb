"""The ``visloc`` command line: one subcommand per pipeline stage.

Each subcommand lives in ``visloc_core/commands/<module>.py`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. They are imported only when used, so a
missing optional dependency of one stage does not break the others. The names are a contract
(shared DESIGN.md): tests, docs and users rely on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import yaml

from .atomic import OutputLockedError
from .interrupt import as_interrupted, exit_code, signal_name, signals_interrupt

# command -> (module, one-line help). Nested commands use a space: "dataset from-bag".
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "render a synthetic scene into a dataset (and optionally bags)"),
    "convert": ("convert", "convert a 7-Scenes, Cambridge Landmarks or TartanAir download into a dataset"),
    "dataset from-bag": ("from_bag", "make a dataset from a rosbag2 recording (sqlite3 or mcap)"),
    "train": ("train", "train a model (pose regressor, radiance field) into an artifact folder"),
    "nerf render": ("nerf_render", "render a trained radiance field at dataset or listed camera poses"),
    "map build": ("map_build", "build a retrieval map for relative-pose localization"),
    "map info": ("map_info", "what a relpose map holds: keyframes, 3D points, tracks, errors, calibration"),
    "map update": ("map_update", "add a new recording's keyframes to a relpose map without rebuilding it"),
    "map merge": ("map_merge", "merge two relpose maps of the same site into one"),
    "eval": ("evaluate", "evaluate an artifact on a dataset split: report.json, frames.csv, plots"),
    "replay": ("replay", "replay a bag through the real localizer node and score it"),
    "bench": ("bench", "speed and memory benchmarks, side by side with baselines"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visloc",
        description="visloc: visual relocalization for ROS 2 robots (see README.md).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        parts = name.split()
        target = sub
        if len(parts) == 2:
            if parts[0] not in groups:
                # every nested command with its own help, so the top-level --help names what each does
                members = [n for n in COMMANDS if n.split()[0] == parts[0] and " " in n]
                group_help = "; ".join(f"{n.split()[1]}: {COMMANDS[n][1]}" for n in members)
                gp = sub.add_parser(parts[0], help=group_help)
                groups[parts[0]] = gp.add_subparsers(dest=f"{parts[0]}_command", metavar="COMMAND", required=True)
            target = groups[parts[0]]
        p = target.add_parser(parts[-1], help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.set_defaults(_parser=p)
        try:
            mod = importlib.import_module(f"visloc_core.commands.{module}")
        except ImportError as err:
            p.set_defaults(_import_error=err)
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; SIGINT and SIGTERM interrupt it alike (visloc_core.interrupt): one line says what
    was kept, the exit status is 128 + the signal's number (130, 143)."""
    with signals_interrupt():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # before the command started (parsing, imports)
            print(f"visloc: interrupted by {signal_name(as_interrupted(exc).signum)}", file=sys.stderr)
            return exit_code(exc)


def _main(argv: list[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None) is not None:
        print(f"visloc: this command is unavailable: {args._import_error}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"visloc_core.commands.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt as exc:
        exc = as_interrupted(exc)
        kept = exc.kept or "partial results (if any) are kept as described in --help"
        print(f"visloc {_command_name(args)}: interrupted by {signal_name(exc.signum)}; {kept}", file=sys.stderr)
        return exit_code(exc)
    except (
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        ValueError,
        KeyError,
        yaml.YAMLError,
        OutputLockedError,
    ) as err:
        # Bad input: one clear line, no traceback (use -v for it).
        if args.verbose:
            raise
        print(f"visloc {_command_name(args)}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _command_name(args: argparse.Namespace) -> str:
    """'dataset from-bag', 'map build', 'train', ...: the command as typed."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _one_line(err: BaseException) -> str:
    if isinstance(err, yaml.YAMLError):
        # PyYAML's message spans lines (with a caret under the text); keep the problem and its place.
        mark = getattr(err, "problem_mark", None)
        where, fix = "", ""
        if mark is not None:
            in_file = not mark.name.startswith("<")  # '<unicode string>': a value typed on the command line
            where = f" ({mark.name + ' ' if in_file else ''}line {mark.line + 1}, column {mark.column + 1})"
            fix = "; fix the file's syntax" if in_file else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        return f"invalid YAML{where}: {problem}{fix}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])  # str(KeyError) adds quotes
    return " ".join(str(err).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
