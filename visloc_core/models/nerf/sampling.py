"""Where to evaluate the field along a ray: a density grid that importance-samples the surfaces,
plus stratified uniform and (in training, with depth) depth-guided samples.

The grid (like Instant-NGP's occupancy grid, but used as a proposal density in the manner of
NeRF's coarse network) stores for every cell of the scene box the largest density the field showed
there lately (``update``: density at a random point of each cell, ``max(decay * old, new)``).
Per ray, ``n_coarse`` even intervals between the box entry and exit get the grid's density
(nearest cell), which gives coarse rendering weights; ``n_importance`` interval edges are drawn
from them by inverse CDF, ``n_uniform`` stratified edges keep every part of the ray visited, and
in training ``n_depth`` edges are drawn around the measured depth (Gaussian, sigma =
``depth_sigma_rel`` x depth) when a depth image exists. The sorted edges are the rendering
intervals (render.py). Sampling runs without gradients; only the field evaluations are
differentiated.
"""

from __future__ import annotations

import torch
from torch import nn

from .render import volume_weights

SAMPLING_DEFAULTS: dict = {
    "near": 0.05,  # closest depth rendered (m, camera z)
    "n_coarse": 128,  # grid lookups per ray for the proposal weights (cheap: no field evaluation)
    "n_importance": 48,  # interval edges drawn from the proposal weights
    "n_uniform": 16,  # stratified edges over [near, far]
    "n_depth": 16,  # training only, rays with measured depth: edges around it
    "depth_sigma_rel": 0.02,  # spread of the depth-guided edges, fraction of the depth
    "grid_resolution": 128,  # density-grid cells along the longest side of the box
    "grid_decay": 0.95,  # per update, old grid values decay by this before the max with the new ones
    "grid_update_every": 16,  # training steps between grid updates
    "grid_update_fraction": 0.25,  # fraction of the cells (random) re-evaluated per update
    "grid_init_density": 0.01,  # grid density (1/m) before the first update: near-uniform proposal
}


def check_sampling_conf(conf: dict | None) -> dict:
    out = dict(SAMPLING_DEFAULTS)
    for k, v in (conf or {}).items():
        if k not in SAMPLING_DEFAULTS:
            raise ValueError(f"sampling: unknown key {k!r}; known: {', '.join(SAMPLING_DEFAULTS)}")
        out[k] = v
    if int(out["n_coarse"]) < 2 or int(out["n_importance"]) + int(out["n_uniform"]) < 1:
        raise ValueError("sampling: need n_coarse >= 2 and n_importance + n_uniform >= 1")
    return out


def sample_pdf(bins_NM1: torch.Tensor, weights_NM: torch.Tensor, n: int, u_Nn: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF samples (N, n) of the piecewise-constant density ``weights`` on intervals ``bins``;
    ``u`` in [0, 1) (N, n) are the uniform draws (sorted ones give sorted samples)."""
    pdf = weights_NM + 1e-5
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], dim=-1)  # (N, M+1)
    cdf[..., -1] = 1.0
    idx = torch.searchsorted(cdf.contiguous(), u_Nn.contiguous(), right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = torch.gather(cdf, -1, idx - 1), torch.gather(cdf, -1, idx)
    b0, b1 = torch.gather(bins_NM1, -1, idx - 1), torch.gather(bins_NM1, -1, idx)
    frac = (u_Nn - c0) / (c1 - c0).clamp_min(1e-12)
    return b0 + frac.clamp(0, 1) * (b1 - b0)


def stratified(t_near_N: torch.Tensor, t_far_N: torch.Tensor, n: int, generator: torch.Generator | None):
    """n edges per ray, one uniform draw in each of n equal parts of [near, far] (the part centres
    when ``generator`` is None: deterministic rendering)."""
    k = torch.arange(n, device=t_near_N.device, dtype=t_near_N.dtype)
    if generator is None:
        u = (k + 0.5).expand(t_near_N.shape[0], n) / n
    else:
        r = torch.rand(t_near_N.shape[0], n, generator=generator, dtype=t_near_N.dtype).to(t_near_N.device)
        u = (k + r) / n
    return t_near_N.unsqueeze(-1) + u * (t_far_N - t_near_N).unsqueeze(-1)


class DensityGrid(nn.Module):
    """Max-density grid over the scene box ``aabb`` (2, 3); buffers are saved with the model."""

    def __init__(self, aabb_23, resolution: int, init_density: float = 0.01) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb_23, dtype=torch.float32).reshape(2, 3)
        ext = aabb[1] - aabb[0]
        res = torch.clamp(torch.ceil(ext / ext.max() * int(resolution)), min=2).long()
        self.register_buffer("aabb", aabb)
        self.register_buffer("res", res)
        self.register_buffer("density", torch.full(tuple(res.tolist()), float(init_density)))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))

    def cell_index(self, x_N3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index (N,) and inside-box mask (N,) of points."""
        rel = (x_N3 - self.aabb[0].to(x_N3.dtype)) / (self.aabb[1] - self.aabb[0]).to(x_N3.dtype)
        inside = ((rel >= 0) & (rel < 1)).all(-1)
        ijk = (rel * self.res.to(x_N3.dtype)).floor().long()
        ijk = torch.minimum(ijk.clamp_min(0), self.res - 1)
        return (ijk[:, 0] * self.res[1] + ijk[:, 1]) * self.res[2] + ijk[:, 2], inside

    def lookup(self, x_N3: torch.Tensor) -> torch.Tensor:
        idx, inside = self.cell_index(x_N3)
        return torch.where(inside, self.density.reshape(-1)[idx], torch.zeros_like(idx, dtype=self.density.dtype))

    @torch.no_grad()
    def update(
        self,
        density_fn,
        decay: float,
        generator: torch.Generator | None = None,
        fraction: float = 1.0,
        chunk: int = 65536,
    ) -> None:
        """For a random ``fraction`` of the cells (all when 1 or without ``generator``):
        density <- max(decay * density, density_fn(a random point of the cell))."""
        n_cells = self.density.numel()
        if generator is not None and fraction < 1.0:
            cells = torch.randperm(n_cells, generator=generator)[: max(1, round(fraction * n_cells))]
        else:
            cells = torch.arange(n_cells)
        r = self.res.cpu()
        ijk = torch.stack([cells // (r[1] * r[2]), (cells // r[2]) % r[1], cells % r[2]], dim=-1)
        jitter = torch.rand(ijk.shape, generator=generator) if generator is not None else torch.full(ijk.shape, 0.5)
        size = (self.aabb[1] - self.aabb[0]).cpu() / r
        pts = self.aabb[0].cpu() + (ijk + jitter) * size
        new = torch.cat([density_fn(p.to(self.aabb.device)).float() for p in pts.split(chunk)])
        flat = self.density.view(-1)
        cells = cells.to(flat.device)
        flat[cells] = torch.maximum(flat[cells] * decay, new)
        self.n_updates += 1

    @torch.no_grad()
    def sample_bins(
        self,
        origins_N3: torch.Tensor,
        dirs_N3: torch.Tensor,
        t_near_N: torch.Tensor,
        t_far_N: torch.Tensor,
        conf: dict,
        generator: torch.Generator | None = None,
        depth_N: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sorted interval edges (N, S+1) from near to far (see the module docstring)."""
        n_c = int(conf["n_coarse"])
        coarse = torch.linspace(0, 1, n_c + 1, device=origins_N3.device, dtype=origins_N3.dtype)
        coarse = t_near_N.unsqueeze(-1) + coarse * (t_far_N - t_near_N).unsqueeze(-1)  # (N, n_c+1)
        mid = 0.5 * (coarse[:, 1:] + coarse[:, :-1])
        pts = origins_N3.unsqueeze(1) + mid.unsqueeze(-1) * dirs_N3.unsqueeze(1)
        sigma = self.lookup(pts.reshape(-1, 3)).reshape(mid.shape).to(origins_N3.dtype)
        delta = (coarse[:, 1:] - coarse[:, :-1]) * dirs_N3.norm(dim=-1, keepdim=True)
        w, _ = volume_weights(sigma, delta)
        edges = [t_near_N.unsqueeze(-1), t_far_N.unsqueeze(-1)]
        n_imp = int(conf["n_importance"])
        if n_imp > 0:
            u = stratified(torch.zeros_like(t_near_N), torch.ones_like(t_near_N), n_imp, generator)
            edges.append(sample_pdf(coarse, w, n_imp, u))
        if int(conf["n_uniform"]) > 0:
            edges.append(stratified(t_near_N, t_far_N, int(conf["n_uniform"]), generator))
        n_d = int(conf.get("n_depth", 0))
        if depth_N is not None and n_d > 0 and generator is not None:
            z = torch.randn(depth_N.shape[0], n_d, generator=generator, dtype=origins_N3.dtype).to(origins_N3.device)
            d = depth_N.unsqueeze(-1)
            t_d = d + z * float(conf["depth_sigma_rel"]) * d
            valid = (d > 0).expand_as(t_d)
            # rays without a measured depth get their extra edges spread uniformly instead
            t_u = stratified(t_near_N, t_far_N, n_d, generator)
            edges.append(torch.where(valid, t_d, t_u))
        t = torch.cat(edges, dim=-1)
        t = torch.minimum(torch.maximum(t, t_near_N.unsqueeze(-1)), t_far_N.unsqueeze(-1))
        return torch.sort(t, dim=-1).values
