"""`visloc dataset from-bag`: real rosbag2 files (sqlite3 and mcap, written with rosbags' Writer,
version 9) from an analytic trajectory and known images; poses checked against the trajectory,
images bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from bag_fixtures import (
    T_BASE_CAMLINK,
    T_BASE_OPTICAL,
    T_CAMLINK_OPTICAL,
    BagWriter,
    H,
    K,
    T_map_base,
    T_map_odom,
    W,
    camera_info,
    compressed_msg,
    image_msg,
    noise_image,
    odometry,
    pose_cov_stamped,
    pose_stamped,
    tf_message,
)

from visloc_core.cli import main as cli_main
from visloc_core.data import Dataset
from visloc_core.data.bags import read as bag_read
from visloc_core.data.bags.read import BagError, FromBagOptions, dataset_from_bag, parse_extrinsic
from visloc_core.geometry import invert_T, rotation_angle_deg

N = 8
IMG_NS = [1_000_000_000 + i * 100_000_000 for i in range(N)]  # 10 Hz images
POSE_NS = [900_000_000 + k * 20_000_000 for k in range(int((IMG_NS[-1] - 800_000_000) / 20_000_000))]  # 50 Hz


def s(ns: int) -> float:
    return ns * 1e-9


def write_robot_bag(
    path: Path,
    storage: str,
    img_ns=IMG_NS,
    pose_ns=POSE_NS,
    encoding: str = "rgb8",
    compressed: str | None = None,
    hook=None,
) -> dict[int, np.ndarray]:
    """A bag as our robot records it: image (raw or compressed), camera_info, ground truth pose
    (PoseStamped, PoseWithCovarianceStamped), /odom (Odometry odom->base_link), /tf (map->odom
    drifting, odom->base_link) and /tf_static (base_link->camera_link->camera_optical_frame).
    Returns the stored-pixel arrays (what the PNG must hold) by image stamp."""
    images = {}
    with BagWriter(path, storage) as b:
        b.write(
            "/tf_static",
            tf_message(
                [
                    (0, "base_link", "camera_link", T_BASE_CAMLINK),
                    (0, "camera_link", "camera_optical_frame", T_CAMLINK_OPTICAL),
                ]
            ),
            pose_ns[0],
        )
        for k, t in enumerate(pose_ns):
            Tmb, Tmo = T_map_base(s(t)), T_map_odom(s(t))
            Tob = invert_T(Tmo) @ Tmb
            b.write("/ground_truth/pose", pose_stamped(t, "map", Tmb), t)
            b.write("/ground_truth/pose_cov", pose_cov_stamped(t, "map", Tmb), t)
            b.write("/odom", odometry(t, "odom", "base_link", Tob), t)
            b.write("/tf", tf_message([(t, "map", "odom", Tmo), (t, "odom", "base_link", Tob)]), t)
            if hook:
                hook(b, "pose", k, t)
        for i, t in enumerate(img_ns):
            b.write("/camera/camera_info", camera_info(t, "camera_optical_frame", W, H, K), t)
            if compressed:
                rgb = noise_image(i)
                ok, buf = cv2.imencode("." + compressed, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                assert ok
                data = buf.tobytes()
                images[t] = data
                b.write("/camera/image_raw/compressed", compressed_msg(t, "camera_optical_frame", data, compressed), t)
            else:
                px, msg = raw_image(i, t, encoding)
                images[t] = px
                b.write("/camera/image_raw", msg, t)
            if hook:
                hook(b, "image", i, t)
    return images


def raw_image(i: int, t: int, encoding: str, pad: int = 5):
    """(pixels in PNG order, Image message) with `pad` bytes of row padding (step > width * bpp)."""
    c = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}[encoding]
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    px = noise_image(i, c, dtype)  # what the stored PNG must hold (RGB / RGBA / grey order)
    msg_px = px
    if encoding == "bgr8":
        msg_px = px[:, :, ::-1]
    elif encoding == "bgra8":
        msg_px = px[:, :, [2, 1, 0, 3]]
    row = np.ascontiguousarray(msg_px).view(np.uint8).reshape(H, -1)
    rows = np.concatenate([row, np.full((H, pad), 0xAB, np.uint8)], axis=1)  # padding must be dropped
    return px, image_msg(t, "camera_optical_frame", rows, encoding, W, H, rows.shape[1])


def opts(**kw) -> FromBagOptions:
    base = {"image_topic": "/camera/image_raw", "scene": "robot"}
    base.update(kw)
    return FromBagOptions(**base)


def pose_err(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation distance m, rotation angle rad)."""
    dt = float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]))
    dr = float(np.deg2rad(rotation_angle_deg(T_a[:3, :3] @ T_b[:3, :3].T)))
    return dt, dr


def stored_png(ds: Dataset, f) -> np.ndarray:
    img = cv2.imread(str(ds.path(f)), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


# ----------------------------------------------------------------------------------- poses
@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_tf_chain_with_drifting_odom_exact_stamps(tmp_path, storage):
    images = write_robot_bag(tmp_path / "bag", storage)
    summ = dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_tf=("map", "base_link")), progress=False)
    assert summ.n_frames == N and not summ.skipped and not summ.malformed
    ds = Dataset(tmp_path / "ds")
    frames = ds.frames(split="train")
    assert [f.stamp_ns for f in frames] == IMG_NS
    assert T_map_odom(1.0)[:3, 3] @ T_map_odom(1.0)[:3, 3] > 0.1  # the chain really goes through a drifting odom
    for f in frames:
        # map -> odom -> base_link (dynamic /tf) -> camera_link -> camera_optical_frame (/tf_static)
        dt, dr = pose_err(f.T_world_cam, T_map_base(s(f.stamp_ns)) @ T_BASE_OPTICAL)
        assert dt < 1e-6 and dr < 1e-6
        assert np.array_equal(stored_png(ds, f), images[f.stamp_ns])
        assert np.array_equal(ds.load_rgb(f), images[f.stamp_ns])
        assert np.allclose(f.camera.K, K)
    src = ds.manifest["source"]
    assert src["world_frame"] == "map" and src["extrinsic"]["from"].startswith("tf_static base_link")
    assert src["storage"] == storage


@pytest.mark.parametrize(
    ("topic", "world", "to_world"),
    [
        ("/ground_truth/pose", "map", lambda t: np.eye(4)),
        ("/ground_truth/pose_cov", "map", lambda t: np.eye(4)),
        ("/odom", "odom", lambda t: invert_T(T_map_odom(t))),  # Odometry: pose of base_link in odom
    ],
)
def test_pose_topics_with_static_extrinsic(tmp_path, topic, world, to_world):
    write_robot_bag(tmp_path / "bag", "mcap")
    dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_topic=topic), progress=False)
    ds = Dataset(tmp_path / "ds")
    assert ds.manifest["source"]["world_frame"] == world
    for f in ds.frames():
        t = s(f.stamp_ns)
        dt, dr = pose_err(f.T_world_cam, to_world(t) @ T_map_base(t) @ T_BASE_OPTICAL)
        assert dt < 1e-6 and dr < 1e-6


def test_pose_tf_to_the_camera_frame_and_manual_extrinsic(tmp_path):
    write_robot_bag(tmp_path / "bag", "sqlite3")
    dataset_from_bag(tmp_path / "bag", tmp_path / "a", opts(pose_tf=("map", "camera_optical_frame")), progress=False)
    # the same camera pose through --extrinsic "x y z qx qy qz qw" (ROS quaternion order)
    from visloc_core.geometry import position_quat_wxyz_from_T, quat_wxyz_to_xyzw

    t, q = position_quat_wxyz_from_T(T_BASE_OPTICAL)
    text = " ".join(repr(float(v)) for v in [*t, *quat_wxyz_to_xyzw(q)])
    assert np.allclose(parse_extrinsic(text), T_BASE_OPTICAL, atol=1e-12)
    dataset_from_bag(
        tmp_path / "bag",
        tmp_path / "b",
        opts(pose_topic="/ground_truth/pose", extrinsic=parse_extrinsic(text), camera_frame="nowhere"),
        progress=False,
    )
    for fa, fb in zip(Dataset(tmp_path / "a").frames(), Dataset(tmp_path / "b").frames(), strict=True):
        expected = T_map_base(s(fa.stamp_ns)) @ T_BASE_OPTICAL
        assert max(pose_err(fa.T_world_cam, expected)) < 1e-6
        assert max(pose_err(fb.T_world_cam, expected)) < 1e-6
    assert Dataset(tmp_path / "a").manifest["source"]["extrinsic"]["from"].startswith("identity")


def test_unresolvable_extrinsic_is_a_clear_error(tmp_path):
    write_robot_bag(tmp_path / "bag", "mcap")
    with pytest.raises(BagError, match="--extrinsic"):
        dataset_from_bag(
            tmp_path / "bag",
            tmp_path / "ds",
            opts(pose_topic="/ground_truth/pose", camera_frame="cam_x"),
            progress=False,
        )
    assert not (tmp_path / "ds").exists()
    with pytest.raises(BagError, match="not in the bag"):
        dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_topic="/nope"), progress=False)


def test_interpolation_between_pose_samples(tmp_path):
    # Images 7 ms after a 50 Hz pose sample: the pose is interpolated (linear + SLERP).
    img_ns = [t + 7_000_000 for t in IMG_NS]
    write_robot_bag(tmp_path / "bag", "mcap", img_ns=img_ns)
    dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_tf=("map", "base_link")), progress=False)
    errs, nearest = [], []
    for f in Dataset(tmp_path / "ds").frames():
        truth = T_map_base(s(f.stamp_ns)) @ T_BASE_OPTICAL
        errs.append(pose_err(f.T_world_cam, truth))
        nearest.append(pose_err(T_map_base(s(f.stamp_ns - 7_000_000)) @ T_BASE_OPTICAL, truth))
    errs, nearest = np.array(errs), np.array(nearest)
    # Second-order interpolation error of this trajectory over 20 ms: ~1e-5 m; taking the nearest
    # sample instead would be off by the motion over 7 ms (~6 mm).
    assert errs[:, 0].max() < 5e-5 and errs[:, 1].max() < 5e-5
    assert errs[:, 0].max() < 0.02 * nearest[:, 0].min()


def test_max_gap_skips_frames_in_pose_holes(tmp_path):
    hole = (1_250_000_000, 1_550_000_000)  # no pose samples here: images at 1.3, 1.4, 1.5 s fall in it
    pose_ns = [t for t in POSE_NS if not hole[0] < t < hole[1]]
    img_ns = [*IMG_NS, IMG_NS[-1] + 500_000_000]  # and one image after the last pose sample
    write_robot_bag(tmp_path / "bag", "sqlite3", img_ns=img_ns, pose_ns=pose_ns)
    summ = dataset_from_bag(
        tmp_path / "bag", tmp_path / "ds", opts(pose_topic="/ground_truth/pose", max_gap_s=0.1), progress=False
    )
    assert summ.n_frames == N - 3
    assert summ.skipped["no pose: gap between pose samples > --max-gap 0.1 s"] == 3
    assert summ.skipped["no pose: image stamp outside the time range of the pose topic"] == 1
    # a larger gap accepts the frames in the hole (interpolated across it)
    summ = dataset_from_bag(
        tmp_path / "bag", tmp_path / "ds2", opts(pose_topic="/ground_truth/pose", max_gap_s=0.5), progress=False
    )
    assert summ.n_frames == N


# ----------------------------------------------------------------------------------- images
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
def test_raw_encodings_round_trip_bit_exact(tmp_path, encoding):
    images = write_robot_bag(tmp_path / "bag", "sqlite3", encoding=encoding)
    dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_tf=("map", "base_link")), progress=False)
    ds = Dataset(tmp_path / "ds")
    for f in ds.frames():
        px = images[f.stamp_ns]
        assert np.array_equal(stored_png(ds, f), px)
        rgb = ds.load_rgb(f)
        expect = px if px.ndim == 3 else px[:, :, None]
        expect = (expect >> 8).astype(np.uint8) if expect.dtype == np.uint16 else expect
        assert np.array_equal(rgb, np.broadcast_to(expect[:, :, :3], (H, W, 3)))


def test_mono16_big_endian(tmp_path):
    px = noise_image(0, 1, np.uint16)
    with BagWriter(tmp_path / "bag", "mcap") as b:
        b.write("/camera/camera_info", camera_info(10, "cam", W, H, K), 10)
        b.write("/pose", pose_stamped(10, "map", np.eye(4)), 10)
        b.write(
            "/camera/image_raw", image_msg(10, "cam", px.astype(">u2").view(np.uint8), "mono16", W, H, 2 * W, 1), 10
        )
    dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_topic="/pose", pose_frame="cam"), progress=False)
    ds = Dataset(tmp_path / "ds")
    assert np.array_equal(stored_png(ds, ds.frames()[0]), px)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_compressed_images_stored_as_original_bytes(tmp_path, fmt):
    images = write_robot_bag(tmp_path / "bag", "mcap", compressed=fmt)
    dataset_from_bag(
        tmp_path / "bag",
        tmp_path / "ds",
        opts(image_topic="/camera/image_raw/compressed", pose_tf=("map", "base_link")),
        progress=False,
    )
    ds = Dataset(tmp_path / "ds")
    frames = ds.frames()
    assert len(frames) == N
    for f in frames:
        assert ds.path(f).suffix == "." + fmt
        assert ds.path(f).read_bytes() == images[f.stamp_ns]


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_topic(tmp_path, encoding):
    rng = np.random.default_rng(5)
    depth_mm = {t: rng.integers(0, 20000, size=(H, W)).astype(np.uint16) for t in IMG_NS}

    def hook(b, kind, i, t):
        if kind != "image" or i == 3:  # image 3 has no depth
            return
        d = depth_mm[t]
        if encoding == "16UC1":
            data, step = d.view(np.uint8), 2 * W
        else:
            f = np.where(d > 0, d.astype(np.float32) / 1000, np.nan).astype("<f4")
            data, step = f.view(np.uint8), 4 * W
        b.write("/camera/depth", image_msg(t + 1000, "camera_optical_frame", data, encoding, W, H, step), t + 1000)

    write_robot_bag(tmp_path / "bag", "sqlite3", hook=hook)
    summ = dataset_from_bag(
        tmp_path / "bag",
        tmp_path / "ds",
        opts(pose_tf=("map", "base_link"), depth_topic="/camera/depth"),
        progress=False,
    )
    assert summ.n_frames == N and summ.n_with_depth == N - 1 and summ.n_without_depth == 1
    ds = Dataset(tmp_path / "ds")
    for f in ds.frames():
        if f.stamp_ns == IMG_NS[3]:
            assert f.depth == ""
            continue
        d = ds.load_depth(f)
        assert np.array_equal(np.round(d * 1000).astype(np.uint16), depth_mm[f.stamp_ns])


# ------------------------------------------------------------------- malformed input, atomicity
def test_malformed_messages_are_counted_not_fatal(tmp_path):
    def hook(b, kind, i, t):
        if kind == "image" and i == 2:  # data shorter than step * height
            b.write(
                "/camera/image_raw", image_msg(t + 1, "camera_optical_frame", np.zeros(10), "rgb8", W, H, 3 * W), t + 1
            )
        if kind == "image" and i == 3:
            b.write(
                "/camera/image_raw",
                image_msg(t + 2, "camera_optical_frame", np.zeros(H * W * 2), "yuv422", W, H, 2 * W),
                t + 2,
            )
        if kind == "image" and i == 4:  # bytes that are not CDR at all
            b.write_raw("/camera/image_raw", "sensor_msgs/msg/Image", b"\x00\x01garbage", t + 3)
        if kind == "pose" and i == 5:  # a broken quaternion on the pose topic
            bad = pose_stamped(t + 5, "map", np.eye(4))
            bad.pose.orientation.w = 0.0
            b.write("/ground_truth/pose", bad, t + 5)
        if kind == "pose" and i == 6:
            bad = tf_message([(t + 5, "map", "odom", np.eye(4))])
            bad.transforms[0].transform.translation.x = float("nan")
            b.write("/tf", bad, t + 5)

    write_robot_bag(tmp_path / "bag", "mcap", hook=hook)
    summ = dataset_from_bag(tmp_path / "bag", tmp_path / "ds", opts(pose_topic="/ground_truth/pose"), progress=False)
    assert summ.n_frames == N and summ.n_image_messages == N + 3
    assert summ.skipped["malformed image: data size != step * height"] == 1
    assert summ.skipped["malformed image: unsupported encoding 'yuv422'"] == 1
    assert summ.skipped["malformed image message (cannot deserialize)"] == 1
    assert summ.malformed["/ground_truth/pose: non-unit quaternion"] == 1
    text = "\n".join(summ.lines())
    assert "yuv422" in text and "non-unit quaternion" in text
    summ = dataset_from_bag(tmp_path / "bag", tmp_path / "ds2", opts(pose_tf=("map", "base_link")), progress=False)
    assert summ.malformed["/tf: non-finite pose"] == 1 and summ.n_frames == N


@pytest.mark.parametrize("where", ["reader", "writer thread"])
def test_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch, where):
    write_robot_bag(tmp_path / "bag", "sqlite3")
    calls = {"n": 0}
    name = "_image_frame" if where == "reader" else "encode_png"
    real = getattr(bag_read, name)

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
        return real(*args, **kw)

    monkeypatch.setattr(bag_read, name, failing)
    out = tmp_path / "out" / "ds"
    with pytest.raises(KeyboardInterrupt):
        dataset_from_bag(tmp_path / "bag", out, opts(pose_tf=("map", "base_link")), progress=False)
    assert calls["n"] >= 4
    if where == "reader":
        assert calls["n"] == 4  # the reading stopped there
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no half-written temporary folder either


def test_cli(tmp_path, capsys):
    write_robot_bag(tmp_path / "bag", "mcap")
    rc = cli_main(
        [
            "dataset", "from-bag", str(tmp_path / "bag"), "--image-topic", "/camera/image_raw",
            "--pose-tf", "map:base_link", "--out", str(tmp_path / "ds"), "--no-progress", "--split", "test",
        ]
    )  # fmt: skip
    assert rc == 0
    ds = Dataset(tmp_path / "ds")
    assert len(ds.frames(split="test")) == N
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["source"]["summary"]["n_frames"] == N
    rc = cli_main(["dataset", "from-bag", str(tmp_path / "bag"), "--image-topic", "/x", "--pose-topic", "/odom",
                   "--out", str(tmp_path / "ds2")])  # fmt: skip
    assert rc == 2 and "image topic '/x' is not in the bag" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- TF graph
def test_frame_graph_paths_through_common_ancestor():
    from visloc_core.data.bags.tf_graph import FrameGraph, TFLookupError

    g = FrameGraph()
    stamps = np.array([0, 10, 20], dtype=np.int64)
    for t in stamps:
        g.add("map", "odom", T_map_odom(s(t)), int(t), static=False)
        g.add("odom", "base_link", invert_T(T_map_odom(s(t))) @ T_map_base(s(t)), int(t), static=False)
    g.add("base_link", "camera_link", T_BASE_CAMLINK, 0, static=True)
    g.add("camera_link", "camera_optical_frame", T_CAMLINK_OPTICAL, 0, static=True)
    g.add("base_link", "lidar", T_BASE_CAMLINK @ T_BASE_CAMLINK, 0, static=True)  # a sibling branch
    T, ok = g.lookup("map", "camera_optical_frame", stamps)
    assert ok.all()
    for k, t in enumerate(stamps):
        assert np.allclose(T[k], T_map_base(s(t)) @ T_BASE_OPTICAL, atol=1e-12)
    # upward, downward and sideways (lidar -> camera through base_link) paths
    T_inv, _ = g.lookup("camera_optical_frame", "map", stamps)
    assert np.allclose(T_inv @ T, np.eye(4), atol=1e-12)
    T_lc, _ = g.lookup("lidar", "camera_optical_frame", stamps[:1])
    assert np.allclose(T_lc[0], invert_T(T_BASE_CAMLINK @ T_BASE_CAMLINK) @ T_BASE_OPTICAL, atol=1e-12)
    # outside the samples: invalid (NaN), no extrapolation
    T_out, ok_out = g.lookup("map", "base_link", np.array([25]))
    assert not ok_out[0] and np.isnan(T_out).all()
    assert g.is_static_path("base_link", "camera_optical_frame") and not g.is_static_path("map", "base_link")
    with pytest.raises(ValueError, match="two parents"):
        g.add("map", "camera_link", np.eye(4), 0, static=True)
    g.add("world", "other", np.eye(4), 0, static=True)
    with pytest.raises(TFLookupError, match="not connected"):
        g.lookup("map", "other", stamps)
    with pytest.raises(TFLookupError, match="'nowhere' is not in the TF tree"):
        g.lookup("map", "nowhere", stamps)


def test_intrinsics_option_stride_and_duplicates(tmp_path):
    with BagWriter(tmp_path / "bag", "mcap") as b:
        for k in range(20):
            t = 1_000_000_000 + k * 50_000_000
            b.write("/pose", pose_stamped(t, "map", T_map_base(s(t))), t)
        for i in range(6):
            t = 1_100_000_000 + i * 100_000_000
            _, msg = raw_image(i, t, "rgb8")
            b.write("/cam/image", msg, t)
        _, dup = raw_image(9, 1_100_000_000, "rgb8")  # same stamp as image 0
        b.write("/cam/image", dup, 1_700_000_000)
    with pytest.raises(BagError, match="--intrinsics"):
        dataset_from_bag(tmp_path / "bag", tmp_path / "x", opts(image_topic="/cam/image", pose_topic="/pose"),
                         progress=False)  # fmt: skip
    summ = dataset_from_bag(
        tmp_path / "bag",
        tmp_path / "ds",
        opts(
            image_topic="/cam/image", pose_topic="/pose", intrinsics_fxfycxcy=(50.0, 51.0, 31.5, 23.5),
            extrinsic=T_BASE_OPTICAL, stride=1,
        ),
        progress=False,
    )  # fmt: skip
    assert summ.n_frames == 6 and summ.skipped["duplicate image stamp"] == 1
    f = Dataset(tmp_path / "ds").frames()[0]
    assert (f.camera.fx, f.camera.fy, f.camera.cx, f.camera.width) == (50.0, 51.0, 31.5, W)
    summ = dataset_from_bag(
        tmp_path / "bag",
        tmp_path / "ds2",
        opts(image_topic="/cam/image", pose_topic="/pose", intrinsics_fxfycxcy=(50, 50, 31.5, 23.5),
             extrinsic=T_BASE_OPTICAL, stride=2),
        progress=False,
    )  # fmt: skip
    # messages 0..6 (6 repeats the stamp of 0): 1, 3, 5 dropped by the stride, 6 as a duplicate
    assert summ.n_frames == 3 and summ.skipped["--stride 2"] == 3 and summ.skipped["duplicate image stamp"] == 1
    stamps = [f.stamp_ns for f in Dataset(tmp_path / "ds2").frames()]
    assert stamps == [1_100_000_000, 1_300_000_000, 1_500_000_000]


def test_stamps_bag_for_drivers_with_zero_header_stamps(tmp_path):
    """Every header stamp 0, recorded at the true times: --stamps header finds no usable frame (one
    stamp for all), --stamps bag recovers the trajectory from the record times through the TF chain."""
    with BagWriter(tmp_path / "bag", "sqlite3") as b:
        b.write("/tf_static", tf_message([(0, "base_link", "camera_optical_frame", T_BASE_OPTICAL)]), POSE_NS[0])
        for t in POSE_NS:
            Tmb, Tmo = T_map_base(s(t)), T_map_odom(s(t))
            b.write("/tf", tf_message([(0, "map", "odom", Tmo), (0, "odom", "base_link", invert_T(Tmo) @ Tmb)]), t)
        for i, t in enumerate(IMG_NS):
            b.write("/camera/camera_info", camera_info(0, "camera_optical_frame", W, H, K), t)
            b.write("/camera/image_raw", raw_image(i, 0, "rgb8")[1], t)
    summ = dataset_from_bag(tmp_path / "bag", tmp_path / "hdr", opts(pose_tf=("map", "base_link")), progress=False)
    assert summ.n_frames <= 1 and summ.skipped
    o = opts(pose_tf=("map", "base_link"), stamps="bag")
    summ = dataset_from_bag(tmp_path / "bag", tmp_path / "ds", o, progress=False)
    assert summ.n_frames == N and not summ.malformed
    ds = Dataset(tmp_path / "ds")
    assert ds.manifest["source"]["stamps"].startswith("bag record times")
    for f in ds.frames(split="train"):
        dt, dr = pose_err(f.T_world_cam, T_map_base(s(f.stamp_ns)) @ T_BASE_OPTICAL)
        assert dt < 1e-6 and dr < 1e-6
    assert [f.stamp_ns for f in ds.frames(split="train")] == IMG_NS
    with pytest.raises(BagError, match="--stamps must be"):
        opts(pose_tf=("map", "base_link"), stamps="receive")
