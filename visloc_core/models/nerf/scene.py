"""``RadianceField``: the field, its density grid and sampling settings, rendered at any camera.

This is what a trained NeRF artifact holds (artifact.py) and what the training stages of
PoseFormer_sem (paper 000) and PMNet (paper 001) render through. Every render function is
differentiable with respect to the camera pose ``T_world_cam`` (torch, (4, 4) or (B, 4, 4)):
gradients flow through the ray origins and directions into the field evaluations.

Conventions: see rays.py (T_world_cam, OpenCV camera, t = camera-frame depth). Rendered ``depth``
maps are camera-frame z in metres, as the dataset's depth images.
"""

from __future__ import annotations

import torch
from torch import nn

from .field import SceneField
from .rays import camera_rays, pixel_centres, ray_aabb
from .render import render_rays
from .sampling import DensityGrid, check_sampling_conf


class RadianceField(nn.Module):
    def __init__(self, field_conf: dict | None, sampling_conf: dict | None, aabb_23, n_classes: int) -> None:
        super().__init__()
        self.sampling = check_sampling_conf(sampling_conf)
        self.field = SceneField(field_conf, aabb_23, n_classes)
        self.grid = DensityGrid(
            aabb_23, int(self.sampling["grid_resolution"]), float(self.sampling["grid_init_density"])
        )

    @property
    def n_classes(self) -> int:
        return self.field.n_classes

    @property
    def aabb(self) -> torch.Tensor:
        return self.field.aabb

    def update_grid(self, generator: torch.Generator | None = None) -> None:
        self.grid.update(
            self.field.density,
            float(self.sampling["grid_decay"]),
            generator,
            float(self.sampling["grid_update_fraction"]),
        )

    def render_rays(
        self,
        origins_N3: torch.Tensor,
        dirs_N3: torch.Tensor,
        generator: torch.Generator | None = None,
        depth_N: torch.Tensor | None = None,
    ) -> dict:
        """Render rays (see render.render_rays for the outputs). ``generator`` set = stochastic
        (training) sampling, None = deterministic; ``depth_N`` (metres, 0 = unknown) adds
        depth-guided samples in training. Outputs also hold ``t_far`` (N,), the box exit."""
        with torch.no_grad():
            o, d = origins_N3.detach(), dirs_N3.detach()
            t_near, t_far, _ = ray_aabb(o, d, self.aabb.to(o.dtype), float(self.sampling["near"]))
            bins = self.grid.sample_bins(o, d, t_near, t_far, self.sampling, generator, depth_N)
        out = render_rays(self.field, origins_N3, dirs_N3, bins)
        out["t_far"] = t_far
        return out

    def render_camera(
        self,
        T_world_cam_44: torch.Tensor,
        K_33: torch.Tensor,
        width: int,
        height: int,
        chunk: int = 8192,
        keys: tuple[str, ...] = ("rgb", "semantic", "depth", "acc", "pose_feature"),
    ) -> dict[str, torch.Tensor]:
        """Render a whole (height x width) image for one camera; returns (H, W, ...) tensors of the
        requested keys that exist (``depth`` and ``acc`` are (H, W)). Deterministic sampling.
        Call under ``torch.no_grad()`` unless pose gradients are wanted (memory grows with H*W)."""
        dtype = self.aabb.dtype if T_world_cam_44.dtype != torch.float64 else torch.float64
        uv = pixel_centres(width, height, device=T_world_cam_44.device, dtype=dtype)
        o, d = camera_rays(T_world_cam_44.to(dtype), K_33.to(dtype), uv)
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, uv.shape[0], chunk):
            r = self.render_rays(o[i : i + chunk], d[i : i + chunk])
            for k in keys:
                if k in r:
                    parts.setdefault(k, []).append(r[k])
        return {k: torch.cat(v).reshape(height, width, *v[0].shape[1:]) for k, v in parts.items()}
