"""Global image descriptors for retrieval, in a registry picked by name from YAML (``descriptor.name``).

Every descriptor maps an RGB uint8 image (H, W, 3) to an L2-normalised float32 vector, so that the
inner product is the cosine similarity (the faiss index of the relpose map is IndexFlatIP).

- ``gem``: a pretrained CNN backbone (EfficientNet-Lite0, ImageNet weights from
  ``visloc_core.models.backbones``) with generalised-mean pooling (GeM, Radenovic et al. 2018;
  p = 3, learnable) and an optional linear projection; training-free with the ImageNet weights, and
  fine-tunable with the dataset's poses (:func:`finetune_gem`: triplet loss, positives are frames
  with close centres and similar viewing directions, negatives far ones).
- ``netvlad``: the same backbone with a NetVLAD layer (Arandjelovic et al. 2016), clusters
  initialised by k-means on mapping-image features (training-free start, fine-tunable the same way).
- ``xfeat_vlad``: training-free VLAD (Jegou et al. 2010) over XFeat local descriptors with a
  vocabulary of k-means centroids on the mapping images (k = 64 x 64-d = 4096-d, the size of the
  DenseVLAD descriptors paper 003 retrieves with); intra-normalisation, signed square root, L2.

Each descriptor saves itself into a folder (``save(dir)``) and :func:`load_descriptor` rebuilds it
from that folder alone (config JSON + weights), so a map artifact needs nothing else.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import deep_merge
from ..interrupt import signals_deferred
from ..registry import Registry

log = logging.getLogger(__name__)

# every descriptor is defined in this module; to add one: a class here + its keys in a map YAML (descriptor:)
GLOBAL_DESCRIPTORS: Registry = Registry("global descriptor", key="descriptor.name")


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class GlobalDescriptor(ABC):
    """Image -> L2-normalised vector. ``fit`` (optional) learns from mapping images without labels."""

    name: str = "unknown"

    def __init__(self, cfg: dict, device: str = "cpu") -> None:
        self.cfg = dict(cfg)
        self.device = device

    @property
    @abstractmethod
    def dim(self) -> int: ...

    def needs_fit(self) -> bool:
        return False

    def fit(self, images: Iterable[np.ndarray], n_images: int | None = None) -> None:  # noqa: B027
        """Unsupervised preparation on mapping images (e.g. a VLAD vocabulary)."""

    @abstractmethod
    def describe(self, image_rgb_HW3: np.ndarray) -> np.ndarray:
        """(D,) float32, unit L2 norm."""

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "descriptor.json").write_text(json.dumps({"name": self.name, "cfg": self.cfg}, indent=2))
        self._save_weights(folder)

    def _save_weights(self, folder: Path) -> None:  # noqa: B027
        pass

    def _load_weights(self, folder: Path) -> None:  # noqa: B027
        pass


def build_descriptor(cfg: dict, device: str = "cpu") -> GlobalDescriptor:
    """From a config dict with ``name`` (gem | netvlad | xfeat_vlad) and that descriptor's keys."""
    cfg = dict(cfg or {})
    if "name" not in cfg:
        raise ValueError(f"descriptor config needs a 'name' (one of {', '.join(GLOBAL_DESCRIPTORS.names())})")
    defaults = getattr(GLOBAL_DESCRIPTORS.get(cfg["name"]), "defaults", None)
    if defaults is not None:  # a misspelt key would otherwise fall back to the default silently
        deep_merge({"name": cfg["name"], **defaults}, cfg, strict=True, path="descriptor.")
    return GLOBAL_DESCRIPTORS.build(cfg["name"], cfg, device)


def load_descriptor(folder: str | Path, device: str = "cpu") -> GlobalDescriptor:
    folder = Path(folder)
    meta_file = folder / "descriptor.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder} has no descriptor.json; the map artifact is incomplete, rebuild it")
    meta = json.loads(meta_file.read_text())
    d = GLOBAL_DESCRIPTORS.build(meta["name"], meta["cfg"], device, pretrained=False)
    d._load_weights(folder)
    return d


def _to_tensor(images: list[np.ndarray], size: tuple[int, int] | None, device: str) -> torch.Tensor:
    """RGB uint8 images -> image_B3HW float in [0, 1], resized to size=(width, height) if given."""
    import cv2

    out = []
    for img in images:
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"descriptor expects RGB uint8 (H, W, 3) images, got {img.dtype} {img.shape}")
        if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
            img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(device)


# ------------------------------------------------------------------------------------------- GeM
class GeM(nn.Module):
    """Generalised mean pooling: (mean over pixels of x^p)^(1/p), p learnable (p=1 mean, p->inf max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x_BCHW.clamp(min=self.eps).pow(self.p), x_BCHW.shape[-2:]).pow(1.0 / self.p).flatten(1)


class NetVLAD(nn.Module):
    """NetVLAD layer: soft-assignment of local features to K clusters, residual aggregation,
    intra-normalisation and L2 normalisation; output K * C."""

    def __init__(self, num_clusters: int, dim: int, alpha: float = 100.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.centroids = nn.Parameter(torch.randn(num_clusters, dim) * 0.1)
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self._init_from_centroids()

    def _init_from_centroids(self) -> None:
        c = F.normalize(self.centroids.data, dim=1)
        self.conv.weight.data = (2.0 * self.alpha * c)[..., None, None]
        self.conv.bias.data = -self.alpha * c.norm(dim=1) ** 2

    def set_centroids(self, c_KC: torch.Tensor) -> None:
        self.centroids.data = c_KC.to(self.centroids)
        self._init_from_centroids()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x_BCHW, dim=1)
        a = F.softmax(self.conv(x).flatten(2), dim=1)  # B, K, N
        xf = x.flatten(2)  # B, C, N
        vlad = torch.einsum("bkn,bcn->bkc", a, xf) - a.sum(-1)[..., None] * self.centroids[None]
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.flatten(1), dim=1)


class _CNNDescriptorNet(nn.Module):
    def __init__(self, backbone: str, pretrained: bool, level: int, pooling: nn.Module, out_dim: int | None) -> None:
        super().__init__()
        from .backbones import build_backbone

        self.backbone = build_backbone(backbone, pretrained=pretrained)
        self.level = level
        self.pool = pooling
        in_dim = self.backbone.channels[level]
        pooled = in_dim * pooling.centroids.shape[0] if isinstance(pooling, NetVLAD) else in_dim
        self.proj = nn.Linear(pooled, out_dim) if out_dim else None
        self.dim = out_dim or pooled

    def feature_map(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        return self.backbone(image_B3HW)[self.level]

    def forward(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        v = self.pool(self.feature_map(image_B3HW))
        if self.proj is not None:
            v = self.proj(v)
        return F.normalize(v, dim=1)


class _CNNDescriptor(GlobalDescriptor):
    """Backbone + pooling; config keys: backbone, level (8/16/32), image_size [w, h], out_dim."""

    defaults: ClassVar[dict] = {}

    def __init__(self, cfg: dict, device: str = "cpu", pretrained: bool = True) -> None:
        super().__init__({**self.defaults, **cfg}, device)
        c = self.cfg
        self.image_size = tuple(c["image_size"]) if c.get("image_size") else None
        self.net = _CNNDescriptorNet(
            c["backbone"], pretrained, int(c["level"]), self._pooling(), c.get("out_dim") or None
        ).to(device)
        self.net.eval()
        self.modified = bool(c.get("out_dim"))  # a projection layer is random: always save the weights

    def _pooling(self) -> nn.Module:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self.net.dim

    @torch.inference_mode()
    def describe(self, image_rgb_HW3: np.ndarray) -> np.ndarray:
        return self.describe_batch([image_rgb_HW3])[0]

    @torch.inference_mode()
    def describe_batch(self, images: list[np.ndarray]) -> np.ndarray:
        self.net.eval()
        return _l2n(self.net(_to_tensor(images, self.image_size, self.device)).cpu().numpy())

    #: set by fine-tuning / fitting: the weights differ from the pip package's ImageNet weights
    modified: bool = False

    def _save_weights(self, folder: Path) -> None:
        if not self.modified:
            # Unchanged ImageNet weights: the artifact refers to the pip package instead of copying 17 MB.
            (folder / "weights.json").write_text(json.dumps({"pretrained_from_package": self.cfg["backbone"]}))
            return
        with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
            torch.save(self.net.state_dict(), folder / "weights.pt")

    def _load_weights(self, folder: Path) -> None:
        if (folder / "weights.pt").is_file():
            sd = torch.load(folder / "weights.pt", map_location=self.device, weights_only=True)
            self.net.load_state_dict(sd)
            self.modified = True
        elif (folder / "weights.json").is_file():
            from .backbones import build_backbone

            self.net.backbone.load_state_dict(build_backbone(self.cfg["backbone"], pretrained=True).state_dict())
        else:
            raise FileNotFoundError(f"{folder}: no weights.pt or weights.json; rebuild the map")
        self.net.eval()


@GLOBAL_DESCRIPTORS.register("gem")
class GeMDescriptor(_CNNDescriptor):
    """EfficientNet-Lite0 (ImageNet) + GeM; training-free out of the box, fine-tunable."""

    name = "gem"
    defaults: ClassVar[dict] = {
        "backbone": "efficientnet_lite0",
        "level": 32,
        "p": 3.0,
        "image_size": None,
        "out_dim": None,
    }

    def _pooling(self) -> nn.Module:
        return GeM(float(self.cfg["p"]))


@GLOBAL_DESCRIPTORS.register("netvlad")
class NetVLADDescriptor(_CNNDescriptor):
    """Backbone + NetVLAD (level 16 by default: 112 channels x 32 clusters); ``fit`` sets the
    clusters by k-means on mapping-image features (as the NetVLAD paper initialises them)."""

    name = "netvlad"
    defaults: ClassVar[dict] = {
        "backbone": "efficientnet_lite0",
        "level": 16,
        "clusters": 32,
        "image_size": None,
        "out_dim": None,
    }

    def __init__(self, cfg: dict, device: str = "cpu", pretrained: bool = True) -> None:
        self._fitted = False
        super().__init__(cfg, device, pretrained)

    def _pooling(self) -> nn.Module:
        from .backbones import build_backbone

        ch = build_backbone(self.cfg["backbone"], pretrained=False).channels[int(self.cfg["level"])]
        return NetVLAD(int(self.cfg["clusters"]), ch)

    def needs_fit(self) -> bool:
        return not self._fitted

    @torch.inference_mode()
    def fit(self, images: Iterable[np.ndarray], n_images: int | None = None) -> None:
        feats = []
        for img in images:
            f = F.normalize(self.net.feature_map(_to_tensor([img], self.image_size, self.device)), dim=1)
            feats.append(f[0].flatten(1).T.cpu().numpy())
        x = np.concatenate(feats).astype(np.float32)
        centroids = _kmeans(x, int(self.cfg["clusters"]))
        self.net.pool.set_centroids(torch.from_numpy(centroids))
        self._fitted = True
        self.modified = True

    def _load_weights(self, folder: Path) -> None:
        super()._load_weights(folder)
        self._fitted = True


def _kmeans(x_ND: np.ndarray, k: int, niter: int = 20, seed: int = 0) -> np.ndarray:
    import faiss

    if len(x_ND) < k:
        raise ValueError(f"k-means needs at least {k} local descriptors, got {len(x_ND)}: add mapping images")
    km = faiss.Kmeans(x_ND.shape[1], k, niter=niter, seed=seed, verbose=False, spherical=False)
    km.train(np.ascontiguousarray(x_ND, dtype=np.float32))
    return km.centroids.copy()


# ---------------------------------------------------------------------------------- XFeat VLAD
@GLOBAL_DESCRIPTORS.register("xfeat_vlad")
class XFeatVLAD(GlobalDescriptor):
    """VLAD over XFeat descriptors; config keys: clusters (64), top_k (XFeat keypoints),
    max_train_descriptors (k-means sample size)."""

    name = "xfeat_vlad"
    defaults: ClassVar[dict] = {
        "clusters": 64,
        "top_k": 1024,
        "detection_threshold": 0.05,
        "max_train_descriptors": 100_000,
    }

    def __init__(self, cfg: dict, device: str = "cpu", pretrained: bool = True) -> None:
        super().__init__({**self.defaults, **cfg}, device)
        from .features import XFeatExtractor

        self.extractor = XFeatExtractor(int(self.cfg["top_k"]), float(self.cfg["detection_threshold"]), device)
        self.centroids_KD: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.cfg["clusters"]) * 64

    def needs_fit(self) -> bool:
        return self.centroids_KD is None

    def fit(self, images: Iterable[np.ndarray], n_images: int | None = None) -> None:
        descs = [self.extractor.extract(img).descriptors_ND for img in images]
        x = np.concatenate(descs).astype(np.float32)
        cap = int(self.cfg["max_train_descriptors"])
        if len(x) > cap:
            x = x[np.random.default_rng(0).choice(len(x), cap, replace=False)]
        self.centroids_KD = _kmeans(x, int(self.cfg["clusters"]))
        log.info("xfeat_vlad: vocabulary of %d words from %d descriptors", len(self.centroids_KD), len(x))

    def aggregate(self, desc_ND: np.ndarray) -> np.ndarray:
        """VLAD of local descriptors: residuals to the nearest word, intra-normalised, signed sqrt, L2."""
        if self.centroids_KD is None:
            raise RuntimeError("xfeat_vlad has no vocabulary: call fit() on mapping images first")
        C = self.centroids_KD
        v = np.zeros_like(C, dtype=np.float64)
        if len(desc_ND):
            d = np.asarray(desc_ND, np.float64)
            assign = np.argmax(d @ C.T - 0.5 * np.sum(C * C, axis=1), axis=1)  # nearest centroid (L2)
            np.add.at(v, assign, d - C[assign])
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # intra-normalisation
        v = np.sign(v) * np.sqrt(np.abs(v))
        return _l2n(v.ravel())

    def describe(self, image_rgb_HW3: np.ndarray) -> np.ndarray:
        return self.aggregate(self.extractor.extract(image_rgb_HW3).descriptors_ND)

    def _save_weights(self, folder: Path) -> None:
        np.save(folder / "centroids.npy", self.centroids_KD.astype(np.float32))

    def _load_weights(self, folder: Path) -> None:
        self.centroids_KD = np.load(folder / "centroids.npy").astype(np.float32)


# ------------------------------------------------------------------------------- fine-tuning
def pose_pairs(
    T_world_cam_N44: np.ndarray, pos_m: float, pos_deg: float, neg_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (N, N) positive and negative masks from poses: positives have centres within
    ``pos_m`` and optical axes within ``pos_deg`` (overlapping views); negatives are farther than
    ``neg_m`` or look more than 90 degrees away. The diagonal is neither."""
    c = T_world_cam_N44[:, :3, 3]
    z = T_world_cam_N44[:, :3, 2]
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    ang = np.degrees(np.arccos(np.clip(z @ z.T, -1, 1)))
    eye = np.eye(len(c), dtype=bool)
    pos = (dist <= pos_m) & (ang <= pos_deg) & ~eye
    neg = ((dist > neg_m) | (ang > 90.0)) & ~eye
    return pos, neg


def finetune_gem(
    descriptor: _CNNDescriptor,
    images: list[np.ndarray],
    T_world_cam_N44: np.ndarray,
    epochs: int = 1,
    lr: float = 1e-5,
    margin: float = 0.1,
    pos_m: float = 1.0,
    pos_deg: float = 30.0,
    neg_m: float = 3.0,
    batch_size: int = 8,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict:
    """Fine-tune a CNN descriptor (gem / netvlad) with a triplet margin loss on cosine distance, using
    the dataset's poses for supervision (see :func:`pose_pairs`), with PyTorch Lightning.

    Triplets: every image with at least one positive and one negative is an anchor; its positive is
    drawn among the positives, its negative is the HARDEST negative (most similar) under the current
    descriptor, recomputed each epoch. Returns {"epochs", "triplets", "loss_first", "loss_last"}.
    """
    import pytorch_lightning as pl

    from ..training.fit import fit

    pos, neg = pose_pairs(np.asarray(T_world_cam_N44), pos_m, pos_deg, neg_m)
    anchors = np.flatnonzero(pos.any(1) & neg.any(1))
    if len(anchors) == 0:
        raise ValueError(
            f"no triplets: no image has both a positive (<= {pos_m} m, <= {pos_deg} deg) and a negative "
            f"(> {neg_m} m); adjust finetune.pos_m / neg_m to the scene scale"
        )
    x_all = _to_tensor(images, descriptor.image_size, "cpu")
    rng = np.random.default_rng(0)
    history: list[float] = []

    class _Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = descriptor.net

        def training_step(self, batch, _):
            a, p, n = batch
            da, dp, dn = (self.net(x) for x in (a, p, n))
            loss = F.relu((1 - (da * dp).sum(1)) - (1 - (da * dn).sum(1)) + margin).mean()
            history.append(float(loss.detach()))
            return loss

        def on_train_epoch_start(self) -> None:
            # BatchNorm statistics stay those of ImageNet: a few pose triplets cannot re-estimate them
            # (Lightning switches the module to train mode at the start of fit, so do it here).
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

        def configure_optimizers(self):
            return torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=lr)

    class _Triplets(torch.utils.data.Dataset):
        def __init__(self, neg_idx: np.ndarray) -> None:
            self.neg_idx = neg_idx

        def __len__(self) -> int:
            return len(anchors)

        def __getitem__(self, i):
            a = anchors[i]
            p = rng.choice(np.flatnonzero(pos[a]))
            return x_all[a], x_all[p], x_all[self.neg_idx[i]]

    module = _Module()
    descriptor.modified = True
    n_triplets = 0
    for _ in range(int(epochs)):
        with torch.no_grad():  # hardest negatives under the current weights
            descriptor.net.eval()
            D = torch.cat([descriptor.net(x_all[i : i + 16]) for i in range(0, len(x_all), 16)]).numpy()
        sim = D @ D.T
        neg_idx = np.array([np.flatnonzero(neg[a])[np.argmax(sim[a, neg[a]])] for a in anchors])
        loader = torch.utils.data.DataLoader(_Triplets(neg_idx), batch_size=batch_size, shuffle=True)
        trainer = pl.Trainer(
            max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=progress is not None, enable_model_summary=False,
        )  # fmt: skip
        descriptor.net.train()  # BatchNorm goes back to eval in on_train_epoch_start
        fit(trainer, module, train_dataloaders=loader)  # Ctrl-C / SIGTERM: Interrupted (map build keeps its partial)
        n_triplets += len(anchors)
    descriptor.net.eval()
    return {
        "epochs": int(epochs),
        "triplets": int(n_triplets),
        "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
    }
