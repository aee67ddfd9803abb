"""Pose losses of papers 000 (eq. 11) and 004 (eq. 10) against hand-computed values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from visloc_core.training.losses import LearnedWeightLoss, LogQuatL1Loss, build_loss

SQ2 = math.sqrt(2.0)


def test_learned_weight_value_and_gradients() -> None:
    loss = LearnedWeightLoss(s_x=0.5, s_q=-1.0)
    pos = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    gt_pos = torch.tensor([[1.0, 2.0, 5.0], [3.0, 4.0, 0.0]])  # distances 2 and 5 -> L_x = 3.5
    # prediction (2, 0, 0, 0) normalises to identity; gt 90 deg about x: |(0.7071, 0.7071, 0, 0) - (1, 0, 0, 0)|
    # second: prediction equals gt up to scale -> 0.  L_q = mean(sqrt((1 - c)^2 + c^2), 0)
    c = math.cos(math.pi / 4)
    quat = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]], requires_grad=True)
    gt_q = torch.tensor([[c, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    total, terms = loss(pos, quat, gt_pos, gt_q)
    L_x, L_q = 3.5, 0.5 * math.sqrt((1 - c) ** 2 + c**2)
    assert terms["L_x"].item() == pytest.approx(L_x, rel=1e-6)
    assert terms["L_q"].item() == pytest.approx(L_q, rel=1e-6)
    expected = L_x * math.exp(-0.5) + 0.5 + L_q * math.exp(1.0) - 1.0
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (L e^{-s} + s) = 1 - L e^{-s}
    assert loss.s_x.grad.item() == pytest.approx(1 - L_x * math.exp(-0.5), rel=1e-5)
    assert loss.s_q.grad.item() == pytest.approx(1 - L_q * math.exp(1.0), rel=1e-5)
    # position gradient of the first row: e^{-s_x} * unit direction / B
    assert pos.grad[0].tolist() == pytest.approx([0.0, 0.0, -math.exp(-0.5) / 2], rel=1e-6)


def test_learned_weight_ground_truth_hemisphere() -> None:
    loss = LearnedWeightLoss()
    q = torch.tensor([[0.9, 0.1, -0.3, 0.2]])
    gt = torch.nn.functional.normalize(q, dim=1)
    p = torch.zeros(1, 3)
    a, _ = loss(p, q, p, gt)
    b, _ = loss(p, q, p, -gt)  # same rotation, other hemisphere: the gt is canonicalised
    assert a.item() == pytest.approx(b.item(), abs=1e-7)
    assert a.item() == pytest.approx(0.0 + 0.0 - 3.0, abs=1e-5)  # both errors 0 -> s_x + s_q


def test_log_quat_l1_value_and_gradients() -> None:
    loss = LogQuatL1Loss()  # alpha -4, beta -2 (paper 004)
    assert (loss.alpha.item(), loss.beta.item()) == (-4.0, -2.0)
    pos = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    gt_pos = torch.zeros(1, 3)  # L1 = 3.5
    half = math.radians(30.0)  # a 60 deg rotation about z: log q = (0, 0, pi/6)
    quat = torch.tensor([[3 * math.cos(half), 0.0, 0.0, 3 * math.sin(half)]])  # scaled: normalised first
    gt_q = torch.tensor([[-1.0, 0.0, 0.0, 0.0]])  # identity in the other hemisphere: log = 0
    total, terms = loss(pos, quat, gt_pos, gt_q)
    assert terms["L_x"].item() == pytest.approx(3.5, rel=1e-6)
    assert terms["L_q"].item() == pytest.approx(math.pi / 6, rel=1e-5)
    expected = 3.5 * math.exp(4.0) - 4.0 + (math.pi / 6) * math.exp(2.0) - 2.0
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert loss.alpha.grad.item() == pytest.approx(1 - 3.5 * math.exp(4.0), rel=1e-5)
    assert loss.beta.grad.item() == pytest.approx(1 - (math.pi / 6) * math.exp(2.0), rel=1e-5)
    # L1: gradient is sign(x - x^) e^{-alpha}
    assert pos.grad[0].tolist() == pytest.approx([math.exp(4.0), -math.exp(4.0), math.exp(4.0)], rel=1e-6)


def test_log_quat_l1_gradient_finite_at_identity() -> None:
    loss = LogQuatL1Loss()
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    total, _ = loss(torch.zeros(1, 3), q, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    total.backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", ["learned_weight", "log_quat_l1"])
def test_learned_weights_converge_to_log_of_error(name: str) -> None:
    # For fixed errors L, argmin_s L e^{-s} + s = log L: the weights adapt to the error scale.
    loss = build_loss({"name": name})
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    pos, gt_pos = torch.tensor([[0.5, 0.0, 0.0]]), torch.zeros(1, 3)
    q = torch.tensor([[math.cos(0.2), math.sin(0.2), 0.0, 0.0]])
    gt_q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    for _ in range(1500):
        opt.zero_grad()
        total, terms = loss(pos, q, gt_pos, gt_q)
        total.backward()
        opt.step()
    w = [p.item() for p in loss.parameters()]
    assert w[0] == pytest.approx(math.log(terms["L_x"].item()), abs=0.02)
    assert w[1] == pytest.approx(math.log(terms["L_q"].item()), abs=0.02)


def test_build_loss_by_name_and_errors() -> None:
    assert isinstance(build_loss({"name": "learned_weight", "s_q": -2.0}), LearnedWeightLoss)
    assert build_loss({"name": "learned_weight", "s_q": -2.0}).s_q.item() == -2.0
    assert isinstance(build_loss({"name": "log_quat_l1"}), LogQuatL1Loss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss({"name": "l2"})
    with pytest.raises(ValueError, match="bad options"):
        build_loss({"name": "log_quat_l1", "s_x": 1.0})
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        LearnedWeightLoss()(torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2, 2), torch.zeros(2, 4))
