"""Pose-hypothesis filtering (paper 003 sec. 2.3) against synthetic relative poses with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from visloc_core.geometry import (
    R_from_rotvec,
    T_from_R_t,
    essential_from_relative_pose,
    invert_T,
    pose_errors,
    relative_pose,
)
from visloc_core.localizers.relpose.base import RelPoseEstimate
from visloc_core.localizers.relpose.hypotheses import FilterConfig, Observation, filter_hypotheses


def _scene(rng: np.random.Generator, n_refs: int = 5):
    """A query pose and n reference poses a few metres around it, all looking roughly the same way."""
    T_world_q = T_from_R_t(R_from_rotvec(rng.normal(0, 0.3, 3)), rng.normal(0, 2, 3))
    refs = []
    for _ in range(n_refs):
        R = R_from_rotvec(rng.normal(0, 0.2, 3)) @ T_world_q[:3, :3]
        c = T_world_q[:3, 3] + rng.normal(0, 3, 3)
        refs.append(T_from_R_t(R, c))
    return T_world_q, refs


def _estimate(T_world_q, T_world_r, mode: str, rng=None, noise_deg: float = 0.0) -> RelPoseEstimate:
    T_q_r = relative_pose(T_world_r, T_world_q)  # maps r points into q
    if noise_deg:
        T_q_r[:3, :3] = R_from_rotvec(rng.normal(0, np.radians(noise_deg), 3)) @ T_q_r[:3, :3]
        T_q_r[:3, 3] = R_from_rotvec(rng.normal(0, np.radians(noise_deg), 3)) @ T_q_r[:3, 3]
    if mode == "metric":
        return RelPoseEstimate(T_q_r, metric=True, num_inliers=100, cheirality_checked=True)
    T_q_r[:3, 3] /= np.linalg.norm(T_q_r[:3, 3])
    if mode == "checked":
        return RelPoseEstimate(T_q_r, metric=False, num_inliers=100, cheirality_checked=True)
    # E only: give a deliberately wrong decomposition as T_q_r (rotated about t, t flipped)
    E = essential_from_relative_pose(T_q_r)
    return RelPoseEstimate(np.eye(4), metric=False, E=E * 3.7, cheirality_checked=False)


def _outlier(rng) -> RelPoseEstimate:
    T = T_from_R_t(R_from_rotvec(rng.normal(0, 1.0, 3)), rng.normal(0, 1, 3))
    T[:3, 3] /= np.linalg.norm(T[:3, 3])
    return RelPoseEstimate(T, metric=False, cheirality_checked=True)


def _obs(ests, refs):
    return [Observation.from_estimate(e, T) for e, T in zip(ests, refs)]


@pytest.mark.parametrize("mode", ["checked", "essential"])
def test_noise_free_recovery_is_exact(mode):
    rng = np.random.default_rng(1)
    for _ in range(10):
        T_q, refs = _scene(rng)
        res = filter_hypotheses(_obs([_estimate(T_q, T, mode) for T in refs], refs), refs[0])
        t_err, r_err = pose_errors(res.T_world_cam, T_q)
        assert not res.fallback
        assert res.num_inliers == 5
        assert t_err < 1e-8 and r_err < 1e-6
        assert res.hypothesis is not None and len(res.hypothesis) == 2


def test_rotation_disambiguation_picks_true_rotation():
    # Only E is given: the two candidate rotations differ by 180 deg about t; the filter must
    # choose the one consistent across references (the truth), for every reference.
    rng = np.random.default_rng(2)
    T_q, refs = _scene(rng, 3)
    obs = _obs([_estimate(T_q, T, "essential") for T in refs], refs)
    for o in obs:
        assert o.R_world_q_M33.shape == (2, 3, 3)
        errs = pose_errors(T_from_R_t(o.R_world_q_M33, np.zeros((2, 3))), T_q)[1]
        assert min(errs) < 1e-6 and max(errs) > 90  # one candidate right, the other far off
    res = filter_hypotheses(obs, refs[0])
    assert pose_errors(res.T_world_cam, T_q)[1] < 1e-6


def test_robust_to_40_percent_outliers():
    rng = np.random.default_rng(3)
    n_ok = 0
    for _ in range(20):
        T_q, refs = _scene(rng)
        outl = rng.choice(5, size=2, replace=False)
        ests = [_outlier(rng) if k in outl else _estimate(T_q, T, "checked", rng, 0.5) for k, T in enumerate(refs)]
        res = filter_hypotheses(_obs(ests, refs), refs[0], FilterConfig(alpha_max_deg=5.0, rot_max_deg=5.0))
        t_err, r_err = pose_errors(res.T_world_cam, T_q)
        truth = np.ones(5, bool)
        truth[outl] = False
        if not res.fallback and np.array_equal(res.inlier_mask, truth) and t_err < 0.3 and r_err < 1.0:
            n_ok += 1
    assert n_ok >= 19, f"recovered only {n_ok}/20 trials with 2 of 5 outliers"


def test_without_filtering_outliers_corrupt_the_pose():
    # The ablation (pair of the two top references, no RANSAC) is hit by an outlier in that pair.
    rng = np.random.default_rng(4)
    T_q, refs = _scene(rng)
    ests = [_outlier(rng)] + [_estimate(T_q, T, "checked") for T in refs[1:]]
    filtered = filter_hypotheses(_obs(ests, refs), refs[0])
    plain = filter_hypotheses(_obs(ests, refs), refs[0], FilterConfig(enabled=False))
    assert pose_errors(filtered.T_world_cam, T_q)[0] < 1e-8
    assert plain.hypothesis == (0, 1)
    assert pose_errors(plain.T_world_cam, T_q)[1] > 1.0


def test_fallback_to_top_retrieved_pose():
    rng = np.random.default_rng(5)
    T_q, refs = _scene(rng)
    ests = [_outlier(rng) for _ in refs]
    res = filter_hypotheses(_obs(ests, refs), refs[0], FilterConfig(alpha_max_deg=1.0, fallback="top1"))
    assert res.fallback and res.num_inliers == 0
    np.testing.assert_array_equal(res.T_world_cam, refs[0])  # paper 003's rule, selectable
    rej = filter_hypotheses(_obs(ests, refs), refs[0], FilterConfig(alpha_max_deg=1.0))
    assert rej.fallback and np.all(np.isnan(rej.T_world_cam))  # the default: no pose
    # Too few valid references (estimator failures are None) also falls back.
    res2 = filter_hypotheses(
        [None, None, Observation.from_estimate(_estimate(T_q, refs[2], "checked"), refs[2])], refs[0]
    )
    assert res2.fallback


def test_metric_estimate_gives_full_pose():
    rng = np.random.default_rng(6)
    T_q, refs = _scene(rng)
    ests = [_estimate(T_q, refs[0], "metric")] + [_outlier(rng) for _ in refs[1:]]
    res = filter_hypotheses(_obs(ests, refs), refs[0])
    assert res.metric and not res.fallback and res.num_inliers == 1 and res.inlier_mask[0]
    assert pose_errors(res.T_world_cam, T_q)[0] < 1e-9
    # With all references metric and consistent, all are inliers and the pose is exact.
    res = filter_hypotheses(_obs([_estimate(T_q, T, "metric") for T in refs], refs), refs[0])
    assert res.num_inliers == 5 and pose_errors(res.T_world_cam, T_q)[0] < 1e-9


def test_covariance_matches_error_spread():
    # Monte Carlo: the squared Mahalanobis distance of the position error under the reported
    # covariance has mean near 3 (3 dof) when the covariance describes the spread correctly.
    rng = np.random.default_rng(7)
    m2, rot_m2 = [], []
    for _ in range(300):
        T_q, refs = _scene(rng)
        ests = [_estimate(T_q, T, "checked", rng, 1.0) for T in refs]
        cfg = FilterConfig(alpha_max_deg=20.0, min_angle_sigma_deg=0.01, min_rotation_sigma_deg=0.01)
        res = filter_hypotheses(_obs(ests, refs), refs[0], cfg)
        assert res.num_inliers == 5
        cov = res.covariance_66
        assert np.all(np.linalg.eigvalsh(cov) > 0)
        e = res.T_world_cam[:3, 3] - T_q[:3, 3]
        m2.append(e @ np.linalg.solve(cov[:3, :3], e))
        from visloc_core.geometry import rotvec_from_R

        w = rotvec_from_R(T_q[:3, :3] @ res.T_world_cam[:3, :3].T)
        rot_m2.append(w @ np.linalg.solve(cov[3:, 3:], w))
    assert 1.5 < np.mean(m2) < 6.0, np.mean(m2)
    assert 1.5 < np.mean(rot_m2) < 6.0, np.mean(rot_m2)


def test_observation_geometry_matches_inverse_pose():
    rng = np.random.default_rng(8)
    T_q, refs = _scene(rng, 1)
    o = Observation.from_estimate(_estimate(T_q, refs[0], "metric"), refs[0])
    np.testing.assert_allclose(o.metric_center, T_q[:3, 3], atol=1e-12)
    d = (T_q[:3, 3] - refs[0][:3, 3]) / np.linalg.norm(T_q[:3, 3] - refs[0][:3, 3])
    np.testing.assert_allclose(o.direction, d, atol=1e-12)
    np.testing.assert_allclose(refs[0] @ invert_T(relative_pose(refs[0], T_q)), T_q, atol=1e-12)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="alpha_maxx"):
        FilterConfig.from_dict({"alpha_maxx": 3})
    with pytest.raises(ValueError, match="fallback"):
        FilterConfig.from_dict({"fallback": "maybe"})


def test_valid_metric_pose_is_not_shadowed_by_agreeing_wrong_rays():
    # Two direction-only references agree with each other on a WRONG query (consistent outliers);
    # a single correct metric estimate must still win: the ray pair has 2 < min_inliers (3) votes.
    rng = np.random.default_rng(9)
    T_q, refs = _scene(rng, 3)
    T_fake = T_q.copy()
    T_fake[:3, 3] += np.array([2.0, 0.0, 0.0])
    ests = [
        _estimate(T_q, refs[0], "metric"),
        _estimate(T_fake, refs[1], "checked"),
        _estimate(T_fake, refs[2], "checked"),
    ]
    res = filter_hypotheses(_obs(ests, refs), refs[0])
    assert not res.fallback and res.metric
    assert pose_errors(res.T_world_cam, T_q)[0] < 1e-9
    assert res.inlier_mask.tolist() == [True, False, False]


def test_metric_inliers_by_distance():
    rng = np.random.default_rng(10)
    T_q, refs = _scene(rng, 3)
    T_off = T_q.copy()
    T_off[:3, 3] += np.array([0.0, 0.5, 0.0])  # 0.5 m off: outside metric_inlier_m
    ests = [_estimate(T_q, refs[0], "metric"), _estimate(T_q, refs[1], "metric"), _estimate(T_off, refs[2], "metric")]
    res = filter_hypotheses(_obs(ests, refs), refs[0], FilterConfig(metric_inlier_m=0.2))
    assert res.inlier_mask.tolist() == [True, True, False]
    assert pose_errors(res.T_world_cam, T_q)[0] < 1e-9


def test_two_metric_estimates_make_no_extra_ray_pair_hypothesis():
    """All references metric: one hypothesis each (no triangulated pairs among them); with a
    direction-only reference the pairs that involve it are still formed (paper sec. 2.3)."""
    rng = np.random.default_rng(11)
    T_q, refs = _scene(rng, 4)
    res = filter_hypotheses(_obs([_estimate(T_q, T, "metric") for T in refs], refs), refs[0])
    assert res.num_hypotheses == 4 and pose_errors(res.T_world_cam, T_q)[0] < 1e-9
    ests = [_estimate(T_q, T, "metric") for T in refs[:3]] + [_estimate(T_q, refs[3], "checked")]
    res = filter_hypotheses(_obs(ests, refs), refs[0])
    assert res.num_hypotheses == 3 + 3  # 3 metric poses + 3 pairs metric x direction-only
    assert res.num_inliers == 4 and pose_errors(res.T_world_cam, T_q)[0] < 1e-9
