"""``task: pmnet``: PMNet (paper 001 sec. 3.1 and 4.1): APRNet trained with a NeRF-P teacher.

``visloc train config/models/pmnet.yaml --data DATASET --out ARTIFACT [--resume]``

1. NeRF-P of the scene (``pmnet.nerf_p.artifact``, or trained here with ``pmnet.nerf_p.config``,
   training/nerf_p.py): the radiance field with its pose-feature branch.
2. The view pool, rendered once by the field (``pool.pt`` in the work folder, or ``pmnet.pool_cache``
   to share it between runs): for every training frame, at the network's input camera, the image
   rendered at the TRUE pose (for L_image) and its PoseMap (for L_posemap), and ``rvs.views_per_frame``
   random views (training/rvs.py; paper 001: 0.2 m / 10 deg indoors, 3 m / 7.5 deg outdoors), each
   with its pose, rendered image and PoseMap (for L_rvs). Images are rendered at ``render.scale`` of
   the input size and up-sampled (bilinear). The paper renders the RVS views online inside each batch;
   on our CPUs one 160x120 render costs ~19,200 rays, so a pool rendered once is what fits (docs/models.md
   has the measured cost). The pool is a fixed set of random views, not a fresh draw each step.
3. APRNet (model ``pmnet``, models/apr/pmnet.py) trained with the APR trainer (training/apr.py: same
   data, stages, validation, calibration and artifact) and the loss of paper 001 eq. 6:

   ``L = w_pose L_pose + w_image L_image + w_posemap L_posemap + w_rvs L_rvs``

   - L_pose: the config's pose loss (``loss.name``, e.g. the learned-weight loss; paper: L2);
   - L_image (DFNet's triplet): the distance between APRNet's feature maps of the real image and of
     the image rendered at its true pose, against the rendered image of another frame of the batch as
     the negative: ``max(0, d(real, rendered) - d(real, rendered_other) + margin)``, d = mean over
     cells of 1 - cosine of the feature vectors;
   - L_posemap: 1 - cosine between the PoseMap rendered at the PREDICTED pose (differentiable: the
     gradient reaches APRNet through the pose) and the PoseMap at the true pose;
   - L_rvs (eq. 5): the pose loss of APRNet on a pool view against its perturbed pose, plus (when
     w_posemap > 0) the PoseMap loss at that view.

   Setting a weight to 0 drops the term (the table-5a ablation). The rendered images must align with
   the real ones pixel for pixel: the data augmentation may change colours but not the geometry
   (``data.augment.crop: center``, ``scale_jitter: 0``).

Inference is APRNet alone: the artifact is an ordinary APR artifact (model ``pmnet``) that
``load_localizer``, the node, ``visloc eval`` and ``visloc replay`` serve; ``training.pmnet`` records
the NeRF-P artifact, the loss weights and the pool.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import output_lock
from ..geometry import position_quat_wxyz_from_T
from ..geometry.torch_ops import T_from_position_quat
from ..interrupt import signals_deferred
from ..models.nerf.artifact import load_nerf_p
from ..models.nerf.posemap import posemap_cosine_loss, render_posemap
from . import apr as apr_trainer
from . import nerf_p as nerf_p_trainer
from .apr_data import APRDataModule
from .apr_module import APRModule
from .config import apr_config, merge_strict
from .options import TrainOptions
from .rvs import RVS_PRESETS, perturb_poses

log = logging.getLogger(__name__)

PMNET_DEFAULTS: dict = {
    "nerf_p": {"config": "nerf_p.yaml", "artifact": None, "epochs": None},
    "losses": {"pose": 1.0, "image": 1.0, "posemap": 1.0, "rvs": 1.0},  # paper 001 eq. 6: all 1
    "image_loss": {"margin": 0.5},
    "rvs": {
        "preset": "indoor",  # indoor (0.2 m, 10 deg) | outdoor (3 m, 7.5 deg) | null = the two below
        "max_translation_m": None,
        "max_rotation_deg": None,
        "views_per_frame": 2,
        "seed": 0,
    },
    "render": {"scale": 0.5},  # rendered images at this fraction of the input size, up-sampled
    "pool_cache": None,  # a pool file to reuse between runs (built when missing)
}


def pmnet_config(user_cfg: dict) -> tuple[dict, dict]:
    """(APR config for the trainer, the ``pmnet`` section merged over PMNET_DEFAULTS)."""
    cfg = copy.deepcopy(user_cfg)
    if cfg.get("task") != "pmnet":
        raise ValueError(f"task must be pmnet here, got {cfg.get('task')!r}")
    pm = merge_strict(PMNET_DEFAULTS, cfg.pop("pmnet", {}) or {})
    cfg["task"] = "apr"
    apr = apr_config(cfg)
    aug = apr["data"]["augment"]
    if aug.get("crop") != "center" or float(aug.get("scale_jitter", 0.0)) != 0.0:
        raise ValueError(
            "pmnet: the rendered views must align with the real images: set data.augment.crop: center and "
            "data.augment.scale_jitter: 0 (colour augmentation is fine)"
        )
    if pm["rvs"]["preset"] is not None:
        if pm["rvs"]["preset"] not in RVS_PRESETS:
            raise ValueError(f"pmnet.rvs.preset must be one of {sorted(RVS_PRESETS)} or null")
        t, r = RVS_PRESETS[pm["rvs"]["preset"]]
        pm["rvs"]["max_translation_m"] = t if pm["rvs"]["max_translation_m"] is None else pm["rvs"]["max_translation_m"]
        pm["rvs"]["max_rotation_deg"] = r if pm["rvs"]["max_rotation_deg"] is None else pm["rvs"]["max_rotation_deg"]
    if pm["rvs"]["max_translation_m"] is None or pm["rvs"]["max_rotation_deg"] is None:
        raise ValueError("pmnet.rvs: set preset or both max_translation_m and max_rotation_deg")
    if any(float(v) < 0 for v in pm["losses"].values()):
        raise ValueError(f"pmnet.losses must be >= 0, got {pm['losses']}")
    return apr, pm


# ------------------------------------------------------------------------------------- losses
def feature_distance(a_BCHW: torch.Tensor, b_BCHW: torch.Tensor) -> torch.Tensor:
    """(B,) mean over cells of 1 - cosine between the C-vectors of two feature maps."""
    return (1.0 - F.cosine_similarity(a_BCHW, b_BCHW, dim=1, eps=1e-8)).flatten(1).mean(1)


def image_triplet_loss(real_BCHW: torch.Tensor, rendered_BCHW: torch.Tensor, margin: float) -> torch.Tensor:
    """L_image: max(0, d(real, rendered) - d(real, rendered of the next frame) + margin), batch mean.
    With a single image there is no negative: d(real, rendered) alone."""
    pos = feature_distance(real_BCHW, rendered_BCHW)
    if real_BCHW.shape[0] < 2:
        return pos.mean()
    neg = feature_distance(real_BCHW, rendered_BCHW.roll(1, dims=0))
    return F.relu(pos - neg + float(margin)).mean()


# ------------------------------------------------------------------------------------- pool
def build_pool(field, frames_T: list[np.ndarray], keys: list[str], K_33: np.ndarray, size: tuple[int, int],
               downsample: int, pm: dict, progress: bool = True) -> dict:  # fmt: skip
    """Render the view pool (module docstring) for frames with poses ``frames_T`` seen by the input
    camera ``K_33`` of ``size`` = (width, height). Returns {"views": {key: {...}}, "meta": {...}}."""
    w, h = size
    scale = float(pm["render"]["scale"])
    ws, hs = max(8, round(w * scale)), max(6, round(h * scale))
    Ks = K_33.astype(np.float64).copy()
    Ks[0] *= ws / w
    Ks[1] *= hs / h
    Ks[0, 2] = (K_33[0, 2] + 0.5) * ws / w - 0.5  # pixel centres at integers (rays.py)
    Ks[1, 2] = (K_33[1, 2] + 0.5) * hs / h - 0.5
    r = pm["rvs"]
    rng = np.random.default_rng(int(r["seed"]))
    n_v = int(r["views_per_frame"])
    K_t, Ks_t = torch.as_tensor(K_33, dtype=torch.float32), torch.as_tensor(Ks, dtype=torch.float32)

    def render(T: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        T_t = torch.as_tensor(T, dtype=torch.float32)
        rgb = field.render_camera(T_t, Ks_t, ws, hs, keys=("rgb",))["rgb"].permute(2, 0, 1)[None]
        rgb = F.interpolate(rgb, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)
        pmap = render_posemap(field, T_t[None], K_t[None], w, h, downsample)[0]
        return rgb.half(), pmap.half()

    views = {}
    t0, c0 = time.time(), time.process_time()
    with torch.no_grad():
        for key, T in tqdm(list(zip(keys, frames_T, strict=True)), desc="PMNet view pool", disable=not progress):
            rgb, pmap = render(T)
            item = {"rgb": rgb, "posemap": pmap}
            if n_v > 0:
                T_r = perturb_poses(np.repeat(T[None], n_v, 0), float(r["max_translation_m"]),
                                    float(r["max_rotation_deg"]), rng)[0]  # fmt: skip
                rend = [render(x) for x in T_r]
                pos, q = zip(*(position_quat_wxyz_from_T(x) for x in T_r), strict=True)
                item.update(
                    rvs_rgb=torch.stack([x[0] for x in rend]),
                    rvs_posemap=torch.stack([x[1] for x in rend]),
                    rvs_position=torch.as_tensor(np.stack(pos), dtype=torch.float32),
                    rvs_quat=torch.as_tensor(np.stack(q), dtype=torch.float32),
                    rvs_T=torch.as_tensor(T_r, dtype=torch.float32),
                )
            views[key] = item
    n_renders = len(keys) * (1 + n_v)
    meta = {
        "frames": len(keys),
        "views_per_frame": n_v,
        "renders": n_renders,
        "render_size": [ws, hs],
        "input_size": [w, h],
        "rvs": dict(r),
        "wall_seconds": time.time() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    meta["cpu_seconds_per_render"] = meta["cpu_seconds"] / max(1, n_renders)
    log.info("view pool: %d renders at %dx%d in %.0f CPU s (%.2f per render)", n_renders, ws, hs,
             meta["cpu_seconds"], meta["cpu_seconds_per_render"])  # fmt: skip
    return {"views": views, "meta": meta}


# ------------------------------------------------------------------------------------- module
class PMNetModule(APRModule):
    """APRModule whose training loss is paper 001 eq. 6 (module docstring); validation as APR."""

    def __init__(self, cfg: dict, scenes: list[dict], pm: dict, field: nn.Module, pool: dict, downsample: int):
        super().__init__(cfg, scenes)
        self.pm = pm
        self.field = field
        for p in self.field.parameters():
            p.requires_grad_(False)
        self.pool = pool["views"]
        self.downsample = int(downsample)

    def _pool(self, keys: list[str], name: str, device) -> torch.Tensor:
        try:
            return torch.stack([self.pool[k][name] for k in keys]).to(device=device, dtype=torch.float32)
        except KeyError as err:
            raise KeyError(f"frame {err} is not in the PMNet view pool (stale pool_cache? delete it)") from err

    def _posemap_loss(self, out: dict, scene_id: torch.Tensor, K: torch.Tensor, target: torch.Tensor, size):
        T_pred = T_from_position_quat(self.denormalise_position(out["position_B3"], scene_id), out["quat_B4"])
        pm_pred = render_posemap(self.field, T_pred, K, size[0], size[1], self.downsample)
        return posemap_cosine_loss(pm_pred, target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        w = {k: float(v) for k, v in self.pm["losses"].items()}
        img, sid, keys = batch["image"], batch["scene_id"], list(batch["key"])
        b, _, h, wd = img.shape
        dev = img.device
        out = self.model(img, sid)
        gt = self.normalise_position(batch["position"], sid)
        pose_loss, terms = self.loss(out["position_B3"], out["quat_B4"], gt, batch["quat_wxyz"])
        total = w["pose"] * pose_loss
        logs = {"pose_loss": pose_loss}
        if w["image"] > 0:
            rendered = self._pool(keys, "rgb", dev)
            f_rend = self.model(rendered, sid)["image_features"]
            logs["image_loss"] = image_triplet_loss(out["image_features"], f_rend, self.pm["image_loss"]["margin"])
            total = total + w["image"] * logs["image_loss"]
        if w["posemap"] > 0:
            logs["posemap_loss"] = self._posemap_loss(out, sid, batch["K"], self._pool(keys, "posemap", dev), (wd, h))
            total = total + w["posemap"] * logs["posemap_loss"]
        if w["rvs"] > 0:
            n_v = int(self.pm["rvs"]["views_per_frame"])
            if n_v < 1:
                raise ValueError("pmnet.losses.rvs > 0 needs rvs.views_per_frame >= 1")
            g = torch.Generator().manual_seed(int(self.pm["rvs"]["seed"]) * 1_000_003 + int(self.global_step))
            j = torch.randint(0, n_v, (b,), generator=g).tolist()
            pick = lambda name: torch.stack(  # noqa: E731
                [self.pool[k][name][i] for k, i in zip(keys, j, strict=True)]
            ).to(device=dev, dtype=torch.float32)
            out_r = self.model(pick("rvs_rgb"), sid)
            gt_r = self.normalise_position(pick("rvs_position"), sid)
            rvs_loss, _ = self.loss(out_r["position_B3"], out_r["quat_B4"], gt_r, pick("rvs_quat"))
            if w["posemap"] > 0:
                rvs_loss = rvs_loss + self._posemap_loss(out_r, sid, batch["K"], pick("rvs_posemap"), (wd, h))
            logs["rvs_loss"] = rvs_loss
            total = total + w["rvs"] * rvs_loss
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        for k, v in {**logs, **terms}.items():
            self.log(f"train/{k}", v.detach() if torch.is_tensor(v) else v, on_step=False, on_epoch=True, batch_size=b)
        return total


# ------------------------------------------------------------------------------------- trainer
def train(cfg: dict, data: str | Path, out: str | Path, opts: TrainOptions | None = None) -> Path | None:
    """NeRF-P, view pool, APRNet (module docstring); writes the APR artifact ``out``."""
    opts = opts or TrainOptions()
    out = Path(out)
    work = Path(opts.work_dir or apr_trainer.work_dir_for(out))
    with output_lock(out, "--out"), output_lock(work, "--work-dir"):
        return _train_locked(cfg, str(data), out, work, opts)


def _train_locked(cfg: dict, data: str, out: Path, work: Path, opts: TrainOptions) -> Path | None:
    apr, pm = pmnet_config(cfg)
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    base = opts.config_dir()
    dm = APRDataModule(apr, data)
    if len(dm.scene_names) != 1:
        raise ValueError(f"pmnet trains one scene (one field): set data.scenes: [one of {dm.scene_names}]")
    scene = dm.scene_names[0]
    work.mkdir(parents=True, exist_ok=True)
    from .poseformer_sem import _stage_artifact  # the shared "existing artifact or train it" rule

    def run_nerf_p(c: dict, stage_opts: TrainOptions):
        c["scene"] = scene
        # NeRF-P's own stage configs resolve against its config's folder
        return nerf_p_trainer.train(c, data, work / "nerf_p", replace(stage_opts, config=base / pm["nerf_p"]["config"]))

    nerf_p_opts = TrainOptions(epochs=pm["nerf_p"]["epochs"])
    nerf_p_path = _stage_artifact(pm["nerf_p"], base, work / "nerf_p", "nerf_p", nerf_p_opts, run_nerf_p)
    if nerf_p_path is None:
        return None
    field, _, fmeta = load_nerf_p(nerf_p_path)
    if fmeta.get("scene") != scene:
        raise ValueError(f"NeRF-P {nerf_p_path} is of scene {fmeta.get('scene')!r}, not {scene!r}")
    downsample = int(fmeta["pose_decoder"]["posemap"]["downsample"])
    pool = _load_or_build_pool(pm, work, dm, field, downsample, nerf_p_path, apr)
    record = {
        "nerf_p_artifact": str(Path(nerf_p_path).resolve()),
        "losses": pm["losses"],
        "image_loss": pm["image_loss"],
        "rvs": pm["rvs"],
        "pool": pool["meta"],
    }
    make = lambda c, scenes: PMNetModule(c, scenes, pm, field, pool, downsample)  # noqa: E731
    return apr_trainer._train_locked(apr, data, out, work, opts, make_module=make, extra_training={"pmnet": record})


def _load_or_build_pool(pm: dict, work: Path, dm: APRDataModule, field, downsample: int, nerf_p_path, apr) -> dict:
    path = Path(pm["pool_cache"]) if pm["pool_cache"] else work / "pool.pt"
    d = apr["data"]
    want = {
        "nerf_p": str(Path(nerf_p_path).resolve()),
        "rvs": dict(pm["rvs"]),
        "render": dict(pm["render"]),
        "input_size": [int(d["image_width"]), int(d["image_height"])],
    }
    keys = [f.key for f in dm.train_frames]
    if path.is_file():
        pool = torch.load(path, map_location="cpu", weights_only=False)
        if pool.get("identity") == want and set(keys) <= set(pool["views"]):
            log.info("view pool: reusing %s (%d frames)", path, len(pool["views"]))
            return pool
        log.info("view pool %s was made for other settings or frames: rendering it again", path)
    K = None
    Ts = []
    for f in dm.train_frames:
        _, _, cam = dm.val_transform.geometry(f.camera, np.random.default_rng(0))
        if K is not None and not np.allclose(cam.K, K):
            raise ValueError("pmnet: the training frames have different cameras; one camera per scene is supported")
        K = cam.K
        Ts.append(np.asarray(f.T_world_cam, dtype=np.float64))
    progress = bool(apr["train"]["progress_bar"])
    size = (int(d["image_width"]), int(d["image_height"]))
    pool = build_pool(field, Ts, keys, K, size, downsample, pm, progress)
    pool["identity"] = want
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
        torch.save(pool, tmp)
    tmp.replace(path)
    return pool
