"""PoseFormer (paper 000, "Robust Visual Localization via Semantic-Guided Multi-Scale Transformer").

Architecture (sec. 3.1), picked by name ``poseformer``:

1. MobileNetV2 (ImageNet weights that ship offline) features at 1/32, 1/16, 1/8 (1280, 96, 32
   channels), each projected to ``d_model`` = 256 channels by a 1x1 convolution.
2. Levels run coarse to fine (l = 1: 1/32, 2: 1/16, 3: 1/8). At each level after the first, the
   up-sampling block takes the previous level's output map, up-samples it bilinearly to this
   level's size (x2), applies conv3x3 + BatchNorm + ReLU and adds the projected backbone features.
3. Position-aware fusion, eq. (4)-(5): F_pe = F_up + alpha_l * PE_l with a 2-D sinusoidal code and a
   learnable scale alpha_l per level.
4. A Transformer block per level whose attention logits use cross-scale fusion, eq. (2)-(3):
   A_l = Q_l K_l^T / sqrt(d_k),  A'_l = w_{l,1} A_l + w_{l,2} A_{l-1}
   with learnable w. A_{l-1} (the previous level's fused logits, on a grid half the size) is
   brought to this level's token grid by nearest-neighbour up-sampling along both the query and
   the key axis: A_{l-1}[i, j] := A_{l-1}[parent(i), parent(j)] (the paper does not say how the
   two sizes are matched; this is the resampling that keeps each logit's meaning).
5. Dual heads (sec. 3.1.5): the finest level's tokens are averaged, embedded to 1280-d (the paper's
   head input width; it does not say how the 256-d fused feature becomes 1280-d, we use a linear
   layer + ReLU), then each head reduces 1280 -> 512 -> 128 -> 3 (xyz) or 4 (quaternion).

Loss (eq. 9-11): Kendall's learned weighting of L_x = |x0 - x|_2 and L_q = |q0 - q/|q||_2; the
trainer's ``kendall`` loss (training/losses.py) is that equation, selected in
config/models/poseformer.yaml.

The Semantic-NeRF stages (sec. 3.2, stages 2-3 of sec. 4.1) train this same network further:
PoseFormer_sem, models/apr/poseformer_sem.py and training/poseformer_sem.py.

Config keys (``model:`` section; defaults in ``DEFAULT_CONF``) are listed there with comments.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import build_backbone
from ..registry import APR_MODELS, SceneSpec
from .paper_layers import check_conf, init_pose_output, mlp_head, scaled_dot_attention_logits, sinusoidal_pe_2d

DEFAULT_CONF: dict = {
    "backbone": "mobilenet_v2",  # paper: MobileNetV2 (models/backbones.py); efficientnet_lite0 also works
    "pretrained": True,  # ImageNet weights; false = random init (tests)
    "d_model": 256,  # common projection width of the three levels (paper: 256)
    "heads": 8,  # attention heads per level (paper: not given)
    "mlp_ratio": 2,  # Transformer MLP width = mlp_ratio * d_model (paper: not given)
    "dropout": 0.1,  # dropout in the Transformer blocks and heads; 0 = off
    "fusion_init": [1.0, 0.5],  # initial (w_{l,1}, w_{l,2}) of eq. (3); both learnable
    "pe_scale_init": 1.0,  # initial alpha_l of eq. (5); learnable
    "head_dim": 1280,  # head input width (paper: 1280)
    "head_hidden": [512, 128],  # progressive reduction inside each head
}


class CrossScaleAttention(nn.Module):
    """Multi-head self-attention whose logits are fused with the previous scale's (eq. 1-3).

    ``forward(x_BND, hw, prev)`` with ``prev = (A_prev_BHMM, (h_prev, w_prev))`` or None returns
    ``(y_BND, A_fused_BHNN)``; the fused, pre-softmax logits are passed on to the next level.
    """

    def __init__(self, d: int, heads: int, dropout: float, fusion_init: tuple[float, float], first: bool) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"poseformer: d_model {d} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        # The first (coarsest) level has no A_{l-1}: only w_{1,1} would exist and it is redundant
        # with the projections, so that level uses A'_1 = A_1.
        self.fusion_w = None if first else nn.Parameter(torch.tensor(fusion_init, dtype=torch.float32))

    @staticmethod
    def parent_index(hw: tuple[int, int], prev_hw: tuple[int, int], device) -> torch.Tensor:
        """Index of each token of an (h, w) grid in the (h', w') grid it came from (nearest)."""
        (h, w), (hp, wp) = hw, prev_hw
        grid = torch.arange(hp * wp, device=device, dtype=torch.float32).view(1, 1, hp, wp)
        return F.interpolate(grid, size=(h, w), mode="nearest").flatten().long()

    def fuse(self, a_BHNN: torch.Tensor, hw: tuple[int, int], prev) -> torch.Tensor:
        """Eq. (3): A'_l = w1 * A_l + w2 * up(A_{l-1})."""
        if prev is None or self.fusion_w is None:
            return a_BHNN
        a_prev, prev_hw = prev
        idx = self.parent_index(hw, prev_hw, a_BHNN.device)
        a_up = a_prev[:, :, idx][:, :, :, idx]
        return self.fusion_w[0] * a_BHNN + self.fusion_w[1] * a_up

    def forward(self, x_BND: torch.Tensor, hw: tuple[int, int], prev=None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x_BND.shape
        q, k, v = self.qkv(x_BND).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = self.fuse(scaled_dot_attention_logits(q, k), hw, prev)
        y = (self.drop(a.softmax(dim=-1)) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y), a


class PoseFormerLevel(nn.Module):
    """One level: (up-sample previous + projected backbone) -> + alpha * PE -> Transformer block."""

    def __init__(self, c_in: int, conf: dict, first: bool) -> None:
        super().__init__()
        d = int(conf["d_model"])
        self.proj = nn.Conv2d(c_in, d, 1)
        self.up = (
            None
            if first
            else nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        )
        self.alpha = nn.Parameter(torch.tensor(float(conf["pe_scale_init"])))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CrossScaleAttention(d, int(conf["heads"]), float(conf["dropout"]), conf["fusion_init"], first)
        hidden = int(conf["mlp_ratio"] * d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(conf["dropout"]), nn.Linear(hidden, d))
        self.drop = nn.Dropout(conf["dropout"])

    def forward(self, feat_BCHW: torch.Tensor, prev_map: torch.Tensor | None, prev_attn) -> tuple:
        f = self.proj(feat_BCHW)
        b, d, h, w = f.shape
        if self.up is not None and prev_map is not None:
            f = f + self.up(F.interpolate(prev_map, size=(h, w), mode="bilinear", align_corners=False))
        f = f + self.alpha * sinusoidal_pe_2d(d, h, w, device=f.device, dtype=f.dtype)
        x = f.flatten(2).transpose(1, 2)  # (B, h*w, d), row-major
        y, a = self.attn(self.ln1(x), (h, w), prev_attn)
        x = x + self.drop(y)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x.transpose(1, 2).reshape(b, d, h, w), (a, (h, w))


class PoseFormer(nn.Module):
    """MobileNetV2 -> 3 levels of up-sampling Transformer blocks with cross-scale attention -> dual head."""

    LEVELS = (32, 16, 8)  # coarse to fine

    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        super().__init__()
        self.conf = check_conf("poseformer", cfg, DEFAULT_CONF)
        self.scenes = list(scenes or [])
        self.backbone = build_backbone(self.conf["backbone"], pretrained=bool(self.conf["pretrained"]))
        self.levels = nn.ModuleList(
            [PoseFormerLevel(self.backbone.channels[r], self.conf, first=(i == 0)) for i, r in enumerate(self.LEVELS)]
        )
        d = int(self.conf["d_model"])
        self.norm = nn.LayerNorm(d)
        hd = int(self.conf["head_dim"])
        self.embed = nn.Sequential(nn.Linear(d, hd), nn.ReLU(inplace=True), nn.Dropout(self.conf["dropout"]))
        hidden = [int(x) for x in self.conf["head_hidden"]]
        self.head_position = mlp_head(hd, hidden, 3, self.conf["dropout"])
        self.head_orientation = mlp_head(hd, hidden, 4, self.conf["dropout"])
        init_pose_output(self.head_position[-1], self.head_orientation[-1])

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(image_B3HW)
        fmap, attn = None, None
        for r, level in zip(self.LEVELS, self.levels, strict=True):
            fmap, attn = level(feats[r], fmap, attn)
        g_BD = self.norm(fmap.flatten(2).transpose(1, 2)).mean(dim=1)
        h = self.embed(g_BD)
        return {"position_B3": self.head_position(h), "quat_B4": self.head_orientation(h)}


@APR_MODELS.register("poseformer")
def build_poseformer(cfg: dict, scenes: list[SceneSpec]) -> PoseFormer:
    return PoseFormer(cfg, scenes)
