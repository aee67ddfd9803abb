"""The learned relative-pose network of paper 003 (Li, Zhan, Tan 2022), built on EssNet (Zhou et al. 2020).

Pipeline for one image pair (query q, reference r), shapes for a B-batch of pairs::

    image_B3HW (RGB in [0, 1]) --normalise--> I_B3HW
    semantic_BHW (class ids) --one-hot--> S0_BCHW --BiasNet--> S3_B3HW        (paper eq. 1)
    I' = I + S3                                                              (paper eq. 2, element-wise ADD)
    AttNet: F0 = ResNet[stem..layer2](I')  (stride 8, 128 ch for ResNet34)
            F1 = Nc(F0) * F0;  F2 = Ns(F1) * F1                              (CBAM, paper eqs. 4-6)
            F3 = ResNet[layer3..layer4](F2)  (stride 32, 512 ch)             (paper eq. 7)
    C_q_r = correlation(F3_q, F3_r): (B, h'w', h', w')                       (paper eq. 8)
    e = FC(ReLU(conv1x1(ReLU(conv3x3(C)))))  (B, 9), E = e.view(3, 3)        (paper eq. 9)

Convention of the output (same as visloc_core/localizers/relpose/base.py): ``E_q_r = [t/|t|]x R``
with ``(R, t) = T_q_r`` mapping reference-camera points into the query camera, so that normalised
image points satisfy ``x_q^T E x_r = 0``. The network's first input is the query, the second the
reference. The regression target is the exact matrix ``[t/|t|]x R`` (unit-norm translation fixes
the scale; its sign is that of the true translation, so the label is unique and the loss is not
sign-invariant by default, as in the paper and EssNet).

Switches (``default_conf`` below): ``use_biasnet`` (BiasNet semantic masking), ``use_attention``
(CBAM between the two halves of the backbone) and ``backbone`` (ResNet34 as in the paper, random
initialisation unless ``resnet_weights`` names a torchvision-layout state dict; or a pretrained
ImageNet backbone from :mod:`visloc_core.models.backbones` as an explicit substitution, because no
ImageNet ResNet34 weights are available offline here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import deep_merge

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

default_conf: dict = {
    # Network input size (width, height); images are resized+center-cropped to it (intrinsics follow).
    "image_width": 160,
    "image_height": 120,
    # 'resnet34' (paper; random init unless resnet_weights is set), or a pretrained substitution from
    # visloc_core.models.backbones: 'mobilenet_v2' / 'efficientnet_lite0' (ImageNet weights).
    "backbone": "resnet34",
    # Optional torchvision-layout ResNet34 state dict (.pth) for the paper's ImageNet init; '' = random init.
    "resnet_weights": "",
    # Last ResNet stage used: 4 as the paper's text (14x14x512 at 448 px); 3 gives EssNet's stride 16 / 256 ch.
    "resnet_last_layer": 4,
    # Pretrained substitutes: load the ImageNet weights (False = same architecture, random init).
    "pretrained": True,
    # CBAM after the stride-8 stage (AttNet). False = plain backbone (the paper's 'without AttNet' ablation).
    "use_attention": True,
    "cbam_reduction": 16,  # channel-attention MLP reduction ratio (CBAM default)
    "cbam_kernel": 7,  # spatial-attention kernel size (paper eq. 5: 7x7)
    # BiasNet on the one-hot semantic map, added to the normalised image. False = 'without BiasNet' ablation.
    "use_biasnet": True,
    "num_classes": 0,  # number of semantic class ids (max id + 1); set from the dataset manifest by the trainer
    "biasnet_channels": 16,  # width of BiasNet's two 3x3 layers
    # Classes whose regions are dilated by a 7x7 kernel before BiasNet (paper's C_dilation); [] = none.
    "dilate_classes": [],
    "dilate_kernel": 7,
    # L2-normalise feature vectors before, and ReLU + L2-normalise the correlation after (Rocco et al. [33],
    # the correlation layer the paper and EssNet use). False = the plain dot product of paper eq. 8.
    "feature_l2norm": True,
    "corr_normalize": True,
    # Regression head: conv3x3 -> ReLU -> conv1x1 -> ReLU -> FC(9) (paper eq. 9); channel widths.
    "reg_channels": [128, 64],
}


def merge_conf(cfg: dict | None) -> dict:
    """``default_conf`` updated with ``cfg`` (unknown keys are an error, naming the known ones)."""
    return deep_merge(default_conf, cfg, strict=True, path="model.")


# ------------------------------------------------------------------------------------------ BiasNet
def one_hot_semantic(semantic_BHW: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot (B, C, H, W) float of integer class maps (B, H, W). Ids outside [0, C) (unknown
    classes, or -1 for 'no segmentation') give an all-zero vector at that pixel."""
    s = semantic_BHW.long()
    valid = (s >= 0) & (s < num_classes)
    oh = F.one_hot(torch.where(valid, s, torch.zeros_like(s)), num_classes).permute(0, 3, 1, 2).float()
    return oh * valid.unsqueeze(1).float()


def dilate_classes(semantic_HW: np.ndarray, classes: list[int], kernel: int = 7) -> np.ndarray:
    """Paper sec. 2.1: every pixel of a class in ``classes`` paints its class onto the k x k patch
    centred on it (morphological dilation of those regions), in the order given."""
    import cv2

    out = np.asarray(semantic_HW).copy()
    k = np.ones((kernel, kernel), np.uint8)
    for c in classes:
        mask = (np.asarray(semantic_HW) == c).astype(np.uint8)
        out[cv2.dilate(mask, k) > 0] = c
    return out


class BiasNet(nn.Module):
    """Semantic map (one-hot, B x C x H x W) -> bias image (B x 3 x H x W), paper eq. 1:
    S^k = ReLU(f^k(S^{k-1})), f^1, f^2 3x3 convolutions, f^3 a 1x1 convolution to 3 channels."""

    def __init__(self, num_classes: int, channels: int = 16) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("BiasNet needs num_classes >= 1 (set it from the dataset's class list)")
        self.num_classes = num_classes
        self.f1 = nn.Conv2d(num_classes, channels, 3, padding=1)
        self.f2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.f3 = nn.Conv2d(channels, 3, 1)

    def forward(self, semantic_BHW: torch.Tensor) -> torch.Tensor:
        s = one_hot_semantic(semantic_BHW, self.num_classes)
        s = F.relu(self.f1(s))
        s = F.relu(self.f2(s))
        return F.relu(self.f3(s))


# --------------------------------------------------------------------------------------------- CBAM
class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018) as written in paper eqs. 4-6:

    Nc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))        (B, C, 1, 1), pools over H, W
    Ns(F) = sigmoid(conv7x7([AvgPool(F); MaxPool(F)]))         (B, 1, H, W), pools over channels
    F1 = Nc(F0) * F0;  F2 = Ns(F1) * F1
    """

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def channel_attention(self, f_BCHW: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(f_BCHW.mean(dim=(2, 3)))
        mx = self.mlp(f_BCHW.amax(dim=(2, 3)))
        return torch.sigmoid(avg + mx)[:, :, None, None]

    def spatial_attention(self, f_BCHW: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([f_BCHW.mean(dim=1, keepdim=True), f_BCHW.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))

    def forward(self, f0_BCHW: torch.Tensor) -> torch.Tensor:
        f1 = self.channel_attention(f0_BCHW) * f0_BCHW
        return self.spatial_attention(f1) * f1


# ----------------------------------------------------------------------------------------- ResNet34
class BasicBlock(nn.Module):
    """ResNet basic block; parameter names follow torchvision so its state dicts load."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + idt, inplace=True)


def _resnet_layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


class ResNet34Trunk(nn.Module):
    """ResNet34 (He et al. 2016) without pooling/classifier; torchvision parameter names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _resnet_layer(64, 64, 3, 1)
        self.layer2 = _resnet_layer(64, 128, 4, 2)
        self.layer3 = _resnet_layer(128, 256, 6, 2)
        self.layer4 = _resnet_layer(256, 512, 3, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def load_torchvision(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a torchvision ResNet34 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        logger.info("ResNet34 initialised from %s", path)


class _Stage(nn.Module):
    """Runs a list of modules in order (a slice of a backbone)."""

    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.mods:
            x = m(x)
        return x


def build_backbone_stages(conf: dict) -> tuple[nn.Module, nn.Module, int, int, tuple, tuple, nn.Module | None]:
    """Split the backbone at stride 8 (where AttNet puts CBAM): returns (stage_a, stage_b,
    channels after a, channels after b, normalisation mean, std, owner module or None).

    For 'resnet34', stage_a = stem + layer1 + layer2 (128 ch, stride 8) and stage_b = layer3 [+ layer4].
    The pretrained substitutes come from :mod:`visloc_core.models.backbones`, split the same way.
    """
    name = conf["backbone"]
    if name == "resnet34":
        trunk = ResNet34Trunk()
        if conf["resnet_weights"]:
            trunk.load_torchvision(conf["resnet_weights"])
        stem = nn.Sequential(trunk.conv1, trunk.bn1, nn.ReLU(inplace=True), trunk.maxpool)
        a = _Stage([stem, trunk.layer1, trunk.layer2])
        last = int(conf["resnet_last_layer"])
        if last not in (3, 4):
            raise ValueError(f"resnet_last_layer must be 3 or 4, got {last}")
        b = _Stage([trunk.layer3] + ([trunk.layer4] if last == 4 else []))
        return a, b, 128, 512 if last == 4 else 256, IMAGENET_MEAN, IMAGENET_STD, None
    from .pretrained import split_pretrained_backbone

    return split_pretrained_backbone(name, pretrained=bool(conf["pretrained"]))


# ------------------------------------------------------------------------------------- correlation
def correlation_volume(f_i_BCHW: torch.Tensor, f_j_BCHW: torch.Tensor) -> torch.Tensor:
    """Paper eq. 8: C(x_i, y_i, c) = F_i(x_i, y_i)^T F_j(x_j, y_j) with c = w' x_j + y_j
    (x = row, y = column). Returns (B, h'w', h', w'): channel c indexes the position in image j
    (row-major), the spatial position is that of image i."""
    B, C, H, W = f_i_BCHW.shape
    if f_j_BCHW.shape != f_i_BCHW.shape:
        raise ValueError(f"feature maps differ in shape: {tuple(f_i_BCHW.shape)} vs {tuple(f_j_BCHW.shape)}")
    corr = torch.bmm(f_j_BCHW.reshape(B, C, H * W).transpose(1, 2), f_i_BCHW.reshape(B, C, H * W))
    return corr.view(B, H * W, H, W)


def _l2norm(x_BCHW: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x_BCHW / x_BCHW.norm(dim=1, keepdim=True).clamp_min(eps)


# ------------------------------------------------------------------------------------------- model
class RelPoseNet(nn.Module):
    """Siamese AttNet + BiasNet + correlation + essential-matrix regression (see module docstring).

    ``forward(image_q_B3HW, image_r_B3HW, semantic_q_BHW=None, semantic_r_BHW=None) -> E_B33``:
    images RGB float in [0, 1] at (image_height, image_width); semantic maps int class ids at the
    same size (-1 = unknown). With BiasNet enabled and a semantic map missing, that branch gets an
    all-zero one-hot map (documented 'no segmentation source' behaviour).
    """

    def __init__(self, cfg: dict | None = None) -> None:
        super().__init__()
        self.conf = conf = merge_conf(cfg)
        a, b, ca, cb, mean, std, _ = build_backbone_stages(conf)
        self.stage_a, self.stage_b = a, b
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.cbam = CBAM(ca, conf["cbam_reduction"], conf["cbam_kernel"]) if conf["use_attention"] else None
        self.biasnet = BiasNet(int(conf["num_classes"]), conf["biasnet_channels"]) if conf["use_biasnet"] else None
        h, w = self.feature_size()
        c1, c2 = conf["reg_channels"]
        self.reg_conv1 = nn.Conv2d(h * w, c1, 3, padding=1)
        self.reg_conv2 = nn.Conv2d(c1, c2, 1)
        self.fc = nn.Linear(c2 * h * w, 9)
        self.feature_channels = cb
        # Kaiming init of the new layers (paper sec. 3); the backbone keeps its own init/weights.
        new = [self.reg_conv1, self.reg_conv2, self.fc]
        new += [m for part in (self.cbam, self.biasnet) if part is not None for m in part.modules()]
        for m in new:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def feature_size(self) -> tuple[int, int]:
        """(h', w') of the final feature map for the configured input size."""
        with torch.no_grad():
            was = self.stage_a.training
            self.stage_a.eval()
            self.stage_b.eval()
            x = torch.zeros(1, 3, self.conf["image_height"], self.conf["image_width"])
            f = self.stage_b(self.stage_a(x))
            self.stage_a.train(was)
            self.stage_b.train(was)
        return int(f.shape[2]), int(f.shape[3])

    def features(self, image_B3HW: torch.Tensor, semantic_BHW: torch.Tensor | None = None) -> torch.Tensor:
        """One siamese branch: F3 (B, c', h', w') of an image batch (paper eqs. 1-7)."""
        H, W = self.conf["image_height"], self.conf["image_width"]
        if image_B3HW.shape[1:] != (3, H, W):
            raise ValueError(f"image must be (B, 3, {H}, {W}) for this model, got {tuple(image_B3HW.shape)}")
        x = (image_B3HW - self.mean) / self.std
        if self.biasnet is not None:
            if semantic_BHW is None:
                semantic_BHW = torch.full((x.shape[0], H, W), -1, dtype=torch.long, device=x.device)
            x = x + self.biasnet(semantic_BHW)
        f = self.stage_a(x)
        if self.cbam is not None:
            f = self.cbam(f)
        f = self.stage_b(f)
        return _l2norm(f) if self.conf["feature_l2norm"] else f

    def head(self, f_q: torch.Tensor, f_r: torch.Tensor) -> torch.Tensor:
        """Correlation + regression: (B, 3, 3) essential matrices E_q_r from two feature batches."""
        c = correlation_volume(f_q, f_r)
        if self.conf["corr_normalize"]:
            c = _l2norm(F.relu(c))
        y = F.relu(self.reg_conv1(c))
        y = F.relu(self.reg_conv2(y))
        return self.fc(y.flatten(1)).view(-1, 3, 3)

    def forward(
        self,
        image_q_B3HW: torch.Tensor,
        image_r_B3HW: torch.Tensor,
        semantic_q_BHW: torch.Tensor | None = None,
        semantic_r_BHW: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B = image_q_B3HW.shape[0]
        # Both branches share weights (siamese): one pass over the stacked batch.
        sem = None
        if self.biasnet is not None and (semantic_q_BHW is not None or semantic_r_BHW is not None):
            H, W = image_q_B3HW.shape[2:]
            blank = torch.full((B, H, W), -1, dtype=torch.long, device=image_q_B3HW.device)
            sq = semantic_q_BHW if semantic_q_BHW is not None else blank
            sr = semantic_r_BHW if semantic_r_BHW is not None else blank
            sem = torch.cat([sq.long(), sr.long()])
        f = self.features(torch.cat([image_q_B3HW, image_r_B3HW]), sem)
        return self.head(f[:B], f[B:])


# -------------------------------------------------------------------------------------------- loss
def essential_loss(E_pred_B33: torch.Tensor, E_true_B33: torch.Tensor, sign_invariant: bool = False) -> torch.Tensor:
    """Paper eq. 10: mean over the batch of ||e* - e||_2 (Euclidean distance of the 9-vectors).

    ``E_true`` is [t/|t|]x R, whose sign is fixed by the true translation, so the plain loss is
    what the paper and EssNet train with. ``sign_invariant`` takes min(||e* - e||, ||e* + e||)
    instead (E and -E describe the same epipolar geometry), for users who want it.
    """
    d = (E_pred_B33 - E_true_B33).flatten(1).norm(dim=1)
    if sign_invariant:
        d = torch.minimum(d, (E_pred_B33 + E_true_B33).flatten(1).norm(dim=1))
    return d.mean()


# ------------------------------------------------------------------------------ essential manifold
def project_to_essential(E_33: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest essential matrix (Frobenius) with singular values (1, 1, 0): U diag(1,1,0) V^T.
    Returns (E_proj, singular values of the input). The sign of the input is kept."""
    E = np.asarray(E_33, dtype=np.float64)
    if E.shape != (3, 3) or not np.all(np.isfinite(E)):
        raise ValueError(f"E must be a finite (3, 3) matrix, got {E.shape}")
    U, s, Vt = np.linalg.svd(E)
    return U @ np.diag([1.0, 1.0, 0.0]) @ Vt, s


def pose_candidates(E_proj_33: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four (R, t) of an essential matrix, ordered: first the two that reproduce E with its
    sign ([t]x R = +E: the regressed sign carries the sign of t), each ordered by rotation angle
    (smaller first, since overlapping views rarely rotate by more than 90 deg); then the two with
    [t]x R = -E."""
    from ...geometry import decompose_essential, rotation_angle_deg, skew

    R1, R2, t = decompose_essential(E_proj_33)
    cands = [(R, s * t) for R in (R1, R2) for s in (1.0, -1.0)]

    def key(c: tuple[np.ndarray, np.ndarray]) -> tuple[int, float]:
        same_sign = float(np.sum((skew(c[1]) @ c[0]) * E_proj_33)) > 0
        return (0 if same_sign else 1, float(rotation_angle_deg(c[0])))

    return sorted(cands, key=key)


def load_state(model: RelPoseNet, path: str | Path) -> None:
    """Load weights saved by the trainer (a plain state dict)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
