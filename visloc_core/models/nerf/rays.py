"""Camera rays in visloc's conventions, differentiable with respect to the pose.

Conventions (visloc_core/geometry): ``T_world_cam`` maps camera-frame points to the world; the
camera frame is OpenCV's optical frame (x right, y down, z forward); pixel (u, v) has its origin
at the CENTRE of the top-left pixel, so pixel centres are integers.

A ray is ``x(t) = o + t d`` with ``o`` the camera centre and ``d = R_world_cam @ ((u - cx)/fx,
(v - cy)/fy, 1)``: ``d`` is NOT unit length, its camera-frame z is 1, so the ray parameter ``t`` is
the camera-frame depth z of the point (the quantity a depth image stores). Metric lengths along
the ray are ``t * |d|``.
"""

from __future__ import annotations

import torch


def pixel_centres(width: int, height: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H*W, 2) pixel centres (u, v), row-major (v slow, u fast)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def camera_rays(
    T_world_cam_N44: torch.Tensor, K_N33: torch.Tensor, uv_N2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixels ``uv`` of cameras with poses ``T_world_cam`` and intrinsics ``K``.

    Shapes broadcast over the leading dimension: one pose/intrinsics per ray (N, 4, 4) / (N, 3, 3),
    or a single one (4, 4) / (3, 3) for all rays. Returns world-frame origins (N, 3) and directions
    (N, 3) with camera-frame z = 1 (see the module docstring). Gradients flow to the pose."""
    K = K_N33
    fx, fy, cx, cy = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]
    x = (uv_N2[..., 0] - cx) / fx
    y = (uv_N2[..., 1] - cy) / fy
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (N, 3)
    R = T_world_cam_N44[..., :3, :3]
    d_world = (R @ d_cam.unsqueeze(-1)).squeeze(-1) if R.dim() == 3 else d_cam @ R.transpose(-1, -2)
    o = T_world_cam_N44[..., :3, 3]
    return o.expand_as(d_world), d_world


def ray_aabb(
    origins_N3: torch.Tensor, dirs_N3: torch.Tensor, aabb_23: torch.Tensor, near: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry and exit ``t`` of rays in the box ``aabb`` = [[min xyz], [max xyz]] (slab method),
    entry clamped to >= ``near``. Returns (t_near (N,), t_far (N,), hit (N,) bool); for rays that
    miss, t_far = t_near (an empty interval)."""
    inv = 1.0 / torch.where(dirs_N3.abs() < 1e-12, torch.full_like(dirs_N3, 1e-12), dirs_N3)
    t0 = (aabb_23[0] - origins_N3) * inv
    t1 = (aabb_23[1] - origins_N3) * inv
    t_enter = torch.minimum(t0, t1).amax(dim=-1).clamp_min(near)
    t_exit = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_exit > t_enter
    return t_enter, torch.where(hit, t_exit, t_enter), hit
