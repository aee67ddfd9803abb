"""Input encodings of the radiance field: the papers' positional (frequency) encoding and a
multi-resolution hash grid (Instant-NGP), both in plain torch (they run on CPU and CUDA).

Both take points already mapped into the field's unit cube (``[0, 1]^3``, see field.py) and are
differentiable with respect to the points (the pose gradients of the renderer flow through them).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FrequencyEncoding(nn.Module):
    """NeRF's positional encoding gamma(p) = (p, sin(2^k pi p), cos(2^k pi p)), k = 0..n_freqs-1,
    applied per coordinate to p in [-1, 1] (the unit cube is mapped to [-1, 1] here).

    Paper 000 (Semantic-NeRF) uses 10 frequencies for positions and 4 for directions."""

    def __init__(self, n_freqs: int, in_dim: int = 3, include_input: bool = True, unit_cube: bool = True) -> None:
        super().__init__()
        self.n_freqs, self.in_dim, self.include_input, self.unit_cube = int(n_freqs), in_dim, include_input, unit_cube
        self.register_buffer(
            "freqs", (2.0 ** torch.arange(self.n_freqs, dtype=torch.float32)) * math.pi, persistent=False
        )

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.n_freqs + int(self.include_input))

    def forward(self, x_N3: torch.Tensor) -> torch.Tensor:
        p = x_N3 * 2.0 - 1.0 if self.unit_cube else x_N3
        arg = (p.unsqueeze(-1) * self.freqs.to(p.dtype)).flatten(-2)  # (N, in_dim * n_freqs)
        parts = [p] if self.include_input else []
        return torch.cat(parts + [torch.sin(arg), torch.cos(arg)], dim=-1)


# Instant-NGP's spatial hash primes (the first one is 1: coherent along x)
_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding (Mueller et al. 2022), pure torch.

    ``n_levels`` grids with resolutions growing geometrically from ``base_resolution`` to
    ``max_resolution`` cells per unit-cube side; each stores ``features`` values at its vertices,
    densely while a level's vertices fit in ``2^log2_table_size`` entries, else in a hash table
    (index = xor of coordinate x prime, modulo the table size, a power of two). A point gets the trilinear
    interpolation of its cell's 8 vertices at every level; the L*F values are concatenated.
    Points outside [0, 1]^3 are clamped to it."""

    def __init__(
        self,
        n_levels: int = 16,
        features: int = 2,
        log2_table_size: int = 17,
        base_resolution: int = 16,
        max_resolution: int = 1024,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if n_levels < 1 or features < 1 or not 4 <= log2_table_size <= 30 or base_resolution < 1:
            raise ValueError("hash grid: n_levels, features, base_resolution >= 1 and log2_table_size in [4, 30]")
        if max_resolution < base_resolution:
            raise ValueError(f"hash grid: max_resolution {max_resolution} < base_resolution {base_resolution}")
        self.n_levels, self.features, self.table_size = int(n_levels), int(features), 2 ** int(log2_table_size)
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(1, n_levels - 1))
        res = [math.floor(base_resolution * growth**level) for level in range(n_levels)]
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.float32), persistent=False)
        # Per level and axis, what a vertex coordinate is multiplied by: dense levels (all vertices
        # fit in the table) use row-major strides, so no two vertices share an entry; the others
        # Instant-NGP's primes, combined by xor (the hash).
        dense = [(r + 1) ** 3 <= self.table_size for r in res]
        mult = [[1, r + 1, (r + 1) ** 2] if d else list(_PRIMES) for r, d in zip(res, dense, strict=True)]
        self.register_buffer("mult", torch.tensor(mult, dtype=torch.int64), persistent=False)  # (L, 3)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        offsets = torch.arange(self.n_levels, dtype=torch.int64) * self.table_size
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Parameter(torch.empty(n_levels * self.table_size, features).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.features

    def forward(self, x_N3: torch.Tensor) -> torch.Tensor:
        # Written per axis (2 values per axis, combined into the 8 corners by broadcasting) to keep
        # the index tensors small: on CPU this encoding is bound by memory traffic.
        n = x_N3.shape[0]
        scaled = x_N3.clamp(0.0, 1.0).unsqueeze(1) * self.resolution.to(x_N3.dtype)[None, :, None]  # (N, L, 3)
        base = torch.minimum(scaled.detach().floor(), (self.resolution - 1).to(x_N3.dtype)[None, :, None])
        frac = scaled - base  # gradients w.r.t. x flow through here
        h0 = base.long() * self.mult  # (N, L, 3)
        h = torch.stack([h0, h0 + self.mult], dim=-1)  # (N, L, 3, 2): vertex 0 / 1 along each axis
        hx, hy, hz = h[:, :, 0, :, None, None], h[:, :, 1, None, :, None], h[:, :, 2, None, None, :]
        idx = torch.where(self.dense[None, :, None, None, None], hx + hy + hz, hx ^ hy ^ hz)  # (N, L, 2, 2, 2)
        idx = (idx & (self.table_size - 1)) + self.offsets[None, :, None, None, None]
        feats = self.table.index_select(0, idx.reshape(-1)).view(n, self.n_levels, 8, self.features)
        w = torch.stack([1.0 - frac, frac], dim=-1)  # (N, L, 3, 2)
        w8 = w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]
        return (feats * w8.reshape(n, self.n_levels, 8, 1)).sum(dim=2).reshape(n, -1)
