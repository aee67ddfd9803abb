"""Training of the learned relative-pose network (paper 003): ``visloc train CONFIG --data D --out CKPT``
with ``task: relpose_net`` in CONFIG (see config/models/relpose_net*.yaml).

Config sections (every key optional; defaults in brackets)::

    model:  options of visloc_core.models.relpose.net.default_conf (backbone, use_biasnet, use_attention, ...)
    pairs:  train_split [train], val_split [test] (queries; references come from train_split; '' = none),
            scenes [all], max_distance_m [1.5], min_distance_m [0.05], max_angle_deg [45],
            max_pairs [2000], val_max_pairs [200], seed [0]
    train:  epochs [3], batch_size [16], lr [1e-4], weight_decay [1e-6] (paper: Adam, 1e-4, 1e-6, batch 16),
            sign_invariant [false], seed [0], num_workers [0], max_steps [-1], accelerator [cpu],
            devices [1], select_best [true]
            (keep the weights of the validation epoch with the lowest loss, as the paper keeps its best
            validated model), augment {crop [random], scale_jitter [0.1], brightness [0.2], contrast [0.2]}

Validation reports per-pair errors of the regressed E after projection to the essential manifold:
``rot_deg`` / ``tdir_deg`` for the adapter's best guess (sign of E picks the sign of t, smaller
rotation of the twisted pair), and ``*_oracle`` with the rotation / direction ambiguity resolved
against the truth (what the hypothesis filter can reach with consistent references).

Output: a checkpoint folder (visloc_core.models.relpose.checkpoint), written atomically. Ctrl-C
stops training and still writes the weights so far, marked ``"complete": false``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ..atomic import output_lock
from ..data.layout import Dataset
from ..data.torch_dataset import ImageTransform
from ..geometry import relative_pose, rotation_angle_deg, rotation_error_deg
from ..interrupt import Interrupted
from ..models.relpose.checkpoint import save_relpose_net
from ..models.relpose.net import RelPoseNet, essential_loss, merge_conf, pose_candidates, project_to_essential
from .fit import fit
from .options import TrainOptions
from .relpose_pairs import PairSampling, RelPosePairDataset, sample_pairs

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ metrics
def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def pair_errors(E_pred_33: np.ndarray, T_q_r_true: np.ndarray) -> dict[str, float]:
    """Errors of one regressed E against the true relative pose (degrees).

    ``rot_deg``, ``tdir_deg``: the best-guess candidate (first of :func:`pose_candidates`).
    ``rot_oracle_deg``: the better of the two rotations of E; ``tdir_oracle_deg``: angle between
    the lines of t and t_true (sign ignored). These are what the multi-reference filter can resolve.
    """
    E, _ = project_to_essential(E_pred_33)
    cands = pose_candidates(E)
    R_true, t_true = T_q_r_true[:3, :3], T_q_r_true[:3, 3]
    R0, t0 = cands[0]
    rot_all = [float(rotation_error_deg(R, R_true)) for R, _ in cands]
    tdir = _angle_deg(t0, t_true)
    return {
        "rot_deg": float(rotation_error_deg(R0, R_true)),
        "tdir_deg": tdir,
        "rot_oracle_deg": min(rot_all),
        "tdir_oracle_deg": min(tdir, 180.0 - tdir),
    }


def summarize_errors(errors: list[dict[str, float]]) -> dict[str, float]:
    """Medians of :func:`pair_errors` over pairs (keys prefixed ``median_``) and the pair count."""
    if not errors:
        return {"n_pairs": 0}
    out: dict[str, float] = {"n_pairs": len(errors)}
    for k in errors[0]:
        out[f"median_{k}"] = float(np.median([e[k] for e in errors]))
    return out


# ------------------------------------------------------------------------------------ lightning
class RelPoseNetModule(pl.LightningModule):
    """Adam on the paper's essential-matrix loss; validation loss and per-pair pose errors."""

    def __init__(self, model: RelPoseNet, lr: float, weight_decay: float, sign_invariant: bool, select_best: bool):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.sign_invariant = sign_invariant
        self.select_best = select_best
        self.best_val_loss = float("inf")
        self.best_state: dict | None = None
        self.best_epoch = -1
        self.history: list[dict] = []
        self._val_losses: list[float] = []
        self._val_errors: list[dict[str, float]] = []
        self._train_losses: list[float] = []

    def _forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch["image_q"], batch["image_r"], batch.get("semantic_q"), batch.get("semantic_r"))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = essential_loss(self._forward(batch), batch["E"], self.sign_invariant)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["E"].shape[0])
        self._train_losses.append(float(loss.detach()))
        return loss

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if loader is not None and hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(self.current_epoch)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        E = self._forward(batch)
        loss = essential_loss(E, batch["E"], self.sign_invariant)
        self._val_losses.extend([float(loss)] * E.shape[0])
        for Ek, Tk in zip(E.detach().cpu().double().numpy(), batch["T_q_r"].cpu().numpy()):
            self._val_errors.append(pair_errors(Ek, Tk))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val_losses, self._val_errors = [], []
            return
        val_loss = float(np.mean(self._val_losses)) if self._val_losses else float("nan")
        summary = summarize_errors(self._val_errors)
        self.log("val_loss", val_loss, prog_bar=True)
        row = {
            "epoch": self.current_epoch,
            "train_loss": float(np.mean(self._train_losses)) if self._train_losses else float("nan"),
            "val_loss": val_loss,
            **summary,
        }
        self.history.append(row)
        logger.info("epoch %d: %s", self.current_epoch, {k: round(v, 4) for k, v in row.items()})
        if self.select_best and val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, self.current_epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        self._val_losses, self._val_errors, self._train_losses = [], [], []

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


# ---------------------------------------------------------------------------------------- train
def _num_classes(ds: Dataset) -> int:
    classes = ds.classes
    return max(classes) + 1 if classes else 0


def build_pair_sets(
    ds: Dataset, cfg: dict, model_conf: dict
) -> tuple[RelPosePairDataset, RelPosePairDataset | None, dict]:
    """Training and validation pair datasets from the config (see module docstring)."""
    pc = dict(cfg.get("pairs") or {})
    tc = dict(cfg.get("train") or {})
    scenes = pc.get("scenes")
    train_split = pc.get("train_split", "train")
    val_split = pc.get("val_split", "test")
    train_frames = [f for f in ds.frames(train_split) if scenes is None or f.scene in scenes]
    sampling = PairSampling.from_cfg(pc)
    train_pairs = sample_pairs(train_frames, train_frames, sampling, same_set=True)
    W, H = int(model_conf["image_width"]), int(model_conf["image_height"])
    aug = {"crop": "random", "scale_jitter": 0.1, "brightness": 0.2, "contrast": 0.2, **(tc.get("augment") or {})}
    with_sem = bool(model_conf["use_biasnet"])
    dil = list(model_conf["dilate_classes"])
    seed = int(tc.get("seed", 0))
    train_set = RelPosePairDataset(
        ds, train_frames, train_frames, train_pairs, ImageTransform(W, H, **aug), with_sem, dil,
        int(model_conf["dilate_kernel"]), seed,
    )  # fmt: skip
    val_set = None
    n_val = 0
    if val_split and val_split in ds.manifest.get("splits", {}):
        val_frames = [f for f in ds.frames(val_split) if scenes is None or f.scene in scenes]
        vs = PairSampling.from_cfg(pc, max_pairs_key="val_max_pairs")
        if "val_max_pairs" not in pc:
            vs.max_pairs = 200
        val_pairs = sample_pairs(val_frames, train_frames, vs)
        n_val = len(val_pairs)
        if val_pairs:
            val_set = RelPosePairDataset(
                ds, val_frames, train_frames, val_pairs, ImageTransform(W, H, "center"), with_sem, dil,
                int(model_conf["dilate_kernel"]), seed,
            )  # fmt: skip
    info = {
        "train_split": train_split,
        "val_split": val_split,
        "scenes": scenes if scenes is not None else ds.scenes,
        "sampling": vars(sampling),
        "n_train_pairs": len(train_pairs),
        "n_val_pairs": n_val,
        "augment": aug,
    }
    return train_set, val_set, info


def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path:
    """Train the relative-pose network on pairs of ``data`` and write a checkpoint folder ``out``
    (locked for the whole run: a second training into ``out`` fails at once)."""
    with output_lock(out, "--out"):
        return _train_locked(cfg, data, Path(out), opts or TrainOptions())


def _train_locked(cfg: dict, data: str | Path, out: Path, opts: TrainOptions) -> Path:
    overwrite = opts.overwrite
    if opts.resume:
        raise ValueError(
            "relpose_net training has no --resume: an interrupted run writes its weights so far to --out "
            "(complete: false); start a new run with --overwrite"
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    ds = Dataset(data)
    model_cfg = dict(cfg.get("model") or {})
    tc = dict(cfg.get("train") or {})
    if opts.epochs:
        tc["epochs"] = int(opts.epochs)
    if opts.device:
        tc["accelerator"] = str(opts.device)
    if model_cfg.get("use_biasnet", True):
        n_cls = _num_classes(ds)
        if n_cls == 0:
            raise ValueError(
                f"{ds.root} lists no semantic classes in its manifest, but model.use_biasnet is true; "
                "set model.use_biasnet: false or use a dataset with semantic/ class maps"
            )
        model_cfg.setdefault("num_classes", n_cls)
        if model_cfg["num_classes"] < n_cls:
            raise ValueError(f"model.num_classes={model_cfg['num_classes']} < {n_cls} classes of {ds.root}")
    conf = merge_conf(model_cfg)
    seed = int(tc.get("seed", 0))
    pl.seed_everything(seed, workers=True)
    logger.info("relpose_net config: %s", {"model": conf, "pairs": cfg.get("pairs"), "train": tc})
    train_set, val_set, data_info = build_pair_sets(ds, cfg, conf)
    logger.info("pairs: %d train, %d val", data_info["n_train_pairs"], data_info["n_val_pairs"])
    model = RelPoseNet(conf)
    bs = int(tc.get("batch_size", 16))
    nw = int(tc.get("num_workers", 0))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=bs, shuffle=True, num_workers=nw, drop_last=False)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=bs, shuffle=False, num_workers=nw) if val_set else None
    module = RelPoseNetModule(
        model,
        lr=float(tc.get("lr", 1e-4)),
        weight_decay=float(tc.get("weight_decay", 1e-6)),
        sign_invariant=bool(tc.get("sign_invariant", False)),
        select_best=bool(tc.get("select_best", True)) and val_loader is not None,
    )
    trainer = pl.Trainer(
        accelerator=str(tc.get("accelerator", "cpu")),
        devices=tc.get("devices", 1),
        max_epochs=int(tc.get("epochs", 3)),
        max_steps=int(tc.get("max_steps", -1)),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=int(tc.get("val_every_n_epochs", 1)),
        deterministic=False,
    )
    t0 = time.time()
    interrupted: Interrupted | None = None
    try:
        fit(trainer, module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    except Interrupted as exc:  # keep the weights so far (below), then stop as interrupted
        interrupted = exc
    complete = interrupted is None
    if module.best_state is not None:
        model.load_state_dict(module.best_state)
    last_val = module.history[-1] if module.history else {}
    best = next((h for h in module.history if h["epoch"] == module.best_epoch), last_val)
    meta = {
        "complete": complete,
        "created_unix": time.time(),
        "train_seconds": time.time() - t0,
        "dataset": str(Path(data).resolve()),
        "classes": {str(k): v for k, v in ds.classes.items()},
        "image_size": [conf["image_width"], conf["image_height"]],
        "convention": "E_q_r = [t/|t|]x R with (R, t) = T_q_r (reference camera -> query camera); "
        "network input order (query, reference); x_q^T E x_r = 0",
        "data": data_info,
        "train": {"epochs_run": trainer.current_epoch, "steps": trainer.global_step, **tc},
        "selected_epoch": module.best_epoch if module.best_state is not None else trainer.current_epoch - 1,
        "val": best,
        "history": module.history,
    }
    if not complete:
        logger.warning("training interrupted: writing the weights so far to %s (complete: false)", out)
    save_relpose_net(model, meta, cfg, out, overwrite=overwrite)
    logger.info("wrote relative-pose network checkpoint %s", out)
    if interrupted is not None:
        raise Interrupted(interrupted.signum, f"the weights so far are written to {out} (complete: false)")
    return out


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    ref_split: str = "train",
    pairs_cfg: dict | None = None,
    batch_size: int = 16,
) -> dict:
    """Relative-pose errors of a trained network on pairs (query from ``split``, reference from
    ``ref_split``) sampled with the checkpoint's pair rules (overridable by ``pairs_cfg``).
    Returns medians of :func:`pair_errors`, the mean loss and the pair count."""
    from ..models.relpose.checkpoint import load_relpose_net

    model, meta = load_relpose_net(checkpoint)
    ds = Dataset(data)
    pc = {**(meta.get("data", {}).get("sampling") or {}), **(pairs_cfg or {})}
    pc.setdefault("val_max_pairs", pc.get("max_pairs", 200))
    scenes = meta.get("data", {}).get("scenes")
    queries = [f for f in ds.frames(split) if not scenes or f.scene in scenes]
    refs = [f for f in ds.frames(ref_split) if not scenes or f.scene in scenes]
    pairs = sample_pairs(queries, refs, PairSampling.from_cfg(pc, max_pairs_key="val_max_pairs"))
    conf = model.conf
    items = RelPosePairDataset(
        ds, queries, refs, pairs, ImageTransform(conf["image_width"], conf["image_height"]), bool(conf["use_biasnet"]),
        list(conf["dilate_classes"]), int(conf["dilate_kernel"]),
    )  # fmt: skip
    errors, losses = [], []
    # Context: the rotation error of predicting 'no rotation' is the true relative rotation angle.
    true_rot = [
        float(rotation_angle_deg(relative_pose(refs[j].T_world_cam, queries[i].T_world_cam)[:3, :3])) for i, j in pairs
    ]
    for batch in torch.utils.data.DataLoader(items, batch_size=batch_size):
        E = model(batch["image_q"], batch["image_r"], batch.get("semantic_q"), batch.get("semantic_r"))
        losses.extend((E - batch["E"]).flatten(1).norm(dim=1).tolist())
        errors.extend(pair_errors(Ek, Tk) for Ek, Tk in zip(E.double().numpy(), batch["T_q_r"].numpy()))
    return {
        "split": split,
        "ref_split": ref_split,
        "loss": float(np.mean(losses)),
        **summarize_errors(errors),
        "median_true_rot_deg": float(np.median(true_rot)) if true_rot else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m visloc_core.training.relpose_net eval CHECKPOINT --data DATASET``: pair errors (JSON)."""
    import json

    p = argparse.ArgumentParser(
        prog="python -m visloc_core.training.relpose_net",
        description="Evaluate a relative-pose network checkpoint on image pairs of a dataset.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="median rotation / translation-direction errors on query-reference pairs")
    e.add_argument("checkpoint", help="checkpoint folder written by `visloc train ... task: relpose_net`")
    e.add_argument("--data", required=True, help="dataset folder (visloc layout)")
    e.add_argument("--split", default="test", help="split of the query frames (default: test)")
    e.add_argument("--ref-split", default="train", help="split of the reference frames (default: train)")
    e.add_argument("--max-pairs", type=int, default=400, help="random subset of eligible pairs (0 = all)")
    e.add_argument("--out", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.ref_split, {"val_max_pairs": args.max_pairs})
    text = json.dumps(res, indent=2)
    if args.out:
        tmp = Path(args.out).with_suffix(".json.partial")
        tmp.write_text(text)
        tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
