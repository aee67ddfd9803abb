"""visloc_core.interrupt: signals deferred over a write that an exception in the middle would corrupt.

The case from a fresh clone's run: SIGTERM arrived while Lightning saved a checkpoint; the
KeyboardInterrupt raised inside torch.save made its zip writer fail with "RuntimeError: unexpected pos",
so `visloc train` exited 1 with a traceback instead of 143. Reproduced here in-process with a real
signal sent from inside the pickling of the checkpoint (the handler then runs in the middle of
torch.save, as on that machine)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from visloc_core.interrupt import Interrupted, signals_deferred, signals_interrupt
from visloc_core.training.checkpoint_io import AtomicCheckpointIO


class _SignalsWhenPickled:
    """A checkpoint entry that sends SIGTERM to this process when torch.save pickles it."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return (dict, ())


def test_deferred_signal_acts_when_the_block_ends():
    ran_after_kill = False
    with pytest.raises(Interrupted) as info, signals_interrupt(), signals_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        ran_after_kill = True  # the signal waits for the end of the block
    assert ran_after_kill and info.value.signum == signal.SIGTERM


def test_sigterm_during_a_checkpoint_save_leaves_a_whole_checkpoint_then_interrupts(tmp_path):
    path = tmp_path / "last.ckpt"
    checkpoint = {"weights": torch.arange(200_000, dtype=torch.float32), "trigger": _SignalsWhenPickled(),
                  "more": torch.ones(100_000)}  # fmt: skip
    with pytest.raises(Interrupted) as info, signals_interrupt():
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert info.value.signum == signal.SIGTERM
    saved = torch.load(path, weights_only=False)
    assert torch.equal(saved["weights"], checkpoint["weights"]) and torch.equal(saved["more"], checkpoint["more"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left beside it
