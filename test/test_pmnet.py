"""PMNet / PoseMap (paper 001) against references: the PoseMap of a slab field equals the closed form
of eq. 3-4 (a constant feature behind a slab of density sigma and metric thickness L renders as
f (1 - exp(-sigma L))); NeRF-P's stage 2 leaves every main weight and the density grid bit-identical
while the pose branch and decoder learn to decode the training poses; RVS perturbations stay within
the paper's bounds and fill them; L_posemap is zero at identical poses."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from visloc_core.geometry import R_from_rotvec, T_from_R_t, rotvec_from_R
from visloc_core.models.nerf.posemap import (
    PoseDecoder,
    posemap_cosine_loss,
    posemap_pixels,
    render_posemap,
)
from visloc_core.models.nerf.render import render_rays
from visloc_core.models.nerf.scene import RadianceField
from visloc_core.training.nerf_p import NERF_P_DEFAULTS, add_pose_branch, decoder_errors, train_pose_branch
from visloc_core.training.rvs import perturb_poses

sys.path.insert(0, str(Path(__file__).parent))

TINY_FIELD = {
    "hash_grid": {"n_levels": 4, "log2_table_size": 10, "max_resolution": 32},
    "trunk_width": 16,
    "head_width": 16,
    "background": False,
}
TINY_SAMPLING = {"n_coarse": 16, "n_importance": 8, "n_uniform": 4, "n_depth": 0, "grid_resolution": 8}


class SlabPoseField(nn.Module):
    """Density sigma0 for z0 <= world z <= z1, 0 elsewhere; pose feature f0 everywhere."""

    def __init__(self, z0: float, z1: float, sigma0: float, f0: torch.Tensor) -> None:
        super().__init__()
        self.z0, self.z1, self.sigma0, self.f0 = z0, z1, sigma0, f0

    def forward(self, x, d):
        inside = (x[:, 2] >= self.z0) & (x[:, 2] <= self.z1)
        sigma = torch.where(inside, torch.full_like(x[:, 2], self.sigma0), torch.zeros_like(x[:, 2]))
        return {"sigma": sigma, "rgb": torch.zeros_like(x), "pose_feature": self.f0.expand(x.shape[0], -1)}


class SlabScene:
    """The RadianceField interface render_posemap uses, over fixed bins t in [0, 4] (32 intervals,
    so the slab's faces at t = 2 and 3 are interval edges and the piecewise-constant weights are exact)."""

    def __init__(self, field: nn.Module) -> None:
        self.field_module = field
        self.field = SimpleNamespace(pose_branch=True)
        self.aabb = torch.tensor([[-5.0, -5.0, -5.0], [5.0, 5.0, 5.0]], dtype=torch.float64)

    def render_rays(self, o, d):
        bins = torch.linspace(0.0, 4.0, 33, dtype=o.dtype).expand(o.shape[0], 33)
        return render_rays(self.field_module, o, d, bins)


def test_posemap_of_a_slab_equals_the_closed_form_of_eq_3_4():
    f0 = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    sigma0, width, height, s = 1.7, 64, 48, 16
    scene = SlabScene(SlabPoseField(2.0, 3.0, sigma0, f0))
    K = torch.tensor([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None]  # camera at the origin looking along world +z
    pm = render_posemap(scene, T, K[None], width, height, s)
    uv = posemap_pixels(width, height, s, dtype=torch.float64)
    assert pm.shape == (1, (width // s) * (height // s), 3)
    # block (r, c) centre (c s + 7.5, r s + 7.5): the first and the last block
    assert uv[0].tolist() == [7.5, 7.5] and uv[-1].tolist() == [width - 8.5, height - 8.5]
    for i, (u, v) in enumerate(uv.tolist()):
        length = math.sqrt(((u - 31.5) / 40) ** 2 + ((v - 23.5) / 40) ** 2 + 1.0)  # metric |d| per unit t
        ref = f0 * (1.0 - math.exp(-sigma0 * length))
        assert torch.allclose(pm[0, i], ref, rtol=1e-9, atol=1e-12)


def test_posemap_cosine_loss_is_zero_for_identical_maps_and_two_for_opposite():
    a = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    assert float(posemap_cosine_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(posemap_cosine_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    assert float(posemap_cosine_loss(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_rvs_perturbations_respect_and_fill_the_paper_bounds():
    rng = np.random.default_rng(0)
    T0 = np.stack([T_from_R_t(R_from_rotvec(rng.normal(size=3)), rng.normal(size=3)) for _ in range(400)])
    for max_t, max_r in ((0.2, 10.0), (3.0, 7.5)):  # paper 001: indoor, outdoor
        T, dt, ang = perturb_poses(T0, max_t, max_r, rng)
        assert np.allclose(T[:, :3, 3] - T0[:, :3, 3], dt)
        assert np.abs(dt).max() <= max_t and np.abs(ang).max() <= max_r
        # uniform per axis: the extremes are reached (400 draws: P(max < 0.95 bound) = 0.975^1200 ~ 0)
        assert np.abs(dt).max(axis=0).min() > 0.95 * max_t and np.abs(ang).max(axis=0).min() > 0.95 * max_r
        assert abs(float(np.mean(dt))) < 0.1 * max_t  # centred
        # the relative rotation is R_x(a) R_y(b) R_z(c) in the camera frame: its angle is at most the sum
        dR = np.swapaxes(T0[:, :3, :3], 1, 2) @ T[:, :3, :3]
        angle = np.rad2deg(np.linalg.norm(rotvec_from_R(dR), axis=1))
        assert np.all(angle <= np.abs(ang).sum(axis=1) + 1e-6)
        Rx = np.stack([R_from_rotvec(np.array([np.deg2rad(a), 0, 0])) for a in ang[:5, 0]])
        Ry = np.stack([R_from_rotvec(np.array([0, np.deg2rad(a), 0])) for a in ang[:5, 1]])
        Rz = np.stack([R_from_rotvec(np.array([0, 0, np.deg2rad(a)])) for a in ang[:5, 2]])
        assert np.allclose(dR[:5], Rx @ Ry @ Rz, atol=1e-12)


def _ring_poses(n: int) -> np.ndarray:
    out = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        R = R_from_rotvec(np.array([0.0, a, 0.0])) @ R_from_rotvec(np.array([-np.pi / 2, 0, 0]))
        out.append(T_from_R_t(R, np.array([0.6 * np.cos(a), 0.6 * np.sin(a), 1.0])))
    return np.stack(out)


def test_nerf_p_stage_freezes_the_field_and_decodes_training_poses():
    torch.manual_seed(0)
    base = RadianceField(TINY_FIELD, TINY_SAMPLING, [[-2.0, -2.0, 0.0], [2.0, 2.0, 2.0]], n_classes=3)
    with torch.no_grad():  # a field with structure: random tables of a large magnitude, opaque
        for p in base.field.encoding.parameters():
            p.uniform_(-20.0, 20.0)
        base.field.trunk.out.bias[0] = 3.0
    field = add_pose_branch(base, 8)
    before = {k: v.clone() for k, v in field.state_dict().items()}
    trainable = {n for n, p in field.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("field.pose_branch.") for n in trainable)
    cfg = {
        "posemap": {"feature_dim": 8, "downsample": 8, "image_width": 32, "image_height": 24},
        "train": {**NERF_P_DEFAULTS["train"], "steps": 120, "batch_size": 6, "lr": 1e-2, "rvs_fraction": 0.0,
                  "progress_bar": False},
    }  # fmt: skip
    T = _ring_poses(6)
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    decoder = PoseDecoder(4 * 3, 8, [64, 32], field.aabb.tolist())
    T_t = torch.as_tensor(T, dtype=torch.float32)
    K_t = torch.as_tensor(K, dtype=torch.float32).expand(6, 3, 3)
    with torch.no_grad():
        err0 = decoder_errors(decoder, render_posemap(field, T_t, K_t, 32, 24, 8), T_t)
    losses = train_pose_branch(field, decoder, T, K, cfg)
    after = field.state_dict()
    for k, v in before.items():
        if k.startswith("field.pose_branch."):
            assert not torch.equal(v, after[k]), f"{k} did not train"
        else:
            assert torch.equal(v, after[k]), f"{k} changed although frozen"
    with torch.no_grad():
        err = decoder_errors(decoder, render_posemap(field, T_t, K_t, 32, 24, 8), T_t)
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    # the 6 poses are 0.6 m apart at least and 60 deg apart: decoding must be far finer than that
    assert err["median_translation_m"] < 0.1 and err["median_rotation_deg"] < 10.0, (err0, err)


# ------------------------------------------------------------------------------------- PMNet
def test_image_triplet_loss_against_its_formula():
    from visloc_core.training.pmnet import feature_distance, image_triplet_loss

    g = torch.Generator().manual_seed(1)
    real, rend = torch.randn(3, 4, 2, 5, generator=g), torch.randn(3, 4, 2, 5, generator=g)
    r, q = real.numpy().astype(np.float64), rend.numpy().astype(np.float64)

    def dist(a, b):  # mean over cells of 1 - cosine of the channel vectors
        cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))
        return float(np.mean(1.0 - cos))

    d_pos = [dist(r[i], q[i]) for i in range(3)]
    d_neg = [dist(r[i], q[(i - 1) % 3]) for i in range(3)]  # the rendered view of another frame
    ref = np.mean([max(0.0, p - n + 0.5) for p, n in zip(d_pos, d_neg, strict=True)])
    assert np.allclose(feature_distance(real, rend).numpy(), d_pos, atol=1e-6)
    assert float(image_triplet_loss(real, rend, 0.5)) == pytest.approx(ref, abs=1e-6)
    assert float(image_triplet_loss(real[:1], rend[:1], 0.5)) == pytest.approx(d_pos[0], abs=1e-6)  # no negative


TINY_NERF = {
    "task": "nerf",
    "field": {"hash_grid": {"n_levels": 4, "log2_table_size": 12, "max_resolution": 64}, "trunk_width": 16,
              "head_width": 16},
    "sampling": {"n_coarse": 32, "n_importance": 8, "n_uniform": 4, "n_depth": 4, "grid_resolution": 16},
    "data": {"image_width": 24, "image_height": 18, "val_fraction": 0.2, "val_block": 2},
    "train": {"epochs": 1, "steps_per_epoch": 5, "rays_per_batch": 128, "val_views": 1, "progress_bar": False},
    "eval": {"image_width": 12, "image_height": 9, "max_views": 2, "sheet_views": 1, "test_condition": None},
}  # fmt: skip
TINY_NERF_P = {
    "task": "nerf_p",
    "field": {"config": "nerf.yaml"},
    "posemap": {"feature_dim": 8, "downsample": 8, "decoder_hidden": [32, 16], "image_width": 48, "image_height": 36},
    "train": {"steps": 20, "batch_size": 4, "val_fraction": 0.2, "val_block": 2, "progress_bar": False},
}
TINY_PMNET = {
    "task": "pmnet",
    "pmnet": {"nerf_p": {"config": "nerf_p.yaml"}, "rvs": {"views_per_frame": 2}},
    "model": {"name": "pmnet", "backbone": "mobilenet_v2", "pretrained": False, "feature_dim": 32,
              "image_feature_level": 8},
    "loss": {"name": "learned_weight"},
    "data": {"image_width": 48, "image_height": 36, "batch_size": 4, "val_fraction": 0.2, "val_block": 2,
             "augment": {"crop": "center", "scale_jitter": 0.0}},
    "train": {"epochs": 1, "lr": 1.0e-3, "progress_bar": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def pmnet_run(tmp_path_factory):
    import yaml
    from nerf_scene import make_room_dataset

    from visloc_core.cli import main as visloc

    root = tmp_path_factory.mktemp("pmnet")
    data = make_room_dataset(root / "room", n_frames=16, width=48, height=36)
    for name, cfg in (("nerf.yaml", TINY_NERF), ("nerf_p.yaml", TINY_NERF_P), ("pmnet.yaml", TINY_PMNET)):
        (root / name).write_text(yaml.safe_dump(cfg))
    assert visloc(["train", str(root / "pmnet.yaml"), "--data", str(data), "--out", str(root / "pm")]) == 0
    return root, data


def test_pmnet_trains_all_four_terms_and_its_artifact_is_served_like_every_apr_model(pmnet_run):
    import csv
    import json

    from visloc_core.data.layout import Dataset
    from visloc_core.localizers import load_localizer
    from visloc_core.models.apr.artifact import load_apr_artifact

    root, data = pmnet_run
    meta = json.loads((root / "pm" / "artifact.json").read_text())
    assert meta["model"] == "pmnet" and meta["training"]["pmnet"]["pool"]["renders"] == 12 * 3
    rows = list(csv.DictReader((root / "pm" / "metrics.csv").open()))
    for term in ("pose_loss", "image_loss", "posemap_loss", "rvs_loss"):
        values = [float(r[f"train/{term}"]) for r in rows if r.get(f"train/{term}")]
        assert values and all(math.isfinite(v) for v in values), term
    # the NeRF-P stage kept the field's main weights: compare with the field it was built on
    from visloc_core.models.nerf.artifact import load_nerf_p, load_radiance_field

    field_p, _, _ = load_nerf_p(root / "pm.train" / "nerf_p")
    field0, _ = load_radiance_field(root / "pm.train" / "nerf_p.train" / "field")
    s0, s1 = field0.state_dict(), field_p.state_dict()
    assert all(torch.equal(v, s1[k]) for k, v in s0.items())
    assert any(k.startswith("field.pose_branch.") for k in s1) and not any("pose_branch" in k for k in s0)
    # served by load_localizer; reloads to identical predictions (the network alone, no field)
    loc = load_localizer(root / "pm")
    frame = Dataset(data).frames("test")[0]
    rgb = Dataset(data).load_rgb(frame)
    a = loc.localize(rgb, frame.camera, frame.stamp_ns)
    b = load_localizer(root / "pm").localize(rgb, frame.camera, frame.stamp_ns)

    # the pose the network gave, LOCALIZED or not: a few-step model may be NOT_LOCALIZED by its own covariance
    # (issue 11's publish rule, depending on the thread count), its pose then kept in extras
    def pose(res):
        return np.asarray(res.extras.get("T_world_cam_refused", res.T_world_cam), dtype=float)

    assert a.method == "apr/pmnet" and a.status == b.status
    assert np.isfinite(pose(a)).all() and np.array_equal(pose(a), pose(b))
    art = load_apr_artifact(root / "pm")
    assert not any(n.startswith("field") for n, _ in art.model.named_parameters())


def test_posemap_loss_reaches_the_regressor_only_through_the_predicted_pose(pmnet_run):
    from visloc_core.models.nerf.artifact import load_nerf_p
    from visloc_core.training.apr_data import APRDataModule
    from visloc_core.training.config import apr_config
    from visloc_core.training.pmnet import PMNetModule, pmnet_config

    root, data = pmnet_run
    apr, pm = pmnet_config(TINY_PMNET)
    pm["losses"] = {"pose": 0.0, "image": 0.0, "posemap": 1.0, "rvs": 0.0}
    field, _, _ = load_nerf_p(root / "pm.train" / "nerf_p")
    pool = torch.load(root / "pm.train" / "pool.pt", weights_only=False)
    dm = APRDataModule(apr_config(apr), str(data))
    torch.manual_seed(0)
    module = PMNetModule(apr, [s.to_json() for s in dm.scenes], pm, field, pool, 8)
    module.apply_stage(0)
    batch = next(iter(dm.train_dataloader()))
    module.log = lambda *a, **k: None  # outside a Trainer
    loss = module.training_step(batch, 0)
    loss.backward()
    assert float(loss.detach()) > 0
    assert module.model.head_position.weight.grad.abs().sum() > 0  # through T_pred -> rays -> PoseMap
    assert module.model.head_orientation.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.field.parameters())  # the teacher is frozen
    assert all(p.grad is None or not p.grad.any() for p in module.loss.parameters())  # no L_pose: s_x, s_q still


def test_committed_configs_are_valid_and_keep_the_paper_sizes():
    from visloc_core.training.config import load_yaml
    from visloc_core.training.nerf_p import nerf_p_config
    from visloc_core.training.pmnet import pmnet_config

    root = Path(__file__).resolve().parents[1] / "config" / "models"
    npc = nerf_p_config(load_yaml(root / "nerf_p.yaml"))
    assert npc["posemap"]["feature_dim"] == 256 and npc["posemap"]["downsample"] == 16
    assert npc["posemap"]["decoder_hidden"] == [1536, 256, 128]
    apr, pm = pmnet_config(load_yaml(root / "pmnet.yaml"))
    assert apr["model"]["name"] == "pmnet" and apr["train"]["lr"] == 1.0e-4  # paper: Adam 1e-4
    assert pm["losses"] == {"pose": 1.0, "image": 1.0, "posemap": 1.0, "rvs": 1.0}
    assert (pm["rvs"]["max_translation_m"], pm["rvs"]["max_rotation_deg"]) == (0.2, 10.0)
    bad = load_yaml(root / "pmnet.yaml")
    bad["data"]["augment"]["crop"] = "random"
    with pytest.raises(ValueError, match="crop: center"):
        pmnet_config(bad)
