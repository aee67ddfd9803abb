"""One decoder, two paths: every image encoding and a fisheye camera_info give the same result through
`visloc dataset from-bag` (a real rosbag2 -> dataset -> Dataset.load_rgb) and through the node (the
same message over DDS -> the image its localizer receives). Reference: each path against the other,
bit for bit, and the same refusal text for what neither accepts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import rclpy
from bag_fixtures import BagWriter, camera_info, compressed_msg, image_msg, pose_stamped
from ros_helpers import TINY_CAMERA, Probe, tiny_frames, trained_tiny_artifact
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from visloc_core.data.bags.read import BagError, FromBagOptions, dataset_from_bag
from visloc_core.data.layout import Dataset
from visloc_ros import conversions as conv
from visloc_ros.localizer_node import LocalizerNode

K = TINY_CAMERA.K
STAMP0 = 5_000_000_000_000


def _encodings(rgb: np.ndarray) -> dict[str, tuple[str, np.ndarray, int, int]]:
    """encoding -> (encoding string, row bytes (H, step), step, is_bigendian) of ``rgb``."""
    h, w = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    grey16 = grey.astype(np.uint16) * 256 + (np.arange(h * w).reshape(h, w) % 251).astype(np.uint16)
    alpha = np.full((h, w, 1), 77, np.uint8)
    out = {
        "rgb8": ("rgb8", rgb, 0),
        "bgr8": ("bgr8", rgb[:, :, ::-1], 0),
        "rgba8": ("rgba8", np.concatenate([rgb, alpha], axis=2), 0),
        "bgra8": ("bgra8", np.concatenate([rgb[:, :, ::-1], alpha], axis=2), 0),
        "mono8": ("mono8", grey, 0),
        "8UC1": ("8UC1", grey, 0),
        "mono16": ("mono16", grey16.astype("<u2"), 0),
        "16UC1-big-endian": ("16UC1", grey16.astype(">u2"), 1),
    }
    table = {}
    for name, (enc, px, big) in out.items():
        rows = np.ascontiguousarray(px).view(np.uint8).reshape(h, -1)
        rows = np.concatenate([rows, np.zeros((h, 3), np.uint8)], axis=1)  # step padding
        table[name] = (enc, rows, rows.shape[1], big)
    return table


def _compressed(rgb: np.ndarray) -> dict[str, tuple[str, bytes]]:
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return {
        "png": ("png", cv2.imencode(".png", bgr)[1].tobytes()),
        "jpeg": ("rgb8; jpeg compressed bgr8", cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()),
        "png16-grey": (
            "png",
            cv2.imencode(".png", (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257))[1].tobytes(),
        ),
    }


def _from_bag(tmp_path, name: str, image, info) -> np.ndarray:
    """The image a dataset made by from-bag holds for one message."""
    bag = tmp_path / f"bag_{name}"
    topic = "/camera/image_raw" + ("/compressed" if image.__msgtype__.endswith("CompressedImage") else "")
    with BagWriter(bag, "sqlite3") as b:
        for k in (-1, 1):
            b.write("/gt", pose_stamped(STAMP0 + k * 50_000_000, "map", np.eye(4)), STAMP0 + k * 50_000_000)
        b.write("/camera/camera_info", info, STAMP0)
        b.write(topic, image, STAMP0)
    opts = FromBagOptions(
        image_topic=topic, pose_topic="/gt", camera_info_topic="/camera/camera_info", camera_frame="base_link"
    )
    dataset_from_bag(bag, tmp_path / f"ds_{name}", opts, progress=False)
    ds = Dataset(tmp_path / f"ds_{name}")
    return ds.load_rgb(ds.frames()[0])


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


class _SpyNode:
    """The real node over DDS; its localizer records the image it is given."""

    def __init__(self, compressed: bool) -> None:
        params = {
            "model": str(trained_tiny_artifact()),
            "compressed": compressed,
            "diagnostics_period_s": 0.1,
            "use_tf_extrinsic": False,  # no TF here: with tf2 installed the node would wait for the extrinsic
        }
        self.node = LocalizerNode(
            parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in params.items()]
        )
        self.probe = Probe(compressed=compressed)
        assert self.node.autostart()
        self.probe.start(self.node)
        self.probe.wait_connected()
        self.seen: list[np.ndarray] = []
        real = self.node.localizer.localize

        def spy(image, camera, stamp_ns, prior=None):
            self.seen.append(image.copy())
            return real(image, camera, stamp_ns, prior)

        self.node.localizer.localize = spy
        self.probe.info_pub.publish(conv.camera_to_camera_info(TINY_CAMERA, 0, "cam_opt"))
        self.probe.wait_for(lambda: self.node._camera is not None, what="camera_info")

    def through(self, msg) -> np.ndarray:
        n = len(self.seen)
        self.probe.image_pub.publish(msg)
        self.probe.wait_for(lambda: len(self.seen) > n, what="the image at the localizer")
        return self.seen[-1]

    def close(self) -> None:
        self.node.stop()
        self.probe.stop()
        self.node.destroy_node()


def test_every_encoding_gives_the_same_image_through_from_bag_and_the_node(ros, tmp_path):
    rgb, _ = tiny_frames([0.4])[0]
    h, w = rgb.shape[:2]
    info = camera_info(STAMP0, "base_link", w, h, K)
    raw = _SpyNode(compressed=False)
    try:
        for name, (enc, rows, step, big) in _encodings(rgb).items():
            via_bag = _from_bag(tmp_path, name, image_msg(STAMP0, "base_link", rows, enc, w, h, step, big), info)
            msg = Image(height=h, width=w, encoding=enc, is_bigendian=big, step=step, data=rows.tobytes())
            msg.header.stamp = conv.ns_to_stamp(STAMP0)
            via_node = raw.through(msg)
            np.testing.assert_array_equal(via_node, via_bag, err_msg=name)
            if enc in ("rgb8", "bgr8", "rgba8", "bgra8"):
                np.testing.assert_array_equal(via_node, rgb, err_msg=name)  # and both are the true colours
    finally:
        raw.close()
    comp = _SpyNode(compressed=True)
    try:
        for name, (fmt, data) in _compressed(rgb).items():
            via_bag = _from_bag(tmp_path, name, compressed_msg(STAMP0, "base_link", data, fmt), info)
            msg = CompressedImage(format=fmt, data=data)
            msg.header.stamp = conv.ns_to_stamp(STAMP0)
            np.testing.assert_array_equal(comp.through(msg), via_bag, err_msg=name)
    finally:
        comp.close()


def test_a_fisheye_camera_info_is_refused_the_same_way_by_both(ros, tmp_path):
    rgb, _ = tiny_frames([0.4])[0]
    h, w = rgb.shape[:2]
    info = camera_info(STAMP0, "base_link", w, h, K, d=(0.1, -0.05, 0.01, 0.0))
    info.distortion_model = "equidistant"
    with pytest.raises(BagError, match="no usable camera_info") as err:
        _from_bag(tmp_path, "fisheye", image_msg(STAMP0, "base_link", rgb, "rgb8", w, h, 3 * w), info)
    reason = "unsupported distortion model 'equidistant'"
    assert reason in str(err.value) and "rectify" in str(err.value)
    node = _SpyNode(compressed=False)
    try:
        msg = CameraInfo(
            width=w, height=h, distortion_model="equidistant", d=[0.1, -0.05, 0.01, 0.0], k=K.ravel().tolist()
        )
        node.probe.info_pub.publish(msg)
        node.probe.wait_for(lambda: node.node._camera is None, what="fisheye refused")
        assert reason in node.node.counters()["last_error"] and "rectify" in node.node.counters()["last_error"]
    finally:
        node.close()
