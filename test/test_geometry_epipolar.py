"""Essential matrices, their decomposition and triangulation of visloc_core.geometry against
OpenCV (decomposeEssentialMat, recoverPose, triangulatePoints) and analytic cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from visloc_core.geometry import (
    PinholeCamera,
    T_from_R_t,
    camera_center,
    decompose_essential,
    essential_from_relative_pose,
    invert_T,
    relative_pose,
    rotation_angle_deg,
    skew,
    transform_points,
    triangulate_point_from_rays,
    triangulate_points_dlt,
)

SETTINGS = settings(max_examples=40, deadline=None)


def _two_view_scene(seed: int, n: int = 60):
    """Two cameras looking at points 3-8 m in front of camera a, with a baseline of ~0.5-1 m."""
    rng = np.random.default_rng(seed)
    T_world_a = T_from_R_t(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))
    R_b_a = Rotation.from_rotvec(rng.normal(scale=0.2, size=3)).as_matrix()
    t_b_a = rng.normal(size=3)
    t_b_a *= rng.uniform(0.5, 1.0) / np.linalg.norm(t_b_a)
    T_b_a = T_from_R_t(R_b_a, t_b_a)
    T_world_b = T_world_a @ invert_T(T_b_a)
    p_a = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(3, 8, n)])
    p_b = transform_points(T_b_a, p_a)
    assert np.all(p_b[:, 2] > 0.5), "test scene: points must be in front of both cameras"
    return T_world_a, T_world_b, T_b_a, p_a, p_b


def _normalised(p_N3: np.ndarray) -> np.ndarray:
    return p_N3[:, :2] / p_N3[:, 2:3]


def test_skew_is_cross_product() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(skew(a) @ b[..., None], np.cross(a, b)[..., None], atol=1e-12)
    np.testing.assert_allclose(skew(a), -np.swapaxes(skew(a), -1, -2))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        skew(np.zeros(4))


def test_relative_pose_convention() -> None:
    T_world_a, T_world_b, T_b_a, p_a, p_b = _two_view_scene(1)
    np.testing.assert_allclose(relative_pose(T_world_a, T_world_b), T_b_a, atol=1e-12)
    np.testing.assert_allclose(transform_points(T_b_a, p_a), p_b)


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_epipolar_constraint_on_projected_points(seed: int) -> None:
    T_world_a, T_world_b, T_b_a, p_a, p_b = _two_view_scene(seed)
    E = essential_from_relative_pose(relative_pose(T_world_a, T_world_b))
    xa = np.column_stack([_normalised(p_a), np.ones(len(p_a))])
    xb = np.column_stack([_normalised(p_b), np.ones(len(p_b))])
    residual = np.einsum("ni,ij,nj->n", xb, E, xa)
    assert np.max(np.abs(residual)) < 1e-12
    np.testing.assert_allclose(np.linalg.svd(E, compute_uv=False), [1.0, 1.0, 0.0], atol=1e-12)
    # A wrong relative pose violates it.
    E_bad = essential_from_relative_pose(T_from_R_t(T_b_a[:3, :3].T, T_b_a[:3, 3]))
    assert np.max(np.abs(np.einsum("ni,ij,nj->n", xb, E_bad, xa))) > 1e-3


def test_essential_unnormalised_and_pure_rotation() -> None:
    T = T_from_R_t(np.eye(3), np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(essential_from_relative_pose(T, normalize=False), 2 * skew([0, 0, 1.0]))
    with pytest.raises(ValueError, match="pure rotation"):
        essential_from_relative_pose(T_from_R_t(np.eye(3), np.zeros(3)))


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_decompose_matches_opencv_and_contains_truth(seed: int) -> None:
    _, _, T_b_a, _, _ = _two_view_scene(seed)
    E = essential_from_relative_pose(T_b_a)
    R1, R2, t = decompose_essential(E)
    R1_cv, R2_cv, t_cv = cv2.decomposeEssentialMat(E)
    # The SVD of E (singular values 1, 1, 0) is not unique, so which rotation comes first may
    # differ from OpenCV's own SVD: the SET of rotations must agree.
    same_order = np.allclose(R1, R1_cv, atol=1e-9) and np.allclose(R2, R2_cv, atol=1e-9)
    swapped = np.allclose(R1, R2_cv, atol=1e-9) and np.allclose(R2, R1_cv, atol=1e-9)
    assert same_order or swapped
    assert np.allclose(t, t_cv.ravel(), atol=1e-9) or np.allclose(t, -t_cv.ravel(), atol=1e-9)
    for R in (R1, R2):
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
    # The true (R, t/|t|) is one of the four candidates.
    t_true = T_b_a[:3, 3] / np.linalg.norm(T_b_a[:3, 3])
    candidates = [(R1, t), (R1, -t), (R2, t), (R2, -t)]
    hits = [
        rotation_angle_deg(R @ T_b_a[:3, :3].T) < 1e-6 and np.allclose(tc, t_true, atol=1e-9) for R, tc in candidates
    ]
    assert sum(hits) == 1
    # Every candidate reproduces E up to sign.
    for R, tc in candidates:
        Ec = skew(tc) @ R
        assert np.allclose(Ec, E, atol=1e-9) or np.allclose(Ec, -E, atol=1e-9)


def test_decompose_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        decompose_essential(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        decompose_essential(np.eye(4))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recover_pose_of_opencv_picks_the_true_candidate(seed: int) -> None:
    """OpenCV's recoverPose (cheirality) on synthetic pixel correspondences selects the true
    relative pose among our decomposition, so our E and its convention are OpenCV's."""
    _, _, T_b_a, p_a, p_b = _two_view_scene(seed)
    cam = PinholeCamera(160, 120, 100.0, 100.0, 80.0, 60.0)
    uv_a, uv_b = cam.project(p_a), cam.project(p_b)
    E = essential_from_relative_pose(T_b_a)
    n_good, R_cv, t_cv, _ = cv2.recoverPose(E, uv_a, uv_b, cam.K)
    assert n_good == len(p_a)
    t_true = T_b_a[:3, 3] / np.linalg.norm(T_b_a[:3, 3])
    assert rotation_angle_deg(R_cv @ T_b_a[:3, :3].T) < 1e-6
    np.testing.assert_allclose(t_cv.ravel(), t_true, atol=1e-8)
    R1, R2, t = decompose_essential(E)
    assert min(rotation_angle_deg(R1 @ R_cv.T), rotation_angle_deg(R2 @ R_cv.T)) < 1e-6
    # E estimated by OpenCV from the pixels also decomposes to the truth.
    E_cv, _ = cv2.findEssentialMat(uv_a, uv_b, cam.K, method=cv2.RANSAC, prob=0.999, threshold=0.5)
    R1, R2, t = decompose_essential(E_cv[:3])
    assert min(rotation_angle_deg(R1 @ T_b_a[:3, :3].T), rotation_angle_deg(R2 @ T_b_a[:3, :3].T)) < 1e-3
    assert abs(abs(t @ t_true) - 1.0) < 1e-6


# ------------------------------------------------------------------------------- triangulation
def test_rays_through_known_point() -> None:
    X = np.array([1.0, 2.0, 3.0])
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 5.0, -1.0]])
    d = X - centers
    d *= np.array([[1.0], [2.5], [0.3]])  # lengths do not matter
    np.testing.assert_allclose(triangulate_point_from_rays(centers, d), X, atol=1e-12)
    # Two skew rays: x-axis and the line z = 1 along y; the closest point is midway, (0, 0, 0.5).
    P = triangulate_point_from_rays(np.array([[0.0, 0, 0], [0, 0, 1.0]]), np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    np.testing.assert_allclose(P, [0.0, 0.0, 0.5], atol=1e-12)


def test_rays_triangulate_camera_centre_from_poses() -> None:
    """The use in relpose: each reference camera and its relative pose give a ray to the query centre."""
    rng = np.random.default_rng(7)
    T_world_q = T_from_R_t(Rotation.random(random_state=rng).as_matrix(), np.array([2.0, -1.0, 0.5]))
    T_world_refs = [T_from_R_t(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3) * 3) for _ in range(4)]
    centers, dirs = [], []
    for T_world_r in T_world_refs:
        T_r_q = relative_pose(T_world_q, T_world_r)  # maps q-frame points into r
        t_dir = T_r_q[:3, 3] / np.linalg.norm(T_r_q[:3, 3])  # only the direction is observable
        centers.append(camera_center(T_world_r))
        dirs.append(T_world_r[:3, :3] @ t_dir)
    np.testing.assert_allclose(triangulate_point_from_rays(np.array(centers), np.array(dirs)), camera_center(T_world_q))


def test_parallel_rays_raise() -> None:
    with pytest.raises(ValueError, match="parallel"):
        triangulate_point_from_rays(np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.array([[0.0, 0, 1], [0.0, 0, -2]]))
    with pytest.raises(ValueError, match="N>=2"):
        triangulate_point_from_rays(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="non-zero"):
        triangulate_point_from_rays(np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.array([[0.0, 0, 0], [0.0, 0, 1]]))
    with pytest.raises(ValueError, match="finite"):
        triangulate_point_from_rays(np.array([[np.nan, 0, 0], [1.0, 0, 0]]), np.array([[0.0, 1, 0], [0.0, 0, 1]]))


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_triangulate_dlt_matches_opencv_and_truth(seed: int) -> None:
    T_world_a, T_world_b, _, p_a, _ = _two_view_scene(seed, n=20)
    cam = PinholeCamera(160, 120, 120.0, 110.0, 79.5, 59.5)
    P_a = cam.K @ invert_T(T_world_a)[:3]
    P_b = cam.K @ invert_T(T_world_b)[:3]
    X_world = transform_points(T_world_a, p_a)
    uv_a = cam.project(transform_points(invert_T(T_world_a), X_world))
    uv_b = cam.project(transform_points(invert_T(T_world_b), X_world))
    X = triangulate_points_dlt(P_a, P_b, uv_a, uv_b)
    np.testing.assert_allclose(X, X_world, atol=1e-6)
    X_cv = cv2.triangulatePoints(P_a, P_b, uv_a.T.copy(), uv_b.T.copy())
    np.testing.assert_allclose(X, (X_cv[:3] / X_cv[3]).T, atol=1e-6)


def test_triangulate_dlt_noisy_matches_opencv() -> None:
    """With noise there is no exact answer: both DLTs solve the same homogeneous least squares."""
    rng = np.random.default_rng(8)
    T_world_a, T_world_b, _, p_a, _ = _two_view_scene(8, n=30)
    cam = PinholeCamera(160, 120, 120.0, 120.0, 80.0, 60.0)
    P_a = cam.K @ invert_T(T_world_a)[:3]
    P_b = cam.K @ invert_T(T_world_b)[:3]
    X_world = transform_points(T_world_a, p_a)
    uv_a = cam.project(p_a) + rng.normal(scale=0.5, size=(30, 2))
    uv_b = cam.project(transform_points(invert_T(T_world_b), X_world)) + rng.normal(scale=0.5, size=(30, 2))
    X = triangulate_points_dlt(P_a, P_b, uv_a, uv_b)
    X_cv = cv2.triangulatePoints(P_a, P_b, uv_a.T.copy(), uv_b.T.copy())
    np.testing.assert_allclose(X, (X_cv[:3] / X_cv[3]).T, rtol=1e-5, atol=1e-5)
    assert np.median(np.linalg.norm(X - X_world, axis=1)) < 0.5


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 8))
def test_rays_through_a_random_point_meet_there(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=3) * 5
    centers = X + rng.normal(size=(n, 3)) * 3  # cameras around the point, rays from each towards it
    dirs = (X - centers) * rng.choice([-1.0, 1.0], size=(n, 1))  # a ray is a line: its sign is irrelevant
    d = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    if np.linalg.svd(d, compute_uv=False)[1] < 1e-3:
        return  # (nearly) parallel rays: covered by test_parallel_rays_raise
    np.testing.assert_allclose(triangulate_point_from_rays(centers, dirs), X, atol=1e-6)
    # Moving the centres along their own rays changes nothing.
    shifted = centers + d * rng.normal(size=(n, 1))
    np.testing.assert_allclose(triangulate_point_from_rays(shifted, dirs), X, atol=1e-6)
