"""``task: nerf``: train a scene radiance field (models/nerf) from a visloc dataset, with Lightning.

``visloc train config/models/nerf.yaml --data DATASET --out ARTIFACT [--resume] [--epochs N]``

- Data: the frames of one scene (``data.scene``; required when the dataset has several) in
  ``data.train_split``, resized to ``data.image_width`` x ``data.image_height`` (no crop). Held out:
  blocks of consecutive frames (``val_fraction``, ``val_block``), as the APR trainer does; they are
  never trained on and give the report's held-out numbers. Depth and class maps are used when the
  dataset has them (``use_depth``, ``use_semantic``); depth at the uint16 ceiling counts as unknown.
- Scene box: the camera centres and the back-projected measured depth (per-axis percentiles
  ``box_percentile`` .. 100 - it), grown by ``box_margin_fraction`` (at least ``box_margin_m``);
  without depth, the camera centres grown by ``box_no_depth_margin_m``. ``box: [[min], [max]]``
  overrides it.
- Loss per batch of rays: ``rgb`` x MSE (Semantic-NeRF's photometric loss) + ``semantic`` x
  cross-entropy of the rendered logits (paper 000: weight 4e-2) + ``depth`` x the expected relative
  deviation ``(sum_i w_i |t_i - z| + T_out |t_far - z|) / z`` on rays with measured depth z (not in
  the papers; it makes training practical on CPUs, set 0 to turn off). It is zero only when all
  of a ray's weight sits at the measured depth, so it also makes surfaces opaque.
- Optimiser: Adam (``lr``, ``adam_eps``), exponential decay per step to ``lr x lr_decay`` at the end
  (paper 000 stage 2: Adam 1e-3 with exponential decay).
- An epoch is ``steps_per_epoch`` batches of ``rays_per_batch`` random rays from all training
  pixels (deterministic: drawn from (seed, epoch, step)). Validation renders ``val_views`` held-out
  views per epoch (``val/psnr``). Checkpoints ``ARTIFACT.train/checkpoints/last.ckpt`` every epoch
  (``--resume``); Ctrl-C keeps them and writes no artifact.
- At the end: every ``eval.every``-th held-out view (at most ``eval.max_views``) and, if the dataset
  has it, the ``eval.test_condition`` sequences of ``eval.test_split`` (new trajectories) are
  rendered and scored into report.json; the contact sheet shows ``eval.sheet_views`` held-out views.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..atomic import output_lock
from ..config import log_config
from ..data.layout import Dataset
from ..models.nerf.artifact import write_nerf_artifact
from ..models.nerf.field import FIELD_DEFAULTS
from ..models.nerf.rays import camera_rays
from ..models.nerf.sampling import SAMPLING_DEFAULTS
from ..models.nerf.scene import RadianceField
from ..models.nerf.views import View, contact_sheet, load_view, render_and_score, render_view, score_views
from .apr import check_outputs, work_dir_for
from .apr_data import holdout_blocks
from .config import merge_strict
from .fit import fit
from .options import TrainOptions

log = logging.getLogger(__name__)

NERF_DEFAULTS: dict = {
    "task": "nerf",
    "field": {},  # models/nerf/field.FIELD_DEFAULTS
    "sampling": {},  # models/nerf/sampling.SAMPLING_DEFAULTS
    "data": {
        "scene": None,  # scene name; null = the dataset's only scene
        "train_split": "train",
        "image_width": 160,  # field resolution: training rays and evaluation renders
        "image_height": 120,
        "val_fraction": 0.1,  # held-out views: this fraction of each sequence, in blocks of val_block frames
        "val_block": 10,
        "use_depth": True,  # depth supervision and depth-guided samples when the dataset has depth
        "use_semantic": True,  # semantic head and loss when the dataset has class maps
        "box": None,  # [[xmin, ymin, zmin], [xmax, ymax, zmax]] metres; null = from cameras and depth
        "box_percentile": 0.2,  # back-projected depth: per-axis percentiles kept (outliers dropped)
        "box_margin_fraction": 0.05,
        "box_margin_m": 0.2,
        "box_no_depth_margin_m": 10.0,  # without depth: camera centres grown by this
    },
    "loss": {"rgb": 1.0, "semantic": 0.04, "depth": 0.1},
    "train": {
        "epochs": 15,
        "steps_per_epoch": 100,
        "rays_per_batch": 512,
        "lr": 1.0e-3,
        "lr_decay": 0.1,  # LR at the last step = lr * lr_decay (exponential in between)
        "adam_eps": 1.0e-15,
        "seed": 0,
        "device": "cpu",
        "val_views": 3,
        "progress_bar": True,
        "log_every_n_steps": 10,
    },
    "eval": {
        "image_width": 80,  # resolution of the evaluation renders (null = data.image_width/height)
        "image_height": 60,
        "every": 2,  # every k-th held-out view is rendered for the report
        "max_views": 20,
        "sheet_views": 6,
        "test_split": "test",  # also score new trajectories: these sequences ...
        "test_condition": "day",  # ... of this condition (null = skip)
        "test_max_views": 12,
        "depth_range_m": None,  # contact-sheet depth colour scale; null = from the scene box
    },
}


def nerf_config(user_cfg: dict) -> dict:
    cfg = merge_strict(NERF_DEFAULTS, {k: v for k, v in user_cfg.items() if k not in ("field", "sampling")})
    for key, defaults in (("field", FIELD_DEFAULTS), ("sampling", SAMPLING_DEFAULTS)):
        part = user_cfg.get(key) or {}
        unknown = set(part) - set(defaults)
        if unknown:
            raise ValueError(f"unknown config keys {key}.{sorted(unknown)}; known: {', '.join(defaults)}")
        cfg[key] = dict(part)
    if cfg["task"] != "nerf":
        raise ValueError(f"task must be nerf here, got {cfg['task']!r}")
    d = cfg["data"]
    if d["image_width"] < 8 or d["image_height"] < 8:
        raise ValueError(f"data.image_width/height must be >= 8, got {d['image_width']}x{d['image_height']}")
    if not 0.0 < float(d["val_fraction"]) < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {d['val_fraction']}")
    t = cfg["train"]
    for k in ("epochs", "steps_per_epoch", "rays_per_batch"):
        if int(t[k]) < 1:
            raise ValueError(f"train.{k} must be >= 1, got {t[k]}")
    return cfg


# ----------------------------------------------------------------------------------------- data
class SceneViews:
    """Training and held-out views of one scene, the scene box, the class count."""

    def __init__(self, cfg: dict, data_root: str | Path) -> None:
        d = cfg["data"]
        self.dataset = Dataset(data_root)
        frames = self.dataset.frames(d["train_split"])
        scenes = sorted({f.scene for f in frames})
        scene = d["scene"]
        if scene is None:
            if len(scenes) != 1:
                raise ValueError(f"{data_root} has scenes {scenes} in split {d['train_split']!r}: set data.scene")
            scene = scenes[0]
        if scene not in scenes:
            raise ValueError(f"data.scene {scene!r} has no frames in split {d['train_split']!r} (scenes: {scenes})")
        self.scene = scene
        frames = [f for f in frames if f.scene == scene]
        held = np.zeros(len(frames), dtype=bool)
        seq_of = [f.sequence for f in frames]
        for s in dict.fromkeys(seq_of):
            idx = np.array([i for i, k in enumerate(seq_of) if k == s])
            held[idx] = holdout_blocks(len(idx), float(d["val_fraction"]), int(d["val_block"]))
        w, h = int(d["image_width"]), int(d["image_height"])
        self.use_depth = bool(d["use_depth"]) and all(f.depth for f in frames)
        self.use_semantic = bool(d["use_semantic"]) and all(f.semantic for f in frames) and bool(self.dataset.classes)
        load = lambda f: load_view(self.dataset, f, w, h, self.use_depth, self.use_semantic)  # noqa: E731
        log.info("loading %d frames of scene %s at %dx%d", len(frames), scene, w, h)
        self.train = [load(f) for i, f in enumerate(frames) if not held[i]]
        self.held_out = [load(f) for i, f in enumerate(frames) if held[i]]
        if not self.train or not self.held_out:
            raise ValueError(
                f"scene {scene}: need training and held-out frames (got {len(self.train)} and {len(self.held_out)})"
            )
        self.classes = {int(k): v for k, v in self.dataset.classes.items()} if self.use_semantic else {}
        self.n_classes = max(self.classes) + 1 if self.classes else 0
        self.aabb = self._box(cfg["data"])
        self.no_depth_fraction = float(np.mean([np.mean(v.depth <= 0) for v in self.train])) if self.use_depth else 1.0

    def _box(self, d: dict) -> np.ndarray:
        if d["box"] is not None:
            box = np.asarray(d["box"], dtype=np.float64).reshape(2, 3)
            if not np.all(box[1] > box[0]):
                raise ValueError(f"data.box must be [[min xyz], [max xyz]] with min < max, got {d['box']}")
            return box
        centres = np.stack([v.T_world_cam[:3, 3] for v in self.train])
        if not self.use_depth:
            m = float(d["box_no_depth_margin_m"])
            log.warning("no depth: scene box = camera centres +- %.1f m (set data.box if the scene is larger)", m)
            return np.stack([centres.min(0) - m, centres.max(0) + m])
        pts = [centres]
        for v in self.train[:: max(1, len(self.train) // 60)]:
            ys, xs = np.nonzero(v.depth[::4, ::4] > 0)
            z = v.depth[::4, ::4][ys, xs]
            uv = np.stack([xs * 4, ys * 4], -1).astype(np.float64)
            p_cam = np.concatenate([v.camera.unproject(uv) * z[:, None], np.ones((len(z), 1))], -1) if len(z) else None
            if p_cam is not None:
                pts.append((v.T_world_cam @ p_cam.T).T[:, :3])
        p = np.concatenate(pts)
        q = float(d["box_percentile"])
        lo, hi = np.percentile(p, q, axis=0), np.percentile(p, 100 - q, axis=0)
        lo, hi = np.minimum(lo, centres.min(0)), np.maximum(hi, centres.max(0))
        margin = np.maximum(float(d["box_margin_m"]), float(d["box_margin_fraction"]) * (hi - lo))
        return np.stack([lo - margin, hi + margin])


class RayBatches(torch.utils.data.Dataset):
    """``steps_per_epoch`` batches of random training rays; batch i of epoch e is drawn from
    (seed, e, i), so a resumed run sees the same rays."""

    def __init__(self, views: list[View], rays_per_batch: int, steps: int, seed: int) -> None:
        self.T = torch.tensor(np.stack([v.T_world_cam for v in views]), dtype=torch.float32)
        self.K = torch.tensor(np.stack([v.camera.K for v in views]), dtype=torch.float32)
        self.rgb = torch.from_numpy(np.stack([v.rgb for v in views]))  # uint8 (N, H, W, 3)
        self.depth = torch.from_numpy(np.stack([v.depth for v in views])) if views[0].depth is not None else None
        self.classes = torch.from_numpy(np.stack([v.classes for v in views])) if views[0].classes is not None else None
        self.n, self.h, self.w = self.rgb.shape[:3]
        self.rays, self.steps, self.seed, self.epoch = int(rays_per_batch), int(steps), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
        f = torch.randint(0, self.n, (self.rays,), generator=g)
        v = torch.randint(0, self.h, (self.rays,), generator=g)
        u = torch.randint(0, self.w, (self.rays,), generator=g)
        o, d = camera_rays(self.T[f], self.K[f], torch.stack([u, v], -1).float())
        sampler_seed = hash((self.seed, self.epoch, i, 1)) & 0x7FFFFFFF  # for the sample positions along the rays
        batch = {"origins": o, "dirs": d, "rgb": self.rgb[f, v, u].float() / 255.0, "seed": torch.tensor(sampler_seed)}
        if self.depth is not None:
            batch["depth"] = self.depth[f, v, u]
        if self.classes is not None:
            batch["classes"] = self.classes[f, v, u].long()
        return batch


class _ViewIndex(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


# --------------------------------------------------------------------------------------- module
class NeRFModule(pl.LightningModule):
    def __init__(self, cfg: dict, aabb: list, n_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "aabb": aabb, "n_classes": n_classes})
        self.cfg = cfg
        self.model = RadianceField(cfg["field"], cfg["sampling"], aabb, n_classes)
        self.val_views: list[View] = []
        self._val: list[dict] = []

    def total_steps(self) -> int:
        return int(self.cfg["train"]["epochs"]) * int(self.cfg["train"]["steps_per_epoch"])

    def losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        terms = {"rgb": F.mse_loss(out["rgb"], batch["rgb"])}
        if "classes" in batch and "semantic" in out:
            terms["semantic"] = F.cross_entropy(out["semantic"], batch["classes"])
        if "depth" in batch:
            z = batch["depth"]
            m = z > 0
            if m.any():
                # expected |t - z| / z under the rendering weights (the background at the box exit):
                # zero only when the ray's whole weight sits at the measured depth. (The error of the
                # expected depth, |sum w t - z|, is also zero for a half-transparent mixture of near
                # and far, which is what a first version learned: opacity ~0.4 on walls.)
                zz = z[m].unsqueeze(-1)
                dev = (out["weights"][m] * (out["t_mid"][m] - zz).abs()).sum(-1)
                dev = dev + out["t_out"][m] * (out["t_far"][m] - z[m]).abs()
                terms["depth"] = (dev / z[m]).mean()
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        s = self.model.sampling
        step = int(self.global_step)
        g = torch.Generator().manual_seed(int(batch["seed"]))
        if step > 0 and step % int(s["grid_update_every"]) == 0:
            self.model.update_grid(g)
        out = self.model.render_rays(batch["origins"], batch["dirs"], generator=g, depth_N=batch.get("depth"))
        terms = self.losses(out, batch)
        w = self.cfg["loss"]
        total = sum(float(w[k]) * v for k, v in terms.items())
        n = batch["rgb"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        with torch.no_grad():
            psnr = -10.0 * torch.log10(F.mse_loss(out["rgb"], batch["rgb"]).clamp_min(1e-10))
        self.log("train/psnr", psnr, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        return total

    def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        for i in idx.tolist():
            v = self.val_views[i]
            self._val.append({"view": v, "render": render_view(self.model, v)})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        m = score_views([x["view"] for x in self._val], [x["render"] for x in self._val])
        self._val.clear()
        self.log("val/psnr", m["psnr_db"], prog_bar=True)
        if "depth_median_abs_m" in m:
            self.log("val/depth_median_abs_m", m["depth_median_abs_m"])
        if "class_accuracy" in m:
            self.log("val/class_accuracy", m["class_accuracy"])

    def on_train_epoch_start(self) -> None:
        dm = self.trainer.train_dataloader
        ds = getattr(dm, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        t = self.cfg["train"]
        opt = torch.optim.Adam(self.model.parameters(), lr=float(t["lr"]), eps=float(t["adam_eps"]))
        total, decay = max(1, self.total_steps()), float(t["lr_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: decay ** (min(step, total) / total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---------------------------------------------------------------------------------------- train
def eval_size(cfg: dict) -> tuple[int, int]:
    e, d = cfg["eval"], cfg["data"]
    return int(e["image_width"] or d["image_width"]), int(e["image_height"] or d["image_height"])


def _at(view: View, cfg: dict) -> View:
    """The view at the evaluation resolution (area for RGB, nearest for depth and classes)."""
    w, h = eval_size(cfg)
    if (view.camera.width, view.camera.height) == (w, h):
        return view

    def rs(a, interp):
        return None if a is None else cv2.resize(a, (w, h), interpolation=interp)

    return View(
        view.name,
        view.T_world_cam,
        view.camera.resized(w, h),
        rs(view.rgb, cv2.INTER_AREA),
        rs(view.depth, cv2.INTER_NEAREST),
        rs(view.classes, cv2.INTER_NEAREST),
    )


def _pick(views: list[View], every: int, max_n: int) -> list[View]:
    sel = views[:: max(1, int(every))]
    if len(sel) > max_n:
        sel = [sel[i] for i in np.linspace(0, len(sel) - 1, max_n).round().astype(int)]
    return sel


def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path | None:
    """Train a radiance field on ``data`` and write the NeRF artifact ``out`` (None if interrupted).

    As for APR training, ``out`` and the work folder are locked for the whole run
    (visloc_core.atomic.output_lock): a second training into either fails at once."""
    opts = opts or TrainOptions()
    out = Path(out)
    work = Path(opts.work_dir or work_dir_for(out))
    with output_lock(out, "--out"), output_lock(work, "--work-dir"):
        return _train_locked(cfg, data, out, work, opts)


def _train_locked(cfg: dict, data: str | Path, out: Path, work: Path, opts: TrainOptions) -> Path | None:
    cfg = nerf_config(cfg)
    if opts.device:
        cfg["train"]["device"] = opts.device
    if opts.epochs:
        cfg["train"]["epochs"] = int(opts.epochs)
    log_config(log, "nerf train", cfg)
    resume, overwrite = opts.resume, opts.overwrite
    last = work / "checkpoints" / "last.ckpt"
    check_outputs(out, work, last, resume, overwrite)
    work.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(int(cfg["train"]["seed"]), workers=True)
    scene = SceneViews(cfg, data)
    aabb = scene.aabb.tolist()
    if resume:  # the box must be the one the checkpoint was trained in
        aabb = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["aabb"]
    if cfg["field"].get("background", FIELD_DEFAULTS["background"]) == "auto":
        # a background (sky) only where some rays leave the scene: pixels without measured depth
        cfg["field"]["background"] = bool(not scene.use_depth or scene.no_depth_fraction > 1e-3)
        log.info(
            "field.background auto -> %s (%.2f %% of training pixels without depth)",
            cfg["field"]["background"],
            100 * scene.no_depth_fraction,
        )
    if resume:
        cfg["field"] = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["cfg"]["field"]
    module = NeRFModule(cfg, aabb, scene.n_classes)
    t = cfg["train"]
    val_sel = _pick(scene.held_out, max(1, len(scene.held_out) // max(1, int(t["val_views"]))), int(t["val_views"]))
    module.val_views = [_at(v, cfg) for v in val_sel]
    log.info(
        "nerf %s: %d training / %d held-out views, box %s m, %d classes, depth %s, %d epochs x %d steps x %d rays",
        scene.scene,
        len(scene.train),
        len(scene.held_out),
        np.round(np.asarray(aabb), 2).tolist(),
        scene.n_classes,
        "yes" if scene.use_depth else "no",
        int(t["epochs"]),
        int(t["steps_per_epoch"]),
        int(t["rays_per_batch"]),
    )
    rays = RayBatches(scene.train, int(t["rays_per_batch"]), int(t["steps_per_epoch"]), int(t["seed"]))
    train_loader = DataLoader(rays, batch_size=None, shuffle=False, num_workers=0)
    val_loader = DataLoader(_ViewIndex(len(val_sel)), batch_size=len(val_sel), shuffle=False)
    last_cb = pl.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    callbacks: list[pl.Callback] = [last_cb]
    if t["progress_bar"]:
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=1))
    csv_logger = pl.loggers.CSVLogger(work / "logs", name="csv")
    trainer = pl.Trainer(
        accelerator=t["device"],
        devices=1,
        max_epochs=int(t["epochs"]),
        logger=[csv_logger, pl.loggers.TensorBoardLogger(work / "logs", name="tensorboard", default_hp_metric=False)],
        callbacks=callbacks,
        log_every_n_steps=int(t["log_every_n_steps"]),
        enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(work),
    )
    t0, c0 = time.time(), time.process_time()
    fit(trainer, module, last, train_dataloaders=train_loader, val_dataloaders=val_loader,
        ckpt_path=str(last) if resume else None)  # fmt: skip
    wall, cpu = time.time() - t0, time.process_time() - c0
    model = module.model.to("cpu").eval()
    report, sheet = evaluate_field(model, scene, cfg, work, progress=bool(t["progress_bar"]))
    report["training"] = {
        "wall_seconds_this_run": wall,
        "cpu_seconds_this_run": cpu,
        "threads": torch.get_num_threads(),
    }
    meta = {
        "scene": scene.scene,
        "aabb": aabb,
        "classes": {str(k): v for k, v in scene.classes.items()},
        "camera": scene.train[0].camera.to_dict(),
        "training": {
            "dataset": str(Path(data).resolve()),
            "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "n_train_views": len(scene.train),
            "n_held_out_views": len(scene.held_out),
            "depth_supervision": scene.use_depth,
            "semantic": scene.use_semantic,
            "wall_seconds_this_run": wall,
            "cpu_seconds_this_run": cpu,
            "work_dir": str(work.resolve()),
        },
    }
    metrics_csv = Path(csv_logger.log_dir) / "metrics.csv"
    path = write_nerf_artifact(
        out, model, cfg, meta, report, {"contact_sheet.png": sheet, "metrics.csv": metrics_csv}, overwrite=overwrite
    )
    log.info("wrote NeRF artifact %s: held-out %s", path, _summary(report.get("held_out", {})))
    return path


def _summary(m: dict) -> str:
    parts = [f"PSNR {m['psnr_db']:.2f} dB"] if "psnr_db" in m else []
    if "depth_median_abs_m" in m:
        parts.append(f"depth median |dz| {m['depth_median_abs_m']:.3f} m (rel {m['depth_mean_rel']:.3f})")
    if "class_accuracy" in m:
        parts.append(f"class accuracy {m['class_accuracy']:.3f}, mIoU {m['class_miou']:.3f}")
    return ", ".join(parts)


def evaluate_field(model: RadianceField, scene: SceneViews, cfg: dict, work: Path, progress: bool = True):
    """Render and score held-out views (and test-split views of one condition); write the contact
    sheet into ``work``. Returns (report dict, sheet path)."""
    e = cfg["eval"]
    views = [_at(v, cfg) for v in _pick(scene.held_out, int(e["every"]), int(e["max_views"]))]
    renders, held = render_and_score(model, views, "held-out views", progress)
    report: dict = {
        "scene": scene.scene,
        "resolution": list(eval_size(cfg)),
        "metrics": "models/nerf/views.py: PSNR on RGB in [0,1]; depth |rendered surface z - measured z| (m) on "
        "pixels with measured depth; class accuracy and mIoU of the arg max of the rendered logits",
        "held_out": held,
    }
    log.info("held-out views: %s", _summary(held))
    cond = e["test_condition"]
    if cond and e["test_split"] in scene.dataset.manifest.get("splits", {}):
        frames = [f for f in scene.dataset.frames(e["test_split"], scene=scene.scene, condition=cond)]
        if frames:
            w, h = eval_size(cfg)
            frames = [
                frames[i]
                for i in np.linspace(0, len(frames) - 1, min(len(frames), int(e["test_max_views"]))).round().astype(int)
            ]
            tv = [load_view(scene.dataset, f, w, h, scene.use_depth, scene.use_semantic) for f in frames]
            _, report[f"{e['test_split']}_{cond}"] = render_and_score(model, tv, f"{e['test_split']} {cond}", progress)
            log.info("%s %s views: %s", e["test_split"], cond, _summary(report[f"{e['test_split']}_{cond}"]))
    n = min(int(e["sheet_views"]), len(views))
    idx = np.linspace(0, len(views) - 1, n).round().astype(int) if n else []
    ext = np.asarray(model.aabb.cpu().numpy())
    depth_range = e["depth_range_m"] or (0.3, float(max(1.0, np.linalg.norm(ext[1] - ext[0]))))
    sheet = contact_sheet(
        [views[i] for i in idx],
        [renders[i] for i in idx],
        work / "contact_sheet.png",
        f"{scene.scene}: held-out views, real | rendered | classes | depth | real depth "
        f"(PSNR {held.get('psnr_db', math.nan):.1f} dB)",
        tuple(depth_range),
    )
    return report, sheet
