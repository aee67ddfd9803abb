"""PMNet's APRNet (paper 001 sec. 3.1): the pose regressor that PoseMap training shapes.

The paper's APRNet is DFNet's: an ImageNet VGG-16 whose feature maps feed both the pose regression
head and the image-feature branch (L_image compares the features of a real image with those of the
image rendered at its true pose). VGG-16 ImageNet weights cannot be had offline here, so APRNet is
the PoseNet-style regressor of models/apr/posenet.py on an ImageNet EfficientNet-Lite0 (or
MobileNetV2) backbone, and its image features are the backbone's feature map at reduction
``image_feature_level`` (8 or 16). Inference is APRNet alone (the radiance field is a training-time
teacher): the artifact is an ordinary APR artifact served by ``load_localizer``.

Forward: PoseNet's outputs plus ``image_features`` (B, C, H/r, W/r), the feature map L_image uses.
"""

from __future__ import annotations

import torch

from ..registry import APR_MODELS, SceneSpec
from .posenet import DEFAULT_CONF as POSENET_CONF
from .posenet import PoseNet

DEFAULT_CONF: dict = {**POSENET_CONF, "image_feature_level": 16}


class APRNet(PoseNet):
    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        cfg = dict(cfg or {})
        level = int(cfg.pop("image_feature_level", DEFAULT_CONF["image_feature_level"]))
        super().__init__(cfg, scenes)
        if level not in (8, 16, 32):
            raise ValueError(f"pmnet: image_feature_level must be 8, 16 or 32, got {level}")
        self.conf["image_feature_level"] = level

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(image_B3HW)
        h_BD = self.dropout(self.fc(feats[32].mean(dim=(2, 3))))
        return {
            "position_B3": self.head_position(h_BD),
            "quat_B4": self.head_orientation(h_BD),
            "image_features": feats[self.conf["image_feature_level"]],
        }


@APR_MODELS.register("pmnet")
def build_pmnet(cfg: dict, scenes: list[SceneSpec]) -> APRNet:
    return APRNet(cfg, scenes)
