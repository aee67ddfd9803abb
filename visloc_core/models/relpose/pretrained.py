"""Pretrained ImageNet backbones for the relative-pose network, split at stride 8 for AttNet.

An explicit SUBSTITUTION for the paper's ImageNet ResNet34, whose weights are not available
offline here (see /work/shared/FACTS.md). The backbones and their weights come from
:mod:`visloc_core.models.backbones`; this module only cuts each one in two so that CBAM sits
where the paper puts it (after the stride-8 stage, before the rest):

- ``mobilenet_v2``: stage a = features[0..6] (stride 8, 32 ch), stage b = features[7..17]
  (stride 32, 320 ch; the 1x1 1280-ch classification head conv is left out).
- ``efficientnet_lite0``: stage a = stem + blocks[0..4] (stride 8, 40 ch), stage b =
  blocks[5..15] (stride 32, 320 ch; head conv left out).

Each stage takes/returns feature maps; the caller normalises images with the returned mean/std.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _EffNetStem(nn.Module):
    def __init__(self, net: nn.Module, blocks: list[int]) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self.blocks = nn.ModuleList(net._blocks[i] for i in blocks)
        self._idx = blocks
        self._n = len(net._blocks)
        self._rate = net.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        return _run_blocks(self, x)


class _EffNetBlocks(nn.Module):
    def __init__(self, net: nn.Module, blocks: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[i] for i in blocks)
        self._idx = blocks
        self._n = len(net._blocks)
        self._rate = net.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_blocks(self, x)


def _run_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for i, block in zip(stage._idx, stage.blocks):
        # Stochastic depth grows linearly with block depth, as in the reference implementation.
        x = block(x, drop_connect_rate=stage._rate * i / stage._n if stage._rate else None)
    return x


def split_pretrained_backbone(
    name: str, pretrained: bool = True
) -> tuple[nn.Module, nn.Module, int, int, tuple, tuple, nn.Module]:
    """(stage_a, stage_b, channels_a, channels_b, mean, std, backbone) for a backbone name."""
    from ..backbones import BACKBONES, build_backbone

    if name not in BACKBONES:
        raise ValueError(f"unknown relpose_net backbone {name!r}; known: resnet34, {', '.join(BACKBONES)}")
    bb = build_backbone(name, pretrained=pretrained)
    mean = tuple(float(v) for v in bb.mean.flatten())
    std = tuple(float(v) for v in bb.std.flatten())
    if name == "mobilenet_v2":
        a = nn.Sequential(*[bb.features[i] for i in range(0, 7)])
        b = nn.Sequential(*[bb.features[i] for i in range(7, 18)])
        return a, b, 32, 320, mean, std, bb
    # efficientnet_lite0: 16 blocks; block 4 ends the stride-8 stage (backbones.EfficientNetLite0._TAP)
    n = len(bb._blocks)
    a = _EffNetStem(bb, list(range(0, 5)))
    b = _EffNetBlocks(bb, list(range(5, n)))
    return a, b, 40, 320, mean, std, bb
