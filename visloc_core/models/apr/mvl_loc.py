"""MVL-Loc (paper 004, "Leveraging Vision-Language Model for Generalizable Multi-Scene Camera
Relocalization"), picked by name ``mvl_loc``.

Pipeline (sec. 3):

1. Visual tokens, eq. (1): V^ = f_conv(I) + gamma * P(I), with P a 2-D sinusoidal code and
   gamma = W^(-1/2) ("the negative square root of the width": W^-1/2, W the token-grid width).
   ``visual_encoder``: ``backbone`` = an ImageNet CNN from models/backbones.py (reduction 32, like
   the /32 patch grid of CLIP ViT-B/32), or ``clip`` = the vision tower of a user-supplied CLIP.
2. Language, eq. (2): each scene's natural-language description (SceneSpec.description, from the
   dataset manifest / scene YAML) is embedded by a pretrained text encoder (``text_encoder``:
   ``minilm`` = the packaged all-MiniLM-L6-v2, or ``clip`` = the CLIP text tower) into per-word
   (word-piece) tokens; L^ = f_token(T) + gamma * P(T), f_token = the encoder's token outputs
   projected to ``d_model`` and layer-normalised, P a 1-D sinusoidal code, gamma = T^(-1/2) (T the
   description's token count). The token embeddings are computed once (first forward after the
   model is built) and kept in the state dict (``text_tok_STE``, ``text_len_S``,
   ``text_sent_SE``), so a served artifact never runs the text encoder.
3. Fusion, eq. (3)-(6): ``layers`` = 4 pre-LN decoder layers over the IMAGE tokens: self-attention
   among them (eq. 3), then multi-head attention of the image tokens (queries) to the word tokens of
   one scene's description (keys and values: the dot products V . L^T of eq. 6) (eq. 4); one GELU
   feed-forward after the last layer (eq. 5); the fused tokens are averaged into the scene's latent
   (as in the authors' release, whose decoder also has the image tokens attend to the text tokens).
4. Scene classification, eq. (7)-(9), "based on the similarity of the description embeddings and
   vision feature embeddings" (sec. 3.1): logit_s = exp(tau) * cos(W_v mean_n(tokens_n), W_t e_s),
   the pooled visual tokens and scene s's sentence embedding e_s projected into one joint space
   (CLIP's contrastive head; learned temperature tau, CLIP's initial 1/0.07, capped at 100);
   softmax over scenes, NLL of the true scene. The selected scene (ground truth while training,
   arg max at inference) is the description the image tokens attend to in step 3: the latent of
   the selected scene is computed, the others are not (they would be discarded).
5. Heads, eq. (8): MLPs (dropout 0.5) from the latent to the position (3) and the log-quaternion
   (3); ``quat_B4`` = exp(log q).
6. Loss, eq. (10): the trainer's ``log_quat_l1`` loss (|p - p^|_1 e^-alpha + alpha + |log q -
   log q^|_1 e^-beta + beta, alpha = -4, beta = -2 learned) + the scene NLL from ``extra_losses``.

Substitutions and deviations (config/models/mvl_loc.yaml, docs/models.md): no CLIP weights install
offline here, so the default is ImageNet EfficientNet-Lite0 for the image and all-MiniLM-L6-v2 for
the text; ``clip_path`` selects CLIP for both when a user supplies weights (untested with real
weights). The layer norm of the projected word tokens is ours: without it the language tokens are
much smaller than the visual tokens (rms 0.15 for MiniLM's word tokens, 0.04 for its unit-norm
sentence embedding, through a default-initialised linear layer, against 0.64 for the visual
tokens). The classifier's projections W_v, W_t are the paper's "description and vision feature
embeddings" made concrete as CLIP does; the paper does not give their form.
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
from .paper_layers import (
    check_conf,
    init_pose_output,
    mlp_head,
    sinusoidal_pe_1d,
    sinusoidal_pe_2d,
)
from .text_encoders import CLIP_MEAN, CLIP_STD, encode_text_tokens, load_clip, text_dims

log = logging.getLogger(__name__)

CLIP_LOGIT_SCALE_INIT = math.log(1.0 / 0.07)  # CLIP's initial temperature
CLIP_LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clips the scale at 100

DEFAULT_CONF: dict = {
    "visual_encoder": "backbone",  # backbone (ImageNet CNN) | clip (needs clip_path)
    "backbone": "efficientnet_lite0",  # visual_encoder: backbone -> models/backbones.py name
    "pretrained": True,  # ImageNet weights for the backbone; false = random init (tests)
    "reduction": 32,  # backbone feature map used as visual tokens
    "text_encoder": "minilm",  # minilm (packaged all-MiniLM-L6-v2) | clip (needs clip_path)
    "clip_path": None,  # local Hugging Face CLIP folder; setting it with visual/text 'clip' uses CLIP
    "max_text_tokens": 256,  # word tokens kept per description (MiniLM reads 256 at most, CLIP 77)
    "d_model": 256,  # fusion width
    "heads": 8,  # attention heads in the decoder layers
    "layers": 4,  # decoder layers (paper: 4; 2 failed to converge, 8/16 too costly)
    "ff_dim": 1024,  # width of the final GELU feed-forward (eq. 5)
    "attn_dropout": 0.1,  # dropout inside the decoder
    "embed_dim": 256,  # joint vision-language space of the scene classifier
    "head_hidden": [512],  # hidden widths of the pose MLPs
    "dropout": 0.5,  # dropout in the pose MLPs (paper: 0.5); 0 = off
}


class FusionLayer(nn.Module):
    """One layer of eq. (3)-(4), pre-LN: self-attention among an image's tokens, then multi-head
    attention of those tokens (queries) to the word tokens of the image's scene description (keys,
    values). Dropout on the attention weights and on both residual branches.

    The words' key/value projections are computed once per scene, not once per image: the images
    of one scene attend to the same words, and attention is row-wise, so their query tokens are
    stacked into one sequence per scene (the result is the same as attending image by image)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, t_BND: torch.Tensor, scene_B: torch.Tensor, words_STD: torch.Tensor, pad_ST: torch.Tensor
    ) -> torch.Tensor:
        h = self.ln1(t_BND)
        t_BND = t_BND + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        h = self.ln2(t_BND)
        n, d = h.shape[1], h.shape[2]
        fused = torch.zeros_like(h)
        for s in scene_B.unique().tolist():
            idx = torch.nonzero(scene_B == s).squeeze(1)
            q = h[idx].reshape(1, -1, d)
            w = words_STD[s : s + 1]
            a = self.cross_attn(q, w, w, key_padding_mask=pad_ST[s : s + 1], need_weights=False)[0]
            fused = fused.index_copy(0, idx, a.reshape(-1, n, d))
        return t_BND + self.drop(fused)


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
        e_tok, e_sent = text_dims(te, self.conf["clip_path"])
        n_scenes, max_tok = len(self.scenes), int(self.conf["max_text_tokens"])
        if max_tok < 2:
            raise ValueError(f"mvl_loc: max_text_tokens must be >= 2, got {max_tok}")
        # Cached text encodings: NaN until computed (first forward) or loaded with the state dict.
        self.register_buffer("text_tok_STE", torch.full((n_scenes, max_tok, e_tok), float("nan")))
        self.register_buffer("text_len_S", torch.zeros(n_scenes, dtype=torch.long))
        self.register_buffer("text_sent_SE", torch.full((n_scenes, e_sent), float("nan")))
        self.text_proj = nn.Linear(e_tok, d)  # f_token's projection to the fusion width
        self.text_norm = nn.LayerNorm(d)
        heads, dr = int(self.conf["heads"]), float(self.conf["attn_dropout"])
        self.decoder = nn.ModuleList([FusionLayer(d, heads, dr) for _ in range(int(self.conf["layers"]))])
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(
            nn.Linear(d, int(self.conf["ff_dim"])), nn.GELU(), nn.Linear(int(self.conf["ff_dim"]), d)
        )
        self.out_norm = nn.LayerNorm(d)
        emb = int(self.conf["embed_dim"])
        self.cls_vision = nn.Linear(c_vis, emb)  # W_v: pooled visual tokens -> joint space
        self.cls_text = nn.Linear(e_sent, emb)  # W_t: description embedding -> joint space
        self.logit_scale = nn.Parameter(torch.tensor(CLIP_LOGIT_SCALE_INIT))
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
    def _encode_descriptions(self) -> None:
        """Fill the text buffers with the configured encoder (once; a loaded state dict has them)."""
        log.info("mvl_loc: encoding %d scene descriptions with %s", len(self.descriptions), self.conf["text_encoder"])
        tokens, sent = encode_text_tokens(self.conf["text_encoder"], self.descriptions, self.conf["clip_path"])
        if sent.shape != self.text_sent_SE.shape:
            raise RuntimeError(
                f"mvl_loc: sentence embeddings {tuple(sent.shape)} != expected {tuple(self.text_sent_SE.shape)}"
            )
        max_tok = self.text_tok_STE.shape[1]
        with torch.no_grad():
            self.text_tok_STE.zero_()
            for s, tok in enumerate(tokens):
                if tok.shape[0] > max_tok:
                    log.warning(
                        "mvl_loc: the description of scene %r has %d tokens; the first %d are used "
                        "(model.max_text_tokens)",
                        self.scenes[s].name,
                        tok.shape[0],
                        max_tok,
                    )
                    tok = tok[:max_tok]
                self.text_tok_STE[s, : tok.shape[0]] = tok.to(self.text_tok_STE)
                self.text_len_S[s] = tok.shape[0]
            self.text_sent_SE.copy_(sent.to(self.text_sent_SE))

    def language_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (2) for every scene: (L^ (S, T, D) projected word tokens + gamma * P, padding mask (S, T))."""
        if torch.isnan(self.text_sent_SE).any():
            self._encode_descriptions()
        n = int(self.text_len_S.max())
        tok = self.text_norm(self.text_proj(self.text_tok_STE[:, :n]))
        pe = sinusoidal_pe_1d(tok.shape[-1], n, device=tok.device, dtype=tok.dtype)  # (T, D)
        gamma = self.text_len_S.to(tok.dtype).clamp_min(1.0).rsqrt()  # T_s^(-1/2) per description
        pad = torch.arange(n, device=tok.device)[None, :] >= self.text_len_S[:, None]
        return tok + gamma[:, None, None] * pe[None], pad

    # ------------------------------------------------------------------------------ forward
    def image_features(self, image_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image encoder's output, ``{"map_BCHW": visual token grid}`` (cacheable: the rest of the
        model runs from it with :meth:`forward_features`)."""
        if self.clip_vision is not None:
            x = (image_B3HW - self.clip_mean) / self.clip_std
            out = self.clip_vision(pixel_values=x, interpolate_pos_encoding=True)
            tok = out.last_hidden_state[:, 1:]  # drop CLS; patch grid row-major
            h, w = image_B3HW.shape[2] // self.clip_patch, image_B3HW.shape[3] // self.clip_patch
            return {"map_BCHW": tok.transpose(1, 2).reshape(tok.shape[0], -1, h, w)}
        return {"map_BCHW": self.backbone(image_B3HW)[self.reduction]}

    def scene_logits(self, tok_BNC: torch.Tensor) -> torch.Tensor:
        """Eq. (7) logits: temperature x cosine of the pooled visual tokens and each description (B, S)."""
        if torch.isnan(self.text_sent_SE).any():
            self._encode_descriptions()
        img = F.normalize(self.cls_vision(tok_BNC.mean(dim=1)), dim=-1)
        txt = F.normalize(self.cls_text(self.text_sent_SE), dim=-1)
        return self.logit_scale.clamp(max=CLIP_LOGIT_SCALE_MAX).exp() * img @ txt.T

    def forward_features(
        self, feats: dict[str, torch.Tensor], scene_id_B: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        f = feats["map_BCHW"]
        h, w = f.shape[2], f.shape[3]
        tok = f.flatten(2).transpose(1, 2)  # (B, N, C)
        logits_BS = self.scene_logits(tok)
        sel_B = scene_id_B if (scene_id_B is not None and self.training) else logits_BS.argmax(dim=1)
        v = self.vis_proj(tok)
        pe = sinusoidal_pe_2d(v.shape[-1], h, w, device=v.device, dtype=v.dtype).flatten(1).T  # (N, D)
        t = v + pe / math.sqrt(w)  # eq. (1)
        words_STD, pad_ST = self.language_tokens()
        for layer in self.decoder:
            t = layer(t, sel_B, words_STD, pad_ST)
        t = t + self.ff(self.ff_norm(t))  # eq. (5)
        g = self.out_norm(t).mean(dim=1)
        logq = self.head_logq(g)
        return {
            "position_B3": self.head_position(g),
            "quat_B4": qexp(logq),
            "logq_B3": logq,
            "scene_logits_BS": logits_BS,
        }

    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_features(self.image_features(image_B3HW), scene_id_B)

    def extra_losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        """L_cls of eq. (9)-(10): NLL of the softmax over scenes."""
        return {"scene_nll": F.cross_entropy(outputs["scene_logits_BS"], batch["scene_id"].long())}


@APR_MODELS.register("mvl_loc")
def build_mvl_loc(cfg: dict, scenes: list[SceneSpec]) -> MVLLoc:
    return MVLLoc(cfg, scenes)
