"""Converters from public dataset downloads to the visloc layout (``visloc convert``).

Each converter follows the dataset's documented on-disk format (shared DATASETS.md) and takes its
pose convention ONLY from :mod:`visloc_core.geometry.conventions`. They share:

- ``convert(src, out, scenes=None, overwrite=False, progress=True, **options) -> ConvertSummary``
- errors on malformed input as :class:`ConvertError`, naming the file (and line) and what to do;
- atomic output through :class:`~visloc_core.data.layout.DatasetWriter`.

Each module registers a :class:`Converter` in ``CONVERTERS`` (its command-line options and ``convert``),
so ``visloc convert NAME`` needs nothing per dataset. To add one: one module here + one line in
``CONVERTERS``'s table.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...registry import Registry
from ..png import encoded_image_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Converter:
    """A dataset converter as ``visloc convert NAME`` sees it."""

    help: str  # one line for ``visloc convert --help``
    description: str  # the dataset's conventions, for ``visloc convert NAME --help``
    add_arguments: Callable[[argparse.ArgumentParser], None]  # its own options (SRC, --out, --scenes,
    # --overwrite and --no-progress are common to all)
    options: Callable[[argparse.Namespace], dict]  # parsed options -> keyword arguments of ``convert``
    convert: Callable[..., ConvertSummary]  # (src, out, scenes, overwrite, progress, **options)


# name on the command line -> Converter, registered by its module (imported on first use)
CONVERTERS: Registry[Converter] = Registry(
    "dataset converter",
    modules={
        "7scenes": "visloc_core.data.convert.sevenscenes",
        "cambridge": "visloc_core.data.convert.cambridge",
        "tartanair": "visloc_core.data.convert.tartanair",
    },
)


class ConvertError(ValueError):
    """The source folder does not follow the dataset's format; the message names the file and line."""


@dataclass
class ConvertSummary:
    out: Path | None = None
    n_frames: int = 0
    scenes: dict[str, int] = field(default_factory=dict)  # scene -> frames written
    skipped: Counter = field(default_factory=Counter)  # reason -> frames not written
    caveats: Counter = field(default_factory=Counter)  # caveat -> frames written with it
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"frames written: {self.n_frames} in {len(self.scenes)} scene(s)"]
        out += [f"  {sc}: {n}" for sc, n in sorted(self.scenes.items())]
        if self.skipped:
            out.append("frames skipped:")
            out += [f"  {n:6d}  {r}" for r, n in self.skipped.most_common()]
        if self.caveats:
            out.append("frames written with a caveat:")
            out += [f"  {n:6d}  {r}" for r, n in self.caveats.most_common()]
        out += [f"note: {n}" for n in self.notes]
        return out


def image_file_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG file from its header (no decoding)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as err:
        raise ConvertError(f"cannot read image {path}: {err}") from err
    try:
        return encoded_image_size(head)
    except ValueError as err:
        raise ConvertError(f"{path}: {err}") from err


def select_scenes(found: list[str], wanted: list[str] | None, src: Path, what: str) -> list[str]:
    """Scenes to convert: all found, or the --scenes subset (error naming unknown ones)."""
    if not found:
        raise ConvertError(f"{src}: no {what} found; is this the dataset's root folder?")
    if not wanted:
        return sorted(found)
    missing = [s for s in wanted if s not in found]
    if missing:
        raise ConvertError(f"--scenes {', '.join(missing)}: not in {src}; found: {', '.join(sorted(found))}")
    return list(wanted)


def read_text_lines(path: Path) -> list[str]:
    """Lines of a text file without line endings (CRLF tolerated); ConvertError if unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(f"cannot read {path}: {err}") from err
