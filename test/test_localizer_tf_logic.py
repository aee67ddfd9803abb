"""map->odom, output-frame poses and covariances, the odometry buffer (no ROS) against analytic cases."""

from __future__ import annotations

import numpy as np
import pytest

from visloc_core.geometry import R_from_rotvec, T_from_R_t, invert_T, rotvec_from_R
from visloc_core.localizers.tf_logic import PoseBuffer, T_map_odom_from, pose_in_output_frame


def _T(rotvec, t) -> np.ndarray:
    return T_from_R_t(R_from_rotvec(np.asarray(rotvec, dtype=float)), np.asarray(t, dtype=float))


def test_map_odom_planar_analytic():
    # base at (3, 1) heading 90 deg in map; odometry says base at (1, 0) heading 0 in odom.
    T_map_base = _T([0, 0, np.pi / 2], [3, 1, 0])
    T_odom_base = _T([0, 0, 0], [1, 0, 0])
    T_map_odom = T_map_odom_from(T_map_base, T_odom_base)
    # odom frame: rotated 90 deg, origin where base - R(90)*(1,0) = (3, 1) - (0, 1) = (3, 0)
    np.testing.assert_allclose(T_map_odom, _T([0, 0, np.pi / 2], [3, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(T_map_odom @ T_odom_base, T_map_base, atol=1e-12)


def test_map_odom_is_invariant_to_motion_seen_by_both():
    """If the robot moves by M and both estimates see it, map->odom does not change."""
    rng = np.random.default_rng(1)
    T_map_base = _T(rng.normal(size=3), rng.normal(size=3))
    T_odom_base = _T(rng.normal(size=3), rng.normal(size=3))
    M = _T(rng.normal(size=3) * 0.3, rng.normal(size=3))
    a = T_map_odom_from(T_map_base, T_odom_base)
    b = T_map_odom_from(T_map_base @ M, T_odom_base @ M)
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_output_frame_pose_and_covariance_against_sampling():
    """cov of T_world_cam @ T_cam_base under left perturbations, vs Monte Carlo."""
    rng = np.random.default_rng(0)
    T_world_cam = _T([0.3, -0.2, 1.0], [2.0, 1.0, 0.5])
    T_cam_base = _T([0.1, 0.2, -0.3], [0.0, 0.5, -1.0])
    sig = np.array([0.02, 0.03, 0.01, 0.01, 0.02, 0.015])
    cov = np.diag(sig**2)
    T_out, cov_out = pose_in_output_frame(T_world_cam, cov, T_cam_base)
    np.testing.assert_allclose(T_out, T_world_cam @ T_cam_base, atol=1e-12)
    n = 40000
    d = rng.normal(size=(n, 6)) * sig
    Tc = T_from_R_t(R_from_rotvec(d[:, 3:]) @ T_world_cam[:3, :3], T_world_cam[:3, 3] + d[:, :3])
    Tb = Tc @ T_cam_base
    samples = np.concatenate([Tb[:, :3, 3] - T_out[:3, 3], rotvec_from_R(Tb[:, :3, :3] @ T_out[:3, :3].T)], axis=1)
    emp = np.cov(samples.T)
    np.testing.assert_allclose(emp, cov_out, atol=3e-5)  # sampling noise ~1e-5 at n=40000
    assert np.abs(cov_out[:3, 3:]).max() > 1e-5  # the lever arm correlates position and rotation


def test_identity_extrinsic_keeps_covariance():
    cov = np.diag([1.0, 2, 3, 4, 5, 6])
    _, out = pose_in_output_frame(np.eye(4), cov, np.eye(4))
    np.testing.assert_array_equal(out, cov)


def test_pose_buffer_interpolates_and_bounds():
    buf = PoseBuffer(max_age_ns=1_000_000_000, extrapolation_ns=20_000_000)
    for k in range(30):  # 10 Hz, yaw rate 0.5 rad/s, 1 m/s along x
        t = k * 100_000_000
        buf.add(t, _T([0, 0, 0.05 * k], [0.1 * k, 0, 0]))
    assert len(buf) == 11  # the last second (plus the sample at the boundary) is kept
    T = buf.lookup(2_550_000_000)
    np.testing.assert_allclose(T, _T([0, 0, 1.275], [2.55, 0, 0]), atol=1e-12)
    assert buf.lookup(1_000_000_000) is None  # dropped by age
    np.testing.assert_allclose(buf.lookup(2_910_000_000), _T([0, 0, 1.45], [2.9, 0, 0]), atol=1e-12)
    assert buf.lookup(2_950_000_000) is None  # beyond the extrapolation allowance
    buf.add(2_000_000_000, np.eye(4))  # out of order: ignored
    assert len(buf) == 11
    with pytest.raises(ValueError, match="finite 4x4"):
        buf.add(3_000_000_000, np.full((4, 4), np.nan))
    assert invert_T(buf.lookup(2_900_000_000)).shape == (4, 4)
