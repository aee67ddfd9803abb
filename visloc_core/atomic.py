"""Atomic output: the ONE way visloc tools write folders (datasets, bags, artifacts, maps,
checkpoints) and single files (reports, checkpoints).

Usage::

    with atomic_folder(out, overwrite=args.overwrite) as tmp:   # tmp: a Path beside out
        ...write everything into tmp...
    # here out is the complete new folder (or, after an exception, untouched)

    with atomic_file(path) as f:        # binary file object of a temporary file beside path
        f.write(data)

What it guarantees:

- **Never half-written.** Results are built in ``.NAME.partial-PID-RANDOM`` next to ``out`` (same
  filesystem) and renamed into place at the end. An existing ``out`` (``overwrite=True``) is
  swapped with the new folder by one ``renameat2(RENAME_EXCHANGE)`` system call, so ``out`` exists
  at every moment, even if the process is killed mid-way; where the filesystem cannot exchange, two
  renames are used and a kill between them is repaired on the next run (the old folder, parked as
  ``.NAME.old-PID-RANDOM``, is renamed back).
- **One writer per output.** ``.NAME.lock`` (``flock``, released by the kernel when the process
  dies, so no stale lock survives a kill) makes a second ``visloc map build``/``train``/... into
  the same ``out`` fail at once with :class:`OutputLockedError` naming the other process.
- **No leftovers.** Temporary folders are removed on error; ``.NAME.partial-PID-*`` and
  ``.NAME.old-PID-*`` of processes that no longer run (checked with ``os.kill(pid, 0)``, e.g. after
  ``kill -9``) are removed (or restored) by the next run writing ``out``.
- **Partial results on Ctrl-C** where a tool promises them (``keep_partial_on_interrupt=True``):
  the temporary folder is renamed to ``.NAME.interrupted-PID`` (not cleaned automatically).
- **Modes as mkdir/open give them**: folders ``0777 & ~umask`` (0755 with the usual umask 022),
  files ``0666 & ~umask`` (0644), unlike ``tempfile.mkdtemp``'s private 0700.

Durability: files are ``fsync``-ed by :func:`atomic_file`; folders are not (a kill cannot tear
them; a power cut may lose the last seconds of a folder written just before it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (AttributeError, OSError):  # not glibc >= 2.28 / not Linux: two renames (see the docstring)
    _renameat2 = None


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


# ------------------------------------------------------------------------------------- renames
def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False when the kernel or filesystem cannot do it (caller falls
    back), OSError for real failures (EEXIST, ENOENT, ...)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _between_renames() -> None:
    """Called between the two renames of the fallback swap (tests kill the process here)."""


def _swap_in(built: Path, out: Path, overwrite: bool, exchange: bool = True) -> None:
    """Move ``built`` to ``out``; an existing ``out`` is replaced only with ``overwrite``."""
    if not os.path.lexists(out):
        try:
            if _rename2(built, out, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            pass  # appeared meanwhile: handled below
        else:
            if not os.path.lexists(out):
                os.rename(built, out)
                return
    if not overwrite:
        raise FileExistsError(f"{out} exists (written by another process meanwhile?); pass --overwrite to replace it")
    if exchange and _rename2(built, out, _RENAME_EXCHANGE):
        shutil.rmtree(built, ignore_errors=True)  # now holds the old folder
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    _between_renames()
    try:
        os.rename(built, out)
    except BaseException:
        os.rename(old, out)  # the swap failed: put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(built: str | Path, out: str | Path) -> Path:
    """Move the finished folder ``built`` to ``out`` (same filesystem), replacing an existing ``out``
    so that ``out`` is at every moment the old complete folder or the new one. Returns ``out``."""
    _swap_in(Path(built), Path(out), overwrite=True)
    return Path(out)


# --------------------------------------------------------------------------------- stale files
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(out: str | Path) -> list[str]:
    """Remove ``.NAME.partial-PID-*`` of dead processes beside ``out`` and restore or remove their
    ``.NAME.old-PID-*`` (restored when ``out`` is missing: a kill between the two renames of a
    fallback swap). Returns what was done, one line per entry (also logged)."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)-[0-9a-f]+$")
    done = []
    olds = []
    for entry in sorted(os.listdir(parent)):
        m = pattern.match(entry)
        if not m or _pid_alive(int(m.group(2))):
            continue
        path = parent / entry
        if m.group(1) == "old":
            olds.append(path)
            continue
        _remove(path)
        done.append(f"removed {path} (left by process {m.group(2)}, which no longer runs)")
    for path in olds:
        if not os.path.lexists(out):
            os.rename(path, out)
            done.append(f"restored {out} from {path} (a replacement was interrupted between its two renames)")
        else:
            _remove(path)
            done.append(f"removed {path} (the replaced version of {out}, left by a killed process)")
    for line in done:
        log.warning(line)
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------------------- locks
_held: dict[Path, list] = {}  # lock path -> [fd, depth]: re-entrant within this process
_held_guard = threading.Lock()


def lock_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | Path, what: str = "output") -> Iterator[None]:
    """Hold the exclusive lock of ``out`` (re-entrant in one process; released by the kernel when
    the process dies). Raises :class:`OutputLockedError` at once if another process holds it."""
    path = lock_path_for(Path(out).absolute())
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held_guard:
        held = _held.get(path)
        if held is not None:
            held[1] += 1
    if held is None:
        fd = _acquire(path, Path(out), what)
        with _held_guard:
            _held[path] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            entry = _held[path]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[path]
        if last:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still holding it: a waiting process re-checks the inode
            os.close(entry[0])


def _acquire(path: Path, out: Path, what: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise OutputLockedError(
                f"{out} is being written by another process (pid {holder}, lock {path}): wait for it to finish "
                f"or choose another {what}"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed the file between our open and flock: take the new one


# -------------------------------------------------------------------------------------- folders
class AtomicFolder:
    """The context manager behind :func:`atomic_folder` (see the module docstring).

    ``create=False`` gives a path ``.NAME.partial-PID-RANDOM/NAME`` that does not exist yet, for
    writers that create their folder themselves and name files after it (rosbags' Writer names the
    storage file after its folder). :meth:`commit` may be called inside the ``with`` block (the
    block's end then does nothing more)."""

    def __init__(
        self,
        out: str | Path,
        overwrite: bool = False,
        keep_partial_on_interrupt: bool = False,
        create: bool = True,
        what: str = "--out",
    ) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        self.keep_partial_on_interrupt = keep_partial_on_interrupt
        self.create = create
        self.what = what
        self._root = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.path = self._root if create else self._root / self.out.name
        self._lock = output_lock(self.out, what)
        self._entered = False
        self.done = False

    def __enter__(self) -> Path:
        self.open()
        return self.path

    def open(self) -> AtomicFolder:
        """Lock, clean stale leftovers, check ``overwrite``, create the temporary folder."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        self._entered = True
        try:
            clean_stale(self.out)
            if os.path.lexists(self.out) and not self.overwrite:
                raise FileExistsError(f"{self.out} exists; choose another {self.what} or pass --overwrite")
            os.mkdir(self._root, 0o777)  # the umask applies, as for any folder
        except BaseException:
            self._release()
            raise
        return self

    def commit(self) -> Path:
        """Swap the finished temporary folder in as ``out``."""
        if self.done:
            return self.out
        try:
            _swap_in(self.path, self.out, self.overwrite)
            if self._root != self.path:
                _remove(self._root)
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._release()
        return self.out

    def abort(self, interrupted: bool = False) -> Path | None:
        """Drop the temporary folder (or keep it as ``.NAME.interrupted-PID`` when ``interrupted``
        and the tool keeps partial results); returns the kept folder, if any."""
        if self.done:
            return None
        self.done = True
        kept = None
        try:
            if interrupted and self.keep_partial_on_interrupt and self.path.exists():
                kept = self.out.with_name(f".{self.out.name}.interrupted-{os.getpid()}")
                _remove(kept)
                os.rename(self.path, kept)
                log.warning("interrupted: the partial result is kept in %s (not a usable %s)", kept, self.out.name)
            _remove(self._root)
        finally:
            self._release()
        return kept

    def _release(self) -> None:
        if self._entered:
            self._entered = False
            self._lock.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort(interrupted=issubclass(exc_type, KeyboardInterrupt))


def atomic_folder(
    out: str | Path,
    overwrite: bool = False,
    keep_partial_on_interrupt: bool = False,
    create: bool = True,
    what: str = "--out",
) -> AtomicFolder:
    """``with atomic_folder(out) as tmp:`` write into ``tmp``; ``out`` appears complete at the end."""
    return AtomicFolder(out, overwrite, keep_partial_on_interrupt, create, what)


# ---------------------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a temporary file beside it, fsync-ed and renamed over ``path`` at the
    end (readers see the old or the new file, never a part). ``mode``: 'wb' or 'w'."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically replace ``path`` by ``data``."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically replace ``path`` by ``text`` (UTF-8)."""
    return write_bytes(path, text.encode())
