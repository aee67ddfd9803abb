"""LocalizationResult and PoseStamped between two real rclpy nodes over DDS: every field intact."""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import MultiThreadedExecutor
from visloc_ros.msg import LocalizationResult as LocalizationResultMsg

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import R_from_rotvec, T_from_R_t
from visloc_core.localizers.base import LocalizationResult, Status
from visloc_ros import conversions as conv


def _wait(pred, timeout_s=20.0):
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end and not pred():
        time.sleep(0.02)
    assert pred(), "timed out"


def test_exchange_between_two_nodes():
    rclpy.init()
    a = rclpy.create_node("visloc_msg_sender")
    b = rclpy.create_node("visloc_msg_receiver")
    got: dict[str, list] = {"loc": [], "pose": []}
    b.create_subscription(LocalizationResultMsg, "loc", got["loc"].append, 10)
    b.create_subscription(PoseStamped, "pose", got["pose"].append, 10)
    pub_loc = a.create_publisher(LocalizationResultMsg, "loc", 10)
    pub_pose = a.create_publisher(PoseStamped, "pose", 10)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(a)
    ex.add_node(b)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    try:
        _wait(lambda: pub_loc.get_subscription_count() > 0 and pub_pose.get_subscription_count() > 0)
        T = T_from_R_t(R_from_rotvec(np.array([0.3, 0.1, -1.2])), np.array([12.5, -3.25, 0.75]))
        C = np.arange(36, dtype=float).reshape(6, 6) * 1e-3
        r = LocalizationResult(
            T,
            C,
            Status.LOCALIZED,
            "relpose/xfeat",
            confidence=0.625,
            num_inliers=321,
            reference_ids=["office/seq-01/000012", "office/seq-02/000400"],
            scene="office",
            stage_seconds={"retrieval": 0.012, "matching": 0.034, "pose": 0.005},
        )
        stamp = 1_700_000_123_987_654_321
        sent = conv.result_to_msg(r, stamp, "map", latency_s=0.0875)
        pub_loc.publish(sent)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = conv.ns_to_stamp(stamp), "map"
        pose.pose = conv.T_to_pose(T)
        pub_pose.publish(pose)
        _wait(lambda: got["loc"] and got["pose"])
        recv = got["loc"][0]
        assert recv == sent  # generated __eq__ compares every field
        back, back_stamp, frame = conv.msg_to_result(recv)
        assert (back_stamp, frame) == (stamp, "map")
        np.testing.assert_allclose(back.T_world_cam, T, atol=1e-12)
        np.testing.assert_array_equal(back.covariance_66, C)
        assert back.reference_ids == r.reference_ids and back.stage_seconds == r.stage_seconds
        assert (back.method, back.scene, back.num_inliers) == ("relpose/xfeat", "office", 321)
        assert (recv.latency.sec, recv.latency.nanosec) == (0, 87_500_000)
        rp = got["pose"][0]
        assert rp == pose and rosmsg.stamp_ns(rp.header) == stamp
        np.testing.assert_allclose(rosmsg.T_from_pose(rp.pose), T, atol=1e-12)
    finally:
        ex.shutdown(timeout_sec=2.0)
        th.join(timeout=5.0)
        a.destroy_node()
        b.destroy_node()
        rclpy.try_shutdown()
