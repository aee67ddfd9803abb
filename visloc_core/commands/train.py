"""``visloc train CONFIG.yaml --data DATASET --out ARTIFACT``: train a model into an artifact folder.

``--set key.sub=value`` overrides a key of the config (YAML value; an unknown key is an error naming
it). The config's ``task`` (default ``apr``) picks the trainer: ``visloc_core.training.<task>.train(cfg,
data, out, opts)`` (opts: training/options.TrainOptions). Configs live in config/models/ (see docs/apr.md). Stopped by SIGINT (Ctrl-C) or
SIGTERM: no artifact, the checkpoints stay for ``--resume``, exit status 130 / 143.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..config import add_set_argument, apply_overrides
from ..interrupt import Interrupted, as_interrupted
from ..training.config import load_yaml
from ..training.options import TrainOptions
from . import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (e.g. config/models/posenet.yaml)")
    parser.add_argument(
        "--data", required=True, help="dataset folder in the visloc layout (visloc synth/convert/dataset)"
    )
    parser.add_argument("--out", required=True, help="artifact folder to write (written atomically at the end)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in ARTIFACT.train/checkpoints/last.ckpt",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="override the number of epochs (with several stages: scaled proportionally, >= 1 each)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="Lightning accelerator: cpu (default of the configs), cuda/gpu, mps or auto (overrides train.device)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing ARTIFACT and start over in ARTIFACT.train (drops its checkpoints)",
    )
    add_set_argument(parser, "train.lr=4.5e-4")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="folder for checkpoints and logs (default: ARTIFACT.train next to the artifact)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_yaml(args.config), args.set)  # checked by the trainer's strict merge
    task = cfg.get("task", "apr")
    if not isinstance(task, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", task):
        raise ValueError(f"{args.config}: task must be a trainer module name like 'apr', got {task!r}")
    try:
        trainer = importlib.import_module(f"visloc_core.training.{task}")
    except ModuleNotFoundError as err:
        if err.name == f"visloc_core.training.{task}":
            raise ValueError(f"{args.config}: unknown task {task!r} (no module visloc_core.training.{task})") from err
        raise
    try:
        path = trainer.train(cfg, args.data, args.out, TrainOptions.from_args(args))
    except KeyboardInterrupt as exc:  # SIGINT / SIGTERM (visloc_core.interrupt); the CLI prints `kept`
        exc = as_interrupted(exc)
        if exc.kept:  # the trainer said what it kept (interrupted while fitting)
            raise exc from None
        kept = ("no artifact written; the checkpoints so far (if any) stay in the work folder (--work-dir, default "
                "ARTIFACT.train): rerun the same command with --resume to continue")  # fmt: skip
        raise Interrupted(exc.signum, kept) from None
    if path is None:
        print("training did not finish; checkpoints are kept, continue with --resume", file=sys.stderr)
        return 1
    print(f"artifact: {path}")
    return 0
