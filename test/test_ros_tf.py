"""The node's TF paths over real DDS, with the real tf2 (geometry2's C++ core, tf2_py and tf2_ros_py,
built from ros-src by scripts/build_ros.sh): the camera extrinsic from /tf_static, map->odom against
odometry on /tf (REP-105, post-dated by transform_tolerance as nav2 AMCL does), tf2's limits (no
extrapolation; a short hold as for odometry lagging the camera), and the path without tf2_ros.

References: the localizer's own camera pose on the same image (load_localizer in this process), an
analytic odometry trajectory, and a tf2 buffer of the test's own that composes what the node published.
"""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from nav_msgs.msg import Odometry
from ros_helpers import TINY_CAMERA, NodeSessions, Probe, ros_src_skip_reason, tiny_frames, trained_tiny_artifact

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import R_from_rotvec, T_from_R_t, invert_T
from visloc_core.localizers.loading import load_localizer
from visloc_core.localizers.tf_logic import pose_in_output_frame
from visloc_ros import conversions as conv
from visloc_ros import tf_io

NO_TF2 = ros_src_skip_reason("tf2_ros", "tf2_py")
needs_tf2 = pytest.mark.skipif(NO_TF2 is not None, reason=NO_TF2 or "")

# The camera's optical frame on the robot: 0.3 m forward, 0.1 m left, 0.5 m up, pitched down 0.2 rad,
# optical axes (z forward, x right, y down) of a camera looking along base x (REP-103).
R_BASE_OPT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
MOUNT = T_from_R_t(R_from_rotvec(np.array([0.0, 0.2, 0.0])) @ R_BASE_OPT, np.array([0.3, 0.1, 0.5]))
T0 = 1_000_500_000_000  # ns


def odom_at(stamp_ns: int) -> np.ndarray:
    """Analytic T_odom_base: the base drives along odom x at 0.5 m/s while yawing at 0.2 rad/s (tf2's
    interpolation, linear in translation and SLERP in rotation, is exact on it)."""
    t = (stamp_ns - T0) * 1e-9
    return T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.2 * t])), np.array([0.5 * t + 1.0, 0.1, 0.0]))


@pytest.fixture(scope="module")
def artifact():
    return trained_tiny_artifact()


@pytest.fixture(scope="module")
def reference(artifact):
    return load_localizer(artifact)


@pytest.fixture
def session(artifact):
    """(node, probe) factory; every node and probe is torn down after the test."""
    rclpy.init()
    sessions = NodeSessions(model=str(artifact), image_qos="reliable", warmup=False, diagnostics_period_s=0.2)
    yield sessions
    sessions.close()
    rclpy.try_shutdown()


def _tf_from(probe: Probe, parent: str, child: str) -> list:
    return [
        t for m in probe.get("/tf") for t in m.transforms if (t.header.frame_id, t.child_frame_id) == (parent, child)
    ]


def _send_static_mount(probe: Probe):
    import tf2_ros

    static = tf2_ros.StaticTransformBroadcaster(probe.node)
    static.sendTransform(conv.transform_stamped(MOUNT, "base_link", "cam_opt", 0))
    return static


@needs_tf2
def test_camera_extrinsic_comes_from_tf_static(session, reference):
    """Frames wait for the extrinsic (skipped with the reason); once /tf_static has base_link->cam_opt, the
    base pose is T_map_cam inv(T_base_cam) with THAT mount, not the parameters' (camera at the origin)."""
    node, probe = session(base_frame="base_link", use_tf_extrinsic=True)
    img, _ = tiny_frames([0.45])[0]
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0, "cam_opt"), wait_topic=None)
    probe.wait_for(lambda: node.counters()["bad_input"] == 1, what="frame skipped without the extrinsic")
    assert "camera extrinsic not in TF" in node.counters()["last_error"]
    assert "use_tf_extrinsic:=false" in node.counters()["last_error"]
    assert probe.count("pose") == 0 and probe.count("localization") == 0
    _static = _send_static_mount(probe)
    probe.wait_for(lambda: node._tf.has_frame("cam_opt"), what="/tf_static at the node")
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0 + 1, "cam_opt"), wait_topic="pose")
    ref = reference.localize(img, TINY_CAMERA, T0 + 1)
    T_map_base = ref.T_world_cam @ invert_T(MOUNT)
    np.testing.assert_allclose(rosmsg.T_from_pose(probe.get("pose")[0].pose), T_map_base, atol=1e-6)
    # the covariance is moved to base_link with the same lever arm (tf_logic.pose_in_output_frame)
    probe.wait_for(lambda: probe.count("pose_with_covariance") >= 1, what="pose_with_covariance")
    cov = conv.list_to_covariance(probe.get("pose_with_covariance")[-1].pose.covariance)
    np.testing.assert_allclose(
        cov, pose_in_output_frame(ref.T_world_cam, ref.covariance_66, invert_T(MOUNT))[1], atol=1e-12
    )
    # map->base_link on /tf (no odom_frame), at the image stamp
    (tf,) = _tf_from(probe, "map", "base_link")
    assert rosmsg.stamp_ns(tf.header) == T0 + 1
    np.testing.assert_allclose(rosmsg.T_from_transform(tf.transform), T_map_base, atol=1e-6)


@needs_tf2
def test_map_to_odom_against_drifting_odometry_on_tf(session, reference):
    """odom->base only on /tf (no odom topic): map->odom = T_map_base(t) inv(T_odom_base(t)) with tf2's
    interpolation at the image stamp t, stamped t + transform_tolerance; a tf2 buffer of the test composes
    map->odom->base_link back into the node's estimate, moved by the odometry over the tolerance."""
    import tf2_ros
    from rclpy.time import Time

    node, probe = session(base_frame="base_link", odom_frame="odom", transform_tolerance=0.25)
    _static = _send_static_mount(probe)
    broadcaster = tf2_ros.TransformBroadcaster(probe.node)
    buffer = tf2_ros.Buffer()
    _listener = tf2_ros.TransformListener(buffer, probe.node)
    stamps = [T0 + k * 50_000_000 for k in range(-3, 10)]  # 20 Hz odometry from t-0.15 s to t+0.45 s
    for t_ns in stamps:
        broadcaster.sendTransform(conv.transform_stamped(odom_at(t_ns), "odom", "base_link", t_ns))
    last = stamps[-1]
    probe.wait_for(lambda: node._tf.has_frame("cam_opt") and node._tf.has_frame("odom"), what="TF at the node")
    probe.wait_for(lambda: _covers(node, "odom", "base_link", last), what="all odometry at the node")
    img, _ = tiny_frames([0.4])[0]
    stamp = T0 + 37_000_000  # between two odometry samples
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp, "cam_opt"), wait_topic="pose")
    probe.wait_for(lambda: len(_tf_from(probe, "map", "odom")) == 1, what="map->odom")
    T_map_base = reference.localize(img, TINY_CAMERA, stamp).T_world_cam @ invert_T(MOUNT)
    np.testing.assert_allclose(rosmsg.T_from_pose(probe.get("pose")[0].pose), T_map_base, atol=1e-6)
    (tf,) = _tf_from(probe, "map", "odom")
    assert rosmsg.stamp_ns(tf.header) == stamp + 250_000_000  # post-dated by transform_tolerance
    T_map_odom = rosmsg.T_from_transform(tf.transform)
    np.testing.assert_allclose(T_map_odom, T_map_base @ invert_T(odom_at(stamp)), atol=1e-6)
    # what a TF user sees: map->base_link through map->odom->base_link, at the image stamp + tolerance
    t_user = stamp + 250_000_000
    probe.wait_for(lambda: buffer.can_transform("map", "base_link", Time(nanoseconds=t_user)), what="chain")
    T_user = rosmsg.T_from_transform(buffer.lookup_transform("map", "base_link", Time(nanoseconds=t_user)).transform)
    np.testing.assert_allclose(T_user, T_map_odom @ odom_at(t_user), atol=1e-6)
    # ... which is the estimate carried forward by the odometry's own motion over the tolerance
    np.testing.assert_allclose(T_user, T_map_base @ invert_T(odom_at(stamp)) @ odom_at(t_user), atol=1e-6)


def _covers(node, target: str, source: str, stamp_ns: int) -> bool:
    try:
        node._tf.lookup(target, source, stamp_ns)
    except tf_io.TfUnavailableError:
        return False
    return True


@needs_tf2
def test_odometry_lag_is_held_briefly_then_map_to_odom_is_skipped(session, reference):
    """tf2 does not extrapolate: an image 30 ms after the newest odometry (within odom_extrapolation_s
    = 50 ms) uses that odometry, as the topic path does; one 1 s after it publishes no map->odom and
    counts tf_skipped, while the pose itself is still published."""
    import tf2_ros

    node, probe = session(base_frame="base_link", odom_frame="odom", odom_extrapolation_s=0.05)
    _static = _send_static_mount(probe)
    broadcaster = tf2_ros.TransformBroadcaster(probe.node)
    stamps = [T0 + k * 50_000_000 for k in range(-4, 1)]  # newest odometry at T0
    for t_ns in stamps:
        broadcaster.sendTransform(conv.transform_stamped(odom_at(t_ns), "odom", "base_link", t_ns))
    probe.wait_for(lambda: node._tf.has_frame("cam_opt") and _covers(node, "odom", "base_link", T0), what="TF")
    img, _ = tiny_frames([0.4])[0]
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0 + 30_000_000, "cam_opt"), wait_topic="pose")
    probe.wait_for(lambda: len(_tf_from(probe, "map", "odom")) == 1, what="map->odom")
    T_map_base = reference.localize(img, TINY_CAMERA, T0).T_world_cam @ invert_T(MOUNT)
    T_map_odom = rosmsg.T_from_transform(_tf_from(probe, "map", "odom")[0].transform)
    np.testing.assert_allclose(T_map_odom, T_map_base @ invert_T(odom_at(T0)), atol=1e-6)
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0 + 1_000_000_000, "cam_opt"), wait_topic="pose")
    probe.wait_for(lambda: node.counters()["tf_skipped"] == 1, what="tf_skipped")
    assert len(_tf_from(probe, "map", "odom")) == 1 and probe.count("pose") == 2


@needs_tf2
def test_odometry_from_the_topic_while_tf2_listens(session, reference):
    """tf2 installed, odometry only on the odom topic: every frame gets map->odom from the topic, also after
    the node's own map->odom put the odom frame into its TF buffer (TF has no odom->base_link chain)."""
    node, probe = session(base_frame="base_link", odom_frame="odom", use_tf_extrinsic=False)
    assert node._tf.listening
    for k in range(-3, 8):
        t_ns = T0 + k * 50_000_000
        msg = Odometry()
        msg.header.stamp = conv.ns_to_stamp(t_ns)
        msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
        msg.pose.pose = conv.T_to_pose(odom_at(t_ns))
        probe.odom_pub.publish(msg)
    probe.wait_for(lambda: len(node._odom) == 11, what="odometry at the node")
    img, _ = tiny_frames([0.4])[0]
    stamps = [T0 + 37_000_000, T0 + 237_000_000]
    for stamp in stamps:
        probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp, "cam_opt"), wait_topic="pose")
        probe.wait_for(lambda: node._tf.has_frame("odom"), what="the node's own map->odom in its buffer")
    probe.wait_for(lambda: len(_tf_from(probe, "map", "odom")) == 2, what="map->odom for both frames")
    T_map_base = reference.localize(img, TINY_CAMERA, 0).T_world_cam @ invert_T(node._T_base_cam_params)
    for tf, stamp in zip(_tf_from(probe, "map", "odom"), stamps, strict=True):
        np.testing.assert_allclose(
            rosmsg.T_from_transform(tf.transform), T_map_base @ invert_T(odom_at(stamp)), atol=1e-6
        )
    assert node.counters()["tf_skipped"] == 0


def test_without_tf2_ros_tf_goes_out_as_tfmessage_and_odometry_comes_from_the_topic(session, monkeypatch, reference):
    """The path of PyPI-only installs (tf2_ros switched off here): /tf from a plain TFMessage publisher with
    the real tf2_msgs type hash, the extrinsic from the parameters, odom->base from the odom topic."""
    monkeypatch.setattr(tf_io, "HAVE_TF2_ROS", False)
    t_base_cam, q_base_cam = [0.2, -0.05, 0.4], [-0.5, 0.5, -0.5, 0.5]
    node, probe = session(
        base_frame="base_link",
        odom_frame="odom",
        transform_tolerance=0.1,
        base_to_camera_translation=t_base_cam,
        base_to_camera_rotation_xyzw=q_base_cam,
    )
    assert not node._tf.listening
    for k in range(-3, 4):
        t_ns = T0 + k * 50_000_000
        msg = Odometry()
        msg.header.stamp = conv.ns_to_stamp(t_ns)
        msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
        msg.pose.pose = conv.T_to_pose(odom_at(t_ns))
        probe.odom_pub.publish(msg)
    probe.wait_for(lambda: len(node._odom) == 7, what="odometry at the node")
    img, _ = tiny_frames([0.4])[0]
    stamp = T0 + 37_000_000
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp, "cam_opt"), wait_topic="pose")
    probe.wait_for(lambda: len(_tf_from(probe, "map", "odom")) == 1, what="map->odom")
    T_base_cam = T_from_R_t(R_BASE_OPT, np.array(t_base_cam))
    T_map_base = reference.localize(img, TINY_CAMERA, stamp).T_world_cam @ invert_T(T_base_cam)
    (tf,) = _tf_from(probe, "map", "odom")
    assert rosmsg.stamp_ns(tf.header) == stamp + 100_000_000
    np.testing.assert_allclose(rosmsg.T_from_transform(tf.transform), T_map_base @ invert_T(odom_at(stamp)), atol=1e-6)
    info = probe.node.get_publishers_info_by_topic("/tf")
    assert {i.topic_type for i in info} == {"tf2_msgs/msg/TFMessage"}
    assert {str(i.topic_type_hash) for i in info} == {
        "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"
    }
