"""A relpose map calibrates itself: decision thresholds and covariance scale from its own keyframes.

Nothing here looks at evaluation queries. At ``visloc map build`` time, mapping keyframes are
localized against the REST of the map (leave-one-out), in two regimes:

- ``near``: the held-out keyframe and every keyframe within ``exclude_near_m`` of it are left out
  (the map still covers the view, from a few steps away, like a query on another path; by default
  10 keyframe spacings, at most a quarter of the median distance between keyframes);
- ``unseen``: every keyframe that sees any of the held-out keyframe's 3D points (projected in front of
  it and inside its image) is left out as well: the view shows what the remaining map never saw, the
  case a pose must be refused (only maps with 3D points). A pose found there is wrong unless the
  content repeats elsewhere (a tiled floor, a poster hung twice): exactly the poses to refuse.

The held-out keyframe's own image is the query (its cached features), its known pose the truth.

1. Covariance. For the ``near`` poses that are not of another place (within 50 cm / 4 deg: the right
   ones and the near misses the covariance must cover), the NEES of the first-order PnP covariance
   (solvers.pnp_covariance: image noise only, map points taken as exact) is computed per block; the
   scale that brings its MEDIAN to the chi-square median (2.37 for 3 dof) is stored per block
   (translation, rotation) and applied at query time (``metric_covariance``). It absorbs what the
   first-order model leaves out (map point errors, correlated across points). The same for
   direction-only poses.
2. Decision. The coverage threshold of :class:`confidence.DecisionConfig` is raised, from the config
   floor, to the smallest value at which at most 1 - ``target_precision`` of the ``near`` poses it
   accepts, and of the ``unseen`` attempts, are poses of ANOTHER PLACE (errors beyond twice the
   precision class, 50 cm / 4 deg: a repeated texture, a symmetric hall). Coverage cannot tell a pose
   30 cm off from a right one; that is the covariance gate's job (confidence.py).

Stored in the artifact as ``calibration.json``; a map without it (built before) uses scale 1 and the
config thresholds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ...geometry import PinholeCamera, pose_errors
from .base import ConfigSection
from .confidence import DecisionConfig

log = logging.getLogger(__name__)

CHI2_MEDIAN_3DOF = 2.365974  # scipy.stats.chi2.median(3)
RIGHT_T_M, RIGHT_R_DEG = 0.25, 2.0  # a calibration pose is right within these bounds
NEAR_FACTOR = 10.0  # exclude_near_m default, in keyframe spacings
MIN_SIGMA_PX = 0.3  # floor of the image noise of the PnP covariance (integer-pixel keypoints: 0.29 px)


@dataclass
class CalibrationConfig(ConfigSection):
    """``calibration:`` keys of a relpose config."""

    section = "calibration"

    enabled: bool = True
    max_queries: int = 120  # held-out keyframes per regime, evenly spread over the map
    exclude_near_m: float | None = None  # None: default_near_m (10 keyframe spacings, capped)
    target_precision: float = 0.99  # of the calibration poses accepted, within 25 cm / 2 deg
    min_scale: float = 1.0  # never make the first-order covariance smaller than it is


@dataclass
class MapCalibration:
    """What ``calibrate`` measured, applied at query time (module docstring)."""

    scale_translation: float = 1.0  # metric poses, multiplies the translation block
    scale_rotation: float = 1.0
    scale_translation_direction_only: float = 1.0
    scale_rotation_direction_only: float = 1.0
    thresholds: dict = field(default_factory=dict)  # DecisionConfig keys -> calibrated minimum
    stats: dict = field(default_factory=dict)

    @classmethod
    def load(cls, artifact_dir: Path) -> MapCalibration:
        path = Path(artifact_dir) / "calibration.json"
        if not path.is_file():
            return cls()
        d = json.loads(path.read_text())
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    def apply_thresholds(self, cfg: DecisionConfig) -> DecisionConfig:
        """The config's thresholds raised to the calibrated ones (never lowered)."""
        return replace(cfg, **{k: max(getattr(cfg, k), v) for k, v in self.thresholds.items() if hasattr(cfg, k)})

    def metric_covariance(
        self, T_world_cam: np.ndarray, x_N2: np.ndarray, X_N3: np.ndarray, rms: float, cam: PinholeCamera
    ) -> np.ndarray:
        """Calibrated covariance of a PnP pose from its inliers (normalised points, world points)."""
        from .solvers import pnp_covariance

        f = 0.5 * (cam.fx + cam.fy)
        n = len(x_N2)
        # RMS of 2n residuals with 6 parameters fitted: unbiased per-coordinate sigma
        sigma = max(float(rms) * np.sqrt(n / max(n - 3, 1)) / np.sqrt(2.0), MIN_SIGMA_PX / f)
        cov = pnp_covariance(T_world_cam, x_N2, X_N3, sigma)
        return _scale_blocks(cov, self.scale_translation, self.scale_rotation)

    def scale_covariance(self, cov_66: np.ndarray, metric: bool) -> np.ndarray:
        if metric:
            return _scale_blocks(cov_66, self.scale_translation, self.scale_rotation)
        return _scale_blocks(cov_66, self.scale_translation_direction_only, self.scale_rotation_direction_only)


def _scale_blocks(cov_66: np.ndarray, k_t: float, k_r: float) -> np.ndarray:
    """D cov D with D = diag(sqrt(k_t) x3, sqrt(k_r) x3): scales the blocks, keeps it positive definite."""
    d = np.sqrt(np.r_[[k_t] * 3, [k_r] * 3])
    return np.asarray(cov_66) * d[:, None] * d[None, :]


# ------------------------------------------------------------------------------------- calibration
def keyframe_spacing(T_world_cam_K44: np.ndarray, keys: list[str]) -> float:
    """Median distance between consecutive keyframes of the same sequence (metres)."""
    seq = [k.rsplit("/", 1)[0] for k in keys]
    c = np.asarray(T_world_cam_K44)[:, :3, 3]
    d = [np.linalg.norm(c[i + 1] - c[i]) for i in range(len(c) - 1) if seq[i] == seq[i + 1]]
    return float(np.median(d)) if d else 0.0


def _sees_points(kfs: list, points_N3: np.ndarray) -> np.ndarray:
    """(K,) keyframes in front of which at least one of the points projects inside the image."""
    P = np.asarray(points_N3, np.float64)
    P = P[np.all(np.isfinite(P), axis=1)]
    out = np.zeros(len(kfs), bool)
    if len(P) == 0:
        return out
    for j, kf in enumerate(kfs):
        R, c = kf.T_world_cam[:3, :3], kf.T_world_cam[:3, 3]
        p = (P - c) @ R
        front = p[:, 2] > 1e-6
        if not front.any():
            continue
        cam = kf.camera
        u = cam.fx * p[front, 0] / p[front, 2] + cam.cx
        v = cam.fy * p[front, 1] / p[front, 2] + cam.cy
        out[j] = bool(np.any((u >= 0) & (u <= cam.width - 1) & (v >= 0) & (v <= cam.height - 1)))
    return out


def default_near_m(centers_K3: np.ndarray, spacing: float) -> float:
    """``exclude_near_m`` by default: NEAR_FACTOR keyframe spacings (a query a few steps off the
    mapping path), at most a quarter of the median distance between keyframes (so that sparse
    maps keep keyframes to localize against)."""
    c = np.asarray(centers_K3, np.float64)
    if len(c) < 2:
        return 0.0
    sub = c[:: max(1, len(c) // 300)]  # the median of a subsample: maps may hold thousands
    d = np.linalg.norm(sub[:, None] - sub[None], axis=2)[np.triu_indices(len(sub), 1)]
    return float(min(NEAR_FACTOR * spacing, 0.25 * np.median(d)))


def run_leave_one_out(localizer, cfg: CalibrationConfig, progress: bool = False) -> list[dict]:
    """Localize held-out keyframes against the rest of the map (module docstring); one record per
    attempt: regime, status, errors, evidence, covariance and residual."""
    from ...evaluation.calibration import pose_residuals
    from ..base import Status

    kfs = localizer.keyframes
    K = len(kfs)
    T = np.stack([kf.T_world_cam for kf in kfs])
    c = T[:, :3, 3]
    spacing = keyframe_spacing(T, [kf.key for kf in kfs])
    near = cfg.exclude_near_m if cfg.exclude_near_m is not None else default_near_m(c, spacing)
    held = np.unique(np.linspace(0, K - 1, min(cfg.max_queries, K)).round().astype(int))
    est = localizer.estimator
    rc = localizer.retrieval_cfg
    records = []
    it = held
    if progress:
        from tqdm import tqdm

        it = tqdm(held, desc="calibration", unit="kf", dynamic_ncols=True)
    for k in it:
        d = np.linalg.norm(c - c[k], axis=1)
        regimes = [("near", d <= near)]
        if kfs[k].points_world_N3 is not None:
            regimes.append(("unseen", (d <= near) | _sees_points(kfs, kfs[k].points_world_N3)))
        for regime, excluded in regimes:
            allowed = ~excluded
            if allowed.sum() < 2:
                continue
            qf = est.keyframe_features(kfs[k])
            gdesc = localizer.descriptor_matrix[k]
            idx, sims = localizer.index.search(gdesc, rc.num_candidates, allowed)
            from .retrieval import select_references

            chosen = select_references(idx, localizer.centers_N3, rc.num_references, rc.spacing_m, rc.fill)
            if not chosen:
                continue
            sim_of = dict(zip(idx.tolist(), sims.tolist()))
            stages = {"retrieval": 0.0, "features": 0.0, "matching": 0.0, "geometry": 0.0, "filtering": 0.0}
            res = localizer._localize_with(
                None, kfs[k].camera, chosen, np.array([sim_of[i] for i in chosen]), {"query_features": qf}, None,
                stages, time.perf_counter(),
            )  # fmt: skip
            T_est = np.asarray(
                res.T_world_cam if res.status == Status.LOCALIZED else res.extras.get("T_world_cam_refused", np.nan),
                np.float64,
            )
            rec = {
                "keyframe": int(k),
                "regime": regime,
                "status": res.status.name,
                "evidence": res.extras.get("evidence"),
            }
            rec["fallback"] = bool(res.extras.get("fallback"))
            if T_est.shape == (4, 4) and np.all(np.isfinite(T_est)):
                t_err, r_err = pose_errors(T_est, T[k])
                rec.update(t_err=float(t_err), r_err=float(r_err), residual=pose_residuals(T_est, T[k]).tolist())
                if res.status == Status.LOCALIZED:
                    rec["covariance"] = np.asarray(res.covariance_66).tolist()
            records.append(rec)
    return records


def _is_right(r: dict) -> bool:
    return r.get("t_err", np.inf) <= RIGHT_T_M and r.get("r_err", np.inf) <= RIGHT_R_DEG


def _is_wrong_place(r: dict) -> bool:
    """A gross error (beyond twice the precision class): the pose of another place, what coverage and
    ambiguity must keep out. Poses just beyond the class are the covariance gate's to refuse."""
    return "t_err" in r and (r["t_err"] > 2 * RIGHT_T_M or r["r_err"] > 2 * RIGHT_R_DEG)


def _not_gross(r: dict) -> bool:
    return "t_err" in r and not _is_wrong_place(r)


def fit_covariance_scales(records: list[dict], cfg: CalibrationConfig, keep=_not_gross) -> dict:
    """Per block, the factor that brings the median NEES of the ``near`` poses that are not of another
    place (``keep``) to the chi-square median (module docstring, 1); keyed like the MapCalibration
    fields; {} without data. Fitting on the RIGHT poses only (within 25 cm / 2 deg) would leave out
    exactly the near misses the covariance must cover: the scale came out too small."""
    from ...evaluation.calibration import nees

    out = {}
    for metric, suffix in ((True, ""), (False, "_direction_only")):
        rows = [
            r for r in records
            if r["regime"] == "near" and r["status"] == "LOCALIZED" and "covariance" in r and keep(r)
            and bool((r.get("evidence") or {}).get("metric")) == metric
        ]  # fmt: skip
        if len(rows) < 10:
            continue
        e = np.array([r["residual"] for r in rows])
        cov = np.array([r["covariance"] for r in rows])
        for block, sl in (("translation", slice(0, 3)), ("rotation", slice(3, 6))):
            med = float(np.median(nees(e[:, sl], cov[:, sl, sl])))
            out[f"scale_{block}{suffix}"] = max(cfg.min_scale, med / CHI2_MEDIAN_3DOF)
    return out


def fit_thresholds(
    records: list[dict], base: DecisionConfig, cfg: CalibrationConfig, scales: dict | None = None
) -> tuple[dict, dict]:
    """The lowest coverage threshold (at or above the config's) at which the map's own calibration
    poses meet ``target_precision`` (module docstring, 2). Returns (thresholds, statistics)."""
    from .confidence import Evidence, decide

    sc = scales or {}

    def verdicts(min_coverage: float) -> list[tuple[str, bool, bool]]:
        out = []
        c = replace(base, min_coverage=min_coverage)
        for r in records:
            ev = r.get("evidence")
            if ev is not None:  # the covariance of the run had scale 1: apply the fitted scales
                metric = bool(ev["metric"])
                kt = sc.get("scale_translation" if metric else "scale_translation_direction_only", 1.0)
                kr = sc.get("scale_rotation" if metric else "scale_rotation_direction_only", 1.0)
                ev = {**ev, "sigma_position_m": ev["sigma_position_m"] * np.sqrt(kt),
                      "sigma_rotation_deg": ev["sigma_rotation_deg"] * np.sqrt(kr)}  # fmt: skip
            ok = ev is not None and decide(Evidence(**ev), c)[0]
            out.append((r["regime"], ok, not _is_wrong_place(r)))
        return out

    def feasible(v) -> bool:
        near_acc = [fine for reg, ok, fine in v if reg == "near" and ok]
        n_unseen = sum(reg == "unseen" for reg, _, _ in v)
        wrong_unseen = sum(ok and not fine for reg, ok, fine in v if reg == "unseen")
        near_ok = not near_acc or (sum(near_acc) / len(near_acc)) >= cfg.target_precision
        return near_ok and wrong_unseen <= (1.0 - cfg.target_precision) * max(n_unseen, 1)

    wrong_cov = sorted(
        {float(r["evidence"]["coverage"]) for r in records if r.get("evidence") and _is_wrong_place(r)}
        | {base.min_coverage}
    )
    chosen = None
    for c in [base.min_coverage] + [x + 1e-3 for x in wrong_cov if x >= base.min_coverage]:
        if feasible(verdicts(c)):
            chosen = c
            break
    v = verdicts(chosen if chosen is not None else 1.0)
    stats = {
        "n_near": sum(reg == "near" for reg, _, _ in v),
        "n_unseen": sum(reg == "unseen" for reg, _, _ in v),
        "near_localized": sum(ok for reg, ok, _ in v if reg == "near"),
        "near_wrong_place_localized": sum(ok and not fine for reg, ok, fine in v if reg == "near"),
        "unseen_localized": sum(ok for reg, ok, _ in v if reg == "unseen"),
        "feasible": chosen is not None,
    }
    if chosen is None:
        log.warning("calibration: no coverage threshold meets the target precision on this map's own poses")
        chosen = 1.0
    return {"min_coverage": round(float(chosen), 4)}, stats


def calibration_records(localizer, cfg: CalibrationConfig, progress: bool = False) -> list[dict]:
    """run_leave_one_out with every candidate pose wanted: thresholds off, covariance scale 1, no
    fallback pose; the localizer's decision, calibration and fallback are restored afterwards."""
    base, stored = localizer.decision_cfg, localizer.calibration
    localizer.decision_cfg = replace(base, min_inliers=0, min_coverage=0.0, min_inlier_ratio=0.0,
                                     min_agreeing_references=0)  # fmt: skip
    localizer.calibration = MapCalibration()
    fb = localizer.filter_cfg.fallback
    localizer.filter_cfg.fallback = "reject"
    try:
        return run_leave_one_out(localizer, cfg, progress)
    finally:
        localizer.decision_cfg, localizer.calibration, localizer.filter_cfg.fallback = base, stored, fb


def calibrate(localizer, cfg: CalibrationConfig, progress: bool = False) -> MapCalibration:
    """Leave-one-out run (calibration_records) and fits: covariance scales, then decision thresholds."""
    t0 = time.perf_counter()
    # the config's floors, not the thresholds of an earlier calibration the loaded map applies (those
    # would only ever ratchet up when a map is recalibrated)
    base = DecisionConfig.from_dict(localizer.cfg.get("decision"))
    records = calibration_records(localizer, cfg, progress)
    scales = fit_covariance_scales(records, cfg)
    cal = MapCalibration(**scales)
    cal.thresholds, fit_stats = fit_thresholds(records, base, cfg, scales)
    near = [r for r in records if r["regime"] == "near"]
    cal.stats = {
        "config": asdict(cfg),
        "keyframe_spacing_m": keyframe_spacing(
            np.stack([kf.T_world_cam for kf in localizer.keyframes]), [kf.key for kf in localizer.keyframes]
        ),
        "n_attempts": len(records),
        "near_right": sum(_is_right(r) for r in near),
        "near_with_pose": sum("t_err" in r for r in near),
        **fit_stats,
        "seconds": time.perf_counter() - t0,
    }
    log.info("map calibration: %s", {k: v for k, v in asdict(cal).items() if k != "stats"} | cal.stats)
    return cal
