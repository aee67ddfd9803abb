"""The localizer node with the real rclpy over DDS, in this process (a real executor, real topics).

References: the trained tiny APR artifact's accuracy on held-out views of apr_tiny's scene (truth
from apr_tiny.pose_at), the localizer's own output on the same image (for frames and map->odom,
computed analytically), the input stamps and configured frame names.
"""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from bounds import record
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from ros_helpers import TINY_CAMERA, Probe, blocking_localizer, mean_pose_error, tiny_frames, trained_tiny_artifact
from std_srvs.srv import Trigger

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import (
    R_from_rotvec,
    T_from_R_t,
    invert_T,
    pose_errors,
    rotation_angle_deg,
)
from visloc_core.localizers.base import Status
from visloc_core.localizers.loading import load_localizer
from visloc_ros import conversions as conv
from visloc_ros.localizer_node import LocalizerNode

BASE_T_CAM_XYZ = [0.2, -0.05, 0.4]
BASE_Q_CAM_XYZW = [-0.5, 0.5, -0.5, 0.5]  # optical frame looking along base x


@pytest.fixture(scope="module")
def artifact():
    return trained_tiny_artifact()


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def make_node(artifact, **params) -> LocalizerNode:
    # the camera extrinsic from parameters unless a test is about TF (test_ros_tf.py)
    overrides = {
        "model": str(artifact),
        "diagnostics_period_s": 0.2,
        "image_qos": "reliable",
        "use_tf_extrinsic": False,
        **params,
    }
    ros_params = [rclpy.parameter.Parameter(k, value=v) for k, v in overrides.items()]
    return LocalizerNode(parameter_overrides=ros_params)


class Session:
    """Node under test + probe, started; cleaned up by close()."""

    def __init__(self, artifact, compressed: bool = False, activate: bool = True, **params) -> None:
        self.node = make_node(artifact, compressed=compressed, **params)
        self.probe = Probe(compressed=compressed)
        if activate:
            assert self.node.autostart(), "configure/activate failed"
        self.probe.start(self.node)
        if activate:
            self.probe.wait_connected()

    def send_camera_info(self, camera=TINY_CAMERA, stamp_ns: int = 0) -> None:
        self.probe.info_pub.publish(conv.camera_to_camera_info(camera, stamp_ns, "cam_opt"))
        self.probe.wait_for(lambda: self.node._camera is not None, what="camera_info at the node")

    def close(self) -> None:
        self.node.stop()
        self.probe.stop()
        self.node.destroy_node()


@pytest.fixture
def session_factory(ros, artifact):
    sessions = []

    def make(**kw) -> Session:
        s = Session(artifact, **kw)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.close()


def test_localizes_sequence_with_input_stamps_and_frames(session_factory, artifact):
    """Held-out views: the node publishes exactly what the model says, stamped like the input, in frame
    'world_map'. (The sanity gate is off here: whether a model's jump between two frames exceeds it
    depends on the trained model; the gate has its own tests below.)"""
    s = session_factory(map_frame="world_map", base_frame="", max_jump_m=0.0)
    s.send_camera_info()
    frames = tiny_frames(np.linspace(0.1, 0.9, 6) + 0.013)  # between training views
    stamps = [1_700_000_000_123_456_789 + i * 100_000_000 for i in range(len(frames))]
    for (img, _), stamp in zip(frames, stamps, strict=True):
        s.probe.publish_frame(conv.rgb_to_image(img, "bgr8", stamp, "cam_opt"))
    s.probe.wait_for(lambda: s.probe.count("pose") == len(frames), what="all poses")
    results = s.probe.get("localization")
    poses = s.probe.get("pose")
    assert [rosmsg.stamp_ns(m.header) for m in results] == stamps
    assert [rosmsg.stamp_ns(m.header) for m in poses] == stamps
    assert {m.header.frame_id for m in results + poses} == {"world_map"}
    assert all(m.status == m.LOCALIZED and m.method == "apr/posenet" for m in results)
    T_est = np.stack([rosmsg.T_from_pose(m.pose) for m in poses])
    # reference: the localizer itself on the same images (bgr8 decodes bit-exactly)
    loc = load_localizer(artifact)
    expected = [loc.localize(img, TINY_CAMERA, 0) for img, _ in frames]
    np.testing.assert_allclose(T_est, np.stack([r.T_world_cam for r in expected]), atol=1e-6)
    # and it learned something: better than always answering the mean pose of these views (the model's own
    # accuracy is test_apr_training's subject). Bound: the sweep's worst ratio (test/bound_sweep.py) x 1.5.
    T_gt = [gt for _, gt in frames]
    t_err, _ = pose_errors(T_est, np.stack(T_gt))
    assert record("ros_node.t_vs_mean_pose", np.median(t_err) / mean_pose_error(T_gt)) < 0.6
    # pose_with_covariance is latched (transient local, depth 1): the last pose, with the localizer's covariance
    # of that image (the artifact's calibrated one, or its familiarity model's at that image's feature distance)
    s.probe.wait_for(lambda: s.probe.count("pose_with_covariance") >= 1)
    last = s.probe.get("pose_with_covariance")[-1]
    assert rosmsg.stamp_ns(last.header) == stamps[-1]
    cov = conv.list_to_covariance(last.pose.covariance)
    np.testing.assert_allclose(np.diag(cov), np.diag(expected[-1].covariance_66), rtol=1e-6)
    # TF: map -> camera frame of the image header at the image stamp, equal to the pose
    s.probe.wait_for(lambda: s.probe.count("/tf") == len(frames), what="/tf")
    tfs = [m.transforms[0] for m in s.probe.get("/tf")]
    assert [rosmsg.stamp_ns(t.header) for t in tfs] == stamps
    assert {(t.header.frame_id, t.child_frame_id) for t in tfs} == {("world_map", "cam_opt")}
    np.testing.assert_allclose(rosmsg.T_from_transform(tfs[-1].transform), T_est[-1], atol=1e-9)
    # latency and stage timings are carried
    assert all(m.stage_names == ["preprocess", "inference", "postprocess"] for m in results)


def test_tf_type_hash_is_the_real_tf2_msgs_one(session_factory):
    """Our /tf publisher advertises tf2_msgs/msg/TFMessage with the hash real ROS 2 (Jazzy+) reports."""
    s = session_factory()
    s.probe.wait_for(lambda: len(s.probe.node.get_publishers_info_by_topic("/tf")) > 0, what="/tf publisher")
    info = s.probe.node.get_publishers_info_by_topic("/tf")[0]
    assert info.topic_type == "tf2_msgs/msg/TFMessage"
    # RIHS01 hash of tf2_msgs/msg/TFMessage as `ros2 topic info -v /tf` shows it on Jazzy/Kilted
    assert str(info.topic_type_hash) == "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"


def _odom_at(stamp_ns: int) -> np.ndarray:
    """Analytic odometry: the base drives along odom x at 0.5 m/s while yawing at 0.2 rad/s."""
    t = stamp_ns * 1e-9 - 1000.0
    return T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.2 * t])), np.array([0.5 * t, 0.1, 0.0]))


def test_base_frame_pose_and_map_to_odom_against_analytic(session_factory, artifact):
    s = session_factory(
        base_frame="base_link",
        odom_frame="odom",
        transform_tolerance=0.25,
        base_to_camera_translation=BASE_T_CAM_XYZ,
        base_to_camera_rotation_xyzw=BASE_Q_CAM_XYZW,
    )
    s.send_camera_info()
    img, _ = tiny_frames([0.4])[0]
    stamp = 1_000_500_000_000 + 37_000_000  # between two odometry samples
    for k in range(-3, 4):  # odometry at 20 Hz around the image stamp
        t_ns = 1_000_500_000_000 + k * 50_000_000
        msg = Odometry()
        msg.header.stamp = conv.ns_to_stamp(t_ns)
        msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
        msg.pose.pose = conv.T_to_pose(_odom_at(t_ns))
        s.probe.odom_pub.publish(msg)
    s.probe.wait_for(lambda: len(s.node._odom) == 7, what="odometry at the node")
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp, "cam_opt"))
    s.probe.wait_for(lambda: s.probe.count("/tf") == 1, what="map->odom")
    # Reference: the localizer's own camera pose on the same image, moved to base_link analytically.
    T_map_cam = load_localizer(artifact).localize(img, TINY_CAMERA, stamp).T_world_cam
    R_base_cam = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # REP-103 optical
    T_base_cam = T_from_R_t(R_base_cam, np.array(BASE_T_CAM_XYZ))
    T_map_base = T_map_cam @ invert_T(T_base_cam)
    pose = s.probe.get("pose")[0]
    assert pose.header.frame_id == "map"
    np.testing.assert_allclose(rosmsg.T_from_pose(pose.pose), T_map_base, atol=1e-6)
    # odometry interpolated at the image stamp: linear motion and constant yaw rate -> exact analytic value,
    # up to SLERP = constant-rate rotation (exact) and linear translation (exact here)
    T_odom_base = _odom_at(stamp)
    tf = s.probe.get("/tf")[0].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    assert rosmsg.stamp_ns(tf.header) == stamp + 250_000_000  # post-dated by transform_tolerance
    T_map_odom = rosmsg.T_from_transform(tf.transform)
    np.testing.assert_allclose(T_map_odom, T_map_base @ invert_T(T_odom_base), atol=1e-6)
    # chaining map->odom->base gives the pose back (REP-105)
    np.testing.assert_allclose(T_map_odom @ T_odom_base, T_map_base, atol=1e-6)


def test_malformed_input_does_not_stop_node_and_shows_in_diagnostics(session_factory):
    s = session_factory()
    img, _ = tiny_frames([0.5])[0]
    stamp = 2_000_000_000_000
    # 1. no camera_info yet
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp), wait_topic=None)
    s.probe.wait_for(lambda: s.node.counters()["bad_input"] == 1, what="bad input 1")
    assert "camera_info" in s.node.counters()["last_error"]
    s.send_camera_info()
    bad = []
    m = conv.rgb_to_image(img, "rgb8", stamp + 1)
    m.encoding = "yuv422_yuy2"
    bad.append((m, "unsupported encoding"))
    m = conv.rgb_to_image(img, "rgb8", stamp + 2)
    m.step = m.step + 4  # claims padding the data does not have
    bad.append((m, "step*height"))
    m = conv.rgb_to_image(img, "rgb8", stamp + 3)
    m.data = b""
    bad.append((m, "empty data"))
    m = conv.rgb_to_image(img[:40], "rgb8", stamp + 4)  # size differs from camera_info
    bad.append((m, "camera_info says"))
    for k, (msg, text) in enumerate(bad, start=2):
        s.probe.publish_frame(msg, wait_topic=None)
        s.probe.wait_for(lambda k=k: s.node.counters()["bad_input"] == k, what=f"bad input {k}")
        assert text in s.node.counters()["last_error"]
    # NaN in camera_info: rejected; the next image has no valid camera
    info = conv.camera_to_camera_info(TINY_CAMERA)
    info.k[0] = float("nan")
    s.probe.info_pub.publish(info)
    s.probe.wait_for(lambda: s.node._camera is None, what="NaN camera_info rejected")
    assert "non-finite" in s.node.counters()["last_error"]
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp + 5), wait_topic=None)
    s.probe.wait_for(lambda: s.node.counters()["bad_input"] == 7, what="image without valid camera_info")
    # K all zeros
    info = conv.camera_to_camera_info(TINY_CAMERA)
    info.k = [0.0] * 9
    s.probe.info_pub.publish(info)
    s.probe.wait_for(lambda: s.node.counters()["bad_input"] == 8, what="K all zeros")
    assert "all zeros" in s.node.counters()["last_error"]
    assert s.probe.count("localization") == 0 and s.probe.count("pose") == 0
    # still alive: a good frame is localized
    s.send_camera_info()
    s.probe.publish_frame(conv.rgb_to_image(img, "bgra8", stamp + 6), wait_topic="pose")
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp + 7), wait_topic="pose")
    assert rosmsg.stamp_ns(s.probe.get("pose")[-1].header) == stamp + 7
    # /diagnostics carries the counts and the last error
    s.probe.wait_for(lambda: s.probe.last_diagnostics().get("frames_processed") == "2", what="diagnostics")
    d = s.probe.last_diagnostics()
    assert d["bad_input"] == "8" and d["state"] == "active" and d["frames_received"] == "8"
    assert "all zeros" in d["last_error"]
    assert s.probe.get("/diagnostics")[-1].status[0].level == b"\x01"  # WARN


def test_rejected_is_never_published_as_a_pose_and_relocalize_resets(session_factory):
    s = session_factory(max_jump_m=0.3, max_jump_deg=90.0, jump_window_s=100.0)
    s.send_camera_info()
    (img_a, _), (img_b, _) = tiny_frames([0.1, 0.9])  # 1.6 m apart
    t0 = 3_000_000_000_000
    s.probe.publish_frame(conv.rgb_to_image(img_a, "rgb8", t0), wait_topic="pose")
    s.probe.publish_frame(conv.rgb_to_image(img_b, "rgb8", t0 + 100_000_000))
    rejected = s.probe.get("localization")[-1]
    assert rejected.status == rejected.REJECTED and "jump" in rejected.status_reason
    assert rosmsg.stamp_ns(rejected.header) == t0 + 100_000_000
    # the rejected estimate is carried in the message (for diagnosis), but nothing else saw it
    assert s.probe.count("pose") == 1 and s.probe.count("/tf") == 1
    # relocalize: the next frame at the far place is accepted
    fut = s.probe.relocalize.call_async(Trigger.Request())
    s.probe.wait_for(fut.done, what="relocalize response")
    assert fut.result().success
    s.probe.publish_frame(conv.rgb_to_image(img_b, "rgb8", t0 + 200_000_000), wait_topic="pose")
    assert s.probe.get("localization")[-1].status == rejected.LOCALIZED
    stamps = [rosmsg.stamp_ns(m.header) for m in s.probe.get("pose")]
    assert stamps == [t0, t0 + 200_000_000]
    s.probe.wait_for(lambda: s.probe.last_diagnostics().get("frames_rejected") == "1", what="diagnostics")
    assert "jump" in s.probe.last_diagnostics()["last_status_reason"]


def test_initialpose_resets_gate_and_is_passed_as_prior(session_factory):
    s = session_factory(max_jump_m=0.3, jump_window_s=100.0, base_frame="")
    s.send_camera_info()
    seen_priors = []
    real = s.node.localizer.localize

    def spy(image, camera, stamp_ns, prior=None):
        seen_priors.append(prior)
        return real(image, camera, stamp_ns, prior)

    s.node.localizer.localize = spy
    (img_a, _), (img_b, T_b) = tiny_frames([0.1, 0.9])
    t0 = 4_000_000_000_000
    s.probe.publish_frame(conv.rgb_to_image(img_a, "rgb8", t0), wait_topic="pose")
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose = conv.T_to_pose(T_b)
    s.probe.initialpose_pub.publish(msg)
    s.probe.wait_for(lambda: s.node._prior is not None, what="initialpose at the node")
    s.probe.publish_frame(conv.rgb_to_image(img_b, "rgb8", t0 + 100_000_000), wait_topic="pose")
    assert seen_priors[0] is None
    np.testing.assert_allclose(seen_priors[1], T_b, atol=1e-9)  # camera output frame: prior = T_map_cam
    assert float(rotation_angle_deg(seen_priors[1][:3, :3] @ T_b[:3, :3].T)) < 1e-6


def test_newest_frame_policy_drops_stale_frames(session_factory):
    """While the worker is busy, 9 more frames arrive: only the newest is processed, 8 are counted dropped."""
    s = session_factory()
    s.send_camera_info()
    release = blocking_localizer(s.node, 30.0)
    img, _ = tiny_frames([0.5])[0]
    t0 = 5_000_000_000_000
    s.probe.image_pub.publish(conv.rgb_to_image(img, "rgb8", t0))
    s.probe.wait_for(
        lambda: s.node.counters()["received"] == 1 and s.node._worker.mailbox._item is None, what="worker busy"
    )
    for k in range(1, 10):  # one at a time, so the DDS history (depth 1) cannot lose any
        s.probe.image_pub.publish(conv.rgb_to_image(img, "rgb8", t0 + k))
        s.probe.wait_for(lambda k=k: s.node.counters()["received"] == k + 1, what=f"frame {k} received")
    release.set()
    s.probe.wait_for(lambda: s.probe.count("localization") == 2, what="2 results")
    stamps = [rosmsg.stamp_ns(m.header) for m in s.probe.get("localization")]
    assert stamps == [t0, t0 + 9]
    c = s.node.counters()
    assert (c["processed"], c["dropped"]) == (2, 8)


def test_compressed_input(session_factory):
    s = session_factory(compressed=True, max_jump_m=0.0)  # the gate is not the subject here
    s.send_camera_info()
    frames = tiny_frames([0.3, 0.6])
    for k, (img, _) in enumerate(frames):
        s.probe.publish_frame(conv.rgb_to_compressed(img, "png", 6_000_000_000_000 + k), wait_topic="pose")
    T_est = np.stack([rosmsg.T_from_pose(m.pose) for m in s.probe.get("pose")])
    # png is lossless: exactly what the localizer gives on the raw image, moved to base_link
    T_ref = np.stack([s.node.localizer.localize(img, TINY_CAMERA, 0).T_world_cam for img, _ in frames])
    T_base_cam = s.node._T_base_cam_params
    np.testing.assert_allclose(T_est, T_ref @ invert_T(T_base_cam), atol=1e-6)


def test_configure_failure_keeps_node_alive(ros, tmp_path):
    node = make_node(tmp_path / "no_such_artifact")
    probe = Probe().start(node)
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() != TransitionCallbackReturn.SUCCESS
        probe.wait_for(lambda: probe.get("/diagnostics") and probe.get("/diagnostics")[-1].status[0].level == b"\x02")
        d = probe.last_diagnostics()
        assert d["state"] == "unconfigured" and "not a visloc artifact" in d["last_error"]
    finally:
        node.stop()
        probe.stop()
        node.destroy_node()


def test_localizer_rejection_and_exceptions_pass_through_as_diagnostics(session_factory):
    """The localizer's own REJECTED (outside the mapped region) reaches only `localization`; an exception
    inside the localizer is logged and counted, and the next frame is processed."""
    s = session_factory()
    s.send_camera_info()
    real = s.node.localizer.localize
    mode = {"next": "reject"}

    def wrapped(image, camera, stamp_ns, prior=None):
        r = real(image, camera, stamp_ns, prior)
        if mode["next"] == "reject":
            r.status, r.status_reason = Status.REJECTED, "pose outside the mapped region of scene 'line'"
        elif mode["next"] == "raise":
            raise RuntimeError("simulated model failure")
        return r

    s.node.localizer.localize = wrapped
    img, _ = tiny_frames([0.5])[0]
    t0 = 7_000_000_000_000
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0))
    msg = s.probe.get("localization")[-1]
    assert msg.status == msg.REJECTED and "outside the mapped region" in msg.status_reason
    mode["next"] = "raise"
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0 + 1), wait_topic=None)
    s.probe.wait_for(lambda: s.node.counters()["errors"] == 1, what="error counted")
    assert "simulated model failure" in s.node.counters()["last_error"]
    mode["next"] = "pass"
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0 + 2), wait_topic="pose")
    assert [rosmsg.stamp_ns(m.header) for m in s.probe.get("pose")] == [t0 + 2]
    assert s.probe.count("/tf") == 1


def test_class_maps_on_the_semantic_topic_reach_a_localizer_that_uses_them(session_factory):
    """semantic:=true: the class map published with the image's stamp is the one passed to the
    localizer (bit-exact); a frame whose class map never comes is localized without one and counted."""
    s = session_factory(semantic=True, semantic_timeout_s=0.3)
    s.send_camera_info()
    from sensor_msgs.msg import Image

    sem_pub = s.probe.node.create_publisher(Image, "semantic", 10)
    s.probe.wait_for(lambda: s.node.count_publishers("semantic") >= 1, what="semantic publisher")
    s.probe.wait_for(lambda: sem_pub.get_subscription_count() >= 1, what="semantic subscription")
    seen = []
    real = s.node.localizer.localize
    s.node.localizer.uses_semantics = True  # as the learned relpose estimator with BiasNet

    def spy(image, camera, stamp_ns, prior=None, query_semantic_HW=None):
        seen.append((stamp_ns, None if query_semantic_HW is None else query_semantic_HW.copy()))
        return real(image, camera, stamp_ns, prior)

    s.node.localizer.localize = spy
    img, _ = tiny_frames([0.5])[0]
    h, w = img.shape[:2]
    classes = (np.arange(h * w).reshape(h, w) % 7).astype(np.uint8)
    t0 = 8_000_000_000_000
    sem_pub.publish(conv.classes_to_image(classes, t0 + 5, "cam_opt"))  # another frame's map: not used
    sem_pub.publish(conv.classes_to_image(classes[::-1].copy(), t0, "cam_opt"))
    s.probe.wait_for(lambda: len(s.node._semantic_maps) == 2, what="class maps at the node")
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0), wait_topic="localization")
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0 + 10), wait_topic="localization")
    assert [st for st, _ in seen] == [t0, t0 + 10]
    np.testing.assert_array_equal(seen[0][1], classes[::-1])
    assert seen[1][1] is None
    assert s.node.counters()["semantic_missing"] == 1
