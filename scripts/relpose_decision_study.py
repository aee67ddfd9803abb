"""Which decision rule keeps the LOCALIZED poses of a relpose map right? Fitted on the map, scored on queries.

    python scripts/relpose_decision_study.py MAP --data DATASET --per-sequence 12 --out runs/study_room.json

1. The map's own leave-one-out run (calibration.run_leave_one_out, exactly what `visloc map build`
   runs), and nothing else, fits each rule's covariance scales and coverage threshold.
2. The queries (N evenly spaced frames of every test and test_unmapped sequence) are localized ONCE
   with every threshold off (their evidence, pose and covariance recorded); each rule's decision is
   then applied to those records (confidence.decide, the code the localizer runs). The queries are
   never used for fitting. Reported per rule: precision of LOCALIZED poses within 25 cm / 2 deg per
   condition, localized fraction of the covered views, refused fraction of the unmapped views,
   translation / rotation NEES median of the LOCALIZED poses.

Rules: ``right`` = covariance scale fitted on the near poses within 25 cm / 2 deg (before issue 11's
second round), ``not_gross`` = fitted on every near pose except those of another place (beyond
50 cm / 4 deg), the rule calibration.py now uses. The hypothesis filter runs with the map's stored
scale for both (its agreement radius uses it), a second-order difference.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _records_queries(loc, data: Path, per_sequence: int) -> list[dict]:
    from visloc_core.data.layout import Dataset
    from visloc_core.evaluation.calibration import pose_residuals
    from visloc_core.geometry import pose_errors

    ds = Dataset(data)
    base = loc.decision_cfg
    loc.decision_cfg = replace(base, min_inliers=0, min_coverage=0.0, min_inlier_ratio=0.0, min_agreeing_references=0,
                               accuracy_m=None, accuracy_deg=None, max_rival_ratio=np.inf)  # fmt: skip
    out = []
    try:
        for split in ("test", "test_unmapped"):
            for seq in ds.sequences(split):
                frames = [f for f in ds.frames(split) if f.key.startswith(f"{seq.scene}/{seq.sequence}/")]
                if not frames:
                    continue
                pick = np.unique(np.linspace(0, len(frames) - 1, min(per_sequence, len(frames))).round().astype(int))
                for i in pick:
                    f = frames[i]
                    res = loc.localize(ds.load_rgb(f), f.camera, f.stamp_ns)
                    T = res.T_world_cam if res.status.name == "LOCALIZED" else res.extras.get("T_world_cam_refused")
                    cov = res.covariance_66 if res.status.name == "LOCALIZED" else None
                    rec = {"key": f.key, "condition": "unmapped" if split == "test_unmapped" else seq.condition,
                           "evidence": res.extras.get("evidence"), "status": res.status.name}  # fmt: skip
                    T = np.asarray(T, np.float64) if T is not None else None
                    if T is not None and T.shape == (4, 4) and np.all(np.isfinite(T)):
                        t, r = pose_errors(T, f.T_world_cam)
                        rec.update(t_err=float(t), r_err=float(r), residual=pose_residuals(T, f.T_world_cam).tolist())
                        if cov is not None:
                            rec["covariance"] = np.asarray(cov).tolist()
                    out.append(rec)
    finally:
        loc.decision_cfg = base
    return out


def _fit(loo: list[dict], base, cal_cfg, rule: str) -> tuple[dict, dict]:
    from visloc_core.localizers.relpose import calibration as C

    if rule == "right":
        keep = C._is_right
    else:

        def keep(r):
            return "t_err" in r and not C._is_wrong_place(r)

    scales = C.fit_covariance_scales(loo, cal_cfg, keep=keep)
    thresholds, _ = C.fit_thresholds(loo, base, cal_cfg, scales)
    return scales, thresholds


def _score(queries: list[dict], base, stored_scales: dict, scales: dict, thresholds: dict) -> dict:
    from visloc_core.evaluation.calibration import nees
    from visloc_core.localizers.relpose.confidence import Evidence, decide

    cfg = replace(base, **{k: max(getattr(base, k), v) for k, v in thresholds.items()})
    kt = scales.get("scale_translation", 1.0) / stored_scales.get("scale_translation", 1.0)
    kr = scales.get("scale_rotation", 1.0) / stored_scales.get("scale_rotation", 1.0)
    by_cond: dict[str, dict] = {}
    nees_t, nees_r = [], []
    for q in queries:
        ev = q.get("evidence")
        ok = False
        if ev is not None and "covariance" in q:
            ev = {**ev, "sigma_position_m": ev["sigma_position_m"] * np.sqrt(kt),
                  "sigma_rotation_deg": ev["sigma_rotation_deg"] * np.sqrt(kr)}  # fmt: skip
            ok = decide(Evidence(**ev), cfg)[0]
        c = by_cond.setdefault(q["condition"], {"n": 0, "localized": 0, "right": 0})
        c["n"] += 1
        if ok:
            c["localized"] += 1
            c["right"] += int(q["t_err"] <= 0.25 and q["r_err"] <= 2.0)
            if q["condition"] != "unmapped":
                cov = np.asarray(q["covariance"])
                e = np.asarray(q["residual"])
                nees_t.append(float(nees(e[None, :3], (cov[:3, :3] * kt)[None])[0]))
                nees_r.append(float(nees(e[None, 3:], (cov[3:, 3:] * kr)[None])[0]))
    cov_rows = [v for k, v in by_cond.items() if k != "unmapped"]
    n_cov = sum(v["n"] for v in cov_rows)
    n_loc = sum(v["localized"] for v in cov_rows)
    n_right = sum(v["right"] for v in cov_rows)
    um = by_cond.get("unmapped", {"n": 0, "localized": 0})
    return {
        "precision": n_right / n_loc if n_loc else None,
        "localized_covered": n_loc / n_cov if n_cov else None,
        "unmapped_refused": f"{um['n'] - um['localized']}/{um['n']}",
        "nees_median_t": float(np.median(nees_t)) if nees_t else None,
        "nees_median_r": float(np.median(nees_r)) if nees_r else None,
        "per_condition": {
            k: f"{v['right']}/{v['localized']}/{v['n']}" for k, v in sorted(by_cond.items()) if k != "unmapped"
        },
        "scales": scales,
        "thresholds": thresholds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("map", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--per-sequence", type=int, default=12, help="queries per test sequence (evenly spaced)")
    p.add_argument("--out", type=Path, required=True, help="JSON with the records and the scores")
    a = p.parse_args(argv)
    from visloc_core.localizers.relpose import RelposeLocalizer
    from visloc_core.localizers.relpose.calibration import CalibrationConfig, MapCalibration, calibration_records

    loc = RelposeLocalizer(a.map)
    cal_cfg = CalibrationConfig.from_dict(loc.cfg.get("calibration"))
    from visloc_core.localizers.relpose.confidence import DecisionConfig

    base = DecisionConfig.from_dict(loc.cfg.get("decision"))  # the config floors, before calibration
    cache = a.out.with_suffix(".records.json")
    if cache.is_file():
        rec = json.loads(cache.read_text())
    else:
        t0 = time.process_time()
        rec = {"loo": calibration_records(loc, cal_cfg)}
        rec["loo_cpu_s"] = time.process_time() - t0
        rec["queries"] = _records_queries(loc, a.data, a.per_sequence)
        rec["cpu_s"] = time.process_time() - t0
        cache.write_text(json.dumps(rec))
    stored = MapCalibration.load(a.map)
    stored_scales = {"scale_translation": stored.scale_translation, "scale_rotation": stored.scale_rotation}
    out = {"map": str(a.map), "n_queries": len(rec["queries"]), "n_loo": len(rec["loo"])}
    for rule in ("right", "not_gross"):
        scales, thr = _fit(rec["loo"], base, cal_cfg, rule)
        out[rule] = _score(rec["queries"], base, stored_scales, scales, thr)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.rename(a.out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
