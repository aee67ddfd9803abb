"""Training configuration of absolute pose regressors: defaults, YAML loading, merging, checks.

A config is a YAML file (config/models/*.yaml) merged over :data:`DEFAULT_CONF`. Every key is
listed below with what it does and how to turn it off; unknown keys are an error (a typo must not
silently fall back to a default). The ``model:`` section is passed to the model factory, which
checks its own keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..config import deep_merge
from ..yaml_io import load_yaml_file

DEFAULT_CONF: dict[str, Any] = {
    "task": "apr",  # trainer module: visloc_core.training.<task>
    "model": {"name": "posenet"},  # APR model name (models/registry.py) + its own options
    "loss": {"name": "learned_weight"},  # training/losses.py: learned_weight | log_quat_l1 (+ initial weights)
    "data": {
        "image_width": 160,  # network input width (pixels) after resize + crop
        "image_height": 120,  # network input height
        "train_split": "train",  # dataset split to train on
        "val_split": None,  # split for validation/calibration; null = hold out blocks of train_split
        "val_fraction": 0.15,  # fraction of each training sequence held out when val_split is null
        "val_block": 10,  # held-out frames come in runs of this many consecutive frames
        "scenes": None,  # restrict to these scene names; null = all scenes of the dataset
        "batch_size": 16,
        "num_workers": 0,  # DataLoader worker processes (0 = load in the training process)
        "with_depth": False,  # also load depth maps into the batch ("depth", metres)
        "with_semantic": False,  # also load semantic maps into the batch ("semantic")
        "augment": {  # training augmentation (data/torch_dataset.ImageTransform); zeros = off
            "crop": "random",  # random crop of the resized image ('center' = no crop jitter)
            "scale_jitter": 0.15,  # random zoom in [1, 1 + scale_jitter] before the crop
            "brightness": 0.3,
            "contrast": 0.3,
            "saturation": 0.3,
            "hue": 0.05,
        },
    },
    "train": {
        "epochs": 30,  # total epochs when no stages are given
        "lr": 1.0e-4,  # Adam(W) learning rate
        "weight_decay": 1.0e-4,  # not applied to the learned loss weights
        "loss_lr_factor": 1.0,  # LR multiplier of the learned loss weights (s_x, s_q / alpha, beta); 1 = same LR
        "optimizer": "adam",  # adam | adamw
        "scheduler": "constant",  # constant | cosine (per stage) | plateau (x factor after patience epochs)
        "plateau_factor": 0.5,  # plateau: LR multiplier
        "plateau_patience": 10,  # plateau: epochs without val improvement before reducing
        "min_lr_factor": 0.01,  # cosine: final LR = lr * min_lr_factor
        "stages": [],  # [{name, epochs, lr, freeze: [prefixes], unfreeze: [prefixes], ...}]; [] = one stage
        "monitor_m_per_deg": 0.1,  # val/score = median_t_m + median_r_deg * this (best checkpoint)
        "seed": 0,
        "device": "cpu",  # Lightning accelerator: cpu | cuda | gpu | mps | auto
        "devices": 1,  # number of devices (GPUs); >1 uses DDP
        "strategy": "auto",  # Lightning strategy: auto | ddp | ddp_spawn | ...
        "precision": "32-true",  # Lightning precision, e.g. 16-mixed on GPUs
        "log_every_n_steps": 5,
        "check_val_every_n_epoch": 1,
        "progress_bar": True,  # tqdm progress bar
        "gradient_clip_val": 0.0,  # 0 = off
    },
    # LOCALIZED only when the pose's own calibrated covariance puts it within these bounds with
    # probability accuracy_level (localizers/precision_class.py; the precision class of `visloc eval`);
    # an APR with decimetre errors then publishes nothing at 25 cm / 2 deg: widen them for coarse use
    "decision": {
        "accuracy_m": 0.25,  # m; null = no bound
        "accuracy_deg": 2.0,  # deg; null = no bound
        "accuracy_level": 0.68,
    },
    "calibration": {
        "variance_scale": 1.0,  # multiply the validation error variances (>1 = more conservative)
        "min_sigma_m": 0.01,  # floor of each translation sigma (m); avoids overconfidence on tiny val sets
        "min_sigma_deg": 0.5,  # floor of each rotation sigma (deg)
        "region_margin_m": 1.0,  # mapped region = box of training camera centres grown by this (m)
        "region_margin_fraction": 0.1,  # ... or by this fraction of the box size, whichever is larger
        # REJECTED for images unlike the training images, and a covariance that grows with that
        # distance, both measured on the held-out training frames (models/apr/familiarity.py)
        "familiarity": {
            "enabled": True,  # false: no embedding test, the diagonal validation covariance above
            "k": 1,  # distance to the k-th nearest training embedding
            "quantile": 0.99,  # threshold: this quantile of the held-out frames' distances
        },
    },
}


# sections whose keys their owners check (the model factory, build_loss), not the strict merge
OPEN_SECTIONS = ("model", "loss")


def merge_strict(base: dict, override: dict | None) -> dict:
    """``override`` merged over the defaults ``base``; an unknown key is an error naming it and the valid ones."""
    return deep_merge(base, override, strict=True, open_sections=OPEN_SECTIONS)


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config {p} does not exist (see config/models/*.yaml)")
    cfg = load_yaml_file(p) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {p} must be a YAML mapping at the top level")
    return cfg


def apr_config(user_cfg: dict) -> dict:
    """Merge a user config over the defaults and check it."""
    cfg = merge_strict(DEFAULT_CONF, user_cfg)
    if "name" not in cfg["model"]:
        raise ValueError("config model.name is missing (e.g. posenet)")
    from ..models.registry import APR_MODELS

    APR_MODELS.check(cfg["model"]["name"])  # an unknown name fails before the dataset is read, not after
    d = cfg["data"]
    if d["image_width"] < 32 or d["image_height"] < 32:
        raise ValueError(f"data.image_width/height must be >= 32, got {d['image_width']}x{d['image_height']}")
    if d["val_split"] is None and not 0.0 < float(d["val_fraction"]) < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {d['val_fraction']}")
    t = cfg["train"]
    if t["scheduler"] not in ("constant", "cosine", "plateau"):
        raise ValueError(f"train.scheduler must be constant, cosine or plateau, got {t['scheduler']!r}")
    if t["optimizer"] not in ("adam", "adamw"):
        raise ValueError(f"train.optimizer must be adam or adamw, got {t['optimizer']!r}")
    cfg["train"]["stages"] = normalise_stages(t)
    return cfg


STAGE_KEYS = {"name", "epochs", "lr", "freeze", "unfreeze", "pose_loss_weight", "extra_loss_weights"}


def normalise_stages(train_cfg: dict) -> list[dict]:
    """Stages with every key filled in. No stages = one stage 'main' over all parameters.

    Stage keys: ``name``; ``epochs``; ``lr`` (default train.lr); ``freeze`` / ``unfreeze``: lists of
    parameter-name prefixes (model parameter names, e.g. ``backbone.``, ``head_position``; the
    loss weights are ``loss.``) applied in that order at the start of the stage, on top of the
    previous stage's state; ``pose_loss_weight`` (default 1; 0 disables the pose loss);
    ``extra_loss_weights``: {name: weight} for the model's ``extra_losses`` (default 1 each).
    """
    stages = train_cfg.get("stages") or []
    if not stages:
        return [_stage({"name": "main", "epochs": int(train_cfg["epochs"])}, train_cfg, 0)]
    if not isinstance(stages, list):
        raise ValueError("train.stages must be a list of {name, epochs, lr, freeze, unfreeze}")
    return [_stage(s, train_cfg, i) for i, s in enumerate(stages)]


def _stage(s: dict, train_cfg: dict, i: int) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"train.stages[{i}] must be a mapping, got {s!r}")
    unknown = set(s) - STAGE_KEYS
    if unknown:
        raise ValueError(f"train.stages[{i}]: unknown keys {sorted(unknown)}; known: {sorted(STAGE_KEYS)}")
    if "epochs" not in s or int(s["epochs"]) < 1:
        raise ValueError(f"train.stages[{i}] needs epochs >= 1")
    return {
        "name": str(s.get("name", f"stage{i}")),
        "epochs": int(s["epochs"]),
        "lr": float(s.get("lr", train_cfg["lr"])),
        "freeze": list(s.get("freeze") or []),
        "unfreeze": list(s.get("unfreeze") or []),
        "pose_loss_weight": float(s.get("pose_loss_weight", 1.0)),
        "extra_loss_weights": dict(s.get("extra_loss_weights") or {}),
    }


def override_epochs(stages: list[dict], epochs: int) -> list[dict]:
    """``--epochs N``: one stage gets N epochs; several stages are scaled proportionally (>= 1 each)."""
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    total = sum(s["epochs"] for s in stages)
    out = copy.deepcopy(stages)
    for s in out:
        s["epochs"] = max(1, round(s["epochs"] * epochs / total))
    return out
