"""Evaluation reports: report.json, frames.csv and plots from a list of :class:`FrameOutcome`.

Used by ``visloc eval`` and ``visloc replay`` (one format for both). ``write_report(outcomes, out_dir)``
writes, each file atomically (temporary file, then rename; report.json last, so a report.json on
disk always belongs to complete companion files):

``REPORT_DIR/report.json``
    ``n_frames``, ``n_localized``, ``n_not_localized``, ``n_rejected``, ``localized_fraction``;
    ``median_translation_m`` / ``median_rotation_deg`` and ``mean_*`` over ALL frames, where a frame
    that is not LOCALIZED (NOT_LOCALIZED or REJECTED) has infinite error, so a median is infinite
    when half the frames or more are missing and a mean is infinite when any is; ``*_localized``
    variants over the LOCALIZED frames only; ``recall`` at geometry.metrics.RECALL_THRESHOLDS (keys
    like ``"0.25m_2deg"``; fraction of ALL frames within both bounds); ``precision`` (fraction of the
    LOCALIZED frames within 25 cm / 2 deg and 5 cm / 5 deg: how many published poses were right),
    ``n_fallback`` (LOCALIZED frames whose pose is a fallback, e.g. paper 003's top-1 retrieved pose,
    not a measurement) and ``precision_without_fallback``; ``latency_ms`` {median, p95,
    mean, max} (numpy's linear-interpolation percentile); ``per_scene``, ``per_condition`` and
    ``per_scene_condition`` (keys "scene/condition") with the same statistics per subset, e.g. "normal"
    vs shifted conditions; ``covered`` (the same statistics over the frames the map covers) and
    ``unmapped`` (frames of condition ``unmapped``, views of what the map never saw: ``refused_fraction``
    = fraction NOT_LOCALIZED or REJECTED), present when such frames were evaluated; ``average_of_scene_medians`` (the
    7-Scenes/Cambridge table convention: mean over scenes of each scene's median); ``rejected``
    (how far off the rejected estimates were, from ``extras["T_world_cam_rejected"]``, to judge the
    rejection gate); ``scene_classification`` (when the localizer reports a scene in
    ``extras["predicted_scene"]``: ``accuracy`` over the frames whose true scene is known, with
    ``per_condition`` and ``per_scene`` {n_frames, accuracy} and ``confusion`` {true: {predicted: n}});
    ``calibration`` (NEES of the covariance, evaluation/calibration.py) when frames
    carry covariances; ``partial`` (true when the run was interrupted); ``meta`` (what was run).
    JSON has no infinity: an infinite or undefined statistic is written as ``null``.

``REPORT_DIR/frames.csv``
    One row per frame, columns :data:`FRAME_CSV_COLUMNS` (documented in :data:`COLUMN_DOCS`).
    Poses are T_world_cam as translation (m) and quaternion (w, x, y, z); ``nan`` where there is no
    estimate; errors ``inf`` when not localized.

``REPORT_DIR/trajectory.png``, ``REPORT_DIR/error_cdf.png``
    Top view per scene (truth vs estimate, coloured by translation error, rejected and
    not-localized frames marked) and the cumulative error distributions per condition.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes
from ..geometry import RECALL_THRESHOLDS, pose_errors, position_quat_wxyz_from_T, recall_at_thresholds
from .calibration import covariance_calibration
from .records import FrameOutcome, frame_errors

log = logging.getLogger(__name__)

REPORT_FORMAT = "visloc-report"
REPORT_VERSION = 1

COLUMN_DOCS: dict[str, str] = {
    "name": "frame key scene/sequence/name",
    "scene": "scene name",
    "condition": "appearance condition of the sequence ('normal' if unknown)",
    "stamp_ns": "image stamp, int nanoseconds",
    "status": "LOCALIZED, NOT_LOCALIZED or REJECTED",
    "est_tx": "estimated camera centre x (world, m); nan when no estimate",
    "est_ty": "estimated camera centre y (world, m)",
    "est_tz": "estimated camera centre z (world, m)",
    "est_qw": "estimated rotation of T_world_cam, quaternion w (scalar first, w >= 0)",
    "est_qx": "estimated quaternion x",
    "est_qy": "estimated quaternion y",
    "est_qz": "estimated quaternion z",
    "gt_tx": "true camera centre x (world, m)",
    "gt_ty": "true camera centre y (world, m)",
    "gt_tz": "true camera centre z (world, m)",
    "gt_qw": "true rotation of T_world_cam, quaternion w",
    "gt_qx": "true quaternion x",
    "gt_qy": "true quaternion y",
    "gt_qz": "true quaternion z",
    "t_err_m": "distance between estimated and true camera centres (m); inf when not LOCALIZED",
    "r_err_deg": "angle of R_est R_gt^T (deg); inf when not LOCALIZED",
    "num_inliers": "inliers reported by the localizer (0 for APR)",
    "confidence": "confidence reported by the localizer",
    "latency_ms": "wall time of the localize call (eval) or image->pose (replay), ms",
    "method": "localizer method name",
    "predicted_scene": "scene the localizer chose (multi-scene models, retrieval); empty if it does not say",
    "status_reason": "why the frame was not LOCALIZED (localizer's reason); empty otherwise",
}
FRAME_CSV_COLUMNS: list[str] = list(COLUMN_DOCS)

_POSE_COLS = ("tx", "ty", "tz", "qw", "qx", "qy", "qz")


# ----------------------------------------------------------------------------------- statistics
def median_with_inf(x: np.ndarray) -> float:
    """Middle of the sorted values (mean of the two middle ones for even N); +inf values sort last,
    so the median is infinite exactly when at least half (odd N: more than half) are infinite. NaN for N = 0."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        return math.nan
    if n % 2:
        return float(x[n // 2])
    a, b = x[n // 2 - 1], x[n // 2]
    return math.inf if math.isinf(b) else float(0.5 * (a + b))


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if np.size(x) else math.nan


#: condition label of query frames that look at what the map never saw (config/scenes/*.yaml,
#: split test_unmapped): the right answer there is NOT_LOCALIZED, so they are scored by refusal.
UNMAPPED_CONDITIONS: frozenset[str] = frozenset({"unmapped"})

#: precision of published poses: fraction of LOCALIZED frames within these bounds
PRECISION_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.05, 5.0))


def is_fallback(o: FrameOutcome) -> bool:
    """A LOCALIZED frame whose pose is a fallback (paper 003's top-1 retrieved pose), not a measurement."""
    if o.status != "LOCALIZED":
        return False
    return bool(o.extras.get("fallback")) or str(o.extras.get("status_reason") or "").startswith("fallback")


def subset_stats(
    t_err: np.ndarray,
    r_err: np.ndarray,
    status: Sequence[str],
    latency_ms: np.ndarray,
    fallback: Sequence[bool] | None = None,
) -> dict:
    """The statistics of report.json for one set of frames (see the module docstring)."""
    t_err, r_err, lat = (np.asarray(a, dtype=np.float64) for a in (t_err, r_err, latency_ms))
    status = list(status)
    loc = np.isfinite(t_err) & np.isfinite(r_err)
    n = len(status)
    lat_ok = lat[np.isfinite(lat)]
    fb = np.zeros(n, bool) if fallback is None else np.asarray(fallback, bool)
    measured = loc & ~fb
    return {
        "n_frames": n,
        "n_localized": int(loc.sum()),
        "n_not_localized": sum(s == "NOT_LOCALIZED" for s in status),
        "n_rejected": sum(s == "REJECTED" for s in status),
        "localized_fraction": float(loc.mean()) if n else math.nan,
        "median_translation_m": median_with_inf(t_err),
        "median_rotation_deg": median_with_inf(r_err),
        "mean_translation_m": _mean(t_err),
        "mean_rotation_deg": _mean(r_err),
        "median_translation_m_localized": median_with_inf(t_err[loc]),
        "median_rotation_deg_localized": median_with_inf(r_err[loc]),
        "mean_translation_m_localized": _mean(t_err[loc]),
        "mean_rotation_deg_localized": _mean(r_err[loc]),
        "recall": recall_at_thresholds(t_err, r_err, RECALL_THRESHOLDS),
        # Of the poses that were published (LOCALIZED), how many were right: what a robot fusing them sees.
        "precision": recall_at_thresholds(t_err[loc], r_err[loc], PRECISION_THRESHOLDS) if loc.any() else None,
        "n_fallback": int((loc & fb).sum()),
        "precision_without_fallback": (
            recall_at_thresholds(t_err[measured], r_err[measured], PRECISION_THRESHOLDS) if measured.any() else None
        ),
        "latency_ms": {
            "median": float(np.median(lat_ok)) if lat_ok.size else math.nan,
            "p95": float(np.percentile(lat_ok, 95)) if lat_ok.size else math.nan,
            "mean": _mean(lat_ok),
            "max": float(np.max(lat_ok)) if lat_ok.size else math.nan,
        },
    }


def _rejected_stats(outcomes: Sequence[FrameOutcome]) -> dict:
    """Errors the rejected estimates WOULD have had: a good gate rejects mostly large errors."""
    raw = [
        (np.asarray(o.extras["T_world_cam_rejected"], dtype=np.float64), o.T_world_cam_gt)
        for o in outcomes
        if o.status == "REJECTED" and o.extras.get("T_world_cam_rejected") is not None
    ]
    raw = [(e, g) for e, g in raw if e.shape == (4, 4) and np.all(np.isfinite(e))]
    out: dict[str, Any] = {"n_rejected": sum(o.status == "REJECTED" for o in outcomes), "n_with_estimate": len(raw)}
    if raw:
        t, r = pose_errors(np.stack([e for e, _ in raw]), np.stack([g for _, g in raw]))
        out["median_translation_m_if_accepted"] = float(np.median(t))
        out["median_rotation_deg_if_accepted"] = float(np.median(r))
    return out


def scene_classification(outcomes: Sequence[FrameOutcome]) -> dict | None:
    """Multi-scene models and retrieval pick a scene first: how often the right one, overall, per
    condition and per true scene, over the frames with a predicted and a known true scene (None if none)."""
    pairs = [
        (o.extras.get("predicted_scene"), o.scene, o.condition)
        for o in outcomes
        if o.extras.get("predicted_scene") and o.scene
    ]
    if not pairs:
        return None

    def acc(sel: list[tuple]) -> dict:
        return {"n_frames": len(sel), "accuracy": float(np.mean([p == s for p, s, _ in sel]))}

    confusion: dict[str, dict[str, int]] = {}
    for p, s, _ in pairs:
        confusion.setdefault(s, {})
        confusion[s][p] = confusion[s].get(p, 0) + 1
    return {
        **acc(pairs),
        "per_condition": {c: acc([x for x in pairs if x[2] == c]) for c in sorted({x[2] for x in pairs})},
        "per_scene": {sc: acc([x for x in pairs if x[1] == sc]) for sc in sorted({x[1] for x in pairs})},
        "confusion": confusion,
    }


def summarize(outcomes: Sequence[FrameOutcome], meta: dict | None = None, partial: bool = False) -> dict:
    """The report.json content (a dict with float('inf') and nan still in it; see write_report)."""
    t_err, r_err = frame_errors(outcomes)
    status = [o.status for o in outcomes]
    lat = np.array([o.latency_ms for o in outcomes], dtype=np.float64)
    fb = np.array([is_fallback(o) for o in outcomes], bool)
    report: dict[str, Any] = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "partial": bool(partial)}
    report.update(subset_stats(t_err, r_err, status, lat, fb))

    def stats_of(idx: np.ndarray) -> dict:
        return subset_stats(t_err[idx], r_err[idx], [s for s, m in zip(status, idx) if m], lat[idx], fb[idx])

    def groups(key: Callable[[FrameOutcome], str]) -> dict[str, dict]:
        return {g: stats_of(np.array([key(o) == g for o in outcomes])) for g in sorted({key(o) for o in outcomes})}

    # Covered views (the map saw their content) are scored by accuracy and precision; views of what
    # the map never saw (condition "unmapped") by refusal: any pose published there is wrong.
    unmapped = np.array([o.condition in UNMAPPED_CONDITIONS for o in outcomes], bool)
    if unmapped.any():
        report["covered"] = stats_of(~unmapped) if (~unmapped).any() else None
        refused = np.array([s != "LOCALIZED" for s in status], bool)
        report["unmapped"] = {
            "n_frames": int(unmapped.sum()),
            "n_refused": int((refused & unmapped).sum()),
            "refused_fraction": float(refused[unmapped].mean()),
            "n_localized": int((~refused & unmapped).sum()),
            "n_fallback": int((fb & unmapped).sum()),
            "conditions": sorted({o.condition for o, u in zip(outcomes, unmapped) if u}),
        }

    report["per_scene"] = groups(lambda o: o.scene)
    report["per_condition"] = groups(lambda o: o.condition)
    report["per_scene_condition"] = groups(lambda o: f"{o.scene}/{o.condition}")
    scenes = report["per_scene"]
    report["average_of_scene_medians"] = {
        "translation_m": _mean(np.array([s["median_translation_m"] for s in scenes.values()])),
        "rotation_deg": _mean(np.array([s["median_rotation_deg"] for s in scenes.values()])),
        "n_scenes": len(scenes),
    }
    report["rejected"] = _rejected_stats(outcomes)
    scene_cls = scene_classification(outcomes)
    if scene_cls is not None:
        report["scene_classification"] = scene_cls
    cal = covariance_calibration(outcomes)
    if cal is not None:
        report["calibration"] = cal
    report["methods"] = sorted({o.method for o in outcomes if o.method})
    report["conventions"] = {
        "errors": "rotation: angle of R_est R_gt^T (deg); translation: distance between camera centres (m)",
        "not_localized": "NOT_LOCALIZED and REJECTED frames count as infinite error (miss every threshold)",
        "null": "an infinite (e.g. median with >= half the frames not localized) or undefined statistic",
        "recall_keys": "'<metres>m_<degrees>deg': fraction of all frames with t_err <= metres and r_err <= degrees",
        "latency": "ms; p95 by linear interpolation (numpy.percentile)",
        "precision_keys": "'<metres>m_<degrees>deg': fraction of the LOCALIZED frames within both bounds",
        "fallback": "LOCALIZED with a fallback pose (top-1 retrieved keyframe), not a measurement",
        "unmapped": f"frames of condition {sorted(UNMAPPED_CONDITIONS)}: views of what the map never saw, "
        "scored by the fraction refused (NOT_LOCALIZED or REJECTED)",
    }
    report["meta"] = dict(meta or {})
    return report


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


# ----------------------------------------------------------------------------------- files
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (visloc_core.atomic.write_bytes: temporary file, fsync,
    rename; readers never see a half-written file). Permissions follow the umask."""
    write_bytes(path, data)


def _fmt(x: float) -> str:
    """Round-trippable float text; 'inf'/'nan' for non-finite values."""
    return repr(float(x)) if math.isfinite(x) else ("inf" if x > 0 else ("-inf" if x < 0 else "nan"))


def frames_csv_text(outcomes: Sequence[FrameOutcome]) -> str:
    t_err, r_err = frame_errors(outcomes)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FRAME_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for o, te, re in zip(outcomes, t_err, r_err):
        row: dict[str, Any] = {
            "name": o.name,
            "scene": o.scene,
            "condition": o.condition,
            "stamp_ns": int(o.stamp_ns),
            "status": o.status,
        }
        for prefix, T in (("est", o.T_world_cam_est), ("gt", o.T_world_cam_gt)):
            T = np.asarray(T, dtype=np.float64)
            if T.shape == (4, 4) and np.all(np.isfinite(T)):
                vals = np.concatenate(position_quat_wxyz_from_T(T))
            else:
                vals = np.full(7, np.nan)
            row.update({f"{prefix}_{c}": _fmt(v) for c, v in zip(_POSE_COLS, vals)})
        row.update(
            {
                "t_err_m": _fmt(te),
                "r_err_deg": _fmt(re),
                "num_inliers": int(o.num_inliers),
                "confidence": _fmt(o.confidence),
                "latency_ms": _fmt(o.latency_ms),
                "method": o.method,
                "predicted_scene": str(o.extras.get("predicted_scene") or ""),
                "status_reason": str(o.extras.get("status_reason") or o.extras.get("reason") or ""),
            }
        )
        w.writerow(row)
    return buf.getvalue()


def write_report(
    outcomes: Sequence[FrameOutcome],
    out_dir: str | Path,
    meta: dict | None = None,
    partial: bool = False,
    plots: bool = True,
) -> dict:
    """Write report.json, frames.csv and (with ``plots``) trajectory.png and error_cdf.png into
    ``out_dir`` (created if needed; files there are replaced atomically). Returns the JSON-safe report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = list(outcomes)
    report = _json_safe(summarize(outcomes, meta, partial))
    report["files"] = {"frames": "frames.csv", "frames_columns": COLUMN_DOCS}
    atomic_write_bytes(out / "frames.csv", frames_csv_text(outcomes).encode())
    if plots and outcomes:
        from . import plots as plot_mod  # matplotlib only when plotting

        for name, fn in (("trajectory.png", plot_mod.trajectory_png), ("error_cdf.png", plot_mod.error_cdf_png)):
            try:
                atomic_write_bytes(out / name, fn(outcomes))
                report["files"][name.removesuffix(".png")] = name
            except Exception as err:  # a plot must never cost the numbers
                log.warning("could not draw %s: %s", name, err)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    return report


def read_frames_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a frames.csv as dicts of strings (float('inf') parses the 'inf' entries)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
