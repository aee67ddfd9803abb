"""MS-HyperPose (paper 002, sec. 3.1.2, Fig. 2): the multi-scene MS-Transformer with hypernetwork
heads, picked by name ``ms_hyperpose``.

Main network:

- a shared CNN backbone; two endpoints feed two branches (sec. 3.3): position from the 1/16 map
  (EfficientNet reduction 4, 112 ch) and orientation from the 1/8 map (reduction 3, 40 ch); each
  is projected by a 1x1 conv to ``d_model`` = 256 and flattened to tokens with a learned 2-D
  position encoding (Fig. 2b-c);
- per branch a Transformer (``layers`` = 4 encoder and 4 decoder blocks, 4 heads, pre-LN, Swish
  MLP preserving the width, dropout 0.1, position codes added at every attention layer); the
  decoder turns one learned query per scene into one latent per scene (Fig. 2d);
- scene classifier: FC over the concatenated position/orientation latents of each scene ->
  log-softmax over scenes (Fig. 2e-f); the selected scene's latents (the ground-truth scene while
  training, as in MS-Transformer; the most probable one at inference) feed the heads;
- regression heads: two-layer MLPs (input layer 1024 wide, GELU) -> 3 and 4.

Hypernetwork (Fig. 2g-i, eq. 2): per branch, the backbone's global image descriptor (the
average of its last feature map, 1280-d for EfficientNet, as the authors' release feeds it:
``extract_features(img).mean(-2, -1)``) passes an FC layer (1280 -> 256) and is added to the
selected latent; for each of the three layers of a generated regression head an FC + Swish then a
linear map outputs that layer's weights (position: 256 -> ``hyper_dim_t`` ->
``hyper_dim_t * hyper_t_hidden_scale`` -> 3, paper 256, 128, 3; orientation: 256 ->
``hyper_dim_rot`` -> ``hyper_dim_rot`` -> 4, paper 512, 512, 4; Swish after the input and hidden
layers). Pose = main head + generated head.

Loss: Kendall's learned weighting (eq. 5, trainer loss ``kendall``) + NLL of the scene
classification (the trainer adds ``extra_losses``: ``scene_nll``). Training follows sec. 3.2: joint
training, then each head fine-tuned with its own loss (config/models/ms_hyperpose.yaml,
``train.stages``: stage 2 trains only ``head_t``/``hyper_t``, stage 3 only ``head_rot``/``hyper_rot``).

Substitutions (config and docs/models.md): EfficientNet-Lite0 for EfficientNet-B0 (no B0 weights
offline); our CPU config shrinks the generated heads (the paper's sizes give ~90 M generator
parameters, most of the 571 MB the paper reports). The paper's Swish in the Transformer MLPs is
kept (the release's DETR code defaults to GELU there).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import build_backbone
from ..registry import APR_MODELS, SceneSpec
from .paper_layers import (
    HyperLayerGenerator,
    LearnedPosEmbedding2d,
    PosDecoderLayer,
    PosEncoderLayer,
    check_conf,
    hyper_mlp,
    init_pose_output,
    truncate_backbone,
)

DEFAULT_CONF: dict = {
    "backbone": "efficientnet_lite0",  # paper: EfficientNet-B0 (not available offline; Lite0 substitutes)
    "pretrained": True,  # ImageNet weights; false = random init (tests)
    "reduction_t": 16,  # backbone endpoint of the position branch (paper: reduction 4 = 1/16, 112 ch)
    "reduction_rot": 8,  # endpoint of the orientation branch (paper: reduction 3 = 1/8, 40 ch)
    "d_model": 256,  # Transformer width C_M^Out (paper: 256)
    "heads": 4,  # attention heads (paper: 4)
    "layers": 4,  # encoder and decoder blocks per branch (paper: 4)
    "mlp_dim": 256,  # Transformer MLP width ("preserves the input dimension")
    "dropout": 0.1,  # Transformer dropout (paper: 0.1)
    "head_dim": 1024,  # hidden width of the main regression heads (paper: 1024)
    "hyper_dim_t": 256,  # generated position head: d -> hyper_dim_t -> hyper_dim_t*scale -> 3 (paper 256)
    "hyper_t_hidden_scale": 0.5,  # paper: 256 -> 128
    "hyper_dim_rot": 512,  # generated orientation head: d -> hyper_dim_rot -> hyper_dim_rot -> 4 (paper 512)
    "pos_max_hw": 64,  # size of the learned position tables (max feature map side)
    "hyper_input_reduction": 32,  # backbone map whose global average feeds the hypernetwork (release: 1280-d)
    "use_hypernet": True,  # false = plain MS-Transformer (ablation)
}


class _Branch(nn.Module):
    """One branch: 1x1 projection, learned position code, encoder, decoder over scene queries."""

    def __init__(self, c_in: int, n_scenes: int, conf: dict) -> None:
        super().__init__()
        d, dr = int(conf["d_model"]), float(conf["dropout"])
        self.proj = nn.Conv2d(c_in, d, 1)
        self.pos = LearnedPosEmbedding2d(d, int(conf["pos_max_hw"]))
        self.encoder = nn.ModuleList(
            [PosEncoderLayer(d, int(conf["heads"]), int(conf["mlp_dim"]), dr) for _ in range(int(conf["layers"]))]
        )
        self.enc_norm = nn.LayerNorm(d)
        self.queries = nn.Embedding(n_scenes, d)
        self.decoder = nn.ModuleList(
            [PosDecoderLayer(d, int(conf["heads"]), int(conf["mlp_dim"]), dr) for _ in range(int(conf["layers"]))]
        )
        self.dec_norm = nn.LayerNorm(d)

    def forward(self, fmap_BCHW: torch.Tensor) -> torch.Tensor:
        """Returns the latents (B, S, D), one per scene."""
        m = self.proj(fmap_BCHW)
        b, _, h, w = m.shape
        pos = self.pos(h, w)
        x = m.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            x = layer(x, pos)
        x = self.enc_norm(x)
        # The decoder input starts at the scene queries, not at zeros as in DETR: with pre-LN, a zero
        # input makes the first self-attention's output constant and leaves its weights without gradient.
        t = self.queries.weight.unsqueeze(0).expand(b, -1, -1)
        for layer in self.decoder:
            t = layer(t, self.queries.weight, x, pos)
        return self.dec_norm(t)


class _HyperHead(nn.Module):
    """Generated 3-layer regression head: FC(backbone image descriptor) + latent -> per-layer generators."""

    def __init__(self, d: int, c_image: int, dims: tuple[int, int], d_out: int) -> None:
        super().__init__()
        self.map_fc = nn.Linear(c_image, d)  # the release's hyper_in_{t,rot}_proj (1280 -> 256)
        sizes = [d, dims[0], dims[1], d_out]
        self.gens = nn.ModuleList([HyperLayerGenerator(d, d, sizes[k], sizes[k + 1]) for k in range(3)])
        with torch.no_grad():  # the sum with the main head starts near the main head's output
            self.gens[-1].out.bias.mul_(1e-2)

    def weights(self, latent_BD: torch.Tensor, image_BC: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        z = latent_BD + self.map_fc(image_BC)
        return [g(z) for g in self.gens]

    def forward(self, latent_BD: torch.Tensor, image_BC: torch.Tensor) -> torch.Tensor:
        return hyper_mlp(latent_BD, self.weights(latent_BD, image_BC))


class MSHyperPose(nn.Module):
    """Multi-scene APR: two Transformer branches with scene queries, scene classifier, hyper heads."""

    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        super().__init__()
        self.conf = check_conf("ms_hyperpose", cfg, DEFAULT_CONF)
        self.scenes = list(scenes or [])
        if not self.scenes:
            raise ValueError("ms_hyperpose is a multi-scene model: it needs the list of scenes it is trained on")
        self.r_t, self.r_rot = int(self.conf["reduction_t"]), int(self.conf["reduction_rot"])
        self.use_hypernet = bool(self.conf["use_hypernet"])
        self.r_hyper = int(self.conf["hyper_input_reduction"])
        backbone = build_backbone(self.conf["backbone"], pretrained=bool(self.conf["pretrained"]))
        # Only the endpoints used are computed: the layers after the deepest one are dropped
        # (with the hypernetwork, whose input is the last map, the whole backbone stays).
        deepest = max(self.r_t, self.r_rot, self.r_hyper if self.use_hypernet else 0)
        self.backbone = truncate_backbone(backbone, deepest)
        for r in (self.r_t, self.r_rot) + ((self.r_hyper,) if self.use_hypernet else ()):
            if r not in self.backbone.channels:
                raise ValueError(
                    f"ms_hyperpose: reduction {r} not in backbone outputs {sorted(self.backbone.channels)}"
                )
        n, d = len(self.scenes), int(self.conf["d_model"])
        self.branch_t = _Branch(self.backbone.channels[self.r_t], n, self.conf)
        self.branch_rot = _Branch(self.backbone.channels[self.r_rot], n, self.conf)
        # No bias: one bias shared by every scene's logit cancels in the softmax (it would get no gradient).
        self.scene_fc = nn.Linear(2 * d, 1, bias=False)
        hd = int(self.conf["head_dim"])
        self.head_t = nn.Sequential(nn.Linear(d, hd), nn.GELU(), nn.Linear(hd, 3))
        self.head_rot = nn.Sequential(nn.Linear(d, hd), nn.GELU(), nn.Linear(hd, 4))
        init_pose_output(self.head_t[-1], self.head_rot[-1])
        if self.use_hypernet:
            ht = int(self.conf["hyper_dim_t"])
            hr = int(self.conf["hyper_dim_rot"])
            c_img = self.backbone.channels[self.r_hyper]
            self.hyper_t = _HyperHead(d, c_img, (ht, round(ht * float(self.conf["hyper_t_hidden_scale"]))), 3)
            self.hyper_rot = _HyperHead(d, c_img, (hr, hr), 4)

    def image_features(self, image_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's outputs the rest of the model uses (cacheable; see :meth:`forward_features`):
        the two branch endpoints and the global image descriptor of the hypernetwork."""
        feats = self.backbone(image_B3HW)
        out = {"map_t_BCHW": feats[self.r_t], "map_rot_BCHW": feats[self.r_rot]}
        if self.use_hypernet:
            out["image_BC"] = feats[self.r_hyper].mean(dim=(2, 3))
        return out

    def forward_features(
        self, feats: dict[str, torch.Tensor], scene_id_B: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        lat_t = self.branch_t(feats["map_t_BCHW"])
        lat_rot = self.branch_rot(feats["map_rot_BCHW"])
        logits_BS = self.scene_fc(torch.cat([lat_t, lat_rot], dim=-1)).squeeze(-1)
        # Teacher forcing while training (ground-truth scene), the classifier's choice otherwise.
        sel_B = scene_id_B if (scene_id_B is not None and self.training) else logits_BS.argmax(dim=1)
        ar = torch.arange(lat_t.shape[0], device=lat_t.device)
        g_t, g_rot = lat_t[ar, sel_B], lat_rot[ar, sel_B]
        pos, quat = self.head_t(g_t), self.head_rot(g_rot)
        if self.use_hypernet:
            pos = pos + self.hyper_t(g_t, feats["image_BC"])
            quat = quat + self.hyper_rot(g_rot, feats["image_BC"])
        return {"position_B3": pos, "quat_B4": quat, "scene_logits_BS": logits_BS}

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_features(self.image_features(image_B3HW), scene_id_B)

    def extra_losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Scene classification NLL (MS-Transformer / MS-HyperPose), added to the pose loss."""
        return {"scene_nll": F.cross_entropy(outputs["scene_logits_BS"], batch["scene_id"].long())}


@APR_MODELS.register("ms_hyperpose")
def build_ms_hyperpose(cfg: dict, scenes: list[SceneSpec]) -> MSHyperPose:
    return MSHyperPose(cfg, scenes)
