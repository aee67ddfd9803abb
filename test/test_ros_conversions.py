"""The message boundary against references: visloc_ros.conversions (building rclpy messages) and the
core decoder visloc_core.data.messages fed with rclpy messages: OpenCV colour conversions and codecs,
hand-built buffers (padding, big-endian), analytic quaternions, round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from sensor_msgs.msg import CameraInfo, Image

from visloc_core.data import messages as rosmsg
from visloc_core.data.messages import MalformedMessageError
from visloc_core.geometry import PinholeCamera, R_from_rotvec, T_from_R_t
from visloc_core.localizers.base import LocalizationResult, Status
from visloc_ros import conversions as conv


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(skimage.data.astronaut(), (40, 30), interpolation=cv2.INTER_AREA))


def _msg(h, w, enc, step, data, big=0) -> Image:
    m = Image()
    m.height, m.width, m.encoding, m.step, m.is_bigendian, m.data = h, w, enc, step, big, data
    return m


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_round_trip(rgb, enc, pad):
    msg = conv.rgb_to_image(rgb, enc, 123, "cam", row_padding=pad)
    assert msg.step == rgb.shape[1] * (4 if "a" in enc else 3) + pad
    np.testing.assert_array_equal(rosmsg.image_rgb8(msg), rgb)


def test_bgr8_matches_opencv(rgb):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the reference: OpenCV's own conversion
    msg = _msg(30, 40, "bgr8", 120, bgr.tobytes())
    np.testing.assert_array_equal(rosmsg.image_rgb8(msg), rgb)


def test_bgra8_with_padding_by_hand(rgb):
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    rows = np.concatenate([bgra.reshape(30, -1), np.full((30, 8), 7, np.uint8)], axis=1)  # 8 junk bytes per row
    np.testing.assert_array_equal(rosmsg.image_rgb8(_msg(30, 40, "bgra8", 168, rows.tobytes())), rgb)


def test_mono8_and_mono16_both_byte_orders(rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out8 = rosmsg.image_rgb8(_msg(30, 40, "mono8", 40, grey.tobytes()))
    np.testing.assert_array_equal(out8, np.repeat(grey[:, :, None], 3, axis=2))
    v16 = grey.astype(np.uint16) * 257 + 3  # low byte noise must not matter
    for big, dt in ((0, "<u2"), (1, ">u2")):
        data = v16.astype(dt).tobytes()
        out16 = rosmsg.image_rgb8(_msg(30, 40, "mono16", 80, data, big))
        np.testing.assert_array_equal(out16[:, :, 1], grey)
    # padded mono16
    rows = np.concatenate([v16.astype("<u2").view(np.uint8).reshape(30, 80), np.zeros((30, 4), np.uint8)], axis=1)
    np.testing.assert_array_equal(rosmsg.image_rgb8(_msg(30, 40, "mono16", 84, rows.tobytes()))[:, :, 0], grey)
    # the encoder agrees
    np.testing.assert_array_equal(rosmsg.image_rgb8(conv.rgb_to_image(rgb, "mono16"))[:, :, 2], grey)


@pytest.mark.parametrize(
    "mutate, text",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
        (lambda m: setattr(m, "step", 10), "step < width"),
        (lambda m: setattr(m, "step", m.step + 1), "step*height"),
        (lambda m: setattr(m, "data", b""), "empty data"),
        (lambda m: setattr(m, "width", 0), "empty image"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "step*height"),
    ],
)
def test_bad_images_name_the_problem(rgb, mutate, text):
    msg = conv.rgb_to_image(rgb, "rgb8")
    mutate(msg)
    with pytest.raises(MalformedMessageError, match=text.replace("*", r"\*").replace("(", r"\(")):
        rosmsg.image_rgb8(msg)


def test_compressed_jpeg_and_png(rgb):
    png = conv.rgb_to_compressed(rgb, "png", 5, "cam")
    np.testing.assert_array_equal(rosmsg.image_rgb8(png), rgb)  # lossless
    jpg = conv.rgb_to_compressed(rgb, "jpeg")
    ref = cv2.imdecode(np.frombuffer(bytes(jpg.data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(rosmsg.image_rgb8(jpg), ref)
    assert np.abs(rosmsg.image_rgb8(jpg).astype(int) - rgb).mean() < 6  # jpeg q95
    jpg.data = b""
    with pytest.raises(MalformedMessageError, match="empty data"):
        rosmsg.image_rgb8(jpg)
    png.data = bytes(png.data)[:40]  # a valid header, then truncated
    with pytest.raises(MalformedMessageError, match="does not decode"):
        rosmsg.image_rgb8(png)
    png.data = b"\x00\x00\x01theora"
    png.format = "theora"
    with pytest.raises(MalformedMessageError, match="neither JPEG nor PNG"):
        rosmsg.image_rgb8(png)


def test_camera_info_round_trip_and_rejections():
    cam = PinholeCamera(640, 480, 525.0, 520.0, 319.5, 239.5, (0.1, -0.2, 0.001, 0.002, 0.05))
    info = conv.camera_to_camera_info(cam, 7, "cam")
    assert list(info.k) == [525.0, 0.0, 319.5, 0.0, 520.0, 239.5, 0.0, 0.0, 1.0]
    assert rosmsg.camera_from_info(info) == cam
    for mutate, text in [
        (lambda m: setattr(m, "k", [0.0] * 9), "all zeros"),
        (lambda m: m.k.__setitem__(4, float("nan")), "non-finite"),
        (lambda m: setattr(m, "width", 0), "must be positive"),
        (lambda m: m.k.__setitem__(0, -1.0), "focal length <= 0"),
        (lambda m: setattr(m, "d", [float("inf")] * 5), "D has non-finite"),
    ]:
        bad = conv.camera_to_camera_info(cam)
        mutate(bad)
        with pytest.raises(MalformedMessageError, match=text):
            rosmsg.camera_from_info(bad)
    assert isinstance(CameraInfo(), CameraInfo)


def test_pose_quaternion_order_at_the_boundary():
    # 90 deg about z: quaternion (x, y, z, w) = (0, 0, sin 45, cos 45) in the message
    T = T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, np.pi / 2])), np.array([1.0, 2.0, 3.0]))
    p = conv.T_to_pose(T)
    np.testing.assert_allclose(
        [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w], [0, 0, np.sqrt(0.5), np.sqrt(0.5)]
    )
    assert (p.position.x, p.position.y, p.position.z) == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(rosmsg.T_from_pose(p), T, atol=1e-12)
    np.testing.assert_allclose(rosmsg.T_from_transform(conv.T_to_transform(T)), T, atol=1e-12)
    ts = conv.transform_stamped(T, "map", "odom", 1_500_000_000)
    assert (ts.header.frame_id, ts.child_frame_id, ts.header.stamp.sec, ts.header.stamp.nanosec) == (
        "map",
        "odom",
        1,
        500_000_000,
    )
    p.orientation.w = float("nan")
    with pytest.raises(MalformedMessageError, match="non-finite pose"):
        rosmsg.T_from_pose(p)
    p.orientation.w, p.orientation.z = 2.0, 0.0
    with pytest.raises(MalformedMessageError, match="non-unit quaternion"):
        rosmsg.T_from_pose(p)


def test_stamps_and_covariance_layout():
    assert rosmsg.stamp_ns(conv.ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    C = np.arange(36, dtype=float).reshape(6, 6)
    flat = conv.covariance_to_list(C)
    assert flat[1] == 1.0 and flat[6] == 6.0  # row-major: [0, 1] then [1, 0]
    np.testing.assert_array_equal(conv.list_to_covariance(flat), C)


def test_localization_result_round_trip():
    T = T_from_R_t(R_from_rotvec(np.array([0.1, -0.2, 0.3])), np.array([1.0, -2.0, 0.5]))
    C = np.diag([0.01, 0.02, 0.03, 0.001, 0.002, 0.003])
    C[0, 4] = C[4, 0] = 1e-4
    r = LocalizationResult(
        T,
        C,
        Status.REJECTED,
        "relpose/xfeat",
        confidence=0.75,
        num_inliers=42,
        reference_ids=["a/1", "b/2"],
        scene="office",
        status_reason="jump",
        stage_seconds={"retrieval": 0.01, "pose": 0.02},
    )
    msg = conv.result_to_msg(r, 1_234_567_890_123, "map", latency_s=0.0421)
    assert msg.status == msg.REJECTED and msg.header.frame_id == "map"
    assert (msg.latency.sec, msg.latency.nanosec) == (0, 42_100_000)
    back, stamp, frame = conv.msg_to_result(msg)
    assert (stamp, frame) == (1_234_567_890_123, "map")
    np.testing.assert_allclose(back.T_world_cam, T, atol=1e-12)
    np.testing.assert_array_equal(back.covariance_66, C)
    assert back.status == Status.REJECTED and back.status_reason == "jump"
    assert (back.method, back.scene, back.num_inliers, back.reference_ids) == (
        "relpose/xfeat",
        "office",
        42,
        ["a/1", "b/2"],
    )
    assert back.confidence == pytest.approx(0.75) and back.stage_seconds == {"retrieval": 0.01, "pose": 0.02}
    assert back.extras == {"latency_s": pytest.approx(0.0421, abs=1e-9)}
    nl = conv.result_to_msg(LocalizationResult.not_localized("apr/posenet", "no scene"), 5, "map")
    assert nl.pose.pose.orientation.w == 1.0 and np.all(np.isnan(nl.pose.covariance))
    assert np.all(np.isnan(conv.msg_to_result(nl)[0].T_world_cam))


def test_class_maps_keep_their_ids_in_8_and_16_bit_with_padding_and_byte_order():
    ids8 = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)
    np.testing.assert_array_equal(rosmsg.class_ids(conv.classes_to_image(ids8)), ids8)
    ids16 = (np.arange(30 * 40).reshape(30, 40) * 37 % 65000).astype(np.uint16)
    msg = conv.classes_to_image(ids16)
    assert msg.encoding == "mono16"
    np.testing.assert_array_equal(rosmsg.class_ids(msg), ids16)
    big = np.pad(ids16.astype(">u2").view(np.uint8).reshape(30, 80), ((0, 0), (0, 4)))  # big-endian, 4 pad bytes
    np.testing.assert_array_equal(rosmsg.class_ids(_msg(30, 40, "16UC1", 84, big.tobytes(), True)), ids16)
    padded = np.pad(ids8, ((0, 0), (0, 3)))
    np.testing.assert_array_equal(rosmsg.class_ids(_msg(30, 40, "8UC1", 43, padded.tobytes())), ids8)
    with pytest.raises(MalformedMessageError, match="unsupported class map encoding 'rgb8'"):
        rosmsg.class_ids(conv.rgb_to_image(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(MalformedMessageError, match="step"):
        rosmsg.class_ids(_msg(30, 40, "mono8", 40, ids8.tobytes()[:-1]))
