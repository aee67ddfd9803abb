"""Damaged bags (a recording killed mid-way, a copy cut short): `visloc dataset from-bag` converts what is
readable and says what was lost and how to repair the file. Reference: the conversion of the intact bag
(the damaged bag's frames must be exactly its first frames, bit for bit, with the same poses) and the
message counts of metadata.yaml."""

from __future__ import annotations

import re
import shutil
import struct

import numpy as np
import pytest
import zstandard
from ros_helpers import write_tiny_bag

from visloc_core.cli import main as visloc_main
from visloc_core.data.bags.read import BagError, FromBagOptions, dataset_from_bag
from visloc_core.data.layout import Dataset

OPTS = FromBagOptions(image_topic="/camera/image_raw", pose_topic="/ground_truth/pose")
N_IMAGES = 30


def _bag(tmp_path, storage: str):
    bag, _, _ = write_tiny_bag(tmp_path / f"intact_{storage}", np.linspace(0.05, 0.95, N_IMAGES), storage=storage)
    files = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    assert [p.name for p in files] == [f"{bag.name}{'.mcap' if storage == 'mcap' else '.db3'}"]
    return bag, files[0]


def _zstd_chunks(src: bytes) -> bytes:
    """The same MCAP with its chunks zstd-compressed (as `ros2 bag record` writes them by default),
    without the summary section (its offsets would be stale; the footer says there is none)."""
    out, pos, in_summary = bytearray(src[:8]), 8, False
    while pos + 9 <= len(src):
        op, n = src[pos], struct.unpack_from("<Q", src, pos + 1)[0]
        rec = src[pos + 9 : pos + 9 + n]
        if op == 0x02:  # footer: no summary
            out += bytes([op]) + struct.pack("<Q", 20) + bytes(20)
            pos += 9 + n
            break
        if in_summary:
            pos += 9 + n
            continue
        in_summary = op == 0x0F  # after DataEnd comes the summary
        if op == 0x06:
            start, end, usize, _crc, clen = struct.unpack_from("<QQQII", rec, 0)
            comp = rec[32 : 32 + clen].decode()
            (rlen,) = struct.unpack_from("<Q", rec, 32 + clen)
            assert comp == ""
            packed = zstandard.ZstdCompressor(level=3).compress(rec[40 + clen : 40 + clen + rlen])
            rec = struct.pack("<QQQI", start, end, usize, 0) + struct.pack("<I", 4) + b"zstd"
            rec += struct.pack("<Q", len(packed)) + packed
        elif op == 0x07:  # message indexes point into the old chunks
            pos += 9 + n
            continue
        out += bytes([op]) + struct.pack("<Q", len(rec)) + rec
        pos += 9 + n
    return bytes(out + src[pos:])


def _damaged_copy(tmp_path, bag, file, name: str, keep: float, zstd: bool = False):
    dst = tmp_path / name
    shutil.copytree(bag, dst)
    data = file.read_bytes()
    if zstd:
        data = _zstd_chunks(data)
    (dst / file.name).write_bytes(data[: int(len(data) * keep)])
    return dst


def _frames(root):
    ds = Dataset(root)
    return {f.stamp_ns: (ds.load_rgb(f), f.T_world_cam) for f in ds.frames()}


@pytest.mark.parametrize(
    "storage, keep, zstd",
    [
        ("mcap", 0.99, False),
        ("mcap", 0.5, False),
        ("mcap", 0.5, True),
        ("sqlite3", 0.98, False),
        ("sqlite3", 0.5, False),
    ],
    ids=["mcap-99%", "mcap-50%", "mcap-zstd-50%", "db3-98%", "db3-50%"],
)
def test_a_truncated_bag_is_converted_as_far_as_it_reads(tmp_path, capsys, storage, keep, zstd):
    bag, file = _bag(tmp_path, storage)
    dataset_from_bag(bag, tmp_path / "ds_intact", OPTS, progress=False)
    intact = _frames(tmp_path / "ds_intact")
    assert len(intact) == N_IMAGES
    damaged = _damaged_copy(tmp_path, bag, file, "damaged", keep, zstd)
    code = visloc_main(
        ["dataset", "from-bag", str(damaged), "--image-topic", "/camera/image_raw",
         "--pose-topic", "/ground_truth/pose", "--out", str(tmp_path / "ds"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    got = _frames(tmp_path / "ds")
    # the readable part: the first frames of the intact conversion, identical
    assert 0 < len(got) <= N_IMAGES and sorted(got) == sorted(intact)[: len(got)]
    for stamp, (img, T) in got.items():
        np.testing.assert_array_equal(img, intact[stamp][0])
        np.testing.assert_array_equal(T, intact[stamp][1])
    if keep <= 0.5:
        assert len(got) < N_IMAGES
    # what was lost, named with the file, and how to repair it
    assert f"damaged bag {damaged / file.name}" in err
    lost, total = (int(x) for x in re.search(r"lost (\d+) of (\d+) messages listed in metadata.yaml", err).groups())
    read = int(re.search(r"; read (\d+) messages", err).group(1))
    assert read + lost == total == 8 * N_IMAGES - 1  # what write_tiny_bag wrote (metadata.yaml's count)
    assert ("mcap recover" if storage == "mcap" else ".recover") in err and "ros2 bag reindex" in err


def test_a_bag_without_metadata_is_read_from_its_storage_file(tmp_path):
    bag, _ = _bag(tmp_path, "mcap")
    (bag / "metadata.yaml").unlink()  # `ros2 bag record` killed before writing it
    summ = dataset_from_bag(bag, tmp_path / "ds", OPTS, progress=False)
    assert summ.n_frames == N_IMAGES
    assert any("no metadata.yaml" in n and "ros2 bag reindex" in n for n in summ.notes)


def test_nothing_readable_says_what_to_do(tmp_path):
    bag, file = _bag(tmp_path, "sqlite3")
    file.write_bytes(file.read_bytes()[:4096])  # the first page only
    with pytest.raises(BagError) as err:
        dataset_from_bag(bag, tmp_path / "ds", OPTS, progress=False)
    text = str(err.value)
    assert str(file) in text and ".recover" in text and "ros2 bag reindex" in text
    assert not (tmp_path / "ds").exists()


def test_the_zstd_fixture_holds_every_message(tmp_path):
    """(the fixture above) rosbags itself reads the zstd-chunked rewrite without a summary completely, to
    the same frames as the original, so the damaged copies lose only what the cut takes."""
    bag, file = _bag(tmp_path, "mcap")
    dataset_from_bag(bag, tmp_path / "ds_intact", OPTS, progress=False)
    file.write_bytes(_zstd_chunks(file.read_bytes()))
    summ = dataset_from_bag(bag, tmp_path / "ds", OPTS, progress=False)
    assert summ.n_frames == N_IMAGES and not summ.notes
    got, intact = _frames(tmp_path / "ds"), _frames(tmp_path / "ds_intact")
    assert sorted(got) == sorted(intact)
    assert all(np.array_equal(got[k][0], intact[k][0]) for k in got)
