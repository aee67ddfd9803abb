"""PoseMap (paper 001, PMNet): the pose features of a NeRF-P field rendered at a camera, the pose
decoder that reads a pose back from them, and the losses on them.

- ``render_posemap``: the field's ``pose_branch`` features (k per sample) rendered like colour
  (paper 001 eq. 3-4: ``F = sum_i w_i f_i``, weights of models/nerf/render.py) at the centres of the
  ``downsample x downsample`` pixel blocks of a (width x height) camera: the PoseMap "downsampled by
  16" of the paper. Rendering the block centres instead of rendering every pixel and pooling is our
  change (CPU: 1/256 of the rays); it is the stride-16 subsampling of the full-resolution map.
  Differentiable with respect to ``T_world_cam`` (the gradient of L_posemap reaches the regressor).
- ``PoseDecoder``: PoseMap (h x w x k) flattened -> MLP (paper: 1536, 256, 128) -> 12 = a 3x4 pose
  [R | t]. Its translation is in the scene box's normalised frame ((t - centre) / half the longest
  side), so its targets are O(1) in any scene; ``decode`` returns metres.
- ``posemap_cosine_loss``: 1 - cosine similarity of the k-vectors, averaged over the map's cells
  (paper 001 L_posemap: "cosine similarity loss").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .rays import camera_rays

POSEMAP_DEFAULTS: dict = {
    "feature_dim": 256,  # paper 001: C = 256
    "downsample": 16,  # paper 001: PoseMap downsampled by 16
    "decoder_hidden": [1536, 256, 128],  # paper 001: MLP (1536, 256, 128, 12)
}


def posemap_size(width: int, height: int, downsample: int) -> tuple[int, int]:
    """(w, h) of the PoseMap of a (width x height) camera: whole blocks only, at least 1 x 1."""
    return max(1, int(width) // int(downsample)), max(1, int(height) // int(downsample))


def posemap_pixels(width: int, height: int, downsample: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, 2) pixel coordinates (u, v) of the block centres, row-major: block (r, c) covers pixels
    [c s, (c+1) s) x [r s, (r+1) s) whose centre is at (c s + (s-1)/2, r s + (s-1)/2)."""
    s = int(downsample)
    w, h = posemap_size(width, height, s)
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return (torch.stack([u.reshape(-1), v.reshape(-1)], -1) * s + (s - 1) / 2.0).to(device)


def render_posemap(
    field, T_world_cam_B44: torch.Tensor, K_B33: torch.Tensor, width: int, height: int, downsample: int
) -> torch.Tensor:
    """PoseMaps (B, h*w, k) of a RadianceField with a pose branch at cameras (T_world_cam, K) of size
    (width x height) (K at that size). Deterministic sampling; differentiable w.r.t. the poses."""
    if field.field.pose_branch is None:
        raise ValueError("the field has no pose branch (pose_feature_dim 0): train NeRF-P first (nerf_p.yaml)")
    dtype = field.aabb.dtype
    uv = posemap_pixels(width, height, downsample, T_world_cam_B44.device, dtype)
    b, n = T_world_cam_B44.shape[0], uv.shape[0]
    b_idx = torch.arange(b, device=uv.device).repeat_interleave(n)
    o, d = camera_rays(T_world_cam_B44.to(dtype)[b_idx], K_B33.to(dtype)[b_idx], uv.repeat(b, 1))
    return field.render_rays(o, d)["pose_feature"].reshape(b, n, -1)


def posemap_cosine_loss(a_BNK: torch.Tensor, b_BNK: torch.Tensor) -> torch.Tensor:
    """Mean over batch and cells of 1 - cos(a, b) between the k-vectors: 0 for identical maps, in [0, 2]."""
    return (1.0 - F.cosine_similarity(a_BNK, b_BNK, dim=-1, eps=1e-8)).mean()


class PoseDecoder(nn.Module):
    """PoseMap (B, h*w, k) -> (B, 3, 4) pose [R | t] (paper 001: flatten, MLP 1536-256-128-12).

    ``aabb_23`` (scene box, metres) fixes the normalisation of the translation output."""

    def __init__(self, n_cells: int, feature_dim: int, hidden: list[int], aabb_23) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb_23, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("centre", 0.5 * (aabb[0] + aabb[1]))
        self.register_buffer("half_side", 0.5 * (aabb[1] - aabb[0]).max())
        layers: list[nn.Module] = []
        d = int(n_cells) * int(feature_dim)
        for width in hidden:
            layers += [nn.Linear(d, int(width)), nn.ReLU(inplace=True)]
            d = int(width)
        layers.append(nn.Linear(d, 12))
        self.mlp = nn.Sequential(*layers)
        self.n_cells, self.feature_dim = int(n_cells), int(feature_dim)

    def forward(self, posemap_BNK: torch.Tensor) -> torch.Tensor:
        """(B, 3, 4): rotation entries as regressed (not orthonormalised) and the NORMALISED translation."""
        return self.mlp(posemap_BNK.flatten(1)).reshape(-1, 3, 4)

    def normalise(self, T_world_cam_B44: torch.Tensor) -> torch.Tensor:
        """The decoder's target for poses T_world_cam: (B, 3, 4) [R | (t - centre) / half_side]."""
        t = (T_world_cam_B44[:, :3, 3] - self.centre) / self.half_side
        return torch.cat([T_world_cam_B44[:, :3, :3], t.unsqueeze(-1)], dim=-1)

    def decode(self, posemap_BNK: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) T_world_cam in metres; the rotation projected to SO(3) (SVD)."""
        out = self.forward(posemap_BNK)
        u, _, vh = torch.linalg.svd(out[:, :, :3])
        d = torch.sign(torch.linalg.det(u @ vh))
        R = u @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ vh
        T = torch.eye(4, dtype=out.dtype, device=out.device).repeat(out.shape[0], 1, 1)
        T[:, :3, :3] = R
        T[:, :3, 3] = out[:, :, 3] * self.half_side + self.centre
        return T
