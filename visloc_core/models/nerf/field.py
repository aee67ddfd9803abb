"""The scene radiance field: density, view-dependent colour, position-only semantic logits and an
optional pose-feature branch (paper 001's NeRF-P), plus a background for rays that leave the scene.

Architecture (``FIELD_DEFAULTS``; names are parameter-name prefixes, so trainers can freeze parts):

- ``encoding``: the point, mapped into the unit cube of the scene box, through a hash grid
  (``hash_grid``) or NeRF's positional encoding (``frequency``, 10 frequencies: Semantic-NeRF,
  the paper 000 field);
- ``trunk``: MLP (``trunk_width`` x ``trunk_depth``, ReLU, optional skip connections re-injecting the
  encoding) -> ``density_raw`` (1) and a geometry feature (``geo_feat_dim``); density
  ``sigma = softplus(density_raw)`` per metre;
- ``rgb_head``: (geometry feature, encoded view direction) -> RGB in [0, 1] (view-dependent);
- ``semantic_head``: geometry feature -> class logits. It never sees the direction: semantics depend
  on the position only (paper 000 eq. 6);
- ``pose_branch`` (only with ``pose_feature_dim`` > 0): geometry feature -> k-dim pose feature,
  rendered like colour (paper 001 eq. 3-4, "an MLP encoder after the static branch"). Paper 001
  trains it after the rest, with everything else frozen: freeze every prefix but ``pose_branch.``;
- ``background`` (``background: true``): encoded direction -> RGB and class logits of what lies
  beyond the scene box (sky), composited with the transmittance left at the box exit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .encoding import FrequencyEncoding, HashGridEncoding

FIELD_DEFAULTS: dict = {
    "encoding": "hash_grid",  # hash_grid | frequency
    "hash_grid": {  # Instant-NGP's defaults except a smaller table (CPU memory and Adam time)
        "n_levels": 16,
        "features": 2,
        "log2_table_size": 17,
        "base_resolution": 16,
        "max_resolution": 1024,  # finest cells per side of the scene cube
    },
    "frequency": {"n_freqs": 10},  # NeRF / Semantic-NeRF: 10 for positions
    "dir_freqs": 4,  # NeRF / Semantic-NeRF: 4 for directions
    "trunk_width": 64,  # Semantic-NeRF: 256
    "trunk_depth": 2,  # Semantic-NeRF: 8
    "trunk_skips": [],  # layer indices that re-inject the encoding (Semantic-NeRF: [4])
    "geo_feat_dim": 15,  # geometry feature passed to the heads (Semantic-NeRF: 256)
    "head_width": 64,  # hidden width of the colour / semantic / pose / background heads (Semantic-NeRF: 128)
    "pose_feature_dim": 0,  # k of paper 001's pose-feature branch; 0 = no branch
    "background": True,  # model what lies outside the box (sky) as a function of direction
    # (the trainer also takes "auto": on when some training pixels have no measured depth)
}


def check_field_conf(conf: dict | None) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in FIELD_DEFAULTS.items()}
    for k, v in (conf or {}).items():
        if k not in FIELD_DEFAULTS:
            raise ValueError(f"field: unknown key {k!r}; known: {', '.join(FIELD_DEFAULTS)}")
        if isinstance(FIELD_DEFAULTS[k], dict):
            unknown = set(v or {}) - set(FIELD_DEFAULTS[k])
            if unknown:
                raise ValueError(f"field.{k}: unknown keys {sorted(unknown)}; known: {', '.join(FIELD_DEFAULTS[k])}")
            out[k].update(v or {})
        else:
            out[k] = v
    if out["encoding"] not in ("hash_grid", "frequency"):
        raise ValueError(f"field.encoding must be hash_grid or frequency, got {out['encoding']!r}")
    return out


def _mlp(d_in: int, width: int, d_out: int, hidden_layers: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class Trunk(nn.Module):
    """ReLU MLP with optional skip connections (the encoding concatenated again before layer i)."""

    def __init__(self, d_in: int, width: int, depth: int, skips: list[int], d_out: int) -> None:
        super().__init__()
        self.skips = set(int(s) for s in skips)
        layers, d = [], d_in
        for i in range(depth):
            layers.append(nn.Linear(d + (d_in if i in self.skips else 0), width))
            d = width
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(d, d_out)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        h = enc
        for i, layer in enumerate(self.layers):
            if i in self.skips:
                h = torch.cat([h, enc], dim=-1)
            h = F.relu(layer(h))
        return self.out(h)


class SceneField(nn.Module):
    """``forward(x_N3, d_N3)`` -> {sigma_N, rgb_N3, semantic_NC[, pose_feature_NK]} for world points
    ``x`` (metres) and ray directions ``d`` (any length); ``density(x_N3)`` -> sigma_N.

    ``aabb_23`` = [[min xyz], [max xyz]] (metres, world frame) is the scene box; points are mapped
    into the unit cube of the box's bounding CUBE (cells stay cubic in anisotropic scenes)."""

    def __init__(self, conf: dict | None, aabb_23, n_classes: int) -> None:
        super().__init__()
        self.conf = check_field_conf(conf)
        c = self.conf
        aabb = torch.as_tensor(aabb_23, dtype=torch.float32).reshape(2, 3)
        if not torch.all(aabb[1] > aabb[0]):
            raise ValueError(f"field: scene box must have min < max per axis, got {aabb.tolist()}")
        self.register_buffer("aabb", aabb)
        self.n_classes = int(n_classes)
        if c["encoding"] == "hash_grid":
            self.encoding = HashGridEncoding(**c["hash_grid"])
        else:
            self.encoding = FrequencyEncoding(int(c["frequency"]["n_freqs"]))
        self.dir_encoding = FrequencyEncoding(int(c["dir_freqs"]), unit_cube=False)
        g = int(c["geo_feat_dim"])
        self.trunk = Trunk(self.encoding.out_dim, int(c["trunk_width"]), int(c["trunk_depth"]), c["trunk_skips"], 1 + g)
        w = int(c["head_width"])
        self.rgb_head = _mlp(g + self.dir_encoding.out_dim, w, 3)
        self.semantic_head = _mlp(g, w, self.n_classes) if self.n_classes > 0 else None
        k = int(c["pose_feature_dim"])
        self.pose_branch = _mlp(g, w, k) if k > 0 else None
        if c["background"] not in (True, False):
            raise ValueError(f"field.background must be true or false here, got {c['background']!r}")
        self.background = _mlp(self.dir_encoding.out_dim, w, 3 + self.n_classes) if c["background"] else None

    @property
    def pose_feature_dim(self) -> int:
        return int(self.conf["pose_feature_dim"])

    def to_unit(self, x_N3: torch.Tensor) -> torch.Tensor:
        centre = 0.5 * (self.aabb[0] + self.aabb[1])
        side = (self.aabb[1] - self.aabb[0]).max()
        return (x_N3 - centre.to(x_N3.dtype)) / side.to(x_N3.dtype) + 0.5

    def _trunk(self, x_N3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.encoding(self.to_unit(x_N3)))
        return F.softplus(h[..., 0]), h[..., 1:]

    def density(self, x_N3: torch.Tensor) -> torch.Tensor:
        return self._trunk(x_N3)[0]

    @staticmethod
    def unit(d_N3: torch.Tensor) -> torch.Tensor:
        return d_N3 / d_N3.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, x_N3: torch.Tensor, d_N3: torch.Tensor) -> dict[str, torch.Tensor]:
        sigma, geo = self._trunk(x_N3)
        out = {
            "sigma": sigma,
            "rgb": torch.sigmoid(self.rgb_head(torch.cat([geo, self.dir_encoding(self.unit(d_N3))], dim=-1))),
        }
        if self.semantic_head is not None:
            out["semantic"] = self.semantic_head(geo)
        if self.pose_branch is not None:
            out["pose_feature"] = self.pose_branch(geo)
        return out

    def background_values(self, d_N3: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """RGB (N, 3) and class logits (N, C) of what lies beyond the box along unit(d); None if off."""
        if self.background is None:
            return None
        h = self.background(self.dir_encoding(self.unit(d_N3)))
        return {"rgb": torch.sigmoid(h[..., :3]), "semantic": h[..., 3:]}
