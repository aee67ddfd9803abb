"""scripts/apr_ablation.py without training: which runs it plans, and the numbers it tabulates
from eval reports (recomputed here with numpy from the frames written)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from visloc_core.evaluation.report import FRAME_CSV_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("apr_ablation", REPO / "scripts" / "apr_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_single_scene_models_run_per_scene_multi_scene_models_once():
    ab = _script()
    runs = ab.runs_for(["posenet", "ms_hyperpose", "mvl_loc"], ["room", "plaza"])
    assert [(r["name"], r["train_scenes"]) for r in runs] == [
        ("posenet__room", ["room"]),
        ("posenet__plaza", ["plaza"]),
        ("ms_hyperpose__all", ["room", "plaza"]),
        ("mvl_loc__all", ["room", "plaza"]),
    ]


def test_summary_and_table_match_the_frames(tmp_path):
    ab = _script()
    rng = np.random.default_rng(0)
    run = {"name": "mvl_loc__all", "model": "mvl_loc", "train_scenes": ["a", "b"], "eval_scenes": ["a", "b"]}
    (tmp_path / run["name"] / "eval").mkdir(parents=True)
    rows, truth = [], {}
    for scene in ("a", "b"):
        for cond in ("day", "night", "dusk"):
            t, r = rng.uniform(0, 8, 7), rng.uniform(0, 30, 7)
            part = "normal" if cond == "day" else "shifted"
            tt, rr = truth.setdefault(f"{scene}/{part}", ([], []))
            tt.extend(t), rr.extend(r)
            for k in range(7):
                row = dict.fromkeys(FRAME_CSV_COLUMNS, "")
                row.update(scene=scene, condition=cond, status="LOCALIZED", t_err_m=t[k], r_err_deg=r[k], latency_ms=1)
                row["predicted_scene"] = scene if rng.uniform() < 0.7 else ("b" if scene == "a" else "a")
                rows.append(row)
    with open(tmp_path / run["name"] / "eval" / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FRAME_CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (tmp_path / run["name"] / "train_seconds.txt").write_text("120\n")
    summ = ab.summarize_run(run, tmp_path)
    for key, (t, r) in truth.items():
        res = summ["results"][key]
        assert res["n"] == len(t)
        assert np.isclose(res["median_m"], np.median(t)) and np.isclose(res["median_deg"], np.median(r))
        assert np.isclose(res["recall"]["5m_10deg"], np.mean((np.array(t) <= 5) & (np.array(r) <= 10)))
    ok = np.array([r["predicted_scene"] == r["scene"] for r in rows])
    cond = np.array([r["condition"] for r in rows])
    assert np.isclose(summ["scene_accuracy"], ok.mean())
    assert summ["scene_accuracy_per_condition"] == {c: float(ok[cond == c].mean()) for c in ("day", "dusk", "night")}
    bench = {"models": {"mvl_loc": {"parameters": 6.7e6, "ms_1_thread": 17.4}}}
    table = ab.table([summ], bench, ["a", "b"], 15)
    line = next(x for x in table.splitlines() if x.startswith("| mvl_loc"))
    res = summ["results"]["b/shifted"]
    cell = f"{res['median_m']:.2f} / {res['median_deg']:.1f} ({res['recall']['5m_10deg']:.2f})"
    assert "| 6.70 M | 17.4 |" in line and cell in line and line.endswith(f"| {ok.mean():.2f} | 2 |")
    # the per-condition scene accuracy table: normal light first
    per = [x for x in table.splitlines() if x.startswith("| mvl_loc")][1]
    acc = summ["scene_accuracy_per_condition"]
    assert per == f"| mvl_loc | {acc['day']:.2f} | {acc['dusk']:.2f} | {acc['night']:.2f} | {ok.mean():.2f} |"


def test_sem_ablation_per_condition_stats_match_the_frames():
    spec = importlib.util.spec_from_file_location("sem_ablation", REPO / "scripts" / "sem_ablation.py")
    sem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sem)
    rng = np.random.default_rng(1)
    rows = [
        {"scene": s, "condition": c, "status": "LOCALIZED", "t_err_m": t, "r_err_deg": r, "latency_ms": 1.0}
        for s in ("a", "b")
        for c in ("day", "night", "crowded")
        for t, r in zip(rng.uniform(0, 8, 5), rng.uniform(0, 30, 5))
    ]
    stats = sem.condition_stats(rows, "b")
    assert sorted(stats) == ["b/crowded", "b/day", "b/night"]
    for key, res in stats.items():
        sel = [r for r in rows if r["scene"] == "b" and r["condition"] == key.split("/")[1]]
        t, r = np.array([x["t_err_m"] for x in sel]), np.array([x["r_err_deg"] for x in sel])
        assert (
            res["n"] == 5 and np.isclose(res["median_m"], np.median(t)) and np.isclose(res["median_deg"], np.median(r))
        )
        assert np.isclose(res["recall"]["5m_10deg"], np.mean((t <= 5) & (r <= 10)))
