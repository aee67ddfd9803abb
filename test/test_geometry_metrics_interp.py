"""Pose errors, recall, pose interpolation and dataset conventions of visloc_core.geometry
against hand computation, scipy's Slerp and the datasets' documented conventions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation, Slerp

from visloc_core.geometry import (
    RECALL_THRESHOLDS,
    ROS_OPTICAL_TO_BODY,
    R_from_rotvec,
    T_from_R_t,
    T_ned_to_opencv,
    T_world_cam_from_7scenes,
    T_world_cam_from_cambridge,
    T_world_cam_from_tartanair,
    interpolate_poses,
    invert_T,
    pose_errors,
    quat_wxyz_from_R,
    recall_at_thresholds,
    rotation_error_deg,
    slerp_quat_wxyz,
    transform_points,
    translation_error_m,
)

SETTINGS = settings(max_examples=50, deadline=None)


def _random_pose(rng: np.random.Generator, scale: float = 10.0) -> np.ndarray:
    return T_from_R_t(Rotation.random(random_state=rng).as_matrix(), rng.normal(scale=scale, size=3))


# ------------------------------------------------------------------------------- metrics
def test_errors_of_a_known_perturbation() -> None:
    rng = np.random.default_rng(0)
    T_gt = _random_pose(rng)
    # Move the camera centre by exactly 0.1 m and turn it by exactly 2 degrees (about any axis, on
    # either side: the angle of R_est R_gt^T is 2 deg both ways).
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    T_est = T_gt.copy()
    T_est[:3, :3] = R_from_rotvec(axis * np.radians(2.0)) @ T_gt[:3, :3]
    T_est[:3, 3] += 0.1 * np.array([0.6, 0.0, 0.8])
    t_err, r_err = pose_errors(T_est, T_gt)
    assert t_err == pytest.approx(0.1, abs=1e-12)
    assert r_err == pytest.approx(2.0, abs=1e-9)
    T_est2 = T_gt.copy()
    T_est2[:3, :3] = T_gt[:3, :3] @ R_from_rotvec(axis * np.radians(2.0))  # right perturbation
    assert rotation_error_deg(T_est2[:3, :3], T_gt[:3, :3]) == pytest.approx(2.0, abs=1e-9)


def test_translation_error_is_between_centres_not_world_to_camera_t() -> None:
    """Same camera centre, rotated 90 deg: the t of T_cam_world differs, but the error is 0 m."""
    C = np.array([4.0, 5.0, 6.0])
    T_a = T_from_R_t(np.eye(3), C)
    T_b = T_from_R_t(Rotation.from_euler("z", 90, degrees=True).as_matrix(), C)
    assert np.linalg.norm(invert_T(T_a)[:3, 3] - invert_T(T_b)[:3, 3]) > 1.0
    t_err, r_err = pose_errors(T_a, T_b)
    assert t_err == 0.0
    assert r_err == pytest.approx(90.0)


def test_not_localized_is_infinite_and_misses_every_threshold() -> None:
    T_gt = np.stack([np.eye(4)] * 3)
    T_est = T_gt.copy()
    T_est[1] = np.nan  # not localized
    T_est[2, :3, 3] = [0.03, 0.0, 0.04]  # 5 cm, 0 deg
    t_err, r_err = pose_errors(T_est, T_gt)
    assert t_err[0] == 0.0 and np.isinf(t_err[1]) and t_err[2] == pytest.approx(0.05, abs=1e-15)
    assert r_err[0] == 0.0 and np.isinf(r_err[1]) and r_err[2] == 0.0
    assert np.isinf(translation_error_m(np.full((4, 4), np.nan), np.eye(4)))
    assert np.isinf(rotation_error_deg(np.eye(3), np.full((3, 3), np.nan)))  # NaN on either side
    rec = recall_at_thresholds(t_err, r_err)
    assert rec["0.01m_1deg"] == pytest.approx(1 / 3)
    assert rec["0.05m_5deg"] == pytest.approx(2 / 3)  # <= is inclusive at exactly 5 cm
    assert rec["5m_10deg"] == pytest.approx(2 / 3)


def test_recall_thresholds_and_keys() -> None:
    keys = set(recall_at_thresholds(np.zeros(1), np.zeros(1)))
    assert {"0.05m_5deg", "0.25m_2deg", "0.5m_5deg", "5m_10deg", "0.01m_1deg", "0.02m_2deg"} <= keys
    assert len(keys) == len(RECALL_THRESHOLDS)
    # Hand-made errors: both conditions must hold.
    t = np.array([0.04, 0.2, 0.2, 0.4, 3.0, 6.0])
    r = np.array([4.0, 1.0, 3.0, 4.9, 9.0, 1.0])
    rec = recall_at_thresholds(t, r)
    assert rec["0.05m_5deg"] == pytest.approx(1 / 6)
    assert rec["0.25m_2deg"] == pytest.approx(1 / 6)
    assert rec["0.5m_5deg"] == pytest.approx(4 / 6)
    assert rec["5m_10deg"] == pytest.approx(5 / 6)
    assert recall_at_thresholds(np.array([]), np.array([]))["5m_10deg"] == 0.0
    assert recall_at_thresholds(t, r, thresholds=((1.0, 1.0),)) == {"1m_1deg": pytest.approx(1 / 6)}


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_errors_symmetric_and_invariant_to_world_transform(seed: int) -> None:
    rng = np.random.default_rng(seed)
    T_a, T_b, T_w = _random_pose(rng), _random_pose(rng), _random_pose(rng, 100.0)
    t_ab, r_ab = pose_errors(T_a, T_b)
    t_ba, r_ba = pose_errors(T_b, T_a)
    assert t_ab == pytest.approx(t_ba, abs=1e-12)
    assert r_ab == pytest.approx(r_ba, abs=1e-9)
    t_w, r_w = pose_errors(T_w @ T_a, T_w @ T_b)
    assert t_w == pytest.approx(t_ab, abs=1e-9)
    assert r_w == pytest.approx(r_ab, abs=1e-7)
    # Rotation error equals scipy's magnitude of the relative rotation.
    ref = np.degrees(Rotation.from_matrix(T_a[:3, :3] @ T_b[:3, :3].T).magnitude())
    assert r_ab == pytest.approx(ref, abs=1e-7)


# ------------------------------------------------------------------------------- interpolation
def _trajectory(rng: np.random.Generator, n: int = 8):
    stamps = np.cumsum(rng.integers(10_000_000, 200_000_000, size=n)).astype(np.int64) + 1_700_000_000_000_000_000
    R = Rotation.random(n, random_state=rng).as_matrix()
    return stamps, T_from_R_t(R, rng.normal(size=(n, 3)) * 5)


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_interpolation_exact_at_sample_stamps(seed: int) -> None:
    stamps, T = _trajectory(np.random.default_rng(seed))
    out, valid = interpolate_poses(stamps, T, stamps)
    assert valid.all()
    np.testing.assert_array_equal(out, T)  # bit-exact


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_interpolation_between_stamps_equals_scipy_slerp_and_lerp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stamps, T = _trajectory(rng)
    q = rng.integers(stamps[0], stamps[-1], size=20)
    out, valid = interpolate_poses(stamps, T, q)
    assert valid.all()
    # Times relative to the first stamp so float64 keeps nanoseconds.
    rel = (stamps - stamps[0]).astype(np.float64)
    rel_q = (q - stamps[0]).astype(np.float64)
    ref_R = Slerp(rel, Rotation.from_matrix(T[:, :3, :3]))(rel_q).as_matrix()
    ref_t = np.column_stack([np.interp(rel_q, rel, T[:, i, 3]) for i in range(3)])
    np.testing.assert_allclose(out[:, :3, :3], ref_R, atol=1e-9)
    np.testing.assert_allclose(out[:, :3, 3], ref_t, atol=1e-9)


def test_interpolation_outside_range_and_gaps() -> None:
    stamps = np.array([0, 100, 1000], dtype=np.int64)
    T = np.stack([T_from_R_t(np.eye(3), np.array([float(i), 0, 0])) for i in range(3)])
    out, valid = interpolate_poses(stamps, T, np.array([-1, 50, 500, 1000, 1001]), max_gap_ns=200)
    np.testing.assert_array_equal(valid, [False, True, False, True, False])
    assert out[1, 0, 3] == pytest.approx(0.5)
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    np.testing.assert_array_equal(out[3], T[2])
    out, valid = interpolate_poses(stamps, T, np.array([550]))
    assert valid[0] and out[0, 0, 3] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_poses(np.array([0, 0]), T[:2], np.array([0]))
    with pytest.raises(ValueError, match=r"\(N, 4, 4\)"):
        interpolate_poses(stamps, T[:2], np.array([0]))
    out, valid = interpolate_poses(np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4)), np.array([5]))
    assert not valid.any() and np.isnan(out).all()


def test_slerp_short_way_and_near_identical() -> None:
    rng = np.random.default_rng(3)
    ra, rb = Rotation.random(2, random_state=rng)
    qa, qb = ra.as_quat(scalar_first=True), rb.as_quat(scalar_first=True)
    for s in (0.0, 0.25, 0.5, 1.0):
        ref = Slerp([0, 1], Rotation.concatenate([ra, rb]))([s]).as_matrix()[0]
        for q1 in (qb, -qb):  # the sign of an endpoint must not change the path
            got = Rotation.from_quat(slerp_quat_wxyz(qa, q1, s), scalar_first=True).as_matrix()
            np.testing.assert_allclose(got, ref, atol=1e-12)
    # Endpoints 1e-9 rad apart: finite and between them.
    q_close = quat_wxyz_from_R(R_from_rotvec(np.array([1e-9, 0, 0])) @ ra.as_matrix())
    mid = slerp_quat_wxyz(quat_wxyz_from_R(ra.as_matrix()), q_close, 0.5)
    assert np.all(np.isfinite(mid)) and np.linalg.norm(mid) == pytest.approx(1.0)


# ------------------------------------------------------------------------------- conventions
def test_cambridge_t_is_minus_R_C() -> None:
    # The row from DATASETS.md: seq13/frame00158.png 25.317 -0.228 54.494 0.3746 0.0021 0.9150 -0.1498
    C = np.array([25.317, -0.228, 54.494])
    q_wxyz = np.array([0.3746, 0.0021, 0.9150, -0.1498])
    T_world_cam = T_world_cam_from_cambridge(C, q_wxyz)
    R_cam_world = Rotation.from_quat(q_wxyz / np.linalg.norm(q_wxyz), scalar_first=True).as_matrix()
    np.testing.assert_allclose(T_world_cam[:3, 3], C, atol=1e-12)  # the centre is the translation
    T_cam_world = invert_T(T_world_cam)
    np.testing.assert_allclose(T_cam_world[:3, :3], R_cam_world, atol=1e-12)
    np.testing.assert_allclose(T_cam_world[:3, 3], -R_cam_world @ C, atol=1e-9)
    # The world origin seen from the camera is at R (0 - C).
    np.testing.assert_allclose(transform_points(T_cam_world, np.zeros((1, 3)))[0], -R_cam_world @ C, atol=1e-9)


def test_tartanair_ned_to_opencv() -> None:
    # NED body at rest: the OpenCV camera looks along +z of an OpenCV world (= north).
    T = T_world_cam_from_tartanair(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(T, np.eye(4), atol=1e-15)
    # Body at (north 1, east 2, down 3), yawed 90 deg (facing east; yaw is about NED down).
    q_xyzw = Rotation.from_euler("z", 90, degrees=True).as_quat()  # scipy: scalar last, like TartanAir
    T = T_world_cam_from_tartanair(np.array([1.0, 2.0, 3.0]), q_xyzw)
    # In OpenCV world axes (x = east, y = down, z = north) the centre is (2, 3, 1).
    np.testing.assert_allclose(T[:3, 3], [2.0, 3.0, 1.0], atol=1e-12)
    # The optical axis (camera +z) points east = OpenCV world +x; camera right (+x) points
    # south = OpenCV world -z; camera down (+y) stays down.
    np.testing.assert_allclose(T[:3, :3] @ [0, 0, 1.0], [1.0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ [1.0, 0, 0], [0, 0, -1.0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ [0, 1.0, 0], [0, 1.0, 0], atol=1e-12)
    np.testing.assert_allclose(T_ned_to_opencv[:3, :3] @ [1.0, 2.0, 3.0], [2.0, 3.0, 1.0])


def test_7scenes_passthrough_and_ros_optical_frame() -> None:
    T = _random_pose(np.random.default_rng(4))
    out = T_world_cam_from_7scenes(T.astype(np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, T, atol=1e-5)
    src = T.copy()
    T_world_cam_from_7scenes(src)[0, 0] = 99.0
    np.testing.assert_array_equal(src, T)  # a copy, not a view
    bad = T.copy()
    bad[0, 3] = np.inf  # some 7-Scenes frames hold inf poses
    with pytest.raises(ValueError, match="non-finite"):
        T_world_cam_from_7scenes(bad)
    # REP-103: optical z (forward) = body x, optical x (right) = body -y, optical y (down) = body -z.
    R = ROS_OPTICAL_TO_BODY[:3, :3]
    np.testing.assert_array_equal(R @ [0, 0, 1.0], [1.0, 0, 0])
    np.testing.assert_array_equal(R @ [1.0, 0, 0], [0, -1.0, 0])
    np.testing.assert_array_equal(R @ [0, 1.0, 0], [0, 0, -1.0])
    assert np.linalg.det(R) == pytest.approx(1.0)
