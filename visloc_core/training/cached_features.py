"""Train the part of a multi-scene APR model after its image encoder on cached image features.

A multi-scene model (MS-HyperPose, MVL-Loc) splits into ``image_features(image_B3HW) -> dict`` (the
pretrained backbone) and ``forward_features(feats, scene_id_B) -> outputs`` (everything learned on
top of it, scene classifier included). With the backbone frozen, its features are computed once and
the rest trains in seconds to minutes on a CPU. This is what the scene-separation guardrail
(test/test_scene_guardrail.py) and ``scripts/scene_probe.py`` run: it isolates whether the scene
classifier CAN learn to tell scenes apart from the loss and optimiser it is given, from the cost and
noise of fine-tuning the backbone. It is not the full training (no augmentation, no backbone
updates): ``visloc train`` is.

Targets are per-scene normalised positions (as the APR trainer feeds them), quaternions (w, x, y, z)
and scene indices. The loss is the model's pose loss (training/losses.py) plus its ``extra_losses``
(the scene NLL), each weight 1, as in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

ENCODER_PREFIXES = ("backbone.", "clip_vision.")  # the image encoders whose output is cached


def _check_model(model: nn.Module) -> None:
    if not (hasattr(model, "image_features") and hasattr(model, "forward_features")):
        raise TypeError(
            f"{type(model).__name__} has no image_features/forward_features split: only multi-scene models "
            "(ms_hyperpose, mvl_loc) train on cached features"
        )


@torch.no_grad()
def cache_features(model: nn.Module, images_B3HW: torch.Tensor, chunk: int = 32) -> dict[str, torch.Tensor]:
    """``model.image_features`` of every image (eval mode: BatchNorm running statistics), concatenated."""
    _check_model(model)
    was_training = model.training
    model.eval()
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, images_B3HW.shape[0], chunk):
        parts.append(model.image_features(images_B3HW[i : i + chunk]))
    model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _rows(feats: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in feats.items()}


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters after the image encoder (what trains on cached features)."""
    return [p for n, p in model.named_parameters() if not n.startswith(ENCODER_PREFIXES)]


def total_loss(model: nn.Module, loss_fn: nn.Module, out: dict, targets: dict) -> tuple[torch.Tensor, dict]:
    """Pose loss + the model's extra losses (weight 1 each); returns (total, {name: detached value})."""
    pose, _ = loss_fn(out["position_B3"], out["quat_B4"], targets["position"], targets["quat_wxyz"])
    terms = {"pose": pose.detach()}
    total = pose
    for name, value in model.extra_losses(out, targets).items():
        total = total + value
        terms[name] = value.detach()
    return total, terms


def train_on_features(
    model: nn.Module,
    loss_fn: nn.Module,
    feats: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    every: int = 0,
    callback: Callable[[int, list[dict[str, float]]], None] | None = None,
) -> list[dict[str, float]]:
    """``steps`` optimiser steps on random mini-batches (reshuffled every pass, seeded); the loss
    weights (alpha/beta, s_x/s_q) train with the model at the same LR and no weight decay, as in the
    APR trainer. ``callback(step, history)`` runs every ``every`` steps (e.g. an evaluation; the model
    is put back in training mode after it). Returns the per-step loss terms."""
    _check_model(model)
    n = next(iter(feats.values())).shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(
        [
            {"params": head_parameters(model), "weight_decay": float(weight_decay)},
            {"params": list(loss_fn.parameters()), "weight_decay": 0.0},
        ],
        lr=float(lr),
    )
    model.train()
    history: list[dict[str, float]] = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(int(steps)):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        batch = _rows(targets, idx)
        out = model.forward_features(_rows(feats, idx), batch["scene_id"])
        loss, terms = total_loss(model, loss_fn, out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in terms.items()})
        if callback is not None and every > 0 and len(history) % every == 0:
            callback(len(history), history)
            model.train()
    return history


@torch.no_grad()
def predict(model: nn.Module, feats: dict[str, torch.Tensor], chunk: int = 64) -> dict[str, torch.Tensor]:
    """The model's outputs on every row (eval mode: the scene and pose the localizer would report)."""
    was_training = model.training
    model.eval()
    n = next(iter(feats.values())).shape[0]
    parts = [model.forward_features(_rows(feats, torch.arange(i, min(i + chunk, n)))) for i in range(0, n, chunk)]
    model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in ("position_B3", "quat_B4", "scene_logits_BS")}


def predict_scenes(model: nn.Module, feats: dict[str, torch.Tensor], chunk: int = 64) -> torch.Tensor:
    """Arg max scene per row (eval mode: what the localizer picks)."""
    return predict(model, feats, chunk)["scene_logits_BS"].argmax(dim=1)


def gradient_norms(
    model: nn.Module, loss_fn: nn.Module, feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Gradient norm of each loss term on every top-level parameter group of the model (one batch,
    training mode): ``{group: {"pose": |dL_pose/dw|, "scene_nll": |dL_cls/dw|}}``; a group a term does
    not reach has norm 0. The ratio says which loss drives a shared group."""
    _check_model(model)
    model.train()
    out = model.forward_features(feats, targets["scene_id"])
    pose, _ = loss_fn(out["position_B3"], out["quat_B4"], targets["position"], targets["quat_wxyz"])
    terms = {"pose": pose, **model.extra_losses(out, targets)}
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith(ENCODER_PREFIXES)]
    groups = sorted({n.split(".")[0] for n, _ in named})
    result: dict[str, dict[str, float]] = {g: {} for g in groups}
    for k, (term, value) in enumerate(terms.items()):
        grads = torch.autograd.grad(value, [p for _, p in named], retain_graph=k < len(terms) - 1, allow_unused=True)
        for g in groups:
            sq = sum(
                float(gr.pow(2).sum()) for (n, _), gr in zip(named, grads) if gr is not None and n.split(".")[0] == g
            )
            result[g][term] = math.sqrt(sq)
    return result
