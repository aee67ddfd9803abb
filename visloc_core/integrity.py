"""Content checksums of artifact folders (APR models, relpose maps, relpose network checkpoints).

Writers record ``"files": {relative path: {"bytes": N, "sha256": HEX}}`` for every file of the folder
(except the metadata file that holds the table) just before they write that metadata last;
:func:`verify_files` checks them when the artifact is loaded, so a truncated, emptied or bit-flipped
file is refused with one line naming it and what to do, instead of failing somewhere inside torch,
faiss or numpy, or worse, loading and producing wrong poses.

Policy: every listed file is checked, size and SHA-256, at every load. Hashing runs at 1.3 GB/s of CPU per
core (hashlib, OpenSSL; measured here), so a 100 MB map costs ~0.1 s next to the seconds its models take to load;
a file present but not listed (added by hand) is ignored. Artifacts written before checksums existed
(no "files") load with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message names the file and what to do (one line)."""


def check_format_version(meta: dict, meta_file: Path, newest: int, remedy: str, what: str = "artifact") -> int:
    """The metadata's format_version, or ArtifactError when it is missing or not one of 1..newest."""
    if "format_version" not in meta:
        raise ArtifactError(f"{meta_file} has no format_version; the {what} is incomplete: {remedy}")
    version = meta["format_version"]
    if not isinstance(version, int) or not 1 <= version <= newest:
        raise ArtifactError(
            f"{meta_file}: format_version {version!r} is not one this visloc reads (1..{newest}): upgrade visloc, "
            f"or {remedy}"
        )
    return version


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | Path, exclude: tuple[str, ...] = ("artifact.json",)) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file below ``folder`` except ``exclude`` (top level)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
    return out


def verify_files(folder: str | Path, meta: dict, remedy: str, meta_name: str = "artifact.json") -> None:
    """Raise :class:`ArtifactError` for the first file of ``meta["files"]`` that is missing, of another
    size or of another content. ``remedy`` says what to do (e.g. "rebuild it with `visloc map build`")."""
    folder = Path(folder)
    files = meta.get("files")
    if files is None:
        log.warning("%s has no checksums (written by an older visloc): damaged files cannot be detected", folder)
        return
    if not isinstance(files, dict):
        raise ArtifactError(f"{folder / meta_name}: 'files' is not a table of checksums; {remedy}")
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            raise ArtifactError(f"{p} is missing; the artifact is incomplete: {remedy}")
        size = p.stat().st_size
        if size != int(want.get("bytes", -1)):
            what = "empty" if size == 0 else f"{size} bytes instead of {want.get('bytes')}"
            raise ArtifactError(f"{p} is damaged ({what}, truncated or replaced): {remedy}")
        if sha256_of(p) != want.get("sha256"):
            raise ArtifactError(f"{p} is damaged (its content differs from when it was written): {remedy}")
