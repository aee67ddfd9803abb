"""Pose regression losses with learned task weights, picked by name from the ``loss:`` config.

Both losses compare a predicted (position, quaternion) with the ground truth and balance the two
terms with learnable log-variance-like scalars (Kendall & Cipolla, CVPR 2017). Positions are in
whatever units the caller feeds (the APR trainer feeds per-scene *normalised* positions, see
training/apr.py); quaternions are (w, x, y, z). Ground-truth quaternions are canonicalised to
w >= 0 (both papers restrict the ground truth to one hemisphere).

``learned_weight`` (paper 000, eq. 9-11; PoseNet17):
    L_x = ||x - x^||_2,  L_q = ||q - q^/||q^|| ||_2   (per frame, averaged over the batch)
    L = L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q
    s_x, s_q learnable; initial values from config (Kendall 2017: s_x = 0, s_q = -3).

``log_quat_l1`` (paper 004, eq. 10-11; MVL-Loc, MapNet's log-quaternion):
    L = |x - x^|_1 exp(-alpha) + alpha + |log q - log q^|_1 exp(-beta) + beta
    alpha, beta learnable, initialised at -4 and -2 (paper 004, sec. 4).
    log q of a unit q = (w, v) is v/|v| * acos(w) (= axis * half angle). Paper 004's eq. 11 prints
    the symbols swapped (eta/|eta| acos(zeta)); we implement the standard map (MapNet, eq. 4),
    computed as v/|v| * atan2(|v|, w) for stable gradients, after canonicalising w >= 0
    (the paper's "single hemisphere"). The prediction is normalised before the log.
    The scene-classification NLL of eq. 10 belongs to multi-scene models and is added through
    their ``extra_losses`` hook (training/apr_module.py).

Every loss returns ``(total, terms)`` where ``terms`` holds detached scalars for logging.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry.torch_ops import qlog, quat_canonical, quat_normalize


class PoseLoss(nn.Module):
    """Base: forward(position_B3, quat_B4, gt_position_B3, gt_quat_B4) -> (loss, terms)."""

    name = "base"

    @staticmethod
    def _check(
        position_B3: torch.Tensor, quat_B4: torch.Tensor, gt_position_B3: torch.Tensor, gt_quat_B4: torch.Tensor
    ):
        if position_B3.shape != gt_position_B3.shape or position_B3.shape[-1] != 3:
            raise ValueError(
                f"position shapes differ or are not (B, 3): {tuple(position_B3.shape)} vs {tuple(gt_position_B3.shape)}"
            )
        if quat_B4.shape != gt_quat_B4.shape or quat_B4.shape[-1] != 4:
            raise ValueError(
                f"quaternion shapes differ or are not (B, 4): {tuple(quat_B4.shape)} vs {tuple(gt_quat_B4.shape)}"
            )


class LearnedWeightLoss(PoseLoss):
    """Paper 000 eq. 11: L_x e^{-s_x} + s_x + L_q e^{-s_q} + s_q with L2 (not squared) norms."""

    name = "learned_weight"

    def __init__(self, s_x: float = 0.0, s_q: float = -3.0) -> None:
        super().__init__()
        self.s_x = nn.Parameter(torch.tensor(float(s_x)))
        self.s_q = nn.Parameter(torch.tensor(float(s_q)))

    def forward(self, position_B3, quat_B4, gt_position_B3, gt_quat_B4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check(position_B3, quat_B4, gt_position_B3, gt_quat_B4)
        L_x = (position_B3 - gt_position_B3).norm(dim=-1).mean()
        L_q = (quat_canonical(gt_quat_B4) - quat_normalize(quat_B4)).norm(dim=-1).mean()
        total = L_x * torch.exp(-self.s_x) + self.s_x + L_q * torch.exp(-self.s_q) + self.s_q
        return total, {"L_x": L_x.detach(), "L_q": L_q.detach(), "s_x": self.s_x.detach(), "s_q": self.s_q.detach()}


class LogQuatL1Loss(PoseLoss):
    """Paper 004 eq. 10 (pose part): |x - x^|_1 e^{-alpha} + alpha + |log q - log q^|_1 e^{-beta} + beta."""

    name = "log_quat_l1"

    def __init__(self, alpha: float = -4.0, beta: float = -2.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, position_B3, quat_B4, gt_position_B3, gt_quat_B4) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check(position_B3, quat_B4, gt_position_B3, gt_quat_B4)
        # |.|_1 is the L1 norm of the 3-vector per frame, averaged over the batch.
        L_x = (position_B3 - gt_position_B3).abs().sum(dim=-1).mean()
        L_q = (qlog(quat_B4) - qlog(gt_quat_B4)).abs().sum(dim=-1).mean()
        total = L_x * torch.exp(-self.alpha) + self.alpha + L_q * torch.exp(-self.beta) + self.beta
        return total, {
            "L_x": L_x.detach(),
            "L_q": L_q.detach(),
            "alpha": self.alpha.detach(),
            "beta": self.beta.detach(),
        }


LOSSES: dict[str, type[PoseLoss]] = {LearnedWeightLoss.name: LearnedWeightLoss, LogQuatL1Loss.name: LogQuatL1Loss}


def build_loss(cfg: dict | None) -> PoseLoss:
    """``cfg`` = ``{"name": "learned_weight", "s_x": 0.0, "s_q": -3.0}`` or
    ``{"name": "log_quat_l1", "alpha": -4.0, "beta": -2.0}`` (omitted values take these defaults)."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "learned_weight")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r} in the config's loss.name; known: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](**cfg)
    except TypeError as err:
        raise ValueError(f"loss {name!r}: bad options {sorted(cfg)} ({err})") from err
