"""MVL-Loc (paper 004, "Leveraging Vision-Language Model for Generalizable Multi-Scene Camera
Relocalization"), picked by name ``mvl_loc``.

Pipeline (sec. 3):

1. Visual tokens, eq. (1): V^ = f_conv(I) + gamma * P(I), with P a 2-D sinusoidal code and
   gamma = W^(-1/2) ("the negative square root of the width": W^-1/2, W the token-grid width).
   ``visual_encoder``: ``backbone`` = an ImageNet CNN from models/backbones.py (reduction 32, like
   the /32 patch grid of CLIP ViT-B/32), or ``clip`` = the vision tower of a user-supplied CLIP.
2. Language, eq. (2): each scene's natural-language description (SceneSpec.description, from the
   dataset manifest / scene YAML) is embedded by a pretrained text encoder (``text_encoder``:
   ``minilm`` = the packaged all-MiniLM-L6-v2, or ``clip`` = the CLIP text tower) and projected
   to ``d_model``; one token per scene (the sentence embedding; the paper's per-word tokens are
   pooled by the encoder). The embeddings are computed once (first forward after build) and kept
   in the state dict (``text_emb_SE``), so a served artifact never runs the text encoder.
3. Fusion, eq. (3)-(6): ``layers`` = 4 pre-LN decoder layers; the scene-language tokens are the
   queries: self-attention among them, then multi-head attention whose logits are the dot products
   of language queries with visual keys (V . L^T of eq. 6); one GELU feed-forward after the last
   layer (eq. 5). Output: one latent per scene.
4. Multi-scene selection, eq. (7)-(9): a linear layer scores each scene latent -> softmax over
   scenes; the selected latent (ground truth while training, arg max at inference) goes through
   MLP heads (dropout 0.5) to the position (3) and the log-quaternion (3); ``quat_B4`` = exp(log q).
5. Loss, eq. (10): the trainer's ``log_quat_l1`` loss (|p - p^|_1 e^-alpha + alpha + |log q -
   log q^|_1 e^-beta + beta, alpha = -4, beta = -2 learned) + the scene NLL from ``extra_losses``.

Substitutions (config/models/mvl_loc.yaml, docs/models.md): no CLIP weights install offline here,
so the default is ImageNet EfficientNet-Lite0 for the image and all-MiniLM-L6-v2 for the text;
``clip_path`` selects CLIP for both when a user supplies weights (untested with real weights).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from torch.nn import functional as F

from ...geometry.torch_ops import qexp
from ..backbones import build_backbone
from ..registry import APR_MODELS, SceneSpec
from .paper_layers import PosDecoderLayer, check_conf, init_pose_output, mlp_head, sinusoidal_pe_2d
from .text_encoders import CLIP_MEAN, CLIP_STD, encode_texts, load_clip, text_dim

log = logging.getLogger(__name__)

DEFAULT_CONF: dict = {
    "visual_encoder": "backbone",  # backbone (ImageNet CNN) | clip (needs clip_path)
    "backbone": "efficientnet_lite0",  # visual_encoder: backbone -> models/backbones.py name
    "pretrained": True,  # ImageNet weights for the backbone; false = random init (tests)
    "reduction": 32,  # backbone feature map used as visual tokens
    "text_encoder": "minilm",  # minilm (packaged all-MiniLM-L6-v2) | clip (needs clip_path)
    "clip_path": None,  # local Hugging Face CLIP folder; setting it with visual/text 'clip' uses CLIP
    "d_model": 256,  # fusion width
    "heads": 8,  # attention heads in the decoder layers
    "layers": 4,  # decoder layers (paper: 4; 2 failed to converge, 8/16 too costly)
    "ff_dim": 1024,  # width of the final GELU feed-forward (eq. 5)
    "attn_dropout": 0.1,  # dropout inside the decoder
    "head_hidden": [512],  # hidden widths of the pose MLPs
    "dropout": 0.5,  # dropout in the pose MLPs (paper: 0.5); 0 = off
}


class MVLLoc(nn.Module):
    """Language-guided multi-scene APR."""

    def __init__(self, cfg: dict | None = None, scenes: list[SceneSpec] | None = None) -> None:
        super().__init__()
        self.conf = check_conf("mvl_loc", cfg, DEFAULT_CONF)
        self.scenes = list(scenes or [])
        if not self.scenes:
            raise ValueError("mvl_loc is a multi-scene model: it needs the scenes it is trained on (with descriptions)")
        self.descriptions = self._descriptions(self.scenes)
        d = int(self.conf["d_model"])
        ve, te = self.conf["visual_encoder"], self.conf["text_encoder"]
        if ve not in ("backbone", "clip"):
            raise ValueError(f"mvl_loc: visual_encoder must be backbone or clip, got {ve!r}")
        if (ve == "clip" or te == "clip") and not self.conf["clip_path"]:
            raise ValueError("mvl_loc: visual_encoder/text_encoder 'clip' needs model.clip_path (local CLIP folder)")
        if ve == "backbone":
            self.backbone = build_backbone(self.conf["backbone"], pretrained=bool(self.conf["pretrained"]))
            self.reduction = int(self.conf["reduction"])
            c_vis = self.backbone.channels[self.reduction]
            self.clip_vision = None
        else:
            clip = load_clip(self.conf["clip_path"])
            self.backbone = None
            self.clip_vision = clip.vision_model
            self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
            self.clip_patch = int(clip.config.vision_config.patch_size)
            c_vis = int(clip.config.vision_config.hidden_size)
        self.vis_proj = nn.Linear(c_vis, d)  # f_conv's last 1x1 projection to the fusion width
        e = text_dim(te, self.conf["clip_path"])
        # Cached text embeddings: NaN until computed (first forward) or loaded with the state dict.
        self.register_buffer("text_emb_SE", torch.full((len(self.scenes), e), float("nan")))
        self.text_proj = nn.Linear(e, d)
        heads, dr = int(self.conf["heads"]), float(self.conf["attn_dropout"])
        self.decoder = nn.ModuleList([PosDecoderLayer(d, heads, 0, dr) for _ in range(int(self.conf["layers"]))])
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, int(self.conf["ff_dim"])), nn.GELU(), nn.Linear(int(self.conf["ff_dim"]), d)
        )
        self.out_norm = nn.LayerNorm(d)
        self.scene_fc = nn.Linear(d, 1)
        hidden = [int(x) for x in self.conf["head_hidden"]]
        self.head_position = mlp_head(d, hidden, 3, float(self.conf["dropout"]))
        self.head_logq = mlp_head(d, hidden, 3, float(self.conf["dropout"]))
        init_pose_output(self.head_position[-1], self.head_logq[-1])  # log q = 0: identity

    @staticmethod
    def _descriptions(scenes: list[SceneSpec]) -> list[str]:
        out = []
        for s in scenes:
            text = (s.description or "").strip()
            if not text:
                log.warning(
                    "mvl_loc: scene %r has no description; using its name. Write one in the scene YAML / "
                    "dataset manifest (scene description) to guide the model as in MVL-Loc.",
                    s.name,
                )
                text = f"the {s.name.replace('_', ' ')} scene"
            out.append(text)
        dup = {t for t in out if out.count(t) > 1}
        if dup:
            raise ValueError(
                f"mvl_loc: scenes share the same description {sorted(dup)}; each scene needs its own text "
                "(the description is what tells the scenes apart)"
            )
        return out

    # ------------------------------------------------------------------------------ text cache
    def text_embeddings(self) -> torch.Tensor:
        """(S, E) text embeddings, computed once with the configured encoder, then cached in the buffer."""
        if torch.isnan(self.text_emb_SE).any():
            log.info(
                "mvl_loc: encoding %d scene descriptions with %s", len(self.descriptions), self.conf["text_encoder"]
            )
            emb = encode_texts(self.conf["text_encoder"], self.descriptions, self.conf["clip_path"])
            if emb.shape != self.text_emb_SE.shape:
                raise RuntimeError(
                    f"mvl_loc: text embeddings {tuple(emb.shape)} != expected {tuple(self.text_emb_SE.shape)}"
                )
            with torch.no_grad():
                self.text_emb_SE.copy_(emb.to(self.text_emb_SE))
        return self.text_emb_SE

    # ------------------------------------------------------------------------------ forward
    def visual_tokens(self, image_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens_BND before position code, position code gamma * P as N x D)."""
        if self.clip_vision is not None:
            x = (image_B3HW - self.clip_mean) / self.clip_std
            out = self.clip_vision(pixel_values=x, interpolate_pos_encoding=True)
            tok = out.last_hidden_state[:, 1:]  # drop CLS; patch grid row-major
            h, w = image_B3HW.shape[2] // self.clip_patch, image_B3HW.shape[3] // self.clip_patch
        else:
            f = self.backbone(image_B3HW)[self.reduction]
            h, w = f.shape[2], f.shape[3]
            tok = f.flatten(2).transpose(1, 2)
        v = self.vis_proj(tok)
        d = v.shape[-1]
        pe = sinusoidal_pe_2d(d, h, w, device=v.device, dtype=v.dtype).flatten(1).T  # (N, D)
        return v, pe / math.sqrt(w)

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        v, vpe = self.visual_tokens(image_B3HW)
        b = v.shape[0]
        lang_SD = self.text_proj(self.text_embeddings())
        # Queries start as the language tokens; their identity (query position) is the language too.
        t = lang_SD.unsqueeze(0).expand(b, -1, -1)
        for layer in self.decoder:
            t = layer(t, lang_SD, v + vpe, torch.zeros_like(vpe))
        t = t + self.ff(self.ff_norm(t))
        lat_BSD = self.out_norm(t)
        logits_BS = self.scene_fc(lat_BSD).squeeze(-1)
        sel_B = scene_id_B if (scene_id_B is not None and self.training) else logits_BS.argmax(dim=1)
        g = lat_BSD[torch.arange(b, device=v.device), sel_B]
        logq = self.head_logq(g)
        return {
            "position_B3": self.head_position(g),
            "quat_B4": qexp(logq),
            "logq_B3": logq,
            "scene_logits_BS": logits_BS,
        }

    def extra_losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """L_cls of eq. (9)-(10): NLL of the softmax over scenes."""
        return {"scene_nll": F.cross_entropy(outputs["scene_logits_BS"], batch["scene_id"].long())}


@APR_MODELS.register("mvl_loc")
def build_mvl_loc(cfg: dict, scenes: list[SceneSpec]) -> MVLLoc:
    return MVLLoc(cfg, scenes)
