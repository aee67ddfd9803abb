"""The core half of ``visloc replay`` (evaluation/replay_plan.py, replay_scoring.py) without ROS: the
truth of a known trajectory, the scoring of hand-made node results, the latency statistics.
References: poses composed and interpolated by hand (a yaw ramp: the SLERP midpoint is the mean
yaw), the covariance transported by an explicit Jacobian, numpy's statistics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from visloc_core.evaluation.records import frame_errors
from visloc_core.evaluation.replay_plan import BagPlan, ReplayOptions, static_chain, truth_lookup
from visloc_core.evaluation.replay_scoring import NO_RESULT_REASON, latency_stats, method_of, score_replay
from visloc_core.localizers.base import LocalizationResult, Status


def _T(yaw: float, t) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = t
    return T


# base_link -> camera optical frame: 0.2 m forward, 0.5 m up, optical axes (z forward, x right, y down)
T_BASE_CAM = np.array([[0, 0, 1, 0.2], [-1, 0, 0, 0.0], [0, -1, 0, 0.5], [0, 0, 0, 1]], dtype=np.float64)
SEC = 1_000_000_000


def _gt(t: float) -> np.ndarray:
    """T_map_base of the ground truth at t seconds: 1 m/s along x, yaw 0.1 rad/s."""
    return _T(0.1 * t, [t, 0.0, 0.0])


# the gt topic: a sample every 0.25 s for 4 s (replay accepts gaps up to 0.5 s)
GT_STAMPS = np.arange(17, dtype=np.int64) * SEC // 4
GT_POSES = np.stack([_gt(s / SEC) for s in GT_STAMPS])


def _plan() -> BagPlan:
    return BagPlan("/cam", "sensor_msgs/msg/Image", "/info", None, "cam", T_BASE_CAM, GT_STAMPS, GT_POSES, 5)


def test_truth_interpolates_the_gt_topic_and_adds_the_extrinsic() -> None:
    truth = truth_lookup(ReplayOptions(bag=Path("b"), artifact=Path("a"), out=Path("o")), _plan())
    T, scene = truth(int(1.125 * SEC))  # halfway between two samples: mean position and yaw
    np.testing.assert_allclose(T, _gt(1.125) @ T_BASE_CAM, atol=1e-12)
    assert scene == ""
    np.testing.assert_allclose(truth(3 * SEC)[0], _gt(3.0) @ T_BASE_CAM, atol=1e-12)
    assert truth(int(4.2 * SEC))[0] is None  # past the last sample: no extrapolation
    gap = _plan()
    gap.gt_stamps_ns, gap.T_map_base_gt = GT_STAMPS[[0, 4]], GT_POSES[[0, 4]]  # 1 s apart > 0.5 s
    assert truth_lookup(ReplayOptions(bag=Path("b"), artifact=Path("a"), out=Path("o")), gap)(SEC // 2)[0] is None


def test_static_chain_is_the_tf_tree_in_either_direction() -> None:
    a, b = _T(0.3, [1.0, 0, 0]), _T(-0.2, [0, 2.0, 0.1])
    edges = {("base", "mount"): a, ("mount", "optical"): b, ("base", "lidar"): b}
    np.testing.assert_allclose(static_chain(edges, "optical", "base"), np.linalg.inv(a @ b), atol=1e-12)
    np.testing.assert_allclose(static_chain(edges, "lidar", "optical"), np.linalg.inv(b) @ a @ b, atol=1e-12)
    assert static_chain(edges, "base", "base") is not None and static_chain(edges, "base", "x") is None
    with pytest.raises(ValueError, match="two parents"):
        static_chain({("a", "c"): a, ("b", "c"): b}, "a", "b")


def _result(status: Status, T_map_base, cov=None, latency_s=0.02, method="apr/posenet") -> LocalizationResult:
    return LocalizationResult(
        T_world_cam=np.asarray(T_map_base, dtype=np.float64),
        covariance_66=np.full((6, 6), np.nan) if cov is None else cov,
        status=status,
        method=method,
        confidence=0.9,
        scene="hall",
        status_reason="" if status == Status.LOCALIZED else "jump",
        stage_seconds={"infer": 0.01},
        extras={"latency_s": latency_s},
    )


def _skew(v) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def test_score_a_known_replay_by_hand() -> None:
    truth = truth_lookup(ReplayOptions(bag=Path("b"), artifact=Path("a"), out=Path("o")), _plan())
    stamps = [int(s * SEC) for s in (0.5, 1.0, 2.0, 3.0, 4.5)]
    published = {s: (f"cam/{k:06d}", 100.0 + k) for k, s in enumerate(stamps)}
    C_base = np.diag([0.01, 0.02, 0.03, 0.001, 0.002, 0.003])
    shift = np.eye(4)
    shift[:3, 3] = [0.3, -0.4, 0.0]  # 0.5 m off in the map
    results = {
        stamps[0]: (_result(Status.LOCALIZED, _gt(0.5), C_base, 0.020), 100.050),
        stamps[1]: (_result(Status.LOCALIZED, shift @ _gt(1.0), latency_s=0.030), 101.075),
        stamps[2]: (_result(Status.REJECTED, _gt(2.0), latency_s=0.040), 102.100),
        # stamps[3]: never answered; stamps[4]: past the truth (answered, still not scored)
        stamps[4]: (_result(Status.LOCALIZED, _gt(4.5), latency_s=0.010), 104.020),
    }
    pose_arrivals = {stamps[0]: 100.060, stamps[1]: 101.080}
    score = score_replay(truth, T_BASE_CAM, published, results, pose_arrivals, condition="night")

    assert [o.stamp_ns for o in score.outcomes] == stamps[:4]
    assert [o.status for o in score.outcomes] == ["LOCALIZED", "LOCALIZED", "REJECTED", "NOT_LOCALIZED"]
    t_err, r_err = frame_errors(score.outcomes)
    np.testing.assert_allclose(t_err[:2], [0.0, 0.5], atol=1e-12)  # the map offset moves the camera alike
    np.testing.assert_allclose(r_err[:2], [0.0, 0.0], atol=1e-6)
    assert np.all(np.isinf(t_err[2:]))
    o0, o1, o2, o3 = score.outcomes
    np.testing.assert_allclose(o0.T_world_cam_est, _gt(0.5) @ T_BASE_CAM, atol=1e-12)
    # covariance of the base moved to the camera: lever arm a = R_map_base t_base_cam, J = [[I, -[a]x], [0, I]]
    J = np.eye(6)
    J[:3, 3:] = -_skew(_gt(0.5)[:3, :3] @ T_BASE_CAM[:3, 3])
    np.testing.assert_allclose(o0.covariance_66, J @ C_base @ J.T, atol=1e-15)
    assert o1.covariance_66 is None  # a NaN (unknown) covariance is not reported
    np.testing.assert_allclose(o2.extras["T_world_cam_rejected"], _gt(2.0) @ T_BASE_CAM, atol=1e-12)
    assert np.all(np.isnan(o2.T_world_cam_est)) and o2.extras["status_reason"] == "jump"
    assert o3.extras["reason"] == NO_RESULT_REASON and math.isnan(o3.latency_ms) and o3.method == ""
    assert [o.latency_ms for o in (o0, o1, o2)] == pytest.approx([50.0, 75.0, 100.0])
    assert (o0.method, o0.scene, o0.condition, o0.confidence) == ("apr/posenet", "hall", "night", 0.9)
    assert o0.extras["stage_seconds"] == {"infer": 0.01}
    # latencies (ms) of the scored frames the node answered; the frame without truth counts only as answered
    assert score.e2e_ms == pytest.approx([50.0, 75.0, 100.0])
    assert score.node_ms == pytest.approx([20.0, 30.0, 40.0])
    assert score.e2e_pose_ms == pytest.approx([60.0, 80.0])
    meta = score.meta()
    assert (meta["frames_published"], meta["frames_answered"], meta["frames_dropped_or_lost"]) == (5, 4, 1)
    assert meta["e2e_latency_ms"] == latency_stats(score.e2e_ms)
    assert method_of(results) == "apr/posenet" and method_of({}) == ""


def test_latency_stats_are_numpys() -> None:
    x = np.random.default_rng(1).gamma(2.0, 10.0, size=37)
    s = latency_stats(list(x))
    assert s["n"] == 37
    assert s["median"] == np.median(x) and s["p95"] == np.percentile(x, 95) and s["max"] == np.max(x)
    assert s["mean"] == pytest.approx(np.mean(x)) and s["std"] == pytest.approx(np.std(x)) and s["min"] == np.min(x)
    assert latency_stats([]) == {"n": 0}
