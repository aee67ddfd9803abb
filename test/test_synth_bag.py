"""Bags written by ``visloc synth --bag``, read back with rosbags: topics, types, counts, stamps,
images, camera_info, and the TF chain map->odom->base_link->camera_link->camera_optical_frame
composing to the dataset's T_world_cam (1e-9), for both storages and compressed images."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from synth_scene import TINY

from visloc_core.data import Dataset
from visloc_core.data.bags.write import SequenceBagWriter
from visloc_core.data.synth import generate, parse_scene
from visloc_core.geometry import (
    ROS_OPTICAL_TO_BODY,
    PinholeCamera,
    T_from_position_quat_wxyz,
    invert_T,
    quat_xyzw_to_wxyz,
    rotation_angle_deg,
)


def _T_pose(p) -> np.ndarray:
    q = quat_xyzw_to_wxyz(np.array([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]))
    return T_from_position_quat_wxyz(np.array([p.position.x, p.position.y, p.position.z]), q)


def _T_tf(t) -> np.ndarray:
    r, tr = t.transform.rotation, t.transform.translation
    q = quat_xyzw_to_wxyz(np.array([r.x, r.y, r.z, r.w]))
    return T_from_position_quat_wxyz(np.array([tr.x, tr.y, tr.z]), q)


def _stamp(h) -> int:
    return int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)


def _read_bag(path):
    """topic -> list of (log time, msgtype, message), plus the reader's connection types."""
    out: dict[str, list] = {}
    with AnyReader([path]) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, conn.msgtype, r.deserialize(raw, conn.msgtype)))
    return out


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory):
    """One small scene written with sqlite3 raw bags, mcap raw bags and mcap compressed bags."""
    d = copy.deepcopy(TINY)
    d["sequences"][0]["n_frames"] = 4
    spec = parse_scene(d, "tiny.yaml")
    root = tmp_path_factory.mktemp("bags")
    runs = {}
    for key, storage, compressed in [("sqlite3", "sqlite3", False), ("mcap", "mcap", False), ("jpeg", "mcap", True)]:
        ds = generate(
            spec,
            root / f"ds_{key}",
            bag_dir=root / f"bags_{key}",
            storage=storage,
            compressed=compressed,
            progress=False,
        )
        runs[key] = (Dataset(ds), root / f"bags_{key}")
    return spec, runs


@pytest.mark.parametrize("key", ["sqlite3", "mcap", "jpeg"])
def test_bag_topics_counts_stamps_and_tf_chain(bag_run, key):
    spec, runs = bag_run
    ds, bag_dir = runs[key]
    assert sorted(p.name for p in bag_dir.iterdir()) == ["tiny_map", "tiny_query_night"]  # no partial folders
    storage_file = list((bag_dir / "tiny_map").glob("*.db3" if key == "sqlite3" else "*.mcap"))
    assert len(storage_file) == 1
    frames = ds.sequence_frames("tiny", "map")
    n = len(frames)
    f = spec.odom_rate_factor
    msgs = _read_bag(bag_dir / "tiny_map")
    image_topic = "/camera/image_raw/compressed" if key == "jpeg" else "/camera/image_raw"
    expected = {
        image_topic: ("sensor_msgs/msg/CompressedImage" if key == "jpeg" else "sensor_msgs/msg/Image", n),
        "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", n),
        "/ground_truth/pose": ("geometry_msgs/msg/PoseStamped", n),
        "/odom": ("nav_msgs/msg/Odometry", n * f),
        "/tf": ("tf2_msgs/msg/TFMessage", n * f + n),
        "/tf_static": ("tf2_msgs/msg/TFMessage", 1),
    }
    assert {t: (m[0][1], len(m)) for t, m in msgs.items()} == expected
    for items in msgs.values():  # header stamps are the recording times
        for t, _, m in items:
            if hasattr(m, "header"):
                assert _stamp(m.header) == t
    stamps = [f.stamp_ns for f in frames]
    assert [t for t, _, _ in msgs[image_topic]] == stamps
    assert [t for t, _, _ in msgs["/camera/camera_info"]] == stamps

    # static transforms: the mount and the REP-103 optical rotation
    static = {(tr.header.frame_id, tr.child_frame_id): _T_tf(tr) for tr in msgs["/tf_static"][0][2].transforms}
    np.testing.assert_allclose(static[("camera_link", "camera_optical_frame")], ROS_OPTICAL_TO_BODY, atol=1e-12)
    np.testing.assert_allclose(static[("base_link", "camera_link")], spec.T_base_cameralink, atol=1e-12)
    # dynamic transforms by (parent, child, stamp)
    dyn = {}
    for _t, _, m in msgs["/tf"]:
        for tr in m.transforms:
            dyn[(tr.header.frame_id, tr.child_frame_id, _stamp(tr.header))] = _T_tf(tr)
    gt = {t: _T_pose(m.pose) for t, _, m in msgs["/ground_truth/pose"]}
    odom = {t: _T_pose(m.pose.pose) for t, _, m in msgs["/odom"]}
    assert all(m.header.frame_id == "odom" and m.child_frame_id == "base_link" for _, _, m in msgs["/odom"])
    for fr in frames:
        s = fr.stamp_ns
        T_map_base = dyn[("map", "odom", s)] @ dyn[("odom", "base_link", s)]
        T_chain = T_map_base @ static[("base_link", "camera_link")] @ static[("camera_link", "camera_optical_frame")]
        np.testing.assert_allclose(T_chain, fr.T_world_cam, atol=1e-9)
        np.testing.assert_allclose(gt[s] @ spec.T_base_optical, fr.T_world_cam, atol=1e-9)
        np.testing.assert_allclose(odom[s], dyn[("odom", "base_link", s)], atol=1e-12)
    # odom drifts from map: map->odom is not the identity and changes over the sequence
    T_mo = [dyn[("map", "odom", fr.stamp_ns)] for fr in frames]
    assert np.linalg.norm(T_mo[0][:3, 3]) > 0.1
    drift = invert_T(T_mo[0]) @ T_mo[-1]
    assert np.linalg.norm(drift[:3, 3]) > 1e-4 or rotation_angle_deg(drift[:3, :3]) > 1e-3

    # camera_info and images
    for (_, _, info), (_, _, img), fr in zip(msgs["/camera/camera_info"], msgs[image_topic], frames, strict=True):
        assert info.header.frame_id == "camera_optical_frame" and img.header.frame_id == "camera_optical_frame"
        assert info.distortion_model == "plumb_bob" and len(info.d) == 5
        cam = PinholeCamera.from_K(np.asarray(info.k).reshape(3, 3), info.width, info.height)
        assert cam == PinholeCamera.from_K(fr.camera.K, fr.camera.width, fr.camera.height)
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4)[:, :3], fr.camera.K)
        rgb = ds.load_rgb(fr)
        if key == "jpeg":
            dec = cv2.cvtColor(cv2.imdecode(np.asarray(img.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert dec.shape == rgb.shape and np.abs(dec.astype(int) - rgb).mean() < 6.0
        else:
            assert img.encoding == "rgb8" and img.step == 3 * img.width
            np.testing.assert_array_equal(np.asarray(img.data).reshape(img.height, img.width, 3), rgb)


def test_bag_writer_is_atomic_and_refuses_existing(tmp_path):
    cam = PinholeCamera(16, 12, 10.0, 10.0, 7.5, 5.5)
    w = SequenceBagWriter(tmp_path / "b", cam, np.eye(4))
    w.write_frame(10, np.zeros((12, 16, 3), np.uint8), np.eye(4))
    assert not (tmp_path / "b").exists()  # only the temporary folder exists while writing
    with pytest.raises(ValueError, match="increasing stamp"):
        w.write_frame(10, np.zeros((12, 16, 3), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="16x12"):
        w.write_frame(20, np.zeros((10, 16, 3), np.uint8), np.eye(4))
    w.abort()
    assert list(tmp_path.iterdir()) == []  # aborted: nothing left behind
    with SequenceBagWriter(tmp_path / "b", cam, np.eye(4), storage="mcap") as w:
        w.write_frame(10, np.zeros((12, 16, 3), np.uint8), np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        SequenceBagWriter(tmp_path / "b", cam, np.eye(4))
    with pytest.raises(ValueError, match="storage"):
        SequenceBagWriter(tmp_path / "c", cam, np.eye(4), storage="rosbag1")


def test_runs_are_deterministic_and_storages_hold_the_same_messages(bag_run):
    """The sqlite3 and mcap runs were rendered separately from the same seed: every serialized
    message (topic, log time, CDR bytes) is identical."""
    _, runs = bag_run

    def raw(path):
        with AnyReader([path]) as r:
            return sorted((c.topic, t, bytes(d)) for c, t, d in r.messages())

    for seq in ("tiny_map", "tiny_query_night"):
        a, b = raw(runs["sqlite3"][1] / seq), raw(runs["mcap"][1] / seq)
        assert len(a) > 10 and a == b


def test_interruption_keeps_finished_bags_and_no_partial_output(tmp_path):
    spec = parse_scene(copy.deepcopy(TINY), "tiny.yaml")

    def stop(plan, i, frame):
        if plan.seq.name == "query_night" and i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(spec, tmp_path / "ds", bag_dir=tmp_path / "bags", progress=False, on_frame=stop)
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary dataset
    assert sorted(p.name for p in (tmp_path / "bags").iterdir()) == ["tiny_map"]  # finished sequence only
    assert len(_read_bag(tmp_path / "bags" / "tiny_map")["/camera/image_raw"]) == 3
