"""Radiance-field rendering against references: analytic slab (weights, transmittance exp(-sigma d),
depth), ray conventions against PinholeCamera, se(3) exp against the matrix exponential, pose
gradients against finite differences, semantic rendering of a scene whose classes are known,
hash-grid interpolation against a hand-written trilinear interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from visloc_core.geometry import PinholeCamera, R_from_rotvec, T_from_R_t, invert_T
from visloc_core.geometry.torch_ops import se3_exp, skew
from visloc_core.models.nerf.encoding import HashGridEncoding
from visloc_core.models.nerf.field import SceneField
from visloc_core.models.nerf.rays import camera_rays, pixel_centres, ray_aabb
from visloc_core.models.nerf.render import render_rays, volume_weights
from visloc_core.models.nerf.scene import RadianceField


class SlabField(nn.Module):
    """Density sigma0 for a <= x <= b (world x), 0 elsewhere; colour red inside; logits class 1."""

    def __init__(self, a: float, b: float, sigma0: float) -> None:
        super().__init__()
        self.a, self.b, self.sigma0 = a, b, sigma0

    def forward(self, x, d):
        inside = (x[:, 0] >= self.a) & (x[:, 0] <= self.b)
        sigma = torch.where(inside, torch.full_like(x[:, 0], self.sigma0), torch.zeros_like(x[:, 0]))
        rgb = torch.zeros_like(x)
        rgb[:, 0] = 1.0
        sem = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        sem[:, 1] = 1.0
        return {"sigma": sigma, "rgb": rgb, "semantic": sem}


def test_slab_transmittance_weights_and_depth_against_analytic():
    a, b, sigma0 = 2.0, 2.5, 3.0
    o = torch.tensor([[0.0, 0.3, -0.2]], dtype=torch.float64)
    d = torch.tensor([[1.0, 0.4, 0.3]], dtype=torch.float64)  # oblique, |d| != 1: t is not metric
    t_a, t_b = a / 1.0, b / 1.0  # x(t) = t along this ray
    n_in = 4000
    # edges: near, slab entry and exit exactly, fine bins inside, far
    edges = torch.cat([torch.tensor([0.5]), torch.linspace(t_a, t_b, n_in + 1), torch.tensor([4.0])]).double()[None]
    out = render_rays(SlabField(a, b, sigma0), o, d, edges)
    norm = float(d.norm())
    thickness_m = (t_b - t_a) * norm
    # transmittance through the slab: exp(-sigma d) exactly, d the metric thickness
    assert float(out["t_out"]) == pytest.approx(math.exp(-sigma0 * thickness_m), rel=1e-12)
    assert float(out["acc"]) == pytest.approx(1.0 - math.exp(-sigma0 * thickness_m), rel=1e-12)
    # every weight is T_i (1 - exp(-sigma_i delta_i)), computed here by a plain loop
    w = out["weights"][0].numpy()
    mids = 0.5 * (edges[0, 1:] + edges[0, :-1]).numpy()
    T, ref = 1.0, []
    for i in range(len(mids)):
        s = sigma0 if a <= mids[i] <= b else 0.0
        delta = float(edges[0, i + 1] - edges[0, i]) * norm
        ref.append(T * (1 - math.exp(-s * delta)))
        T *= math.exp(-s * delta)
    np.testing.assert_allclose(w, ref, rtol=1e-10, atol=1e-15)
    # expected depth: continuous value int t sigma' exp(-sigma'(t - t_a)) dt over the slab
    # (sigma' = sigma0 |d| per unit t); midpoint quadrature is off by at most half a bin per unit weight
    s1, L = sigma0 * norm, t_b - t_a
    analytic = (1 - math.exp(-s1 * L)) * (t_a + 1 / s1) - L * math.exp(-s1 * L)
    assert abs(float(out["depth"]) - analytic) <= 0.5 * L / n_in
    # colour and logits: composited by the same weights (no background here)
    assert float(out["rgb"][0, 0]) == pytest.approx(float(out["acc"]), rel=1e-12)
    assert float(out["semantic"][0, 1]) == pytest.approx(float(out["acc"]), rel=1e-12)


def test_volume_weights_sum_and_order():
    sigma = torch.tensor([[0.0, 1.0, 0.0, 5.0]])
    delta = torch.tensor([[1.0, 0.5, 2.0, 0.1]])
    w, t_out = volume_weights(sigma, delta)
    assert float(w.sum() + t_out) == pytest.approx(1.0, abs=1e-7)  # the ray ends somewhere
    assert float(w[0, 0]) == 0.0 and float(w[0, 2]) == 0.0


def test_rays_follow_pinhole_camera_and_pose_convention():
    cam = PinholeCamera(40, 30, 35.0, 36.0, 19.2, 14.7)
    T = T_from_R_t(R_from_rotvec(np.array([0.2, -0.5, 0.1])), np.array([1.0, -2.0, 0.5]))
    uv = pixel_centres(40, 30, dtype=torch.float64)
    o, d = camera_rays(torch.tensor(T), torch.tensor(cam.K), uv)
    z = 2.7  # a point at camera depth z along every ray
    p_world = (o + z * d).numpy()
    p_cam = (invert_T(T) @ np.c_[p_world, np.ones(len(p_world))].T).T[:, :3]
    np.testing.assert_allclose(p_cam[:, 2], z, atol=1e-9)  # t is camera-frame depth
    np.testing.assert_allclose(cam.project(p_cam), uv.numpy(), atol=1e-9)  # and lands on its pixel
    # batched poses give the same rays
    _, d2 = camera_rays(
        torch.tensor(T)[None].expand(len(uv), 4, 4), torch.tensor(cam.K)[None].expand(len(uv), 3, 3), uv
    )
    np.testing.assert_allclose(d2.numpy(), d.numpy(), atol=1e-12)


def test_ray_box_entry_exit():
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    tn, tf, hit = ray_aabb(o, d, box, near=0.05)
    np.testing.assert_allclose(tn[:2].numpy(), [1.0, 0.05])
    np.testing.assert_allclose(tf[:2].numpy(), [2.0, 1.0])
    assert hit.tolist() == [True, True, False] and float(tf[2]) == float(tn[2])


def test_se3_exp_matches_matrix_exponential():
    rng = np.random.default_rng(0)
    xi = torch.tensor(np.vstack([rng.normal(size=(5, 6)), np.zeros((1, 6)), [[0.1, 0, 0, 1e-9, 0, 0]]]))
    twist = torch.zeros(len(xi), 4, 4, dtype=torch.float64)
    twist[:, :3, :3] = skew(xi[:, 3:])
    twist[:, :3, 3] = xi[:, :3]
    np.testing.assert_allclose(se3_exp(xi).numpy(), torch.linalg.matrix_exp(twist).numpy(), atol=1e-12)


def _smooth_field() -> SceneField:
    torch.manual_seed(0)
    conf = {"encoding": "frequency", "frequency": {"n_freqs": 3}, "trunk_width": 16, "trunk_depth": 2}
    conf.update(geo_feat_dim=8, head_width=16, dir_freqs=2, pose_feature_dim=3)
    f = SceneField(conf, [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]], n_classes=4).double()
    with torch.no_grad():
        f.trunk.out.bias[0] += 1.0  # a visibly dense field, so every output depends on the pose
    return f


def test_pose_gradients_match_finite_differences():
    field = _smooth_field()
    cam = PinholeCamera(6, 5, 5.0, 5.0, 2.5, 2.0)
    T0 = torch.tensor(T_from_R_t(R_from_rotvec(np.array([0.1, 0.3, -0.2])), np.array([0.2, -0.1, -1.5])))
    uv = pixel_centres(6, 5, dtype=torch.float64)
    K = torch.tensor(cam.K)
    edges = torch.linspace(0.3, 3.0, 33, dtype=torch.float64).expand(len(uv), 33)  # fixed samples
    gen = torch.Generator().manual_seed(1)
    coef = {
        k: torch.randn(n, generator=gen, dtype=torch.float64)
        for k, n in (("rgb", 3), ("semantic", 4), ("pose_feature", 3))
    }

    def loss(xi: torch.Tensor) -> torch.Tensor:
        o, d = camera_rays(T0 @ se3_exp(xi[None])[0], K, uv)
        r = render_rays(field, o, d, edges)
        return sum((r[k] * c).sum() for k, c in coef.items()) + r["depth"].sum() + r["acc"].sum()

    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(xi), xi)
    eps, fd = 1e-6, torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for i in range(6):
            e = torch.zeros(6, dtype=torch.float64)
            e[i] = eps
            fd[i] = (loss(e) - loss(-e)) / (2 * eps)
    assert float(grad.abs().min()) > 1e-4  # every pose direction matters here (roll least)
    np.testing.assert_allclose(grad.numpy(), fd.numpy(), rtol=1e-5, atol=1e-7)


class BoxesField(nn.Module):
    """Two opaque boxes of known classes in an empty box; background class 3 ('sky')."""

    BOXES = (([0.5, -1.0, 2.0], [1.5, 0.2, 3.0], 1), ([-1.5, -0.5, 3.0], [0.0, 1.0, 4.5], 2))

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("aabb", torch.tensor([[-3.0, -3.0, 0.0], [3.0, 3.0, 6.0]]))
        self.n_classes = 4

    def _inside(self, x):
        return [
            ((x >= torch.tensor(lo, dtype=x.dtype)) & (x <= torch.tensor(hi, dtype=x.dtype))).all(-1)
            for lo, hi, _ in self.BOXES
        ]

    def density(self, x):
        ins = self._inside(x)
        return torch.where(ins[0] | ins[1], 1e3, 0.0).to(x.dtype)

    def forward(self, x, d):
        ins = self._inside(x)
        logits = torch.zeros(x.shape[0], 4, dtype=x.dtype)
        for (_, _, k), m in zip(self.BOXES, ins, strict=True):
            logits[m, k] = 10.0
        return {"sigma": self.density(x), "rgb": torch.zeros_like(x), "semantic": logits}

    def background_values(self, d):
        sem = torch.zeros(d.shape[0], 4, dtype=d.dtype)
        sem[:, 3] = 10.0
        return {"rgb": torch.ones_like(d), "semantic": sem}


def test_semantic_rendering_of_known_scene_through_grid_sampling():
    rf = RadianceField({}, {"grid_resolution": 48, "n_importance": 48, "n_uniform": 16}, [[-3, -3, 0], [3, 3, 6]], 4)
    rf.field = BoxesField()
    rf.update_grid()  # the grid learns where the boxes are (deterministic: cell centres)
    cam = PinholeCamera(40, 30, 30.0, 30.0, 19.5, 14.5)
    T = np.eye(4)  # camera at the origin looking along +z (world = camera frame)
    with torch.no_grad():
        r = rf.render_camera(torch.tensor(T, dtype=torch.float32), torch.tensor(cam.K, dtype=torch.float32), 40, 30)
    classes = r["semantic"].argmax(-1).numpy()
    depth = (r["depth"] / r["acc"].clamp_min(1e-6)).numpy()
    # reference: first box each pixel's ray enters (slab method in float64), else the background
    uv = pixel_centres(40, 30, dtype=torch.float64)
    o, d = camera_rays(torch.eye(4, dtype=torch.float64), torch.tensor(cam.K), uv)
    ref_cls, ref_z = np.full(len(uv), 3), np.full(len(uv), np.inf)
    for lo, hi, k in BoxesField.BOXES:
        tn, _, hit = ray_aabb(o, d, torch.tensor([lo, hi], dtype=torch.float64), near=0.0)
        closer = hit.numpy() & (tn.numpy() < ref_z)
        ref_cls[closer], ref_z[closer] = k, tn.numpy()[closer]
    ref_cls, ref_z = ref_cls.reshape(30, 40), ref_z.reshape(30, 40)
    # compare away from silhouettes (all 4 neighbours of the same class)
    pad = np.pad(ref_cls, 1, mode="edge")
    same = (
        (pad[1:-1, :-2] == ref_cls)
        & (pad[1:-1, 2:] == ref_cls)
        & (pad[:-2, 1:-1] == ref_cls)
        & (pad[2:, 1:-1] == ref_cls)
    )
    assert set(np.unique(ref_cls[same])) == {1, 2, 3}  # the view shows both boxes and the sky
    np.testing.assert_array_equal(classes[same], ref_cls[same])
    hit = same & (ref_cls != 3)
    # depth within one coarse proposal bin (box length / n_coarse along the ray); most far better
    bin_z = 6.0 / rf.sampling["n_coarse"]
    assert np.abs(depth[hit] - ref_z[hit]).max() <= bin_z
    assert np.median(np.abs(depth[hit] - ref_z[hit])) <= 0.25 * bin_z
    assert float(r["acc"].numpy()[ref_cls == 3].max()) < 1e-3  # the sky is empty space


def test_hash_grid_interpolates_its_table_trilinearly():
    enc = HashGridEncoding(n_levels=3, features=2, log2_table_size=12, base_resolution=2, max_resolution=20)
    assert enc.dense.tolist() == [True, True, False]  # 3^3, 5^3 fit in 4096 entries; 21^3 does not
    torch.manual_seed(0)
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(50, 3, dtype=torch.float32)
    got = enc(x).reshape(50, 3, 2)
    table = enc.table.detach().view(3, enc.table_size, 2)
    for level in range(3):
        r = int(enc.resolution[level])
        for n in range(50):
            p = x[n].double().numpy() * r
            b = np.minimum(np.floor(p), r - 1).astype(int)
            f = p - b
            acc = np.zeros(2)
            for c in range(8):
                off = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])
                v = b + off
                if level < 2:
                    idx = v[0] + (r + 1) * (v[1] + (r + 1) * v[2])
                else:
                    idx = (int(v[0]) * 1) ^ (int(v[1]) * 2654435761) ^ (int(v[2]) * 805459861)
                idx %= enc.table_size
                wgt = np.prod(np.where(off == 1, f, 1 - f))
                acc += wgt * table[level, idx].double().numpy()
            np.testing.assert_allclose(got[n, level].detach().double().numpy(), acc, rtol=1e-4, atol=1e-5)
