"""Quaternions, rotation vectors, poses and rotation averaging of visloc_core.geometry against
scipy.spatial.transform.Rotation, cv2.Rodrigues, analytic cases and property-based round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from visloc_core.geometry import (
    R_from_quat_wxyz,
    R_from_rotvec,
    T_from_position_quat_wxyz,
    T_from_R_t,
    average_rotations,
    camera_center,
    invert_T,
    position_quat_wxyz_from_T,
    quat_canonical_wxyz,
    quat_multiply_wxyz,
    quat_wxyz_from_R,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    relative_pose,
    rotation_angle_deg,
    rotvec_from_R,
    transform_points,
)

SETTINGS = settings(max_examples=60, deadline=None)

# ------------------------------------------------------------------------------- strategies
finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@st.composite
def unit_quats_wxyz(draw) -> np.ndarray:
    """Uniform-ish unit quaternions (w, x, y, z), any hemisphere."""
    q = np.array([draw(finite) for _ in range(4)])
    if np.linalg.norm(q) < 1e-3:
        q = np.array([1.0, 0.0, 0.0, 0.0])
    return q / np.linalg.norm(q)


@st.composite
def rotations(draw) -> np.ndarray:
    return Rotation.from_quat(quat_wxyz_to_xyzw(draw(unit_quats_wxyz()))).as_matrix()


@st.composite
def near_180_rotations(draw) -> np.ndarray:
    """Rotations within 1e-3 rad of a half turn, about an arbitrary axis: the hard case of
    matrix -> quaternion conversion (w ~ 0, acos of the trace is ill-conditioned)."""
    axis = np.array([draw(finite) for _ in range(3)])
    if np.linalg.norm(axis) < 1e-3:
        axis = np.array([0.0, 0.0, 1.0])
    axis /= np.linalg.norm(axis)
    angle = np.pi - draw(st.floats(0.0, 1e-3))
    return Rotation.from_rotvec(axis * angle).as_matrix()


@st.composite
def poses(draw) -> np.ndarray:
    t = np.array([draw(st.floats(-50.0, 50.0)) for _ in range(3)])
    return T_from_R_t(draw(rotations()), t)


def _same_rotation_quat(qa: np.ndarray, qb: np.ndarray, atol: float = 1e-9) -> bool:
    """q and -q are the same rotation."""
    return bool(np.allclose(qa, qb, atol=atol) or np.allclose(qa, -qb, atol=atol))


# ------------------------------------------------------------------------------- quaternions
def test_quaternion_orders_against_scipy() -> None:
    rng = np.random.default_rng(1)
    R_ref = Rotation.random(20, random_state=rng)
    q_xyzw = R_ref.as_quat()  # scipy's default order is scalar last
    q_wxyz_scipy = R_ref.as_quat(scalar_first=True)
    np.testing.assert_array_equal(quat_xyzw_to_wxyz(q_xyzw), q_wxyz_scipy)
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(q_wxyz_scipy), q_xyzw)
    np.testing.assert_allclose(R_from_quat_wxyz(q_wxyz_scipy), R_ref.as_matrix(), atol=1e-12)
    q_ours = quat_wxyz_from_R(R_ref.as_matrix())
    for a, b in zip(q_ours, q_wxyz_scipy):
        assert _same_rotation_quat(a, b)
    assert np.all(q_ours[:, 0] >= 0)


def test_quaternion_analytic_90_degree_rotations() -> None:
    s = np.sqrt(0.5)
    # +90 deg about z maps x to y (right-handed, active rotation: R v == q v q*).
    Rz = R_from_quat_wxyz(np.array([s, 0.0, 0.0, s]))
    np.testing.assert_allclose(Rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    Rx = R_from_quat_wxyz(np.array([s, s, 0.0, 0.0]))
    np.testing.assert_allclose(Rx @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    Ry = R_from_quat_wxyz(np.array([s, 0.0, s, 0.0]))
    np.testing.assert_allclose(Ry @ [0, 0, 1], [1, 0, 0], atol=1e-15)
    for R in (Rx, Ry, Rz):
        assert rotation_angle_deg(R) == pytest.approx(90.0, abs=1e-12)
    # Half turn about x: w = 0 exactly.
    np.testing.assert_allclose(quat_wxyz_from_R(np.diag([1.0, -1.0, -1.0])), [0, 1, 0, 0], atol=1e-15)
    assert rotation_angle_deg(np.diag([1.0, -1.0, -1.0])) == pytest.approx(180.0)
    assert rotation_angle_deg(np.eye(3)) == 0.0


def test_quat_multiply_composes_like_matrices() -> None:
    rng = np.random.default_rng(2)
    a, b = Rotation.random(2, random_state=rng)
    qa, qb = a.as_quat(scalar_first=True), b.as_quat(scalar_first=True)
    np.testing.assert_allclose(R_from_quat_wxyz(quat_multiply_wxyz(qa, qb)), (a * b).as_matrix(), atol=1e-12)
    # batched
    A = Rotation.random(7, random_state=rng)
    B = Rotation.random(7, random_state=rng)
    qab = quat_multiply_wxyz(A.as_quat(scalar_first=True), B.as_quat(scalar_first=True))
    np.testing.assert_allclose(R_from_quat_wxyz(qab), (A * B).as_matrix(), atol=1e-12)


def test_quat_canonical_and_bad_input() -> None:
    q = quat_canonical_wxyz(np.array([-2.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(q, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(quat_canonical_wxyz(np.array([[0.0, 3.0, 4.0, 0.0]])), [[0.0, 0.6, 0.8, 0.0]])
    with pytest.raises(ValueError, match="zero norm"):
        quat_canonical_wxyz(np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        R_from_quat_wxyz(np.array([np.nan, 0, 0, 1.0]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        quat_xyzw_to_wxyz(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        quat_wxyz_from_R(np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        quat_wxyz_from_R(np.full((3, 3), np.nan))


@SETTINGS
@given(unit_quats_wxyz())
def test_quat_matrix_round_trip(q: np.ndarray) -> None:
    R = R_from_quat_wxyz(q)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(R, Rotation.from_quat(q, scalar_first=True).as_matrix(), atol=1e-12)
    q2 = quat_wxyz_from_R(R)
    assert q2[0] >= 0
    assert _same_rotation_quat(q2, q, atol=1e-9)
    np.testing.assert_allclose(quat_xyzw_to_wxyz(quat_wxyz_to_xyzw(q)), q)


@SETTINGS
@given(near_180_rotations())
def test_quat_matrix_round_trip_near_half_turn(R: np.ndarray) -> None:
    q = quat_wxyz_from_R(R)
    assert np.linalg.norm(q) == pytest.approx(1.0)
    assert abs(q[0]) <= 5e-4 + 1e-12  # cos(angle/2) with angle within 1e-3 of pi
    np.testing.assert_allclose(R_from_quat_wxyz(q), R, atol=1e-12)
    assert _same_rotation_quat(q, Rotation.from_matrix(R).as_quat(scalar_first=True), atol=1e-9)
    ref_angle = np.degrees(np.linalg.norm(Rotation.from_matrix(R).as_rotvec()))
    assert rotation_angle_deg(R) == pytest.approx(ref_angle, abs=1e-9)


# ------------------------------------------------------------------------------- rotation vectors
def test_rotvec_against_rodrigues_and_scipy() -> None:
    rng = np.random.default_rng(3)
    for rv in [*rng.normal(size=(20, 3)), np.zeros(3), np.array([1e-10, 0, 0]), np.array([0, np.pi, 0])]:
        R_cv, _ = cv2.Rodrigues(rv.reshape(3, 1))
        np.testing.assert_allclose(R_from_rotvec(rv), R_cv, atol=1e-12)
        np.testing.assert_allclose(R_from_rotvec(rv), Rotation.from_rotvec(rv).as_matrix(), atol=1e-12)
    R = Rotation.random(20, random_state=rng).as_matrix()
    rv = rotvec_from_R(R)
    np.testing.assert_allclose(rv, Rotation.from_matrix(R).as_rotvec(), atol=1e-10)
    for Ri, rvi in zip(R, rv):
        r_cv, _ = cv2.Rodrigues(Ri)
        np.testing.assert_allclose(rvi, r_cv.ravel(), atol=1e-9)


def test_rotvec_small_angles_keep_precision() -> None:
    rv = np.array([1e-9, -2e-9, 3e-9])
    np.testing.assert_allclose(rotvec_from_R(R_from_rotvec(rv)), rv, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(rotvec_from_R(np.eye(3)), np.zeros(3))


@SETTINGS
@given(st.tuples(finite, finite, finite), st.floats(0.0, np.pi - 1e-6))
def test_rotvec_round_trip(axis: tuple, angle: float) -> None:
    a = np.array(axis)
    if np.linalg.norm(a) < 1e-3:
        a = np.array([1.0, 0.0, 0.0])
    rv = a / np.linalg.norm(a) * angle
    np.testing.assert_allclose(rotvec_from_R(R_from_rotvec(rv)), rv, atol=1e-9)
    assert rotation_angle_deg(R_from_rotvec(rv)) == pytest.approx(np.degrees(angle), abs=1e-7)


# ------------------------------------------------------------------------------- poses
def test_pose_analytic_known_camera_centre() -> None:
    # A camera at C = (1, 2, 3) looking along world +x (optical z): R_world_cam columns are the
    # camera axes in the world: x_cam (right) = -y_world, y_cam (down) = -z_world, z_cam = +x_world.
    R_world_cam = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    C = np.array([1.0, 2.0, 3.0])
    T_world_cam = T_from_R_t(R_world_cam, C)
    np.testing.assert_array_equal(camera_center(T_world_cam), C)
    # A point 5 m in front of the camera is at C + 5 x_world.
    np.testing.assert_allclose(transform_points(T_world_cam, np.array([[0.0, 0.0, 5.0]])), [[6.0, 2.0, 3.0]])
    T_cam_world = invert_T(T_world_cam)
    np.testing.assert_allclose(T_cam_world[:3, 3], -R_world_cam.T @ C)
    np.testing.assert_allclose(transform_points(T_cam_world, np.array([[6.0, 2.0, 3.0]])), [[0.0, 0.0, 5.0]])
    np.testing.assert_allclose(T_cam_world @ T_world_cam, np.eye(4), atol=1e-15)


@SETTINGS
@given(poses(), poses())
def test_pose_inverse_and_relative_round_trips(T_world_a: np.ndarray, T_world_b: np.ndarray) -> None:
    np.testing.assert_allclose(invert_T(invert_T(T_world_a)), T_world_a, atol=1e-12)
    np.testing.assert_allclose(invert_T(T_world_a), np.linalg.inv(T_world_a), atol=1e-10)
    T_b_a = relative_pose(T_world_a, T_world_b)
    np.testing.assert_allclose(T_world_b @ T_b_a, T_world_a, atol=1e-9)
    # Points of camera a mapped into b through the world or directly agree.
    p_a = np.array([[0.1, -0.2, 2.0], [1.0, 1.0, 5.0]])
    np.testing.assert_allclose(
        transform_points(T_b_a, p_a), transform_points(invert_T(T_world_b), transform_points(T_world_a, p_a)), atol=1e-9
    )
    t, q = position_quat_wxyz_from_T(T_world_a)
    assert q[0] >= 0
    np.testing.assert_allclose(T_from_position_quat_wxyz(t, q), T_world_a, atol=1e-12)


def test_pose_batched_shapes_and_errors() -> None:
    rng = np.random.default_rng(4)
    R = Rotation.random(6, random_state=rng).as_matrix().reshape(2, 3, 3, 3)
    t = rng.normal(size=(2, 3, 3))
    T = T_from_R_t(R, t)
    assert T.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(invert_T(T) @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    assert camera_center(T).shape == (2, 3, 3)
    pos, q = position_quat_wxyz_from_T(T)
    assert pos.shape == (2, 3, 3) and q.shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\)"):
        invert_T(np.eye(3))
    with pytest.raises(ValueError, match="must match"):
        T_from_R_t(np.eye(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        transform_points(np.eye(4), np.zeros((2, 4)))


# ------------------------------------------------------------------------------- averaging
def test_average_of_single_rotation_is_itself() -> None:
    R = Rotation.random(random_state=5).as_matrix()
    np.testing.assert_allclose(average_rotations(R[None]), R, atol=1e-12)


def test_average_matches_scipy_mean_and_is_sign_invariant() -> None:
    rng = np.random.default_rng(6)
    R0 = Rotation.random(random_state=rng)
    noise = Rotation.from_rotvec(rng.normal(scale=0.05, size=(200, 3)))
    Rs = (noise * R0).as_matrix()
    w = rng.uniform(0.1, 2.0, size=200)
    R_avg = average_rotations(Rs, w)
    # scipy's Rotation.mean is the same weighted chordal L2 mean.
    np.testing.assert_allclose(R_avg, Rotation.from_matrix(Rs).mean(weights=w).as_matrix(), atol=1e-10)
    # 200 copies with 0.05 rad (~2.9 deg) noise per axis: the mean is within ~0.5 deg of R0.
    assert rotation_angle_deg(R_avg @ R0.as_matrix().T) < 0.5
    # Rotations far apart that straddle the half-turn: q and -q of the inputs must not matter.
    R_half = Rotation.from_rotvec([0, 0, np.pi - 0.1]).as_matrix()
    R_other = Rotation.from_rotvec([0, 0, -(np.pi - 0.1)]).as_matrix()
    np.testing.assert_allclose(average_rotations(np.stack([R_half, R_other])), np.diag([-1.0, -1.0, 1.0]), atol=1e-12)


@SETTINGS
@given(rotations(), st.integers(3, 30), st.integers(0, 2**31 - 1))
def test_average_of_noisy_copies_is_close(R: np.ndarray, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rv = rng.normal(scale=0.01, size=(n, 3))
    rv -= rv.mean(axis=0)  # zero-mean noise so the mean is R to first order
    Rs = R_from_rotvec(rv) @ R
    assert rotation_angle_deg(average_rotations(Rs) @ R.T) < 0.05
    # An exact copy repeated is returned exactly.
    np.testing.assert_allclose(average_rotations(np.stack([R] * n)), R, atol=1e-12)


def test_average_bad_input() -> None:
    with pytest.raises(ValueError, match="N>=1"):
        average_rotations(np.zeros((0, 3, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        average_rotations(np.stack([np.eye(3)] * 2), np.array([1.0, -1.0]))


@SETTINGS
@given(rotations(), st.integers(0, 2**31 - 1))
def test_quat_from_noisy_matrix_is_the_closest_rotation(R: np.ndarray, seed: int) -> None:
    """For a perturbed (non-orthogonal) matrix M the quaternion is that of the rotation closest to M in
    the Frobenius norm: the SVD projection U diag(1, 1, det(U V^T)) V^T (and scipy's from_matrix)."""
    M = R + np.random.default_rng(seed).normal(scale=0.05, size=(3, 3))
    U, _, Vt = np.linalg.svd(M)
    P = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    np.testing.assert_allclose(R_from_quat_wxyz(quat_wxyz_from_R(M)), P, atol=1e-9)
    np.testing.assert_allclose(R_from_quat_wxyz(quat_wxyz_from_R(M)), Rotation.from_matrix(M).as_matrix(), atol=1e-9)
