"""``task: apr``: train an absolute pose regressor with PyTorch Lightning and write its artifact.

``train(cfg, data, out, opts)`` (called by ``visloc train``):

1. merges the config over training/config.DEFAULT_CONF and applies the command-line overrides;
2. trains in a work folder ``<ARTIFACT>.train/`` (kept after training: ``checkpoints/last.ckpt``
   for ``--resume``, ``checkpoints/best.ckpt`` by ``val/score``, ``logs/csv/version_N/metrics.csv``,
   ``logs/tensorboard/version_N``). An interrupted run (SIGINT / Ctrl-C or SIGTERM) keeps its
   checkpoints, writes no artifact and raises visloc_core.interrupt.Interrupted; ``--resume``
   continues from the last finished epoch;
3. reloads the best checkpoint, measures the COVARIANCE CALIBRATION on the validation frames and
   writes the artifact folder atomically (models/apr/artifact.py).

Covariance calibration (stored in artifact.json, used by localizers/apr.py): with the best weights
and validation preprocessing, residuals on every validation frame are
``dt = t_est - t_gt`` (world frame, m) and ``dw = log(R_gt R_est^T)`` (rotation vector, world frame,
rad; R_true = exp([dw]x) R_est as in localizers/base.py). The diagonal covariance is the per-axis
mean of squares (second moment, so a bias counts as error), times ``calibration.variance_scale``,
floored at ``min_sigma_m`` / ``min_sigma_deg``. The fractions of validation frames whose 3-D
Mahalanobis distance under this covariance is within 1/2/3 sigma are stored as ``coverage``
(chi-square with 3 dof expects 0.199 / 0.739 / 0.971).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from scipy.stats import chi2

from ..atomic import output_lock
from ..config import log_config
from ..geometry import R_from_quat_wxyz, rotvec_from_R
from ..models.apr.artifact import SceneStats, write_apr_artifact
from .apr_data import APRDataModule
from .apr_module import APRModule
from .checkpoint_io import AtomicCheckpointIO
from .config import apr_config, override_epochs
from .fit import fit
from .options import TrainOptions

log = logging.getLogger(__name__)

# P(chi2_3 <= k^2): the fraction of 3-D Gaussian errors within k sigma (Mahalanobis)
CHI2_3_WITHIN = {k: float(chi2.cdf(k * k, 3)) for k in (1, 2, 3)}


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".train")


@torch.inference_mode()
def predict_world(module: APRModule, loader) -> dict[str, np.ndarray]:
    """Run ``module`` over a loader; returns world-frame predictions and ground truth (numpy)."""
    module.eval()
    pos_est, quat_est, pos_gt, quat_gt, scene_est, scene_gt = [], [], [], [], [], []
    classifies = False
    for batch in loader:
        img = batch["image"].to(module.device)
        sid = batch["scene_id"].to(module.device)
        out = module.model(img, sid)
        classifies = classifies or "scene_logits_BS" in out
        s = module.predicted_scene(out, {"scene_id": sid})
        pos_est.append(module.denormalise_position(out["position_B3"], s).double().cpu().numpy())
        q = out["quat_B4"].double()
        quat_est.append((q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy())
        pos_gt.append(batch["position"].double().numpy())
        quat_gt.append(batch["quat_wxyz"].double().numpy())
        scene_est.append(s.cpu().numpy())
        scene_gt.append(sid.cpu().numpy())
    return {
        "position_est": np.concatenate(pos_est),
        "quat_est": np.concatenate(quat_est),
        "position_gt": np.concatenate(pos_gt),
        "quat_gt": np.concatenate(quat_gt),
        "scene_est": np.concatenate(scene_est),
        "scene_gt": np.concatenate(scene_gt),
        "classifies_scene": classifies,
    }


def residuals(pred: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """World-frame residuals: dt (N, 3) metres, dw (N, 3) rad with R_gt = exp([dw]x) R_est."""
    dt = pred["position_est"] - pred["position_gt"]
    R_est, R_gt = R_from_quat_wxyz(pred["quat_est"]), R_from_quat_wxyz(pred["quat_gt"])
    dw = rotvec_from_R(R_gt @ np.swapaxes(R_est, -1, -2))
    return dt, dw


def coverage(d_N3: np.ndarray, var_3: np.ndarray) -> dict[str, float]:
    """Fraction of rows whose Mahalanobis distance under diag(var_3) is within 1, 2, 3 sigma."""
    m = np.sqrt((d_N3**2 / var_3).sum(axis=1))
    return {f"within_{k}_sigma": float(np.mean(m <= k)) for k in (1, 2, 3)}


def calibrate(dt: np.ndarray, dw: np.ndarray, cal_cfg: dict) -> dict:
    """Diagonal covariance from validation residuals (see module docstring)."""
    scale = float(cal_cfg["variance_scale"])
    t_var = np.maximum((dt**2).mean(axis=0) * scale, float(cal_cfg["min_sigma_m"]) ** 2)
    r_var = np.maximum((dw**2).mean(axis=0) * scale, np.deg2rad(float(cal_cfg["min_sigma_deg"])) ** 2)
    t_err = np.linalg.norm(dt, axis=1)
    r_err = np.rad2deg(np.linalg.norm(dw, axis=1))
    return {
        "method": (
            "diagonal covariance = per-axis mean of squared validation residuals (world frame; rotation as "
            "rotation vector of R_gt R_est^T) x variance_scale, floored at min_sigma"
        ),
        "translation_var_m2": [float(x) for x in t_var],
        "rotation_var_rad2": [float(x) for x in r_var],
        "variance_scale": scale,
        "n_frames": len(dt),
        "val_median_translation_m": float(np.median(t_err)),
        "val_median_rotation_deg": float(np.median(r_err)),
        "coverage_translation": coverage(dt, t_var),
        "coverage_rotation": coverage(dw, r_var),
        "coverage_expected_gaussian": {f"within_{k}_sigma": v for k, v in CHI2_3_WITHIN.items()},
    }


class _RankWork(pl.Callback):
    """Counts the training batches and samples this process (rank) went through."""

    def __init__(self) -> None:
        self.batches = 0
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        first = batch["image"] if isinstance(batch, dict) else batch[0]
        self.samples += len(first)


def _distributed_record(trainer: pl.Trainer, module: pl.LightningModule, work: _RankWork) -> dict:
    """Every rank's parameter checksum (float64 sum and sum of squares) and its share of the training
    batches, gathered from all ranks: a collective, so every rank calls it. DDP keeps replicas identical
    (same initial weights, averaged gradients): ``in_sync`` says whether they ended identical."""
    flat = torch.cat([p.detach().double().flatten().cpu() for p in module.parameters()])
    local = torch.tensor(
        [float(trainer.global_rank), flat.sum().item(), (flat * flat).sum().item(), work.batches, work.samples],
        dtype=torch.float64,
    )
    rows = trainer.strategy.all_gather(local).reshape(-1, local.numel()).cpu().numpy()
    ranks = [
        {
            "rank": int(r[0]),
            "param_sum": float(r[1]),
            "param_sum_sq": float(r[2]),
            "batches": int(r[3]),
            "samples": int(r[4]),
        }
        for r in rows
    ]
    same = all(r["param_sum"] == ranks[0]["param_sum"] and r["param_sum_sq"] == ranks[0]["param_sum_sq"] for r in ranks)
    return {
        "world_size": int(trainer.world_size),
        "strategy": type(trainer.strategy).__name__,
        "in_sync": same,
        "ranks": ranks,
    }


def _trainer(cfg: dict, work: Path, max_epochs: int, n_batches: int) -> tuple[pl.Trainer, pl.callbacks.ModelCheckpoint]:
    t = cfg["train"]
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints",
        filename="best",
        monitor="val/score",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only writes when the monitored checkpoint improves; resume needs the
    # newest epoch, so a second unmonitored callback overwrites last.ckpt after every epoch.
    last = pl.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    loggers = [
        pl.loggers.CSVLogger(work / "logs", name="csv"),
        pl.loggers.TensorBoardLogger(work / "logs", name="tensorboard", default_hp_metric=False),
    ]
    callbacks: list[pl.Callback] = [ckpt, last, _RankWork()]
    if t["progress_bar"]:
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=1))
    strategy = t["strategy"]
    if strategy == "ddp" or (strategy == "auto" and str(t["devices"]) not in ("1", "auto")):
        # Parameters without a gradient in a step (the backbone's unused ImageNet classifier, parameters
        # frozen by a stage) must be marked unused in every step: with Lightning's plain "ddp", DDP leaves
        # their gradient buckets unreduced (replicas drift apart silently) and stops at the second step
        # ("Expected to have finished reduction in the prior iteration"). test/test_apr_ddp.py.
        strategy = "ddp_find_unused_parameters_true"
    trainer = pl.Trainer(
        accelerator=t["device"],
        devices=t["devices"],
        strategy=strategy,
        precision=t["precision"],
        max_epochs=max_epochs,
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=max(1, min(int(t["log_every_n_steps"]), n_batches)),
        check_val_every_n_epoch=int(t["check_val_every_n_epoch"]),
        enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=False,
        gradient_clip_val=float(t["gradient_clip_val"]) or None,
        num_sanity_val_steps=0,
        default_root_dir=str(work),
        plugins=[AtomicCheckpointIO()],
    )
    return trainer, ckpt


def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path | None:
    """Train an APR model on dataset ``data`` and write the artifact ``out``; returns its path.
    Interrupted (SIGINT, SIGTERM): raises visloc_core.interrupt.Interrupted, checkpoints are kept for
    ``--resume``.

    ``out`` and the work folder are locked for the whole run (visloc_core.atomic.output_lock): a
    second training into either fails at once instead of sharing checkpoints."""
    opts = opts or TrainOptions()
    out = Path(out)
    work = Path(opts.work_dir or work_dir_for(out))
    if _launched_as_secondary_rank():  # rank 0 of this run holds the locks and checks the outputs
        return _train_locked(cfg, data, out, work, opts, secondary=True)
    with output_lock(out, "--out"), output_lock(work, "--work-dir"):
        return _train_locked(cfg, data, out, work, opts)


def check_outputs(out: Path, work: Path, last: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing ``out`` without --overwrite, a --resume without a checkpoint, and a work folder
    holding an earlier run's checkpoints without --resume / --overwrite (which starts over)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint {last} (train once without --resume first)")
    if not resume and (work / "checkpoints").exists():
        if not overwrite:
            raise FileExistsError(
                f"{work} holds checkpoints of an earlier run; pass --resume to continue it or --overwrite to start over"
            )
        shutil.rmtree(work)


def _launched_as_secondary_rank() -> bool:
    """True in a process that a DDP launcher started for a rank other than 0: Lightning re-runs the
    command with LOCAL_RANK / NODE_RANK set, torchrun sets RANK. Such a process joins the run of its
    rank 0, which holds the output locks and alone writes checkpoints and the artifact."""
    return any(int(os.environ.get(k) or 0) != 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _train_locked(
    cfg: dict,
    data: str | Path,
    out: Path,
    work: Path,
    opts: TrainOptions,
    secondary: bool = False,
    make_module=APRModule,
    extra_files: dict[str, Path] | None = None,
    extra_training: dict | None = None,
) -> Path | None:
    """``make_module(cfg, scenes_json)``: the Lightning module (an APRModule; trainers with other
    losses, e.g. PMNet's, pass their subclass); ``extra_files`` / ``extra_training``: copied into the
    artifact / its training record."""
    cfg = apr_config(cfg)
    if opts.device:
        cfg["train"]["device"] = opts.device
    if opts.epochs:
        cfg["train"]["stages"] = override_epochs(cfg["train"]["stages"], int(opts.epochs))
        cfg["train"]["epochs"] = sum(s["epochs"] for s in cfg["train"]["stages"])
    if not secondary:
        log_config(log, "train", cfg)
    resume = opts.resume
    overwrite = opts.overwrite
    last = work / "checkpoints" / "last.ckpt"
    if not secondary:  # a secondary DDP rank: rank 0 checked (and with --overwrite emptied) the outputs
        check_outputs(out, work, last, resume, overwrite)
    work.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(int(cfg["train"]["seed"]), workers=True)
    dm = APRDataModule(cfg, str(data))
    module = make_module(cfg, [s.to_json() for s in dm.scenes])
    if resume:
        # Normalisation and regions must be those the checkpoint was trained with.
        saved = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["scenes"]
        module = make_module(cfg, saved)
        scenes = [SceneStats.from_json(s) for s in saved]
    else:
        scenes = dm.scenes
    max_epochs = sum(s["epochs"] for s in cfg["train"]["stages"])
    log.info("training %s on %s for %d epochs (work folder %s)", cfg["model"]["name"], data, max_epochs, work)
    try:
        trainer, ckpt = _trainer(cfg, work, max_epochs, len(dm.train_dataloader()))
    except MisconfigurationException as err:  # e.g. --device cuda on a machine without a GPU
        raise ValueError(f"train.device/devices/strategy/precision: {err}") from err
    t0 = time.time()
    # SIGINT / SIGTERM: Interrupted, no artifact; the last finished epoch's checkpoint stays for --resume
    fit(trainer, module, last, datamodule=dm, ckpt_path=str(last) if resume else None)
    distributed = None
    if trainer.world_size > 1:  # every rank takes part in the gather, then only rank 0 goes on
        rank_work = next(c for c in trainer.callbacks if isinstance(c, _RankWork))
        distributed = _distributed_record(trainer, module, rank_work)
        log.info("distributed training: %s", distributed)
    if not trainer.is_global_zero:
        return out  # DDP: only rank 0 calibrates and writes the artifact
    best_path = ckpt.best_model_path or str(last)
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    module.to("cpu")

    pred = predict_world(module, dm.val_dataloader())
    dt, dw = residuals(pred)
    calibration = calibrate(dt, dw, cfg["calibration"])
    extra = {"metrics.csv": None}
    fam_cfg = cfg["calibration"].get("familiarity") or {}
    if fam_cfg.get("enabled", True):
        # How far an image may be from the training images, and how the error grows with that
        # distance: measured on the held-out training frames (models/apr/familiarity.py).
        from torch.utils.data import Subset

        from ..data.torch_dataset import PoseDataset
        from ..models.apr.familiarity import (
            EMBEDDINGS_FILE,
            embed_loader,
            fit_familiarity,
            heldout_decision,
            knn_distance,
        )

        d = cfg["data"]
        train_plain = PoseDataset(dm.dataset, d["train_split"], dm.val_transform, dm.scene_names,
                                  seed=int(cfg["train"]["seed"]))  # fmt: skip
        idx = dm.train_set.indices if isinstance(dm.train_set, Subset) else list(range(len(train_plain)))
        emb_train = embed_loader(module.model, dm._loader(Subset(train_plain, list(idx)), shuffle=False))
        emb_val = embed_loader(module.model, dm.val_dataloader())
        if emb_train.size and emb_val.size:
            calibration["familiarity"] = fit_familiarity(
                emb_train, emb_val, dt, dw, int(fam_cfg.get("k", 1)), float(fam_cfg.get("quantile", 0.99)),
                float(cfg["calibration"]["min_sigma_m"]), float(cfg["calibration"]["min_sigma_deg"]),
            )  # fmt: skip
            # the decision (LOCALIZED only within the precision class) on frames not fitted on
            calibration["familiarity"]["heldout_decision"] = hd = heldout_decision(
                knn_distance(emb_val, emb_train, int(fam_cfg.get("k", 1))), dt, dw, cfg.get("decision"),
                float(cfg["calibration"]["min_sigma_m"]), float(cfg["calibration"]["min_sigma_deg"]),
            )  # fmt: skip
            log.info(
                "decision on held-out frames (2-fold): %d of %d published, precision %s",
                hd["n_published"], hd["n"], hd["precision"],
            )  # fmt: skip
            np.save(work / EMBEDDINGS_FILE, emb_train.astype(np.float16))
            extra[EMBEDDINGS_FILE] = work / EMBEDDINGS_FILE
        else:
            log.warning(
                "%s has no backbone embedding: no familiarity test (REJECTED by region only)", cfg["model"]["name"]
            )
    log.info(
        "calibration on %d validation frames: sigma_t %s m, sigma_r %s deg; within 1/2/3 sigma: t %s, r %s",
        len(dt),
        np.round(np.sqrt(calibration["translation_var_m2"]), 3).tolist(),
        np.round(np.rad2deg(np.sqrt(calibration["rotation_var_rad2"])), 2).tolist(),
        list(calibration["coverage_translation"].values()),
        list(calibration["coverage_rotation"].values()),
    )
    training = {
        "dataset": str(Path(data).resolve()),
        "epochs": int(trainer.current_epoch),
        "best_epoch": int(best.get("epoch", -1)),
        "best_val_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "stages": cfg["train"]["stages"],
        "n_train_frames": len(dm.train_set),
        "n_val_frames": len(dm.val_set),
        "wall_seconds_this_run": time.time() - t0,
        "loss_weights": {n: float(p.detach()) for n, p in module.loss.named_parameters()},
        # multi-scene models: fraction of validation frames whose scene the model picks right
        "val_scene_accuracy": float(np.mean(pred["scene_est"] == pred["scene_gt"]))
        if pred["classifies_scene"]
        else None,
        "work_dir": str(work.resolve()),
    }
    if distributed is not None:
        training["distributed"] = distributed
    training.update(extra_training or {})
    extra.update(extra_files or {})
    csv_logger = trainer.loggers[0]
    extra["metrics.csv"] = Path(csv_logger.log_dir) / "metrics.csv"
    path = write_apr_artifact(
        out,
        module.model,
        cfg,
        scenes,
        calibration,
        training,
        extra,
        overwrite=overwrite,
        training_camera_input=dm.training_camera_input,
    )
    log.info("wrote artifact %s", path)
    return path
