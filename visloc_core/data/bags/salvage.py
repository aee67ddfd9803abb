"""Reading what is readable from a damaged rosbag2: a truncated .mcap or .db3, or a folder without
metadata.yaml (a recording killed before it was closed).

rosbags (like rosbag2) refuses such bags as a whole: an .mcap without its footer ("File end magic is
invalid"), a .db3 cut short ("database disk image is malformed"). Their messages are still there:

- **mcap**: records follow each other from the start of the file (opcode, length, content); the
  footer and summary at the end are only an index. The file is scanned record by record (schemas,
  channels, messages, and the messages inside chunks: uncompressed, zstd or lz4; a chunk cut short
  is decompressed as far as it goes) until the first incomplete or invalid record.
- **sqlite3**: a file cut short claims more pages in its header than it has, so SQLite refuses it.
  A copy truncated to whole pages with the page count corrected opens; its rows are read in
  insertion order until the first one on a lost page.

:class:`SalvageReader` offers the part of rosbags' ``AnyReader`` interface that from-bag and replay
use (``connections``, ``topics``, ``messages()``, ``deserialize()``, ``close()``), and
:attr:`SalvageReader.report` says what was lost and what to do, one line each.
"""

from __future__ import annotations

import logging
import mmap
import shutil
import sqlite3
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"


class SalvageError(ValueError):
    """Nothing could be read."""


@dataclass(frozen=True)
class SalvagedConnection:
    """What from-bag needs of a rosbags Connection."""

    id: int
    topic: str
    msgtype: str
    msgcount: int


@dataclass(frozen=True)
class _TopicInfo:
    msgtype: str
    msgcount: int


@dataclass
class _Scan:
    connections: dict[int, SalvagedConnection] = field(default_factory=dict)
    msgdefs: dict[str, str] = field(default_factory=dict)  # msgtype -> ros2msg text
    counts: Counter = field(default_factory=Counter)  # connection id -> messages readable
    last_time_ns: int | None = None
    damage: str = ""  # what is wrong with the file, '' when it reads to the end


def storage_files(bag_dir: Path) -> list[Path]:
    return sorted(p for p in Path(bag_dir).iterdir() if p.suffix in (".mcap", ".db3") and p.is_file())


# -------------------------------------------------------------------------------------------- mcap
def _str(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4 : pos + 4 + n]).decode("utf-8", "replace"), pos + 4 + n


def _mcap_records(buf: memoryview, limit: int) -> Iterator[tuple[int, memoryview, int]]:
    """(opcode, content, end offset) of the complete records in buf[:limit]."""
    pos = 0
    while pos + 9 <= limit:
        op = buf[pos]
        (n,) = struct.unpack_from("<Q", buf, pos + 1)
        if op == 0 or op > 0x0F or pos + 9 + n > limit:
            return
        yield op, buf[pos + 9 : pos + 9 + n], pos + 9 + n
        pos += 9 + n


def _decompress_partial(compression: str, data: bytes) -> bytes:
    """As much of a (possibly truncated) compressed chunk as decodes."""
    if compression == "":
        return data
    try:
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if compression == "lz4":
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor().decompress(data)
    except Exception as err:  # a damaged stream: what came out before the damage is lost here
        log.debug("chunk decompression stopped: %s", err)
        return b""
    raise SalvageError(f"unknown mcap chunk compression {compression!r}")


def _scan_mcap(path: Path, want: set[int] | None, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    """Messages (channel id, log time ns, CDR bytes) of an .mcap read record by record; fills ``scan``."""
    with open(path, "rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise SalvageError(f"{path} is not an MCAP file (no magic bytes at the start)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # pages in as read, not the whole file
    view = memoryview(mm)
    try:
        yield from _scan_mcap_buffer(view, want, scan)
    finally:
        view.release()
        try:
            mm.close()
        except BufferError:  # a slice still referenced by an abandoned generator: the GC closes it
            log.debug("mcap mapping of %s closed later", path)


def _scan_mcap_buffer(buf: memoryview, want: set[int] | None, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    schemas: dict[int, tuple[str, str]] = {}
    footer = False
    end = len(MCAP_MAGIC)

    def handle(op: int, rec: memoryview, inner: bool) -> Iterator[tuple[int, int, bytes]]:
        nonlocal footer
        if op == 0x03:  # Schema
            (sid,) = struct.unpack_from("<H", rec, 0)
            name, p = _str(rec, 2)
            _enc, p = _str(rec, p)
            (n,) = struct.unpack_from("<I", rec, p)
            schemas[sid] = (name, bytes(rec[p + 4 : p + 4 + n]).decode("utf-8", "replace"))
        elif op == 0x04:  # Channel
            cid, sid = struct.unpack_from("<HH", rec, 0)
            topic, _ = _str(rec, 4)
            msgtype, msgdef = schemas.get(sid, ("", ""))
            if cid not in scan.connections:
                scan.connections[cid] = SalvagedConnection(cid, topic, msgtype, 0)
                if msgdef:
                    scan.msgdefs[msgtype] = msgdef
        elif op == 0x05:  # Message
            cid, _seq, log_time = struct.unpack_from("<HIQ", rec, 0)
            if cid in scan.connections:
                scan.counts[cid] += 1
                scan.last_time_ns = log_time
                if want is None or cid in want:
                    yield cid, log_time, bytes(rec[22:])
        elif op == 0x06 and not inner:  # Chunk
            compression, p = _str(rec, 28)
            (n,) = struct.unpack_from("<Q", rec, p)
            payload = bytes(rec[p + 8 : p + 8 + n])
            inner_buf = memoryview(_decompress_partial(compression, payload))
            for op2, rec2, _ in _mcap_records(inner_buf, len(inner_buf)):
                yield from handle(op2, rec2, True)
        elif op == 0x02:
            footer = True

    for op, rec, end in _mcap_records(buf[len(MCAP_MAGIC) :], len(buf) - len(MCAP_MAGIC)):
        end += len(MCAP_MAGIC)
        yield from handle(op, rec, False)
    if end < len(buf) - (len(MCAP_MAGIC) if footer else 0):
        # an incomplete record at the end: a chunk cut short still holds messages
        op = buf[end]
        if op == 0x06 and end + 9 + 28 <= len(buf):
            rec = buf[end + 9 :]
            try:
                compression, p = _str(rec, 28)
                payload = bytes(rec[p + 8 :])
                inner_buf = memoryview(_decompress_partial(compression, payload))
                for op2, rec2, _ in _mcap_records(inner_buf, len(inner_buf)):
                    yield from handle(op2, rec2, True)
            except (struct.error, SalvageError) as err:
                log.debug("partial chunk unreadable: %s", err)
        scan.damage = f"the file ends inside (or is damaged at) the record at byte {end} of {len(buf)}; no footer"
    elif not footer:
        scan.damage = f"no footer and summary after byte {end} of {len(buf)}"


# ------------------------------------------------------------------------------------------ sqlite
def _sqlite_copy(path: Path, tmp_dir: Path) -> Path:
    """A copy of the .db3 truncated to whole pages with its header's page count set to match."""
    data = bytearray(path.read_bytes()[:100])
    if not data.startswith(SQLITE_MAGIC):
        raise SalvageError(f"{path} is not an SQLite database (no header)")
    (page_size,) = struct.unpack_from(">H", data, 16)
    page_size = 65536 if page_size == 1 else page_size
    n_pages = path.stat().st_size // page_size
    copy = tmp_dir / path.name
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as f:
        f.truncate(n_pages * page_size)
        f.seek(28)
        f.write(struct.pack(">I", n_pages))
    # Indexes whose pages are lost make the whole schema unreadable; rows are read by id, so the
    # copy does without them.
    con = sqlite3.connect(copy)
    try:
        con.execute("PRAGMA writable_schema = ON")
        con.execute("DELETE FROM sqlite_master WHERE type = 'index'")
        con.commit()
    except sqlite3.DatabaseError as err:
        log.debug("could not drop the indexes of %s: %s", copy, err)
    finally:
        con.close()
    return copy


class _SqliteSource:
    def __init__(self, path: Path, scan: _Scan) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="visloc-salvage-"))
        self.db = _sqlite_copy(path, self.tmp)
        self.con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = self.con.execute("SELECT id, name, type FROM topics").fetchall()
        except sqlite3.DatabaseError as err:
            self.close()
            raise SalvageError(
                f"{path}: the topics table is unreadable ({err}); try `sqlite3 {path.name} .recover | sqlite3 "
                "fixed.db3`, then `ros2 bag reindex` on a folder holding fixed.db3"
            ) from err
        for tid, name, msgtype in rows:
            scan.connections[int(tid)] = SalvagedConnection(int(tid), str(name), str(msgtype), 0)
        try:
            for msgtype, text in self.con.execute(
                "SELECT topic_type, encoded_message_definition FROM message_definitions"
            ):
                scan.msgdefs[str(msgtype)] = str(text)
        except sqlite3.DatabaseError:
            pass  # older bag versions have no message definitions: the standard types are known anyway

    def messages(self, want: set[int] | None, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
        last_id = 0
        try:
            for rid, tid, t, blob in self.con.execute("SELECT id, topic_id, timestamp, data FROM messages ORDER BY id"):
                last_id = rid
                scan.counts[tid] += 1
                scan.last_time_ns = int(t)
                if want is None or tid in want:
                    yield int(tid), int(t), bytes(blob)
        except sqlite3.DatabaseError as err:
            scan.damage = f"rows after id {last_id} are on lost pages ({err})"

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -------------------------------------------------------------------------------------- the reader
class SalvageReader:
    """Reads a damaged bag folder (or its single storage file) as far as it goes (see the module docstring)."""

    def __init__(self, bag_dir: str | Path, reason: str = "") -> None:
        self.bag_dir = Path(bag_dir)
        files = storage_files(self.bag_dir)
        if len(files) != 1:
            raise SalvageError(
                f"{self.bag_dir}: cannot recover a bag with {len(files)} storage files (.mcap/.db3); "
                "run `ros2 bag reindex` on it first"
            )
        self.file = files[0]
        self.reason = reason
        self.kind = "mcap" if self.file.suffix == ".mcap" else "sqlite3"
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self._scan = _Scan()
        self._sqlite = _SqliteSource(self.file, self._scan) if self.kind == "sqlite3" else None
        # a first pass counts what is readable (and, for mcap, finds the channels)
        for _ in self._iter(None, self._scan):
            pass
        if not self._scan.connections:
            self.close()
            raise SalvageError(f"{self.file}: no readable topic ({self._scan.damage or reason})")
        self.connections = [
            SalvagedConnection(c.id, c.topic, c.msgtype, self._scan.counts[c.id])
            for c in self._scan.connections.values()
        ]
        self.topics = {c.topic: _TopicInfo(c.msgtype, c.msgcount) for c in self.connections}
        self._register_types()

    def _iter(self, want: set[int] | None, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
        if self._sqlite is not None:
            return self._sqlite.messages(want, scan)
        return _scan_mcap(self.file, want, scan)

    def _register_types(self) -> None:
        known = set(self.typestore.types)
        add = {}
        for msgtype, text in self._scan.msgdefs.items():
            if msgtype and msgtype not in known and text:
                try:
                    add.update(get_types_from_msg(text.split("\n=====")[0], msgtype))
                except Exception as err:  # an unknown custom type stays unreadable; others are fine
                    log.debug("cannot register %s: %s", msgtype, err)
        if add:
            self.typestore.register(add)

    def messages(self, connections=None) -> Iterator[tuple[SalvagedConnection, int, bytes]]:
        """(connection, log time ns, raw CDR) in file order (recording order)."""
        by_id = {c.id: c for c in self.connections}
        want = None if connections is None else {c.id for c in connections}
        for cid, t, raw in self._iter(want, _Scan(connections=dict(self._scan.connections))):
            yield by_id[cid], t, raw

    def deserialize(self, raw: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    @property
    def report(self) -> list[str]:
        """What is damaged, what was read, what is lost, and what to do."""
        s = self._scan
        n_read = sum(s.counts.values())
        lines = [
            f"damaged bag {self.file}: {s.damage or self.reason or 'unreadable by rosbags'}; read {n_read} messages"
            + (f" up to bag time {s.last_time_ns * 1e-9:.3f} s" if s.last_time_ns is not None else "")
        ]
        expected = _expected_counts(self.bag_dir)
        if expected:
            lost = {t: n - self.topics.get(t, _TopicInfo("", 0)).msgcount for t, n in expected.items()}
            lost = {t: n for t, n in lost.items() if n > 0}
            total = sum(expected.values())
            lines.append(
                f"lost {sum(lost.values())} of {total} messages listed in metadata.yaml"
                + (": " + ", ".join(f"{t} {n}" for t, n in sorted(lost.items())) if lost else "")
            )
        else:
            lines.append("no metadata.yaml: `ros2 bag reindex BAG` recreates it from the storage file")
        if self.kind == "mcap":
            lines.append(
                f"to repair the file itself: `mcap recover {self.file.name} -o fixed.mcap` (mcap CLI), then "
                "`ros2 bag reindex` on a folder holding fixed.mcap"
            )
        else:
            lines.append(
                f"to save what SQLite can: `sqlite3 {self.file.name} .recover | sqlite3 fixed.db3`, then "
                "`ros2 bag reindex` on a folder holding fixed.db3"
            )
        return lines


def _expected_counts(bag_dir: Path) -> dict[str, int]:
    mf = bag_dir / "metadata.yaml"
    if not mf.is_file():
        return {}
    try:
        info = yaml.safe_load(mf.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"]) for t in info.get("topics_with_message_count", [])}
    except Exception:  # a damaged metadata.yaml: nothing to compare with
        return {}
