"""``fit(trainer, module, ...)``: Lightning's ``trainer.fit`` with an interruption raised as
:class:`visloc_core.interrupt.Interrupted`.

Why: Lightning 2.x ends an interrupted fit with ``sys.exit``: Ctrl-C (KeyboardInterrupt) is caught,
the trainer torn down and ``sys.exit(1)`` called; a SIGTERM sets a flag and the loop raises
``SIGTERMException``, a ``SystemExit`` with no code, i.e. **exit status 0** with no artifact. Our
callers need to know that training stopped early (no artifact may be written from an unfinished
run), by which signal (the exit status) and what remains for ``--resume``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..interrupt import Interrupted


def resume_hint(last_ckpt: Path) -> str:
    """What an interrupted training keeps: the last finished epoch's checkpoint, and how to continue."""
    if last_ckpt.is_file():
        return (
            f"no artifact written; the checkpoint of the last finished epoch is kept in {last_ckpt}: "
            "rerun the same command with --resume to continue"
        )
    return f"no artifact written and no epoch finished (no {last_ckpt}): rerun the command to start again"


def fit(trainer: pl.Trainer, module: pl.LightningModule, last_ckpt: Path | None = None, **kwargs) -> None:
    """``trainer.fit(module, **kwargs)``; raises :class:`Interrupted` when a signal stopped it, saying
    what remains for ``--resume`` (:func:`resume_hint`) when the run writes ``last_ckpt``."""
    try:
        trainer.fit(module, **kwargs)
    except (SystemExit, KeyboardInterrupt) as exc:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        # Lightning's sys.exit(1) is raised while handling the KeyboardInterrupt: find it in the context
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, Interrupted):
            cause = cause.__context__
        if cause is not None:
            signum = cause.signum
        else:  # a plain Ctrl-C, or Lightning's own SIGTERM handling (no visloc handler installed)
            signum = signal.SIGTERM if isinstance(exc, SIGTERMException) else signal.SIGINT
        raise Interrupted(signum, resume_hint(last_ckpt) if last_ckpt else None) from exc
    if trainer.interrupted:  # a Lightning that returns after a graceful stop
        raise Interrupted(signal.SIGINT, resume_hint(last_ckpt) if last_ckpt else None)
