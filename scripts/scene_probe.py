"""Probe a multi-scene APR model's scene classifier on cached features (issue 15).

Usage (from the repo root, in .venv):

    visloc synth indoor_room plaza --out runs/ms
    python scripts/scene_probe.py config/models/mvl_loc.yaml --data runs/ms --steps 300 --out runs/probe_mvl.json

The model of CONFIG is built with its pretrained image encoder, which stays frozen: its features of
every training frame (the ``train`` split) and query frame (``test`` split) are computed once, at the
config's input size with the validation preprocessing (centre crop, no augmentation; with
``--augment-copies N``, the training frames are instead taken N times through the config's training
augmentation, ``data.augment``: random crop, zoom and colour jitter, a different draw each), and the rest
of the model trains for ``--steps`` steps with the config's pose loss + scene NLL, optimiser,
learning rate, weight decay and batch size (training/cached_features.py). Reported (printed, and
written atomically as JSON with ``--out``):

- at initialisation: the scene logits' spread (mean and std over frames of each logit minus the
  logits' mean) and the gradient norm of the pose loss and of the scene NLL on every parameter group
  (one batch of ``--grad-batch`` training frames, training mode);
- every ``--eval-every`` steps: scene accuracy on the query frames, overall and per condition, and on
  the training frames; the queries' median pose errors (m, deg; positions de-normalised with the
  predicted scene's statistics, as the localizer does).

This isolates the classifier's ability to learn from what full training adds (augmentation,
backbone fine-tuning, 15+ epochs); ``visloc train`` + ``visloc eval`` measure the real thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from visloc_core.config import apply_overrides
from visloc_core.data.layout import Dataset
from visloc_core.data.torch_dataset import ImageTransform, PoseDataset
from visloc_core.geometry.torch_ops import quat_angle_deg
from visloc_core.models.registry import SceneSpec, build_apr_model
from visloc_core.training.apr_data import scene_stats
from visloc_core.training.cached_features import (
    cache_features,
    gradient_norms,
    predict,
    predict_scenes,
    train_on_features,
)
from visloc_core.training.config import apr_config, load_yaml
from visloc_core.training.losses import build_loss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="see the module docstring")
    p.add_argument("config", help="model config (config/models/ms_hyperpose.yaml or mvl_loc.yaml)")
    p.add_argument("--data", required=True, help="dataset with train and test splits of several scenes")
    p.add_argument("--scenes", nargs="+", default=None, help="scenes (default: every scene of the train split)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate the scene accuracy every N steps")
    p.add_argument("--grad-batch", type=int, default=64, help="frames of the gradient-norm batch")
    p.add_argument(
        "--augment-copies",
        type=int,
        default=0,
        metavar="N",
        help="train on N augmented copies of every training frame (the config's data.augment; 0 = none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", default=None, help="JSON file for the results")
    return p.parse_args(argv)


def load_frames(
    ds: Dataset, split: str, transform: ImageTransform, scenes: list[str], copies: int = 1
) -> tuple[dict, list]:
    data = PoseDataset(ds, split, transform, scenes)
    items = []
    for epoch in range(copies):  # a different augmentation draw per copy (PoseDataset seeds by epoch)
        data.set_epoch(epoch)
        items += [data[i] for i in range(len(data))]
    conds = {s.key: s.condition for s in ds.sequences(split)}
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "position": torch.stack([it["position"] for it in items]),
        "quat_wxyz": torch.stack([it["quat_wxyz"] for it in items]),
        "scene_id": torch.stack([it["scene_id"] for it in items]),
    }
    return batch, [conds[f"{f.scene}/{f.sequence}"] for f in data.frames] * copies


def logit_spread(logits_NS: torch.Tensor) -> dict:
    centred = logits_NS - logits_NS.mean(dim=1, keepdim=True)
    return {"mean": centred.mean(0).tolist(), "std": centred.std(0).tolist()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = apr_config(apply_overrides(load_yaml(args.config), args.set))
    ds = Dataset(args.data)
    scenes = args.scenes or sorted({f.scene for f in ds.frames("train")})
    d = cfg["data"]
    transform = ImageTransform(int(d["image_width"]), int(d["image_height"]), crop="center")
    torch.manual_seed(args.seed)
    specs = [SceneSpec(s, str(ds.scene_info(s).get("description", ""))) for s in scenes]
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_apr_model(cfg["model"]["name"], model_cfg, specs)
    loss_fn = build_loss(cfg["loss"])
    t0 = time.process_time()
    if args.augment_copies > 0:
        aug = ImageTransform(int(d["image_width"]), int(d["image_height"]), **d["augment"])
        train, _ = load_frames(ds, "train", aug, scenes, args.augment_copies)
    else:
        train, _ = load_frames(ds, "train", transform, scenes)
    test, test_cond = load_frames(ds, "test", transform, scenes)
    stats = [scene_stats(s, "", [f for f in ds.frames("train") if f.scene == s], 1.0, 0.1) for s in scenes]
    mean = torch.tensor(np.stack([s.position_mean for s in stats]), dtype=torch.float32)
    scale = torch.tensor([s.position_scale for s in stats], dtype=torch.float32)
    test_position_m = test["position"].clone()
    for b in (train, test):
        b["position"] = (b["position"] - mean[b["scene_id"]]) / scale[b["scene_id"], None]
    f_train = cache_features(model, train.pop("image"))
    f_test = cache_features(model, test.pop("image"))
    cpu_cache = time.process_time() - t0

    result: dict = {
        "config": args.config,
        "model": cfg["model"]["name"],
        "scenes": scenes,
        "n_train": int(train["scene_id"].numel()),
        "n_test": int(test["scene_id"].numel()),
        "optimiser": {k: cfg["train"][k] for k in ("optimizer", "lr", "weight_decay")},
        "augment_copies": args.augment_copies,
        "augment": d["augment"] if args.augment_copies > 0 else None,
        "batch_size": int(d["batch_size"]),
        "torch_threads": torch.get_num_threads(),
        "cpu_seconds_features": cpu_cache,
    }
    model.eval()
    with torch.no_grad():
        result["init_logit_spread_test"] = logit_spread(model.forward_features(f_test)["scene_logits_BS"])
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(result["n_train"], generator=g)[: args.grad_batch]
    result["init_gradient_norms"] = gradient_norms(
        model, loss_fn, {k: v[idx] for k, v in f_train.items()}, {k: v[idx] for k, v in train.items()}
    )

    conds = np.array(test_cond)
    curve = []

    def evaluate(step: int, hist: list[dict]) -> None:
        out = predict(model, f_test)
        sid = out["scene_logits_BS"].argmax(dim=1)
        ok_test = (sid == test["scene_id"]).numpy()
        ok_train = (predict_scenes(model, f_train) == train["scene_id"]).numpy()
        t_err = (out["position_B3"] * scale[sid, None] + mean[sid] - test_position_m).norm(dim=1)
        r_err = quat_angle_deg(out["quat_B4"], test["quat_wxyz"])
        point = {
            "step": step,
            "train_acc": float(ok_train.mean()),
            "test_acc": float(ok_test.mean()),
            "test_acc_per_condition": {c: float(ok_test[conds == c].mean()) for c in sorted(set(test_cond))},
            "test_median_m_deg": [float(t_err.median()), float(r_err.median())],
            "mean_losses_since_last": {k: float(np.mean([h[k] for h in hist[-args.eval_every :]])) for k in hist[-1]},
        }
        curve.append(point)
        print(json.dumps(point), flush=True)

    t1 = time.process_time()
    train_on_features(
        model,
        loss_fn,
        f_train,
        train,
        steps=args.steps,
        batch_size=int(d["batch_size"]),
        lr=float(cfg["train"]["lr"]),
        weight_decay=float(cfg["train"]["weight_decay"]),
        optimizer=cfg["train"]["optimizer"],
        seed=args.seed,
        every=args.eval_every,
        callback=evaluate,
    )
    t_train = time.process_time() - t1  # includes the evaluations
    result["curve"] = curve
    result["cpu_seconds_training_and_evaluation"] = t_train
    model.eval()
    with torch.no_grad():
        result["final_logit_spread_test"] = logit_spread(model.forward_features(f_test)["scene_logits_BS"])
    text = json.dumps(result, indent=1)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
