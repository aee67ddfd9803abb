"""Building blocks shared by the paper models (PoseFormer, HyperPose, MS-HyperPose, MVL-Loc).

Conventions: quaternions are (w, x, y, z) (log/exp maps live in geometry/torch_ops); token tensors are ``x_BND`` (batch, tokens, channels);
feature maps are ``f_BCHW``. Nothing here holds state beyond ``nn.Module`` parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


# ----------------------------------------------------------------------------- position codes
def sinusoidal_pe_2d(d: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """2-D sinusoidal position code, (d, h, w): first half of the channels encodes the row, second the column.

    Within each half, channel c uses sin(p / 10000^(2i/d_half)) for even c = 2i and cos(.) for odd
    c = 2i + 1 (PoseFormer eq. 4; the 2-D split follows DETR). ``d`` must be a multiple of 4.
    """
    if d % 4:
        raise ValueError(f"sinusoidal_pe_2d: channel count {d} must be a multiple of 4")
    half = d // 2
    i = torch.arange(half // 2, device=device, dtype=torch.float64)
    freq = 1.0 / (10000.0 ** (2 * i / half))  # (half/2,)

    def code(n: int) -> torch.Tensor:
        p = torch.arange(n, device=device, dtype=torch.float64)[:, None] * freq[None]  # (n, half/2)
        return torch.stack([p.sin(), p.cos()], dim=-1).reshape(n, half)  # interleave sin, cos

    rows = code(h).T[:, :, None].expand(half, h, w)
    cols = code(w).T[:, None, :].expand(half, h, w)
    return torch.cat([rows, cols], dim=0).to(dtype)


def sinusoidal_pe_1d(d: int, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """1-D sinusoidal position code, (n, d): channel 2i = sin(p / 10000^(2i/d)), 2i + 1 = cos(.)
    (Vaswani et al.), for token sequences such as the words of a description. ``d`` must be even."""
    if d % 2:
        raise ValueError(f"sinusoidal_pe_1d: channel count {d} must be even")
    i = torch.arange(d // 2, device=device, dtype=torch.float64)
    p = torch.arange(n, device=device, dtype=torch.float64)[:, None] / (10000.0 ** (2 * i / d))[None]
    return torch.stack([p.sin(), p.cos()], dim=-1).reshape(n, d).to(dtype)


class LearnedPosEmbedding2d(nn.Module):
    """Learned 2-D position embedding (row and column tables, concatenated), as in MS-Transformer / DETR."""

    def __init__(self, d: int, max_hw: int = 64) -> None:
        super().__init__()
        if d % 2:
            raise ValueError(f"LearnedPosEmbedding2d: d={d} must be even")
        self.row = nn.Embedding(max_hw, d // 2)
        self.col = nn.Embedding(max_hw, d // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)
        self.max_hw = max_hw

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(h*w, d) codes for a row-major h x w grid."""
        if h > self.max_hw or w > self.max_hw:
            raise ValueError(
                f"feature map {h}x{w} exceeds the learned position table ({self.max_hw}); "
                "use a smaller image or a larger pos_max_hw"
            )
        r = self.row.weight[:h][:, None, :].expand(h, w, -1)
        c = self.col.weight[:w][None, :, :].expand(h, w, -1)
        return torch.cat([r, c], dim=-1).reshape(h * w, -1)


# --------------------------------------------------------------------------- hypernetworks
class HyperLayerGenerator(nn.Module):
    """Hypernetwork branch for one layer: FC + Swish, then a linear map to that layer's weights.

    ``forward(z_BE)`` returns ``(W_BOI, b_BO)``: per-sample weights of a linear layer I -> O
    (HyperPose sec. 3.1). The generator's output bias starts at a Xavier-initialised weight
    (and zero bias) and its output weights near zero, so the generated layer starts as an
    ordinary well-scaled linear layer and learns an image-dependent correction.
    """

    def __init__(self, in_dim: int, hidden_dim: int, layer_in: int, layer_out: int, init_std: float = 1e-3) -> None:
        super().__init__()
        self.layer_in, self.layer_out = layer_in, layer_out
        self.fc = nn.Linear(in_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, layer_out * (layer_in + 1))
        nn.init.normal_(self.out.weight, std=init_std)
        w0 = torch.empty(layer_out, layer_in)
        nn.init.xavier_uniform_(w0)
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([w0, torch.zeros(layer_out, 1)], dim=1).flatten())

    def forward(self, z_BE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.out(F.silu(self.fc(z_BE))).view(-1, self.layer_out, self.layer_in + 1)
        return theta[..., :-1], theta[..., -1]


def hyper_mlp(x_BI: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Run per-sample generated linear layers; Swish between layers (none after the last)."""
    for k, (w_BOI, b_BO) in enumerate(layers):
        x_BI = torch.einsum("boi,bi->bo", w_BOI, x_BI) + b_BO
        if k < len(layers) - 1:
            x_BI = F.silu(x_BI)
    return x_BI


# ----------------------------------------------------------------------- transformer layers
class _MLP(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float, act: str = "silu") -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[act]
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PosEncoderLayer(nn.Module):
    """Pre-LN Transformer encoder layer; the position code is added to queries and keys at every
    attention layer (MS-Transformer, after DETR). MLP with Swish, dropout on both residuals."""

    def __init__(self, d: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = _MLP(d, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x_BND: torch.Tensor, pos_ND: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x_BND)
        qk = h + pos_ND
        x_BND = x_BND + self.drop(self.attn(qk, qk, h, need_weights=False)[0])
        return x_BND + self.drop(self.mlp(self.ln2(x_BND)))


class PosDecoderLayer(nn.Module):
    """Pre-LN Transformer decoder layer: self-attention among queries, cross-attention to the
    memory (position codes added to queries and keys), MLP (``mlp_dim`` 0 = no MLP)."""

    def __init__(self, d: int, heads: int, mlp_dim: int, dropout: float, act: str = "silu") -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = _MLP(d, mlp_dim, dropout, act) if mlp_dim > 0 else None
        self.ln3 = nn.LayerNorm(d) if mlp_dim > 0 else None
        self.drop = nn.Dropout(dropout)

    def forward(
        self, t_BSD: torch.Tensor, query_pos_SD: torch.Tensor, mem_BND: torch.Tensor, mem_pos_ND: torch.Tensor
    ) -> torch.Tensor:
        h = self.ln1(t_BSD)
        q = h + query_pos_SD
        t_BSD = t_BSD + self.drop(self.self_attn(q, q, h, need_weights=False)[0])
        h = self.ln2(t_BSD)
        t_BSD = t_BSD + self.drop(
            self.cross_attn(h + query_pos_SD, mem_BND + mem_pos_ND, mem_BND, need_weights=False)[0]
        )
        if self.mlp is not None:
            t_BSD = t_BSD + self.drop(self.mlp(self.ln3(t_BSD)))
        return t_BSD


def mlp_head(
    d_in: int, dims: list[int], d_out: int, dropout: float = 0.0, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Linear -> act -> dropout ... -> Linear(d_out): a progressive-reduction regression head."""
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(d_in, d), act(), nn.Dropout(dropout)]
        d_in = d
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def init_pose_output(position: nn.Linear | None, orientation: nn.Linear | None, identity_w: float = 1.0) -> None:
    """Start the regressors at the mean pose: position 0 (normalised), identity quaternion (w=identity_w)."""
    for lin in (position, orientation):
        if lin is not None:
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.zeros_(lin.bias)
    if orientation is not None and orientation.out_features == 4:
        with torch.no_grad():
            orientation.bias[0] = identity_w


def truncate_backbone(backbone: nn.Module, max_reduction: int) -> nn.Module:
    """Drop the layers of a models/backbones.py backbone past ``max_reduction`` (8 or 16) when a
    model uses only the earlier endpoints (MS-HyperPose): they would cost time and parameters for
    nothing. Outputs at reductions above ``max_reduction`` are then meaningless and must not be used."""
    if max_reduction >= 32:
        return backbone
    name = type(backbone).__name__
    tap = backbone._TAP[max_reduction]
    if name == "EfficientNetLite0":
        backbone._blocks = backbone._blocks[: tap + 1]
        # extract() still applies head conv + BN to the last block: make them identities (no params).
        backbone._conv_head, backbone._bn1, backbone._fc = nn.Identity(), nn.Identity(), nn.Identity()
    elif name == "MobileNetV2":
        backbone.features = backbone.features[: tap + 1]
        backbone.classifier = nn.Identity()
    else:
        raise ValueError(f"truncate_backbone: unsupported backbone {name}")
    backbone.channels = {r: c for r, c in backbone.channels.items() if r <= max_reduction}
    return backbone


def check_conf(model: str, cfg: dict | None, defaults: dict) -> dict:
    """Merge a ``model:`` config over defaults; unknown keys are an error naming the known ones."""
    unknown = set(cfg or {}) - set(defaults) - {"name"}
    if unknown:
        raise ValueError(f"{model}: unknown model options {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(cfg or {})}


def scaled_dot_attention_logits(q_BHND: torch.Tensor, k_BHMD: torch.Tensor) -> torch.Tensor:
    """A = Q K^T / sqrt(d_k), (B, heads, N, M)."""
    return q_BHND @ k_BHMD.transpose(-1, -2) / math.sqrt(q_BHND.shape[-1])
