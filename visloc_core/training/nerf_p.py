"""``task: nerf_p``: paper 001's NeRF-P, the pose-feature branch of a scene field and its pose decoder.

``visloc train config/models/nerf_p.yaml --data DATASET --out ARTIFACT``

1. The scene field (``field.artifact``: an existing NeRF artifact of the scene, or trained here with
   ``field.config``, default nerf.yaml) is trained WITHOUT the pose branch (paper 001 sec. 3.1: "to
   maintain the quality of the original NeRF, the rendering branch is trained without considering
   pose features").
2. A pose branch (geometry feature -> k = ``posemap.feature_dim`` per sample, models/nerf/field.py)
   is added and trained together with the pose decoder (models/nerf/posemap.py: PoseMap downsampled
   by 16, flattened, MLP 1536-256-128-12 -> 3x4 pose); every other weight of the field (encoding,
   trunk, colour / semantic / background heads) and its density grid stay frozen. Loss: mean squared
   error between the decoded 3x4 [R | t_normalised] and the true one, at the training poses and (a
   fraction ``train.rvs_fraction`` of each batch) at RVS-perturbed training poses (training/rvs.py), so
   the branch also sees poses off the recorded path, where PMNet's L_rvs renders it.
   Adam, ``train.lr``, exponential decay to ``lr_decay`` x at the last step.

The artifact is a NeRF artifact (kind ``nerf``; its field has ``pose_feature_dim`` = k) plus
``pose_decoder.pt`` and ``artifact.json["pose_decoder"]``; ``load_nerf_p`` (models/nerf/artifact.py)
loads both. ``report.json`` holds the field's report and ``nerf_p``: the decoder's median translation
and rotation errors on the held-out training views (blocks never trained on) and on the training views.
Work folder ``ARTIFACT.train/``: ``field/`` (the field's artifact when trained here). The branch stage
is short (minutes) and has no checkpoints: an interrupted run starts it again.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import output_lock
from ..data.layout import Dataset
from ..geometry import rotvec_from_R
from ..interrupt import signals_deferred
from ..models.nerf.artifact import load_radiance_field, write_nerf_artifact
from ..models.nerf.posemap import POSEMAP_DEFAULTS, PoseDecoder, posemap_size, render_posemap
from ..models.nerf.scene import RadianceField
from . import apr as apr_trainer
from . import nerf as nerf_trainer
from .apr_data import holdout_blocks
from .config import merge_strict
from .options import TrainOptions
from .rvs import perturb_poses

log = logging.getLogger(__name__)

NERF_P_DEFAULTS: dict = {
    "task": "nerf_p",
    "scene": None,  # the one scene; null = the dataset's only scene in train_split
    "train_split": "train",
    "field": {"config": "nerf.yaml", "artifact": None, "epochs": None},
    "posemap": {
        **POSEMAP_DEFAULTS,
        "image_width": 160,  # camera the PoseMaps are rendered at (the regressor's input size)
        "image_height": 120,
    },
    "train": {
        "steps": 600,
        "batch_size": 8,
        "lr": 1.0e-3,
        "lr_decay": 0.1,
        "rvs_fraction": 0.5,  # share of each batch at RVS-perturbed poses
        "rvs_translation_m": 0.2,  # paper 001 indoor; outdoor 3.0 / 7.5
        "rvs_rotation_deg": 10.0,
        "val_fraction": 0.1,
        "val_block": 10,
        "seed": 0,
        "progress_bar": True,
    },
}


def nerf_p_config(user_cfg: dict) -> dict:
    cfg = merge_strict(NERF_P_DEFAULTS, dict(user_cfg))
    if cfg["task"] != "nerf_p":
        raise ValueError(f"task must be nerf_p here, got {cfg['task']!r}")
    p, t = cfg["posemap"], cfg["train"]
    if int(p["feature_dim"]) < 1 or int(p["downsample"]) < 1:
        raise ValueError("posemap.feature_dim and posemap.downsample must be >= 1")
    if int(t["steps"]) < 1 or int(t["batch_size"]) < 1:
        raise ValueError("train.steps and train.batch_size must be >= 1")
    if not 0.0 <= float(t["rvs_fraction"]) <= 1.0:
        raise ValueError(f"train.rvs_fraction must be in [0, 1], got {t['rvs_fraction']}")
    return cfg


def add_pose_branch(field: RadianceField, feature_dim: int) -> RadianceField:
    """A copy of ``field`` with a fresh pose branch of ``feature_dim`` outputs; every other weight and
    the density grid copied; only ``field.pose_branch.*`` trainable."""
    conf = copy.deepcopy(field.field.conf)
    conf["pose_feature_dim"] = int(feature_dim)
    out = RadianceField(conf, field.sampling, field.aabb.tolist(), field.n_classes)
    missing, unexpected = out.load_state_dict(field.state_dict(), strict=False)
    if unexpected or any(not k.startswith("field.pose_branch.") for k in missing):
        raise ValueError(f"cannot add a pose branch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    freeze_main_weights(out)
    return out


def freeze_main_weights(field: RadianceField) -> None:
    """Paper 001: after the first stage only the pose branch trains."""
    for name, p in field.named_parameters():
        p.requires_grad_(name.startswith("field.pose_branch."))


def decoder_errors(decoder: PoseDecoder, posemaps: torch.Tensor, T_true: torch.Tensor) -> dict[str, float]:
    """Median translation (m) and rotation (deg) errors of the decoded poses."""
    with torch.no_grad():
        T_est = decoder.decode(posemaps).double()
    T_true = T_true.double()
    dt = (T_est[:, :3, 3] - T_true[:, :3, 3]).norm(dim=1).numpy()
    dR = (T_est[:, :3, :3].transpose(1, 2) @ T_true[:, :3, :3]).numpy()
    dr = np.rad2deg(np.linalg.norm(rotvec_from_R(dR), axis=-1))
    return {"n": len(dt), "median_translation_m": float(np.median(dt)), "median_rotation_deg": float(np.median(dr))}


def train_pose_branch(
    field: RadianceField, decoder: PoseDecoder, T_N44: np.ndarray, K_33: np.ndarray, cfg: dict
) -> list[float]:
    """Train ``field.pose_branch`` and ``decoder`` (module docstring) on poses ``T_N44`` seen by a
    camera ``K_33`` of size posemap.image_width x image_height. Returns the loss per step."""
    p, t = cfg["posemap"], cfg["train"]
    w, h, s = int(p["image_width"]), int(p["image_height"]), int(p["downsample"])
    params = [q for q in field.parameters() if q.requires_grad] + list(decoder.parameters())
    steps, lr = int(t["steps"]), float(t["lr"])
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(t["lr_decay"]) ** (i / max(1, steps - 1)))
    rng = np.random.default_rng(int(t["seed"]))
    b = int(t["batch_size"])
    n_rvs = round(b * float(t["rvs_fraction"]))
    K = torch.as_tensor(K_33, dtype=torch.float32).expand(b, 3, 3)
    losses = []
    field.train()
    for _ in tqdm(range(steps), desc="NeRF-P pose branch", disable=not t["progress_bar"]):
        T = T_N44[rng.integers(0, len(T_N44), b)]
        if n_rvs:
            T[:n_rvs] = perturb_poses(T[:n_rvs], float(t["rvs_translation_m"]), float(t["rvs_rotation_deg"]), rng)[0]
        T_t = torch.as_tensor(T, dtype=torch.float32)
        pred = decoder(render_posemap(field, T_t, K, w, h, s))
        loss = torch.mean((pred - decoder.normalise(T_t)) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    field.eval()
    return losses


def _frames(cfg: dict, data: str | Path) -> tuple[str, list, np.ndarray]:
    ds = Dataset(data)
    frames = ds.frames(cfg["train_split"])
    scenes = sorted({f.scene for f in frames})
    scene = cfg["scene"]
    if scene is None:
        if len(scenes) != 1:
            raise ValueError(f"{data} has scenes {scenes}: set scene: (one field per scene)")
        scene = scenes[0]
    if scene not in scenes:
        raise ValueError(f"scene {scene!r} has no frames in split {cfg['train_split']!r} (scenes: {scenes})")
    frames = [f for f in frames if f.scene == scene]
    held = np.zeros(len(frames), dtype=bool)
    seq_of = [f.sequence for f in frames]
    for s in dict.fromkeys(seq_of):
        idx = np.array([i for i, k in enumerate(seq_of) if k == s])
        held[idx] = holdout_blocks(len(idx), float(cfg["train"]["val_fraction"]), int(cfg["train"]["val_block"]))
    return scene, frames, held


def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path | None:
    """Train NeRF-P on ``data`` (module docstring) and write its artifact ``out``."""
    opts = opts or TrainOptions()
    out = Path(out)
    work = Path(opts.work_dir or apr_trainer.work_dir_for(out))
    with output_lock(out, "--out"), output_lock(work, "--work-dir"):
        return _train_locked(cfg, data, out, work, opts)


def _train_locked(cfg: dict, data, out: Path, work: Path, opts: TrainOptions) -> Path | None:
    cfg = nerf_p_config(cfg)
    overwrite = opts.overwrite
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    if opts.epochs:
        cfg["train"]["steps"] = int(opts.epochs) * 100  # --epochs: hundreds of steps, as the field's epochs
    base = opts.config_dir()
    scene, frames, held = _frames(cfg, data)
    from .poseformer_sem import _stage_artifact  # the shared "existing artifact or train it" rule

    def run_field(c: dict, ns: TrainOptions):
        c.setdefault("data", {})["scene"] = scene
        return nerf_trainer.train(c, data, work / "field", ns)

    field_cfg = dict(cfg["field"])
    field_path = _stage_artifact(field_cfg, base, work / "field", "field", TrainOptions(), run_field)
    if field_path is None:
        return None
    field0, fmeta = load_radiance_field(field_path)
    if fmeta.get("scene") != scene:
        raise ValueError(f"field {field_path} is of scene {fmeta.get('scene')!r}, not {scene!r}")
    torch.manual_seed(int(cfg["train"]["seed"]))
    p = cfg["posemap"]
    field = add_pose_branch(field0, int(p["feature_dim"]))
    w, h, s = int(p["image_width"]), int(p["image_height"]), int(p["downsample"])
    gw, gh = posemap_size(w, h, s)
    decoder = PoseDecoder(gw * gh, int(p["feature_dim"]), list(p["decoder_hidden"]), field.aabb.tolist())
    cam = frames[0].camera.resized(w, h)
    T_all = np.stack([f.T_world_cam for f in frames]).astype(np.float64)
    log.info(
        "NeRF-P %s: %d training poses (+%d held out), PoseMap %dx%dx%d, decoder %s, %d steps",
        scene, int((~held).sum()), int(held.sum()), gw, gh, int(p["feature_dim"]), p["decoder_hidden"],
        int(cfg["train"]["steps"]),
    )  # fmt: skip
    t0, c0 = time.time(), time.process_time()
    losses = train_pose_branch(field, decoder, T_all[~held], cam.K, cfg)
    K = torch.as_tensor(cam.K, dtype=torch.float32)
    report_np = {}
    with torch.no_grad():
        for name, mask in (("held_out", held), ("train", ~held)):
            T = torch.as_tensor(T_all[mask], dtype=torch.float32)
            if len(T):
                pm = render_posemap(field, T, K.expand(len(T), 3, 3), w, h, s)
                report_np[name] = decoder_errors(decoder, pm, T)
    log.info("NeRF-P decoder: %s", report_np)
    summary = {
        "steps": int(cfg["train"]["steps"]),
        "final_loss": float(np.mean(losses[-20:])),
        "wall_seconds": time.time() - t0,
        "cpu_seconds": time.process_time() - c0,
        "field_artifact": str(Path(field_path).resolve()),
        "decoder": report_np,
    }
    report = json.loads((field_path / "report.json").read_text()) if (field_path / "report.json").is_file() else {}
    report["nerf_p"] = summary
    meta = {k: fmeta[k] for k in ("scene", "aabb", "classes", "camera") if k in fmeta}
    meta["training"] = {**fmeta.get("training", {}), "nerf_p": summary}
    meta["pose_decoder"] = {
        "weights": "pose_decoder.pt",
        "n_cells": gw * gh,
        "feature_dim": int(p["feature_dim"]),
        "hidden": [int(x) for x in p["decoder_hidden"]],
        "posemap": {"width": w, "height": h, "downsample": s, "grid": [gw, gh], "camera_K": cam.K.tolist()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        dec_file = Path(tmp) / "pose_decoder.pt"
        with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
            torch.save({k: v.detach().cpu() for k, v in decoder.state_dict().items()}, dec_file)
        files = {"pose_decoder.pt": dec_file, "contact_sheet.png": field_path / "contact_sheet.png"}
        write_nerf_artifact(out, field, cfg, meta, report, files, overwrite=overwrite)
    log.info("wrote NeRF-P artifact %s", out)
    return out
