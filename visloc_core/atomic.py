"""Atomic replacement of output folders: every tool builds its result (dataset, bag, artifact, map)
in a temporary folder beside the target and swaps it in with :func:`replace_folder`."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def replace_folder(built: str | Path, out: str | Path) -> Path:
    """Move the finished folder ``built`` to ``out`` (both on one filesystem) by rename.

    An existing ``out`` is first renamed aside and removed afterwards, so at every moment ``out``
    is either the old complete folder or the new one, never a mix. Returns ``out``."""
    built, out = Path(built), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        try:
            os.rename(built, out)
        except BaseException:
            os.rename(old, out)  # the swap failed: put the old folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, out)
    return out
