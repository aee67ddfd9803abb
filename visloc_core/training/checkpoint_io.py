"""Lightning checkpoints written through visloc_core.atomic.

Lightning's default writer stages a checkpoint in the system temp folder and then moves it: a copy
across filesystems that is not atomic, and a killed run leaves checkpoint-sized files in /tmp.
:class:`AtomicCheckpointIO` writes ``last.ckpt`` / ``best.ckpt`` through :func:`atomic_file`
(a temporary file beside the target, fsync-ed, renamed over it; stale temporaries of dead
processes are removed by the next write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ..atomic import atomic_file
from ..interrupt import signals_deferred


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are atomic renames (local paths only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        # a signal mid-save waits until the file is whole and renamed into place (torch.save would turn it
        # into a RuntimeError): the run stops with the checkpoint it was writing
        with signals_deferred(), atomic_file(Path(path)) as f:
            torch.save(checkpoint, f)
