"""``task: poseformer_sem``: PoseFormer with semantic NeRF supervision, paper 000's three stages.

``visloc train config/models/poseformer_sem.yaml --data DATASET --out ARTIFACT [--resume]``

1. Stage 1, pose regression: PoseFormer trained as ``config/models/poseformer.yaml`` says
   (``stage1.config``, a path relative to this config's folder), on the one scene ``scene``; or an
   existing PoseFormer artifact (``stage1.artifact``).
2. Stage 2, semantic neural rendering: a radiance field with semantic head (``stage2.config``,
   default ``nerf.yaml``: RGB + 4e-2 x cross-entropy, Adam 1e-3-style exponential decay; see
   training/nerf.py), or an existing NeRF artifact (``stage2.artifact``).
3. Stage 3, semantic-guided refinement: the backbone is frozen except its batch-norm layers
   (affine parameters trainable, running statistics updated), the pose loss is off, the learned
   loss weights are frozen; the only loss is eq. 12 with weights 0.7 / 0.3:
   ``L = 0.7 CE(S, S_gt) + 0.3 SAM(softmax S, onehot S_gt)`` where ``S`` are the class logits the
   (frozen) field renders at the PREDICTED pose, through ``rays_per_image`` random pixels of each
   training image (at the network input, with its augmentation's intrinsics), and ``S_gt`` the
   true class map at those pixels (``target: dataset``) or, for datasets without class maps, the
   classes the field renders at the ground-truth pose (``target: rendered``, paper 000's
   SemanticMap at p). The gradient reaches the network through the rendered logits, the ray
   origins and directions, and the predicted pose (T_world_cam from de-normalised position and
   quaternion). Adam at ``lr`` (paper: 1e-5).
   SAM (spectral angle mapping) of a pixel is the angle between the predicted class-probability
   vector p and the target vector y: ``acos(<p, y> / (|p| |y|))`` (rad), averaged over pixels.

Work folder ``ARTIFACT.train/``: ``stage1_poseformer/`` and ``stage2_nerf/`` (their artifacts, with
their own ``.train`` folders), ``checkpoints/`` and ``logs/`` of stage 3. A finished stage is not
redone; ``--resume`` continues whichever stage was interrupted.

The result is an APR artifact (kind ``apr``, model ``poseformer_sem`` = the PoseFormer network):
``load_localizer`` serves it like every APR artifact and inference runs PoseFormer alone. The field
is not part of it (``training.poseformer_sem`` in artifact.json records the stage artifacts; the
field's report and contact sheet are copied as ``nerf_report.json`` / ``nerf_contact_sheet.png``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn import functional as F

from ..atomic import output_lock
from ..data.layout import Dataset
from ..geometry.torch_ops import T_from_position_quat
from ..models.apr.artifact import SceneStats, load_apr_artifact, write_apr_artifact
from ..models.nerf.artifact import load_radiance_field
from ..models.nerf.rays import camera_rays
from . import apr as apr_trainer
from . import nerf as nerf_trainer
from .apr_data import APRDataModule
from .apr_module import APRModule
from .config import apr_config, load_yaml, merge_strict
from .fit import fit
from .options import TrainOptions

log = logging.getLogger(__name__)

SEM_DEFAULTS: dict = {
    "task": "poseformer_sem",
    "scene": None,  # the one scene (a field is per scene); null = the dataset's only training scene
    "stage1": {
        "config": "poseformer.yaml",  # PoseFormer config, relative to this file's folder
        "artifact": None,  # an existing PoseFormer artifact instead of training stage 1
        "epochs": None,  # override of the config's epochs (null = as configured)
    },
    "stage2": {
        "config": "nerf.yaml",  # radiance-field config, relative to this file's folder
        "artifact": None,  # an existing NeRF artifact of the scene instead of training stage 2
        "epochs": None,
    },
    "stage3": {
        "epochs": 3,  # paper: not given
        "lr": 1.0e-5,  # paper: Adam 1e-5
        "ce_weight": 0.7,  # paper: eq. 12 weights [0.7, 0.3]
        "sam_weight": 0.3,
        "freeze": ["backbone."],  # paper: backbone frozen ...
        "unfreeze_batchnorm": True,  # ... except its batch-norm layers
        "rays_per_image": 256,  # class-map pixels rendered per training image and step
        "batch_size": 8,
        "target": "auto",  # dataset (true class maps) | rendered (field at the true pose) | auto
        "sampling": {},  # overrides of the field's sampling (models/nerf/sampling.py) for these renders
        "seed": 0,
    },
}


def sem_config(user_cfg: dict) -> dict:
    cfg = merge_strict(SEM_DEFAULTS, {k: v for k, v in user_cfg.items()})
    if cfg["task"] != "poseformer_sem":
        raise ValueError(f"task must be poseformer_sem here, got {cfg['task']!r}")
    s3 = cfg["stage3"]
    if s3["target"] not in ("auto", "dataset", "rendered"):
        raise ValueError(f"stage3.target must be auto, dataset or rendered, got {s3['target']!r}")
    if int(s3["epochs"]) < 1 or int(s3["rays_per_image"]) < 1:
        raise ValueError("stage3.epochs and stage3.rays_per_image must be >= 1")
    return cfg


def spectral_angle(prob_NC: torch.Tensor, target_NC: torch.Tensor) -> torch.Tensor:
    """Mean spectral angle (rad) between rows of ``prob`` and ``target``: acos(<p, y> / (|p| |y|))."""
    cos = (prob_NC * target_NC).sum(-1) / (prob_NC.norm(dim=-1) * target_NC.norm(dim=-1)).clamp_min(1e-12)
    return torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)).mean()


def semantic_consistency_loss(
    logits_NC: torch.Tensor, target_N: torch.Tensor, ce_weight: float, sam_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Paper 000 eq. 12 with weights: ce_weight x CE(logits, target) + sam_weight x SAM(softmax, onehot)."""
    ce = F.cross_entropy(logits_NC, target_N)
    onehot = F.one_hot(target_N, logits_NC.shape[-1]).to(logits_NC.dtype)
    sam = spectral_angle(logits_NC.softmax(-1), onehot)
    return ce_weight * ce + sam_weight * sam, {"ce": ce.detach(), "sam": sam.detach()}


class SemanticRefineModule(APRModule):
    """Stage 3: APRModule whose training loss is eq. 12 through the frozen field (no pose loss)."""

    def __init__(self, cfg: dict, scenes: list[dict], stage3: dict, field: nn.Module) -> None:
        super().__init__(cfg, scenes)
        self.save_hyperparameters({"cfg": cfg, "scenes": scenes, "stage3": stage3})
        self.stage3 = stage3
        self.field = field
        for p in self.field.parameters():
            p.requires_grad_(False)
        if stage3["sampling"]:
            self.field.sampling = {**self.field.sampling, **stage3["sampling"]}

    def apply_stage(self, i: int) -> None:
        super().apply_stage(i)
        if not self.stage3["unfreeze_batchnorm"]:
            return
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
        self._frozen_bn = []  # every batch-norm layer trains (running statistics follow the data)

    def target_classes(self, batch: dict, b_idx: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        mode = self.stage3["target"]
        if mode == "dataset" or (mode == "auto" and "semantic" in batch):
            if "semantic" not in batch:
                raise ValueError("stage3.target is 'dataset' but the dataset has no class maps (use 'rendered')")
            return batch["semantic"][b_idx, uv[:, 1].long(), uv[:, 0].long()]
        with torch.no_grad():  # paper 000's SemanticMap: the field rendered at the true pose
            T = batch["T_world_cam"].to(uv.dtype)[b_idx]
            o, d = camera_rays(T, batch["K"][b_idx], uv)
            return self.field.render_rays(o, d)["semantic"].argmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch["image"], batch["scene_id"])
        pos = self.denormalise_position(out["position_B3"], batch["scene_id"])
        T_pred = T_from_position_quat(pos, out["quat_B4"])  # (B, 4, 4), differentiable
        b, _, h, w = batch["image"].shape
        n = int(self.stage3["rays_per_image"])
        g = torch.Generator().manual_seed(hash((int(self.stage3["seed"]), int(self.global_step))) & 0x7FFFFFFF)
        u = torch.randint(0, w, (b * n,), generator=g)
        v = torch.randint(0, h, (b * n,), generator=g)
        b_idx = torch.arange(b).repeat_interleave(n)
        dev = pos.device
        b_idx, uv = b_idx.to(dev), torch.stack([u, v], -1).to(dev, pos.dtype)
        o, d = camera_rays(T_pred[b_idx], batch["K"].to(pos.dtype)[b_idx], uv)
        logits = self.field.render_rays(o, d)["semantic"]
        target = self.target_classes(batch, b_idx, uv)
        loss, terms = semantic_consistency_loss(
            logits, target, float(self.stage3["ce_weight"]), float(self.stage3["sam_weight"])
        )
        with torch.no_grad():  # monitored, not optimised (paper: no direct pose supervision)
            gt = self.normalise_position(batch["position"], batch["scene_id"])
            pose_loss, _ = self.loss(out["position_B3"], out["quat_B4"], gt, batch["quat_wxyz"])
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        self.log("train/semantic_ce", terms["ce"], on_step=False, on_epoch=True, batch_size=b)
        self.log("train/semantic_sam", terms["sam"], on_step=False, on_epoch=True, batch_size=b)
        self.log("train/pose_loss_monitor", pose_loss, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/class_accuracy", (logits.argmax(-1) == target).float().mean(), on_step=False, on_epoch=True)
        return loss


# ------------------------------------------------------------------------------------- stages
def _scene_of(cfg: dict, data: str | Path, split: str) -> str:
    ds = Dataset(data)
    scenes = sorted({f.scene for f in ds.frames(split)})
    if cfg["scene"] is None:
        if len(scenes) != 1:
            raise ValueError(f"{data} has scenes {scenes}: set scene: (PoseFormer_sem trains one field per scene)")
        return scenes[0]
    if cfg["scene"] not in scenes:
        raise ValueError(f"scene {cfg['scene']!r} is not in {data} (scenes: {scenes})")
    return str(cfg["scene"])


def _stage_options(opts: TrainOptions, work_dir: Path, epochs: int | None) -> TrainOptions:
    """A stage's options: the run's device, the stage's epochs, resumed when the stage left a checkpoint."""
    last = work_dir.with_name(work_dir.name + ".train") / "checkpoints" / "last.ckpt"
    return TrainOptions(device=opts.device, epochs=epochs, resume=last.is_file())


def _stage_artifact(
    stage: dict, base: Path, path: Path, kind: str, opts: TrainOptions, run: Callable[[dict, TrainOptions], Path | None]
) -> Path | None:
    if stage["artifact"]:
        p = Path(stage["artifact"])
        if not (p / "artifact.json").is_file():
            raise FileNotFoundError(f"{kind}.artifact {p} is not an artifact folder (no artifact.json)")
        log.info("%s: using the existing artifact %s", kind, p)
        return p
    if path.is_dir():
        log.info("%s: already done (%s)", kind, path)
        return path
    cfg_path = (base / stage["config"]) if not Path(stage["config"]).is_absolute() else Path(stage["config"])
    log.info("%s: training with %s", kind, cfg_path)
    return run(load_yaml(cfg_path), _stage_options(opts, path, stage["epochs"]))


def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path | None:
    """Run the three stages on ``data`` and write the PoseFormer_sem APR artifact ``out``.

    ``out`` and the work folder are locked for the whole run, as for every trainer."""
    opts = opts or TrainOptions()
    out = Path(out)
    work = Path(opts.work_dir or apr_trainer.work_dir_for(out))
    with output_lock(out, "--out"), output_lock(work, "--work-dir"):
        return _train_locked(cfg, str(data), out, work, opts)


def _train_locked(cfg: dict, data: str, out: Path, work: Path, opts: TrainOptions) -> Path | None:
    cfg = sem_config(cfg)
    base = opts.config_dir()
    resume, overwrite = opts.resume, opts.overwrite
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    if work.exists() and any(work.iterdir()) and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{work} holds an earlier run; pass --resume to continue it or --overwrite to start over"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    scene = None

    def run1(c: dict, ns: TrainOptions):
        c.setdefault("data", {})["scenes"] = [scene]
        return apr_trainer.train(c, data, work / "stage1_poseformer", ns)

    def run2(c: dict, ns: TrainOptions):
        c.setdefault("data", {})["scene"] = scene
        return nerf_trainer.train(c, data, work / "stage2_nerf", ns)

    first = cfg["stage1"]
    split = "train"
    if not first["artifact"]:
        split = load_yaml(base / first["config"]).get("data", {}).get("train_split", "train")
    scene = _scene_of(cfg, data, split)
    stage1 = _stage_artifact(cfg["stage1"], base, work / "stage1_poseformer", "stage1", opts, run1)
    if stage1 is None:
        return None
    stage2 = _stage_artifact(cfg["stage2"], base, work / "stage2_nerf", "stage2", opts, run2)
    if stage2 is None:
        return None
    return refine(cfg, data, out, work, scene, stage1, stage2, opts)


def refine(
    cfg: dict, data: str, out: Path, work: Path, scene: str, stage1: Path, stage2: Path, opts: TrainOptions
) -> Path | None:
    """Stage 3 (module docstring): from the stage-1 artifact's weights, through the stage-2 field."""
    s3 = cfg["stage3"]
    pf = load_apr_artifact(stage1)
    if len(pf.scenes) != 1 or pf.scenes[0].name != scene:
        raise ValueError(f"stage 1 artifact {stage1} is for scenes {[s.name for s in pf.scenes]}, not [{scene!r}]")
    field, fmeta = load_radiance_field(stage2)
    if fmeta.get("scene") != scene:
        raise ValueError(f"stage 2 field {stage2} is of scene {fmeta.get('scene')!r}, not {scene!r}")
    if field.n_classes == 0:
        raise ValueError(f"stage 2 field {stage2} has no semantic head (its dataset had no class maps)")
    c = copy.deepcopy(pf.cfg)
    c["task"] = "apr"
    c["model"]["name"] = "poseformer_sem"
    c["model"]["pretrained"] = False  # the stage-1 weights are loaded below
    c["data"].update(scenes=[scene], batch_size=int(s3["batch_size"]), with_semantic=s3["target"] != "rendered")
    c["train"].update(scheduler="constant", epochs=int(s3["epochs"]), seed=int(s3["seed"]))
    if opts.device:
        c["train"]["device"] = opts.device
    c["train"]["stages"] = [
        {
            "name": "semantic_refine",
            "epochs": int(s3["epochs"]),
            "lr": float(s3["lr"]),
            "freeze": ["loss.", *s3["freeze"]],
            "pose_loss_weight": 0.0,
        }
    ]
    c = apr_config(c)
    last = work / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    pl.seed_everything(int(s3["seed"]), workers=True)
    dm = APRDataModule(c, data)
    scenes_json = [s.to_json() for s in pf.scenes]  # stage 1's normalisation: the network's output space
    module = SemanticRefineModule(c, scenes_json, s3, field)
    if not resume:
        module.model.load_state_dict(pf.model.state_dict())
    s3_epochs = int(s3["epochs"])
    try:
        trainer, ckpt = apr_trainer._trainer(c, work, s3_epochs, len(dm.train_dataloader()))
    except MisconfigurationException as err:
        raise ValueError(f"train.device/devices/strategy/precision: {err}") from err
    t0, c0 = time.time(), time.process_time()
    fit(trainer, module, last, datamodule=dm, ckpt_path=str(last) if resume else None)
    best_path = ckpt.best_model_path or str(last)
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    module.to("cpu")
    pred = apr_trainer.predict_world(module, dm.val_dataloader())
    dt, dw = apr_trainer.residuals(pred)
    calibration = apr_trainer.calibrate(dt, dw, c["calibration"])
    nerf_report = json.loads((stage2 / "report.json").read_text()) if (stage2 / "report.json").is_file() else {}
    training = {
        "dataset": str(Path(data).resolve()),
        "epochs": int(trainer.current_epoch),
        "best_epoch": int(best.get("epoch", -1)),
        "best_val_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "stages": c["train"]["stages"],
        "n_train_frames": len(dm.train_set),
        "n_val_frames": len(dm.val_set),
        "wall_seconds_this_run": time.time() - t0,
        "cpu_seconds_this_run": time.process_time() - c0,
        "loss_weights": {n: float(p.detach()) for n, p in module.loss.named_parameters()},
        "work_dir": str(work.resolve()),
        "poseformer_sem": {
            "config": cfg,
            "stage1_artifact": str(stage1.resolve()),
            "stage1_training": pf.meta.get("training", {}),
            "stage2_artifact": str(stage2.resolve()),
            "stage2_held_out": nerf_report.get("held_out", {}),
        },
    }
    metrics_csv = Path(trainer.loggers[0].log_dir) / "metrics.csv"
    extra = {"metrics.csv": metrics_csv, "nerf_report.json": stage2 / "report.json"}
    extra["nerf_contact_sheet.png"] = stage2 / "contact_sheet.png"
    scenes = [SceneStats.from_json(s) for s in scenes_json]
    path = write_apr_artifact(
        out,
        module.model,
        c,
        scenes,
        calibration,
        training,
        extra,
        overwrite=opts.overwrite,
        training_camera_input=dm.training_camera_input,
    )
    log.info("wrote PoseFormer_sem artifact %s", path)
    return path
