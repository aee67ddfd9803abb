"""The options of a training run besides its config, dataset and output folder.

``visloc train`` builds one :class:`TrainOptions` from its command line (:meth:`TrainOptions.from_args`)
and hands it to the trainer the config's ``task`` names (``training/<task>.py``: ``train(cfg, data, out,
opts)``); trainers that run other trainers as stages (PoseFormer_sem, PMNet, NeRF-P) pass typed options on
with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainOptions:
    """``config``: the config file, whose folder relative paths inside it (stage configs) resolve against
    (None: the current folder). ``device``: Lightning accelerator overriding ``train.device``. ``epochs``:
    overrides the config's epochs (each trainer says how: scaled over stages, or NeRF-P's hundreds of steps).
    ``resume``: continue from ``WORK/checkpoints/last.ckpt``. ``overwrite``: replace an existing output and
    start over. ``work_dir``: checkpoints and logs (None: ``OUT.train`` next to the output)."""

    config: Path | None = None
    device: str | None = None
    epochs: int | None = None
    resume: bool = False
    overwrite: bool = False
    work_dir: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        """The options of ``visloc train``'s parsed command line."""
        return cls(
            config=Path(args.config) if args.config else None,
            device=args.device or None,
            epochs=int(args.epochs) if args.epochs else None,
            resume=bool(args.resume),
            overwrite=bool(args.overwrite),
            work_dir=Path(args.work_dir) if args.work_dir else None,
        )

    def config_dir(self) -> Path:
        """The folder relative paths of the config resolve against."""
        return self.config.resolve().parent if self.config else Path.cwd()
