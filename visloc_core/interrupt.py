"""Interruption by a signal: SIGINT (Ctrl-C) and SIGTERM (``kill``, systemd, a batch scheduler,
``docker stop``) end a ``visloc`` command the same way.

``with signals_interrupt():`` (the ``visloc`` command line runs every command in it) makes both raise
:class:`Interrupted`, a ``KeyboardInterrupt``: every ``except KeyboardInterrupt`` / ``with
atomic_folder(...)`` clean-up of the tools runs for SIGTERM as it does for Ctrl-C (temporaries
removed or kept as partial results, locks released), instead of Python's default for SIGTERM
(the process dies at once) or Lightning's (training stops after the batch and the process exits 0).
The command line then prints one line naming the signal and what was kept, and exits with the
shell's code for a death by that signal: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """Raised when the process is asked to stop by ``signum``; ``kept`` says what partial results
    remain and how to continue (None: nothing to say beyond the command's --help)."""

    def __init__(self, signum: int = signal.SIGINT, kept: str | None = None) -> None:
        super().__init__(signal_name(signum) + (f": {kept}" if kept else ""))
        self.signum = int(signum)
        self.kept = kept


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only: elsewhere
    Python cannot set handlers, and nothing changes); the previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait: the first one that arrives is delivered again, to the
    handler in place before the block, when the block ends (main thread only; elsewhere nothing changes).

    For short writes that an exception in the middle turns into another error: ``torch.save``'s zip writer
    answers an interruption with ``RuntimeError: unexpected pos`` from its ``__exit__``, so a SIGTERM during
    a checkpoint save ended `visloc train` with a traceback and exit 1 instead of 143 (seen on a fresh
    clone). The file is finished (and renamed into place by the caller's atomic write), then the signal acts.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


def as_interrupted(exc: KeyboardInterrupt, kept: str | None = None) -> Interrupted:
    """``exc`` as an :class:`Interrupted` (a plain KeyboardInterrupt is SIGINT), with ``kept`` if given."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    kept = kept or (exc.kept if isinstance(exc, Interrupted) else None)
    return Interrupted(signum, kept)


def exit_code(exc: KeyboardInterrupt) -> int:
    """The exit status of a command ended by ``exc``: 128 + the signal's number, as a shell reports it."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT))
