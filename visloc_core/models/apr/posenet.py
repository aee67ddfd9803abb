"""PoseNet-style baseline: CNN backbone, global average pooling, FC, separate pose heads.

Kendall et al. (PoseNet, ICCV 2015; "Geometric loss functions", CVPR 2017) with a modern mobile
backbone instead of GoogLeNet (no GoogLeNet ImageNet weights ship offline; see
config/models/posenet.yaml). Trained with the learned-weight loss (training/losses.py).

Config keys (``model:`` section of the YAML; defaults in ``DEFAULT_CONF``)::

    backbone: efficientnet_lite0   # or mobilenet_v2 (models/backbones.py)
    pretrained: true               # ImageNet weights; false = random init
    feature_dim: 1024              # width of the FC layer after pooling (0 = no FC layer)
    dropout: 0.3                   # dropout before the heads (0 = off)

Forward contract (models/registry.py): ``forward(image_B3HW, scene_id_B=None)`` returns
``position_B3`` (normalised position; the trainer undoes per-scene normalisation) and
``quat_B4`` (w, x, y, z), not unit norm. Single-scene: ``scene_id_B`` is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import build_backbone
from ..registry import APR_MODELS, SceneSpec

DEFAULT_CONF: dict = {
    "backbone": "efficientnet_lite0",  # feature extractor name (models/backbones.py)
    "pretrained": True,  # load ImageNet weights; false = random init
    "feature_dim": 1024,  # FC width after global average pooling; 0 = heads on the pooled features
    "dropout": 0.3,  # dropout rate before the heads; 0 = off
}


class PoseNet(nn.Module):
    """Backbone -> GAP (reduction 32) -> FC + ReLU -> dropout -> position (3) and quaternion (4) heads."""

    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        super().__init__()
        unknown = set(cfg or {}) - set(DEFAULT_CONF) - {"name"}
        if unknown:
            raise ValueError(f"posenet: unknown model options {sorted(unknown)}; known: {sorted(DEFAULT_CONF)}")
        self.conf = {**DEFAULT_CONF, **(cfg or {})}
        self.scenes = list(scenes or [])
        self.backbone = build_backbone(self.conf["backbone"], pretrained=bool(self.conf["pretrained"]))
        c = self.backbone.channels[32]
        d = int(self.conf["feature_dim"])
        self.fc = nn.Sequential(nn.Linear(c, d), nn.ReLU(inplace=True)) if d > 0 else nn.Identity()
        d = d if d > 0 else c
        self.dropout = nn.Dropout(float(self.conf["dropout"]))
        self.head_position = nn.Linear(d, 3)
        self.head_orientation = nn.Linear(d, 4)
        # Start at the mean pose: position 0 (normalised), identity rotation; small weights so the
        # first updates are not dominated by random head outputs.
        for head in (self.head_position, self.head_orientation):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.head_orientation.bias[0] = 1.0

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feat_BC = self.backbone(image_B3HW)[32].mean(dim=(2, 3))
        h_BD = self.dropout(self.fc(feat_BC))
        return {"position_B3": self.head_position(h_BD), "quat_B4": self.head_orientation(h_BD)}


@APR_MODELS.register("posenet")
def build_posenet(cfg: dict, scenes: list[SceneSpec]) -> PoseNet:
    return PoseNet(cfg, scenes)
