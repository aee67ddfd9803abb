"""Round trip through the command line: ``visloc synth --bag`` -> ``visloc dataset from-bag`` gives
back the synthetic poses and images, for both storages, raw and compressed images. (The library-level
round trip with both pose sources is test_synth_roundtrip.py; this one goes through the CLI, uses the
automatic base_link -> camera extrinsic from /tf_static, and checks compressed images against the
bag's bytes read with the independent ``mcap`` reader.)"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from synth_scene import tiny

from visloc_core.cli import main as cli_main
from visloc_core.data import Dataset
from visloc_core.geometry import rotation_error_deg, translation_error_m


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    d = tiny()
    d["sequences"] = d["sequences"][:1]
    d["sequences"][0]["n_frames"] = 4
    path = tmp_path_factory.mktemp("scene") / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def synth_and_convert(tmp_path, scene_file, storage: str, compressed: bool) -> tuple[Dataset, Dataset]:
    args = ["synth", str(scene_file), "--out", str(tmp_path / "synth"), "--bag", str(tmp_path / "bags")]
    args += ["--storage", storage, "--no-progress"] + (["--compressed"] if compressed else [])
    assert cli_main(args) == 0
    topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    rc = cli_main(
        [
            "dataset", "from-bag", str(tmp_path / "bags" / "tiny_map"), "--image-topic", topic,
            "--pose-tf", "map:base_link", "--out", str(tmp_path / "fb"), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    return Dataset(tmp_path / "synth"), Dataset(tmp_path / "fb")


def check_poses(truth: Dataset, got: Dataset) -> None:
    a, b = truth.sequence_frames("tiny", "map"), got.frames()
    assert len(a) == len(b) == 4
    assert [f.stamp_ns for f in a] == [f.stamp_ns for f in b]
    for fa, fb in zip(a, b, strict=True):
        assert translation_error_m(fb.T_world_cam, fa.T_world_cam) < 1e-6
        assert np.radians(rotation_error_deg(fb.T_world_cam[:3, :3], fa.T_world_cam[:3, :3])) < 1e-6
        assert np.allclose(fb.camera.K, fa.camera.K, atol=1e-9)
    assert got.manifest["source"]["extrinsic"]["from"] == "tf_static base_link -> camera_optical_frame"


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_cli_round_trip_raw(tmp_path, scene_file, storage):
    truth, got = synth_and_convert(tmp_path, scene_file, storage, compressed=False)
    check_poses(truth, got)
    for fa, fb in zip(truth.sequence_frames("tiny", "map"), got.frames(), strict=True):
        np.testing.assert_array_equal(got.load_rgb(fb), truth.load_rgb(fa))  # bit-exact


def test_cli_round_trip_compressed_mcap(tmp_path, scene_file):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    truth, got = synth_and_convert(tmp_path, scene_file, "mcap", compressed=True)
    check_poses(truth, got)
    # the JPEGs in the dataset are the bag's bytes, as read by the mcap library itself
    (mcap_file,) = (tmp_path / "bags" / "tiny_map").glob("*.mcap")
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        jpegs = {
            m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: bytes(m.data)
            for _s, _c, _m, m in reader.iter_decoded_messages(topics=["/camera/image_raw/compressed"])
        }
    for fa, fb in zip(truth.sequence_frames("tiny", "map"), got.frames(), strict=True):
        assert got.path(fb).suffix == ".jpg"
        assert got.path(fb).read_bytes() == jpegs[fb.stamp_ns]
        err = np.abs(got.load_rgb(fb).astype(float) - truth.load_rgb(fa).astype(float)).mean()
        assert err < 12  # the JPEG of the same image (lossy; ~2-3 here), not another frame (~40)


def test_cli_round_trip_depth(tmp_path, scene_file):
    """``synth --depth`` records /camera/depth/image_raw (16UC1 mm); ``from-bag --depth-topic`` gives
    back the dataset's depth (also stored in mm) exactly."""
    args = ["synth", str(scene_file), "--out", str(tmp_path / "synth"), "--bag", str(tmp_path / "bags")]
    assert cli_main([*args, "--depth", "--no-progress"]) == 0
    rc = cli_main(
        [
            "dataset", "from-bag", str(tmp_path / "bags" / "tiny_map"), "--image-topic", "/camera/image_raw",
            "--depth-topic", "/camera/depth/image_raw", "--pose-topic", "/ground_truth/pose",
            "--out", str(tmp_path / "fb"), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    truth, got = Dataset(tmp_path / "synth"), Dataset(tmp_path / "fb")
    check_poses(truth, got)
    for fa, fb in zip(truth.sequence_frames("tiny", "map"), got.frames(), strict=True):
        d_truth, d_got = truth.load_depth(fa), got.load_depth(fb)
        assert (d_truth > 0).mean() > 0.9  # the scene fills the view
        np.testing.assert_allclose(d_got, d_truth, atol=1e-6)
