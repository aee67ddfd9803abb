"""HyperPose on the baseline APR (paper 002, sec. 3.1.1, Fig. 1b), picked by name ``hyperpose``.

Main network (Fig. 1a): CNN backbone -> global average pooling (1280-d) -> FC 1024 + ReLU ->
dropout -> position (3) and orientation (4) heads.

Hypernetwork (sec. 3.1.1): the same pooled backbone vector goes through, per branch, a linear
projection, one FC layer + Swish, and a linear map that outputs the weights (and bias) of one
regression layer: ``hyper_dim_t`` (256) -> 3 for position, ``hyper_dim_rot`` (512) -> 4 for
orientation. That generated layer is applied to a second projection of the backbone vector; the
pose is the sum of the main network's and the generated heads' outputs (as in MS-HyperPose,
sec. 3.1.2: "summing the outputs of the main network and hypernetwork").

Loss (eq. 3-5): Kendall's learned weighting of L_x = |x0 - x|_2 and L_q = |q0 - q/|q||_2, the
trainer's ``kendall`` loss (config/models/hyperpose.yaml).

Substitution (explicit in config/models/hyperpose.yaml and docs/models.md): the paper's backbone is
ImageNet EfficientNet-B0; no B0 weights install offline here, so ``efficientnet_lite0`` (ImageNet
EfficientNet-Lite0, same 1280-d head width) replaces it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import build_backbone
from ..registry import APR_MODELS, SceneSpec
from .paper_layers import HyperLayerGenerator, check_conf, hyper_mlp, init_pose_output

DEFAULT_CONF: dict = {
    "backbone": "efficientnet_lite0",  # paper: EfficientNet-B0 (not available offline; Lite0 substitutes)
    "pretrained": True,  # ImageNet weights; false = random init (tests)
    "feature_dim": 1024,  # main network FC width after pooling (paper: 1024)
    "dropout": 0.1,  # dropout before the main heads (paper code: 0.1); 0 = off
    "hyper_dim_t": 256,  # width of the generated position layer's input (paper: 256)
    "hyper_dim_rot": 512,  # width of the generated orientation layer's input (paper: 512)
    "use_hypernet": True,  # false = the plain baseline APR of Fig. 1a (ablation)
}


class HyperPose(nn.Module):
    """Baseline APR whose regression heads are augmented by hypernetwork-generated layers."""

    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        super().__init__()
        self.conf = check_conf("hyperpose", cfg, DEFAULT_CONF)
        self.scenes = list(scenes or [])
        self.backbone = build_backbone(self.conf["backbone"], pretrained=bool(self.conf["pretrained"]))
        c = self.backbone.channels[32]
        d = int(self.conf["feature_dim"])
        self.fc = nn.Sequential(nn.Linear(c, d), nn.ReLU(inplace=True), nn.Dropout(float(self.conf["dropout"])))
        self.head_position = nn.Linear(d, 3)
        self.head_orientation = nn.Linear(d, 4)
        init_pose_output(self.head_position, self.head_orientation)
        self.use_hypernet = bool(self.conf["use_hypernet"])
        if self.use_hypernet:
            ht, hr = int(self.conf["hyper_dim_t"]), int(self.conf["hyper_dim_rot"])
            # Projections of the backbone vector: one feeds the generator, one is the generated layer's input.
            self.hyper_proj_t, self.hyper_in_t = nn.Linear(c, ht), nn.Linear(c, ht)
            self.hyper_proj_rot, self.hyper_in_rot = nn.Linear(c, hr), nn.Linear(c, hr)
            self.gen_t = HyperLayerGenerator(ht, ht, ht, 3)
            self.gen_rot = HyperLayerGenerator(hr, hr, hr, 4)
            # The sum starts at the main heads' mean pose: generated layers start near zero output.
            for gen in (self.gen_t, self.gen_rot):
                with torch.no_grad():
                    gen.out.bias.mul_(1e-2)

    def generated_weights(self, feat_BC: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-image regression-layer weights from the hypernetwork: {'t': (W_B3I, b_B3), 'rot': (W_B4I, b_B4)}."""
        return {"t": self.gen_t(self.hyper_proj_t(feat_BC)), "rot": self.gen_rot(self.hyper_proj_rot(feat_BC))}

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feat_BC = self.backbone(image_B3HW)[32].mean(dim=(2, 3))
        h = self.fc(feat_BC)
        pos, quat = self.head_position(h), self.head_orientation(h)
        if self.use_hypernet:
            w = self.generated_weights(feat_BC)
            pos = pos + hyper_mlp(self.hyper_in_t(feat_BC), [w["t"]])
            quat = quat + hyper_mlp(self.hyper_in_rot(feat_BC), [w["rot"]])
        return {"position_B3": pos, "quat_B4": quat}


@APR_MODELS.register("hyperpose")
def build_hyperpose(cfg: dict, scenes: list[SceneSpec]) -> HyperPose:
    return HyperPose(cfg, scenes)
