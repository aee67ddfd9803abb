"""Does an image look like what an APR model was trained on? And how far off is its pose then?

An absolute pose regressor returns a pose for ANY image: for a place (or a light) it never saw, a
confident guess. Both measures here come from the model's own held-out TRAINING-distribution frames
(the validation blocks of the mapping sequences, training/apr_data.py), never from queries:

- familiarity: the image's embedding (the backbone's deepest feature map, global-average pooled,
  L2-normalised: what every APR head regresses from) against the embeddings of the training frames.
  The score is the cosine distance to the k-th nearest training embedding (deep nearest-neighbour
  out-of-distribution detection, Sun et al. 2022). Threshold: the ``quantile`` of the same score over
  the held-out frames: an image farther than (e.g.) 99 % of unseen frames of the training
  distribution is REJECTED ("unlike the training images");
- covariance: per axis, the squared residuals of the held-out frames against their score d are
  fitted (non-negative least squares) by ``var(d) = a + b d^2``: frames farther from the training
  set err more. The localizer reports ``diag(var(d))`` for the query's own d; since d is at most the
  threshold for a published pose, the model is used within the range it was fitted on.

Stored in the artifact: ``embeddings.npy`` (training embeddings, float16) and
``artifact.json["familiarity"]``: {k, quantile, threshold, n_train, n_val, val_distance quantiles,
variance model coefficients per axis}.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"


@contextmanager
def capture_embedding(model: torch.nn.Module):
    """Within the block, every forward pass of ``model`` stores its backbone embedding (B, C) in the
    yielded list (last pass last). Models without a ``backbone`` module give nothing."""
    captured: list[torch.Tensor] = []
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        yield captured
        return

    def hook(_module, _inputs, output):
        f = output[max(output)] if isinstance(output, dict) else output
        if isinstance(f, (list, tuple)):
            f = f[-1]
        captured.append(F.normalize(f.float().mean(dim=(2, 3)), dim=1).detach())

    handle = backbone.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def knn_distance(query_ND: np.ndarray, train_MD: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance (N,) of each query embedding to its k-th nearest training embedding."""
    q = np.asarray(query_ND, np.float32)
    t = np.asarray(train_MD, np.float32)
    sim = q @ t.T
    k = int(min(max(k, 1), t.shape[0]))
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def fit_variance_model(d_N: np.ndarray, residual_ND: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """(2, D) coefficients (a, b) per axis of var(d) = a + b d^2, non-negative least squares on the
    squared residuals; a is floored at ``floor`` (D,)."""
    from scipy.optimize import nnls

    A = np.c_[np.ones(len(d_N)), np.asarray(d_N, np.float64) ** 2]
    out = np.zeros((2, residual_ND.shape[1]))
    for j in range(residual_ND.shape[1]):
        coef, _ = nnls(A, np.asarray(residual_ND[:, j], np.float64) ** 2)
        out[:, j] = coef
    out[0] = np.maximum(out[0], floor)
    return out


def variance_at(coef_2D: np.ndarray, d: float) -> np.ndarray:
    return np.asarray(coef_2D)[0] + np.asarray(coef_2D)[1] * float(d) ** 2


def fit_familiarity(
    train_emb: np.ndarray,
    val_emb: np.ndarray,
    val_dt: np.ndarray,
    val_dw: np.ndarray,
    k: int = 1,
    quantile: float = 0.99,
    min_sigma_m: float = 0.0,
    min_sigma_deg: float = 0.0,
) -> dict:
    """The ``familiarity`` entry of artifact.json (module docstring) from held-out frames."""
    d = knn_distance(val_emb, train_emb, k)
    coef_t = fit_variance_model(d, val_dt, np.full(3, min_sigma_m**2))
    coef_r = fit_variance_model(d, val_dw, np.full(3, np.radians(min_sigma_deg) ** 2))
    thr = float(np.quantile(d, quantile))
    # NEES of the held-out frames under the fitted model (a check of the fit, reported)
    var_t = coef_t[0] + np.outer(d**2, coef_t[1])
    var_r = coef_r[0] + np.outer(d**2, coef_r[1])
    nees_t = np.sum(val_dt**2 / var_t, axis=1)
    nees_r = np.sum(val_dw**2 / var_r, axis=1)
    out = {
        "method": "cosine distance to the k-th nearest training embedding (backbone, GAP, L2); threshold = "
        "quantile of the held-out frames' distances; variance per axis a + b d^2 fitted on their residuals",
        "k": int(k),
        "quantile": float(quantile),
        "threshold": thr,
        "n_train": len(train_emb),
        "n_val": len(val_emb),
        "val_distance": {f"p{p}": float(np.percentile(d, p)) for p in (5, 50, 95, 99)} | {"max": float(d.max())},
        "variance_translation_m2": coef_t.tolist(),  # [[a_x, a_y, a_z], [b_x, b_y, b_z]]
        "variance_rotation_rad2": coef_r.tolist(),
        "val_nees_median": {"translation": float(np.median(nees_t)), "rotation": float(np.median(nees_r))},
    }
    log.info(
        "familiarity: threshold %.4f (%.0f %% of %d held-out frames), held-out NEES median t %.2f r %.2f",
        thr, 100 * quantile, len(d), out["val_nees_median"]["translation"], out["val_nees_median"]["rotation"],
    )  # fmt: skip
    return out


def heldout_decision(
    d_N: np.ndarray,
    dt_N3: np.ndarray,
    dw_N3: np.ndarray,
    precision_class: dict | None = None,
    min_sigma_m: float = 0.0,
    min_sigma_deg: float = 0.0,
) -> dict:
    """What the localizer's decision does on frames its covariance was NOT fitted on: the held-out
    frames in two folds (even / odd index); the variance model is fitted on one and applied to the
    other. Returns {n, published (fraction LOCALIZED by localizers/precision_class.py), n_published,
    precision (fraction of those within accuracy_m / accuracy_deg; null when none), nees_median_t/r}."""
    from ...localizers.precision_class import PrecisionClass, uncertain_reasons

    pc = PrecisionClass.from_dict(precision_class)
    d = np.asarray(d_N, np.float64)
    n = len(d)
    published, right, nees_t, nees_r = [], [], [], []
    folds = [np.arange(n) % 2 == 0, np.arange(n) % 2 == 1]
    for fit_mask, test_mask in (folds, folds[::-1]):
        if fit_mask.sum() < 2 or test_mask.sum() < 1:
            continue
        ct = fit_variance_model(d[fit_mask], dt_N3[fit_mask], np.full(3, min_sigma_m**2))
        cr = fit_variance_model(d[fit_mask], dw_N3[fit_mask], np.full(3, np.radians(min_sigma_deg) ** 2))
        for i in np.flatnonzero(test_mask):
            vt, vr = variance_at(ct, d[i]), variance_at(cr, d[i])
            nees_t.append(float(np.sum(dt_N3[i] ** 2 / vt)))
            nees_r.append(float(np.sum(dw_N3[i] ** 2 / vr)))
            ok = not uncertain_reasons(float(np.sqrt(vt.max())), float(np.degrees(np.sqrt(vr.max()))), pc)
            published.append(ok)
            if ok:
                e_t = float(np.linalg.norm(dt_N3[i]))
                e_r = float(np.degrees(np.linalg.norm(dw_N3[i])))
                right.append((pc.accuracy_m is None or e_t <= pc.accuracy_m)
                             and (pc.accuracy_deg is None or e_r <= pc.accuracy_deg))  # fmt: skip
    return {
        "method": "2-fold on the held-out frames: variance model fitted on one fold, decision on the other",
        "n": len(published),
        "published": float(np.mean(published)) if published else 0.0,
        "n_published": int(np.sum(published)),
        "precision": float(np.mean(right)) if right else None,
        "nees_median_t": float(np.median(nees_t)) if nees_t else None,
        "nees_median_r": float(np.median(nees_r)) if nees_r else None,
    }


@torch.inference_mode()
def embed_loader(model: torch.nn.Module, loader, device: str | torch.device = "cpu") -> np.ndarray:
    """(N, C) embeddings of every image of a loader (its ``image`` batches), in order."""
    model.eval()
    out = []
    with capture_embedding(model) as cap:
        for batch in loader:
            img = batch["image"].to(device)
            model(img, batch["scene_id"].to(device) if "scene_id" in batch else None)
            out.append(cap[-1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
