"""The learned relative-pose network of paper 003: modules against hand computations, the loss and the
essential-manifold projection against analytic E, pair labels against the epipolar constraint of
projected points, a tiny overfit, the checkpoint round trip, and the estimator adapter's convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bounds import record, seed

from visloc_core.data.layout import Dataset, DatasetWriter
from visloc_core.geometry import (
    PinholeCamera,
    R_from_rotvec,
    T_from_R_t,
    essential_from_relative_pose,
    invert_T,
    relative_pose,
    rotation_error_deg,
)
from visloc_core.models.relpose import (
    CBAM,
    BiasNet,
    RelPoseNet,
    correlation_volume,
    essential_loss,
    pose_candidates,
    project_to_essential,
)
from visloc_core.models.relpose.checkpoint import load_relpose_net, save_relpose_net
from visloc_core.training.relpose_pairs import PairSampling, sample_pairs

torch.set_num_threads(1)

W, H = 64, 48  # tiny network input for the fast tests
N_CLASSES = 4


def _pose(rotvec, t) -> np.ndarray:
    return T_from_R_t(R_from_rotvec(np.asarray(rotvec, float)), np.asarray(t, float))


def _tiny_conf(**kw) -> dict:
    return {"image_width": W, "image_height": H, "num_classes": N_CLASSES, "resnet_last_layer": 3, **kw}


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "cfg,feat",
    [
        ({"image_width": 160, "image_height": 120, "num_classes": 5}, (512, 4, 5)),  # paper: ResNet34 to layer4
        ({"image_width": 160, "image_height": 120, "num_classes": 5, "resnet_last_layer": 3}, (256, 8, 10)),
        ({"image_width": 160, "image_height": 120, "use_biasnet": False, "use_attention": False}, (512, 4, 5)),
        ({"image_width": 160, "image_height": 120, "backbone": "mobilenet_v2", "pretrained": False}, (320, 4, 5)),
        ({"image_width": 160, "image_height": 128, "backbone": "efficientnet_lite0", "pretrained": False}, (320, 4, 5)),
    ],
)
def test_shapes(cfg, feat):
    cfg = {"num_classes": 3, **cfg}
    m = RelPoseNet(cfg).eval()
    h, w = cfg["image_height"], cfg["image_width"]
    x = torch.rand(2, 3, h, w)
    s = torch.randint(0, 3, (2, h, w))
    assert tuple(m.features(x, s).shape) == (2, *feat)
    assert tuple(m(x, x.flip(0), s, s).shape) == (2, 3, 3)
    assert (m.cbam is not None) == cfg.get("use_attention", True)
    assert (m.biasnet is not None) == cfg.get("use_biasnet", True)
    with pytest.raises(ValueError, match="image must be"):
        m(torch.rand(2, 3, h + 8, w), torch.rand(2, 3, h + 8, w))


def test_biasnet_is_per_class_constant_on_uniform_regions():
    """BiasNet on a map of one class gives one bias vector per class away from borders, >= 0
    (final ReLU, paper eq. 1), and the -1 'no segmentation' id equals an all-zero one-hot input."""
    torch.manual_seed(0)
    b = BiasNet(3, 8)
    s = torch.zeros(1, 10, 10, dtype=torch.long)
    s[:, :, 5:] = 2
    out = b(s)
    assert out.shape == (1, 3, 10, 10) and bool((out >= 0).all())
    # receptive field 5x5: column 2 sees only class 0, column 7 only class 2 (rows 2..7 avoid the borders)
    for col in (2, 7):
        patch = out[0, :, 2:8, col]
        assert torch.allclose(patch, patch[:, :1].expand_as(patch))
    blank = b(torch.full((1, 10, 10), -1))
    zero_in = torch.relu(b.f3(torch.relu(b.f2(torch.relu(b.f1(torch.zeros(1, 3, 10, 10)))))))
    assert torch.allclose(blank, zero_in)


# ----------------------------------------------------------------------------------------------- CBAM
def test_cbam_matches_hand_computation():
    cbam = CBAM(channels=2, reduction=2, kernel=7)
    with torch.no_grad():
        cbam.mlp[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        cbam.mlp[0].bias.zero_()
        cbam.mlp[2].weight.copy_(torch.tensor([[1.0], [2.0]]))
        cbam.mlp[2].bias.copy_(torch.tensor([0.5, -0.5]))
        cbam.spatial.weight.zero_()
        cbam.spatial.weight[0, 0, 3, 3] = 0.7  # centre tap on the channel-mean map
        cbam.spatial.weight[0, 1, 3, 3] = -0.3  # centre tap on the channel-max map
        cbam.spatial.bias.fill_(0.1)
    F0 = np.array([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, -2.0]]])  # (C=2, 2, 2)

    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))

    def mlp(v):  # Linear(2->1), ReLU, Linear(1->2)
        h = max(0.0, v[0] - v[1])
        return np.array([1.0 * h + 0.5, 2.0 * h - 0.5])

    avg = F0.reshape(2, -1).mean(1)  # channel 0: 2.5, channel 1: -0.125
    mx = F0.reshape(2, -1).max(1)  # 4, 2
    Nc = sig(mlp(avg) + mlp(mx))
    F1 = Nc[:, None, None] * F0
    Ns = sig(0.7 * F1.mean(0) - 0.3 * F1.max(0) + 0.1)
    F2 = Ns[None] * F1
    out = cbam(torch.tensor(F0, dtype=torch.float32)[None])[0].detach().numpy()
    np.testing.assert_allclose(out, F2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- correlation
def test_correlation_volume_matches_naive_loop():
    torch.manual_seed(1)
    fi, fj = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    c = correlation_volume(fi, fj)
    h, w = 3, 4
    ref = torch.zeros(2, h * w, h, w)
    for b in range(2):
        for xi in range(h):
            for yi in range(w):
                for xj in range(h):
                    for yj in range(w):
                        ref[b, w * xj + yj, xi, yi] = fi[b, :, xi, yi] @ fj[b, :, xj, yj]
    torch.testing.assert_close(c, ref)


# ------------------------------------------------------------------------------------- loss, manifold
def _true_E(T_q_r: np.ndarray) -> np.ndarray:
    return essential_from_relative_pose(T_q_r)


def test_loss_zero_for_true_E_and_sign_handling():
    T = _pose([0.1, -0.2, 0.05], [0.4, 0.1, -0.3])
    E = torch.tensor(_true_E(T))[None]
    assert float(essential_loss(E, E)) == 0.0
    assert float(essential_loss(-E, E, sign_invariant=True)) == 0.0
    # not sign-invariant (the paper's loss): ||-E - E|| = 2 ||E||_F = 2 sqrt(2) for a unit-t essential matrix
    assert float(essential_loss(-E, E)) == pytest.approx(2 * np.sqrt(2), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_projection_and_candidates_recover_true_pose(seed):
    rng = np.random.default_rng(seed)
    T = _pose(rng.normal(0, 0.3, 3), rng.normal(0, 1, 3))
    E_true = _true_E(T)
    noisy = 1.7 * E_true + rng.normal(0, 0.02, (3, 3))  # scaled, perturbed network output
    E, sv = project_to_essential(noisy)
    np.testing.assert_allclose(np.linalg.svd(E, compute_uv=False), [1, 1, 0], atol=1e-12)
    assert sv[0] >= sv[1] >= sv[2]
    cands = pose_candidates(project_to_essential(E_true)[0])
    assert min(rotation_error_deg(R, T[:3, :3]) for R, _ in cands) < 1e-6
    # the sign of E picks the sign of t; the smaller rotation is the true one for |angle| < 90 deg
    R0, t0 = pose_candidates(E)[0]
    assert rotation_error_deg(R0, T[:3, :3]) < 3.0
    assert np.degrees(np.arccos(np.clip(t0 @ T[:3, 3] / np.linalg.norm(T[:3, 3]), -1, 1))) < 3.0
    # a flipped E flips t but keeps the rotation as the first guess
    R1, t1 = pose_candidates(-E)[0]
    assert rotation_error_deg(R1, T[:3, :3]) < 3.0 and t1 @ T[:3, 3] < 0


# -------------------------------------------------------------------------------------------- dataset
def _write_dataset(root, n=6, size=(W, H), with_semantic=True):
    """Frames on a short arc looking roughly at +z, random textured images and class maps."""
    rng = np.random.default_rng(0)
    w, h = size
    cam = PinholeCamera(w, h, 0.8 * w, 0.8 * w, w / 2, h / 2)
    with DatasetWriter(root, source={"type": "test"}) as wr:
        wr.set_classes({i: f"c{i}" for i in range(N_CLASSES)})
        for seq, split in (("seq-01", "train"), ("seq-02", "test")):
            for i in range(n):
                off = 0.1 if split == "test" else 0.0  # test frames sit between the training frames
                T = _pose([0.0, 0.08 * i + 0.3 * off, 0.0], [0.2 * i + off, 0.02 * i, 0.05 * i])
                img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                sem = rng.integers(0, N_CLASSES, (h, w)).astype(np.uint8) if with_semantic else None
                wr.add_frame("room", seq, f"f{i:03d}", i * 10**8, T, cam, img, semantic_HW=sem)
            wr.set_split(split, [f"room/{seq}"])
    return Dataset(root)


def test_pair_sampling_and_labels_follow_the_convention(tmp_path):
    from visloc_core.data.torch_dataset import ImageTransform
    from visloc_core.training.relpose_pairs import RelPosePairDataset

    ds = _write_dataset(tmp_path / "d")
    fr = ds.frames("train")
    pairs = sample_pairs(fr, fr, PairSampling(max_distance_m=0.45, max_angle_deg=10.0, max_pairs=0), same_set=True)
    # centres 0.2063 m apart per step: 1 and 2 steps qualify by distance; the angle limit (4.6 deg/step)
    # removes 3+ steps anyway. Brute force reference:
    ref = set()
    for i in range(len(fr)):
        for j in range(len(fr)):
            d = np.linalg.norm(fr[i].T_world_cam[:3, 3] - fr[j].T_world_cam[:3, 3])
            ang = np.degrees(np.arccos(np.clip(fr[i].T_world_cam[:3, 2] @ fr[j].T_world_cam[:3, 2], -1, 1)))
            if i != j and 0.05 <= d <= 0.45 and ang <= 10.0:
                ref.add((i, j))
    assert set(pairs) == ref and len(ref) == 2 * (5 + 4)
    items = RelPosePairDataset(ds, fr, fr, pairs, ImageTransform(W, H), with_semantic=True)
    it = items[3]
    i, j = pairs[3]
    T_q_r = relative_pose(fr[j].T_world_cam, fr[i].T_world_cam)
    # Epipolar constraint x_q^T E x_r = 0 on world points seen by both cameras (normalised coordinates)
    X_w = np.array([[0.3, -0.2, 4.0], [1.0, 0.5, 6.0], [-0.7, 0.1, 3.0]])
    E = it["E"].double().numpy()
    for X in X_w:
        x_q = (invert_T(fr[i].T_world_cam) @ np.append(X, 1))[:3]
        x_r = (invert_T(fr[j].T_world_cam) @ np.append(X, 1))[:3]
        assert abs((x_q / x_q[2]) @ E @ (x_r / x_r[2])) < 1e-6
    np.testing.assert_allclose(it["T_q_r"].numpy(), T_q_r)
    assert it["image_q"].shape == (3, H, W) and it["semantic_r"].shape == (H, W)


# ---------------------------------------------------------------------------------------- overfitting
def test_tiny_overfit_drives_the_loss_down(tmp_path):
    from visloc_core.data.torch_dataset import ImageTransform
    from visloc_core.training.relpose_pairs import RelPosePairDataset

    torch.manual_seed(seed())
    ds = _write_dataset(tmp_path / "d", n=4)
    fr = ds.frames("train")
    pairs = [(0, 1), (1, 2), (2, 3), (3, 1)]
    items = RelPosePairDataset(ds, fr, fr, pairs, ImageTransform(W, H), with_semantic=True)
    batch = torch.utils.data.default_collate([items[k] for k in range(len(items))])
    model = RelPoseNet(_tiny_conf())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = essential_loss(
            model(batch["image_q"], batch["image_r"], batch["semantic_q"], batch["semantic_r"]), batch["E"]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # bound: the worst ratio over the seed x thread sweep (test/bound_sweep.py) x 1.5
    assert record("relpose_net.overfit_loss_ratio", losses[-1] / losses[0]) < 0.2, losses[::5]


# -------------------------------------------------------------------------------- trainer + checkpoint
def test_train_writes_a_checkpoint_that_reloads_identically(tmp_path):
    """Through the real CLI: `visloc train CONFIG --data D --out CKPT` with task: relpose_net."""
    import yaml

    from visloc_core.cli import main
    from visloc_core.training.relpose_net import train

    _write_dataset(tmp_path / "d", n=5)
    cfg = {
        "task": "relpose_net",
        "model": _tiny_conf(),
        "pairs": {"max_distance_m": 0.7, "max_angle_deg": 30, "max_pairs": 8, "val_max_pairs": 4},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-4},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["train", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "ckpt")]
    assert main([*argv, "--epochs", "1"]) == 0
    out = tmp_path / "ckpt"
    assert len(load_relpose_net(out)[1]["history"]) == 1  # --epochs overrode the config's 3
    model, meta = load_relpose_net(out)
    assert meta["complete"] and meta["data"]["n_train_pairs"] == 8 and meta["data"]["n_val_pairs"] == 4
    assert meta["model"]["num_classes"] == N_CLASSES and meta["history"][0]["n_pairs"] == 4
    sd = torch.load(out / "weights.pt", weights_only=True)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path / "d", tmp_path / "ckpt")


def test_biasnet_without_semantic_dataset_is_a_clear_error(tmp_path):
    from visloc_core.training.relpose_net import train

    root = tmp_path / "d"
    _write_dataset(root, n=3, with_semantic=False)
    import json

    mf = root / "manifest.json"
    m = json.loads(mf.read_text())
    m["classes"] = {}
    mf.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="use_biasnet: false"):
        train({"model": _tiny_conf(num_classes=0)}, root, tmp_path / "ckpt")


# -------------------------------------------------------------------------------------------- adapter
def test_adapter_returns_the_true_relative_pose_for_a_true_E(tmp_path, monkeypatch):
    """The network head is PATCHED to output the true E_q_r of each pair (scaled by 3, as an
    unnormalised regression would be): the adapter must give back the true rotation, the true
    translation direction (with its sign) and E on the essential manifold, in base.py's convention."""
    from visloc_core.localizers.relpose.base import RELPOSE_ESTIMATORS, Keyframe
    from visloc_core.localizers.relpose.learned import LearnedRelPoseEstimator

    ds = _write_dataset(tmp_path / "d", n=4)
    save_relpose_net(RelPoseNet(_tiny_conf()), {"complete": True}, {}, tmp_path / "ckpt")
    est = RELPOSE_ESTIMATORS.build("learned", {"checkpoint": str(tmp_path / "ckpt")}, "cpu")
    assert isinstance(est, LearnedRelPoseEstimator)
    q = ds.frames("test")[2]
    refs = [
        Keyframe(f.key, f.T_world_cam, f.camera, str(ds.path(f)), str(ds.path(f, "semantic")))
        for f in ds.frames("train")
    ]
    true_T = [relative_pose(kf.T_world_cam, q.T_world_cam) for kf in refs]
    true_E = torch.tensor(np.stack([3.0 * _true_E(T) for T in true_T]), dtype=torch.float32)
    batch_sizes = []
    real_features = est.model.features

    def features(x, s=None):
        batch_sizes.append(x.shape[0])
        return real_features(x, s)

    def head(f_q, f_r):  # patched network output: the true E of each (query, reference) pair
        assert f_q.shape[0] == f_r.shape[0] == len(refs)
        return true_E

    monkeypatch.setattr(est.model, "features", features)
    monkeypatch.setattr(est.model, "head", head)
    out = est.estimate(ds.load_rgb(q), q.camera, refs, ds.load_semantic(q))
    assert len(out) == len(refs) and batch_sizes == [1 + len(refs)]  # one batched pass
    for e, T in zip(out, true_T):
        assert e.ok and not e.metric and not e.cheirality_checked
        assert rotation_error_deg(e.T_q_r[:3, :3], T[:3, :3]) < 1e-4
        np.testing.assert_allclose(e.T_q_r[:3, 3], T[:3, 3] / np.linalg.norm(T[:3, 3]), atol=1e-6)
        np.testing.assert_allclose(e.E, _true_E(T), atol=1e-6)
        assert e.confidence > 0.999
    # references are cached: the second query needs only its own pass
    est.resolve = "best_guess"  # our option: the best guess is handed over as resolved
    again = est.estimate(ds.load_rgb(q), q.camera, refs, None)
    assert batch_sizes == [1 + len(refs), 1]
    assert all(e.cheirality_checked for e in again)
    np.testing.assert_allclose(again[0].T_q_r, out[0].T_q_r)


def test_adapter_semantic_policy_and_bad_config(tmp_path):
    from visloc_core.localizers.relpose.base import RELPOSE_ESTIMATORS

    save_relpose_net(RelPoseNet(_tiny_conf()), {"complete": True}, {}, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="checkpoint"):
        RELPOSE_ESTIMATORS.build("learned", {}, "cpu")
    with pytest.raises(FileNotFoundError, match=r"relpose_net\.json"):
        RELPOSE_ESTIMATORS.build("learned", {"checkpoint": str(tmp_path)}, "cpu")
    est = RELPOSE_ESTIMATORS.build(
        "learned", {"checkpoint": str(tmp_path / "ckpt"), "missing_semantic": "error"}, "cpu"
    )
    img = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="semantic class map"):
        est.predict_E(img, [], None)
    with pytest.raises(ValueError, match="resolve"):
        RELPOSE_ESTIMATORS.build("learned", {"checkpoint": str(tmp_path / "ckpt"), "resolve": "x"}, "cpu")


def test_shipped_configs_build(tmp_path):
    """Every config/models/relpose_net*.yaml is a valid relpose_net config (no unknown model keys)."""
    from pathlib import Path

    import yaml

    from visloc_core.models.relpose import merge_conf

    files = sorted((Path(__file__).parents[1] / "config" / "models").glob("relpose_net*.yaml"))
    assert len(files) >= 4
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert cfg["task"] == "relpose_net"
        conf = merge_conf({**cfg["model"], "num_classes": 3, "pretrained": False})
        m = RelPoseNet(conf)
        assert (m.biasnet is None) == ("no_biasnet" in f.stem or "baseline" in f.stem)
        assert (m.cbam is None) == ("no_attnet" in f.stem or "baseline" in f.stem)


def test_evaluate_checkpoint_on_pairs(tmp_path, monkeypatch):
    """evaluate_checkpoint on a network PATCHED to output the true E of each pair (in loader
    order) reports zero errors; with -E the best guess flips t (180 deg) while the oracle stays 0."""
    from visloc_core.models.relpose import checkpoint as ck
    from visloc_core.training import relpose_net as rn

    ds = _write_dataset(tmp_path / "d", n=4)
    sampling = {"max_distance_m": 0.7, "max_angle_deg": 30, "min_distance_m": 0.05, "max_pairs": 0}
    ckpt = save_relpose_net(RelPoseNet(_tiny_conf()), {"data": {"sampling": sampling}}, {}, tmp_path / "c")
    q, r = ds.frames("test"), ds.frames("train")
    pairs = sample_pairs(q, r, PairSampling.from_cfg(sampling))
    true_E = torch.tensor(np.stack([_true_E(relative_pose(r[j].T_world_cam, q[i].T_world_cam)) for i, j in pairs]))
    real_load = ck.load_relpose_net

    for sign, rot, tdir in ((1.0, 0.0, 0.0), (-1.0, 0.0, 180.0)):
        served = []

        def load(path, device="cpu", sign=sign, served=served):
            model, meta = real_load(path, device)

            def forward(img_q, img_r, sem_q=None, sem_r=None):
                k = sum(served)
                served.append(img_q.shape[0])
                return sign * true_E[k : k + img_q.shape[0]].float()

            model.forward = forward
            return model, meta

        monkeypatch.setattr(ck, "load_relpose_net", load)
        res = rn.evaluate_checkpoint(ckpt, tmp_path / "d", pairs_cfg={"val_max_pairs": 0}, batch_size=3)
        assert res["n_pairs"] == len(pairs) == sum(served) > 3
        assert res["median_rot_deg"] == pytest.approx(rot, abs=1e-3)
        assert res["median_tdir_deg"] == pytest.approx(tdir, abs=1e-3)
        assert res["median_rot_oracle_deg"] == pytest.approx(0, abs=1e-3)
        assert res["median_tdir_oracle_deg"] == pytest.approx(0, abs=1e-3)


def test_dilate_classes_paints_the_kernel_around_each_pixel():
    from visloc_core.models.relpose.net import dilate_classes

    s = np.zeros((9, 9), np.uint8)
    s[4, 4] = 2
    s[0, 8] = 1
    out = dilate_classes(s, [2], kernel=7)
    ref = np.zeros((9, 9), np.uint8)
    ref[1:8, 1:8] = 2
    ref[0, 8] = 1  # classes not listed are left alone
    np.testing.assert_array_equal(out, ref)
