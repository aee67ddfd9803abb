"""Lightning module for absolute pose regression: loss, stages, metrics, optimiser.

Generic over APR models (models/registry.py). Hooks a model may define:

- ``extra_losses(outputs, batch) -> dict[str, Tensor]``: scalar losses added to the pose loss
  (e.g. the scene-classification NLL of multi-scene models), each weighted by the current stage's
  ``extra_loss_weights[name]`` (default 1) and logged as ``train/<name>``.
- ``set_stage(name: str)``: called when a training stage starts (e.g. HyperPose's joint training then
  per-head fine-tuning).

Stages (config ``train.stages``): at the start of each stage the trainable set is rebuilt from
scratch by replaying every stage's ``freeze`` then ``unfreeze`` prefixes up to the current one
(so resuming mid-way gives the same state), BatchNorm layers whose parameters are all frozen are
kept in eval mode (their running statistics stay), and the LR is set to the stage's ``lr`` (times
the schedule factor). Parameter names are those of the model (``backbone.…``, ``head_position.…``)
and ``loss.…`` for the learned loss weights. All parameters are in the optimiser from the start;
frozen ones get no gradient, so Adam leaves them untouched.

Positions: the model predicts per-scene normalised positions; ground truth is normalised with the
statistics of the frame's own scene. Validation errors are in metres/degrees after undoing the
normalisation with the predicted scene (multi-scene models) or the true one, as the localizer does.

Scene classification (models that output ``scene_logits_BS``): ``train/scene_acc`` (arg max of the
logits, training mode, per epoch) and ``val/scene_acc`` (the scene the localizer would pick on the
validation frames) are logged every epoch.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from ..geometry.torch_ops import quat_angle_deg
from ..models.apr.artifact import SceneStats
from ..models.registry import SceneSpec, build_apr_model
from .losses import build_loss

log = logging.getLogger(__name__)


def matches(name: str, prefixes: list[str]) -> bool:
    """Plain string-prefix match of a parameter name (``backbone.`` matches every backbone parameter)."""
    return any(name.startswith(p) for p in prefixes)


class APRModule(pl.LightningModule):
    def __init__(self, cfg: dict, scenes: list[dict]) -> None:
        """``cfg``: merged training config (training/config.py); ``scenes``: SceneStats.to_json() list."""
        super().__init__()
        # Stored in checkpoints so that a checkpoint alone rebuilds the module.
        self.save_hyperparameters({"cfg": cfg, "scenes": scenes})
        self.cfg = cfg
        self.scene_stats = [SceneStats.from_json(s) for s in scenes]
        model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
        specs = [SceneSpec(s.name, s.description) for s in self.scene_stats]
        self.model = build_apr_model(cfg["model"]["name"], model_cfg, specs)
        self.loss = build_loss(cfg["loss"])
        self.register_buffer(
            "pos_mean_S3", torch.tensor(np.stack([s.position_mean for s in self.scene_stats]), dtype=torch.float32)
        )
        self.register_buffer(
            "pos_scale_S", torch.tensor([s.position_scale for s in self.scene_stats], dtype=torch.float32)
        )
        self.stages: list[dict] = cfg["train"]["stages"]
        self._stage_index = -1
        self._frozen_bn: list[nn.Module] = []
        # plateau scheduler state (saved in checkpoints)
        self._lr_factor = 1.0
        self._best_score = math.inf
        self._bad_epochs = 0
        self._val_t: list[torch.Tensor] = []
        self._val_r: list[torch.Tensor] = []
        self._val_scene_ok: list[torch.Tensor] = []

    # ------------------------------------------------------------------ parameters and stages
    def named_trainables(self) -> dict[str, nn.Parameter]:
        """Model parameters by model name, plus ``loss.<name>`` for the loss weights."""
        out = dict(self.model.named_parameters())
        out.update({f"loss.{n}": p for n, p in self.loss.named_parameters()})
        return out

    def stage_at(self, epoch: int) -> int:
        end = 0
        for i, s in enumerate(self.stages):
            end += s["epochs"]
            if epoch < end:
                return i
        return len(self.stages) - 1

    def stage_epoch_range(self, i: int) -> tuple[int, int]:
        start = sum(s["epochs"] for s in self.stages[:i])
        return start, start + self.stages[i]["epochs"]

    def apply_stage(self, i: int) -> None:
        params = self.named_trainables()
        for p in params.values():
            p.requires_grad_(True)
        for s in self.stages[: i + 1]:
            for prefixes, flag in ((s["freeze"], False), (s["unfreeze"], True)):
                if not prefixes:
                    continue
                hit = [n for n in params if matches(n, prefixes)]
                if not hit:
                    raise ValueError(
                        f"stage {s['name']!r}: prefixes {prefixes} match no parameter; "
                        f"names start with: {sorted({n.split('.')[0] for n in params})}"
                    )
                for n in hit:
                    params[n].requires_grad_(flag)
        for p in params.values():
            if not p.requires_grad:
                p.grad = None
        self._frozen_bn = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and all(not p.requires_grad for p in m.parameters(recurse=False))
            and any(True for _ in m.parameters(recurse=False))
        ]
        stage = self.stages[i]
        if hasattr(self.model, "set_stage"):
            self.model.set_stage(stage["name"])
        n_train = sum(p.numel() for p in params.values() if p.requires_grad)
        log.info(
            "stage %d/%d %r: epochs %d-%d, lr %g, %d trainable parameters",
            i + 1,
            len(self.stages),
            stage["name"],
            *self.stage_epoch_range(i),
            stage["lr"],
            n_train,
        )
        self._stage_index = i

    def current_lr(self, epoch: int) -> float:
        i = self.stage_at(epoch)
        lr = self.stages[i]["lr"]
        t = self.cfg["train"]
        if t["scheduler"] == "cosine":
            a, b = self.stage_epoch_range(i)
            frac = (epoch - a) / max(1, b - a)
            lo = lr * float(t["min_lr_factor"])
            return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * frac))
        if t["scheduler"] == "plateau":
            return lr * self._lr_factor
        return lr

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        i = self.stage_at(epoch)
        if i != self._stage_index:
            if self._stage_index >= 0:
                self._lr_factor, self._bad_epochs, self._best_score = 1.0, 0, math.inf  # new stage, fresh plateau
            self.apply_stage(i)
        lr = self.current_lr(epoch)
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_factor", 1.0)
        self.log("train/lr", lr, on_step=False, on_epoch=True)
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(epoch)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        for m in self._frozen_bn:  # Lightning puts everything in train mode after validation
            m.eval()

    # ------------------------------------------------------------------ forward and losses
    def forward(self, image_B3HW: torch.Tensor, scene_id_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.model(image_B3HW, scene_id_B)

    def normalise_position(self, position_B3: torch.Tensor, scene_id_B: torch.Tensor) -> torch.Tensor:
        return (position_B3 - self.pos_mean_S3[scene_id_B]) / self.pos_scale_S[scene_id_B, None]

    def denormalise_position(self, position_B3: torch.Tensor, scene_id_B: torch.Tensor) -> torch.Tensor:
        return position_B3 * self.pos_scale_S[scene_id_B, None] + self.pos_mean_S3[scene_id_B]

    def predicted_scene(self, out: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        logits = out.get("scene_logits_BS")
        return logits.argmax(dim=1) if logits is not None else batch["scene_id"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        stage = self.stages[max(self._stage_index, 0)]
        out = self.model(batch["image"], batch["scene_id"])
        gt_B3 = self.normalise_position(batch["position"], batch["scene_id"])
        pose_loss, terms = self.loss(out["position_B3"], out["quat_B4"], gt_B3, batch["quat_wxyz"])
        total = stage["pose_loss_weight"] * pose_loss
        bs = batch["image"].shape[0]
        if hasattr(self.model, "extra_losses"):
            for name, value in self.model.extra_losses(out, batch).items():
                total = total + float(stage["extra_loss_weights"].get(name, 1.0)) * value
                self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/pose_loss", pose_loss.detach(), on_step=False, on_epoch=True, batch_size=bs)
        for k, v in terms.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        logits = out.get("scene_logits_BS")
        if logits is not None:
            acc = (logits.detach().argmax(dim=1) == batch["scene_id"]).float().mean()
            self.log("train/scene_acc", acc, on_step=False, on_epoch=True, batch_size=bs)
        return total

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["image"], batch["scene_id"])
        sid = self.predicted_scene(out, batch)
        pos = self.denormalise_position(out["position_B3"], sid)
        self._val_t.append((pos - batch["position"]).norm(dim=1).detach())
        self._val_r.append(quat_angle_deg(out["quat_B4"], batch["quat_wxyz"]).detach())
        if "scene_logits_BS" in out:
            self._val_scene_ok.append((sid == batch["scene_id"]).float().detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_t:
            return
        t, r = torch.cat(self._val_t), torch.cat(self._val_r)
        ok = torch.cat(self._val_scene_ok) if self._val_scene_ok else None
        self._val_t.clear()
        self._val_r.clear()
        self._val_scene_ok.clear()
        if self.trainer.world_size > 1:  # medians over all processes' frames
            t, r = self.all_gather(t).flatten(), self.all_gather(r).flatten()
            ok = self.all_gather(ok).flatten() if ok is not None else None
        med_t, med_r = float(t.median()), float(r.median())
        score = med_t + med_r * float(self.cfg["train"]["monitor_m_per_deg"])
        self.log("val/median_translation_m", med_t, prog_bar=True)
        self.log("val/median_rotation_deg", med_r, prog_bar=True)
        self.log("val/score", score)
        if ok is not None:
            self.log("val/scene_acc", float(ok.mean()), prog_bar=True)
        if self.trainer.sanity_checking:
            return
        if score < self._best_score - 1e-9:
            self._best_score, self._bad_epochs = score, 0
        else:
            self._bad_epochs += 1
            if self.cfg["train"]["scheduler"] == "plateau" and self._bad_epochs >= int(
                self.cfg["train"]["plateau_patience"]
            ):
                self._lr_factor *= float(self.cfg["train"]["plateau_factor"])
                self._bad_epochs = 0
                log.info("plateau: LR factor now %g", self._lr_factor)

    # ------------------------------------------------------------------ optimiser, checkpoint state
    def configure_optimizers(self):
        t = self.cfg["train"]
        lr = self.stages[0]["lr"]
        factor = float(t["loss_lr_factor"])
        groups = [{"params": list(self.model.parameters()), "lr_factor": 1.0}]
        # The learned loss weights: no weight decay (it would pull s_x, s_q towards 0, i.e. bias the
        # balance), optionally a larger LR so that short trainings let them adapt.
        groups.append(
            {"params": list(self.loss.parameters()), "lr_factor": factor, "lr": lr * factor, "weight_decay": 0.0}
        )
        opt_cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
        return opt_cls(groups, lr=lr, weight_decay=float(t["weight_decay"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["visloc_sched"] = {"lr_factor": self._lr_factor, "best": self._best_score, "bad": self._bad_epochs}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        s = checkpoint.get("visloc_sched", {})
        self._lr_factor = float(s.get("lr_factor", 1.0))
        self._best_score = float(s.get("best", math.inf))
        self._bad_epochs = int(s.get("bad", 0))
