"""The APR ablation of issue 6: every paper model under one training budget, side by side.

Usage (from the repo root, in .venv):

    visloc synth indoor_room plaza --out runs/ms
    python scripts/apr_ablation.py --data runs/ms --out runs/apr_ablation --epochs 15

The budget is the same number of passes over every training frame for every model:
single-scene models (posenet, poseformer, hyperpose) are trained once per scene for ``--epochs``
epochs (``data.scenes: [scene]``), multi-scene models (ms_hyperpose, mvl_loc) once on all scenes
for ``--epochs`` epochs (several stages are scaled proportionally, as ``visloc train --epochs``
does). Everything else comes from ``config/models/<model>.yaml`` unchanged: the papers' learning
rates, losses and augmentation. Each artifact is evaluated with ``visloc eval`` on the test split,
per scene; "normal" is the day condition and "shifted" every other condition.

Runs go in parallel lanes (``--jobs``), each pinned to ``--threads`` torch/OpenMP threads. Finished
runs are kept: run the same command again after an interruption and only missing runs are done.
Output: ``OUT/results.json`` and ``OUT/table.md`` (written atomically), one folder per run with the
artifact, its training logs (``*.train/``) and the eval report, and ``OUT/log/<run>.log``. The table
has a second part for the multi-scene models: the fraction of queries whose scene the model picked
right, per condition (from the eval's frames.csv: ``predicted_scene`` against ``scene``).
Parameter counts and inference times come from ``visloc bench models`` (batch 1, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from visloc_core.atomic import write_text
from visloc_core.config import apply_overrides

ROOT = Path(__file__).resolve().parent.parent
MULTI_SCENE = {"ms_hyperpose", "mvl_loc"}
DEFAULT_MODELS = ["posenet", "poseformer", "hyperpose", "ms_hyperpose", "mvl_loc"]
NORMAL = {"day", "normal"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="see the module docstring")
    p.add_argument("--data", required=True, help="dataset folder (visloc layout) with train and test splits")
    p.add_argument("--out", required=True, help="output folder (runs, logs, results.json, table.md)")
    p.add_argument("--epochs", type=int, default=15, help="passes over the training frames per model (default 15)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model configs in config/models/")
    p.add_argument("--scenes", nargs="+", default=None, help="scenes (default: every scene of the dataset)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run (default 1)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, e.g. --set train.lr=4.5e-4 (YAML value; repeatable)",
    )
    p.add_argument("--skip-bench", action="store_true", help="no `visloc bench models` (no params / ms columns)")
    return p.parse_args(argv)


def dataset_scenes(data: Path) -> list[str]:
    manifest = json.loads((data / "manifest.json").read_text())
    return [s["name"] if isinstance(s, dict) else str(s) for s in manifest["scenes"]]


def write_atomic(path: Path, text: str) -> None:
    write_text(path, text)


def runs_for(models: list[str], scenes: list[str]) -> list[dict]:
    runs = []
    for model in models:
        if model in MULTI_SCENE:
            runs.append({"name": f"{model}__all", "model": model, "train_scenes": scenes, "eval_scenes": scenes})
        else:
            runs += [{"name": f"{model}__{s}", "model": model, "train_scenes": [s], "eval_scenes": [s]} for s in scenes]
    return runs


def execute(run: dict, args: argparse.Namespace, out: Path) -> dict:
    """Train (unless its artifact exists) and evaluate (unless its report exists) one run."""
    folder = out / run["name"]
    folder.mkdir(parents=True, exist_ok=True)
    log_path = out / "log" / f"{run['name']}.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    artifact, report = folder / "artifact", folder / "eval"
    cfg = yaml.safe_load((ROOT / "config" / "models" / f"{run['model']}.yaml").read_text())
    cfg.setdefault("data", {})["scenes"] = run["train_scenes"]
    # the papers' numbers score every pose the model gives: no precision class (the product's default
    # publishes only poses whose covariance puts them within 25 cm / 2 deg: localizers/precision_class.py)
    cfg["decision"] = {"accuracy_m": None, "accuracy_deg": None}
    cfg = apply_overrides(cfg, args.set)  # the same KEY=VALUE rules as `visloc map build --set`
    cfg_path = folder / "config.yaml"
    write_atomic(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    t_train = None
    with log_path.open("a") as log:
        if not artifact.is_dir():  # artifacts are written atomically: a folder is a finished one
            cmd = ["visloc", "train", str(cfg_path), "--data", str(args.data), "--out", str(artifact)]
            cmd += ["--epochs", str(args.epochs)]
            if (folder / "artifact.train" / "checkpoints" / "last.ckpt").exists():
                cmd.append("--resume")
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            t_train = time.monotonic() - t0
            (folder / "train_seconds.txt").write_text(f"{t_train:.1f}\n")
        if not (report / "frames.csv").exists():
            cmd = ["visloc", "eval", str(artifact), "--data", str(args.data), "--out", str(report), "--overwrite"]
            cmd += ["--no-plots", "--scenes", *run["eval_scenes"]]
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return run


def frame_stats(rows: list[dict]) -> dict:
    """Median errors and recalls of a set of eval rows (frames.csv)."""
    from visloc_core.evaluation.report import subset_stats

    stats = subset_stats(
        [float(r["t_err_m"]) for r in rows],
        [float(r["r_err_deg"]) for r in rows],
        [r["status"] for r in rows],
        [float(r["latency_ms"]) for r in rows],
    )
    return {
        "n": stats["n_frames"],
        "median_m": stats["median_translation_m"],
        "median_deg": stats["median_rotation_deg"],
        "recall": stats["recall"],
    }


def scene_stats(rows: list[dict], scene: str) -> dict:
    """frame_stats of one scene's eval rows, normal and shifted conditions ("scene/normal", "scene/shifted")."""
    res = {}
    for part, keep in (("normal", lambda c: c in NORMAL), ("shifted", lambda c: c not in NORMAL)):
        res[f"{scene}/{part}"] = frame_stats([r for r in rows if r["scene"] == scene and keep(r["condition"])])
    return res


def run_lanes(fn, items: list, name_of, args: argparse.Namespace, out: Path) -> list[str]:
    """Run ``fn(item, args, out)`` for every item, ``args.jobs`` at a time; returns the failed names."""
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(fn, item, args, out): item for item in items}
        for fut, item in futures.items():
            try:
                fut.result()
                print(f"done {name_of(item)}", flush=True)
            except subprocess.CalledProcessError as err:
                failed.append(name_of(item))
                print(f"FAILED {name_of(item)}: {err} (see {out / 'log' / (name_of(item) + '.log')})", flush=True)
    return failed


def summarize_run(run: dict, out: Path) -> dict:
    from visloc_core.evaluation.report import read_frames_csv

    rows = read_frames_csv(out / run["name"] / "eval" / "frames.csv")
    res = {}
    for scene in run["eval_scenes"]:
        res.update(scene_stats(rows, scene))
    seconds = out / run["name"] / "train_seconds.txt"
    scene_acc, per_cond = None, None
    if run["model"] in MULTI_SCENE:
        picked = [r for r in rows if r["predicted_scene"]]
        scene_acc = float(np.mean([r["predicted_scene"] == r["scene"] for r in picked])) if picked else None
        per_cond = {
            c: float(np.mean([r["predicted_scene"] == r["scene"] for r in picked if r["condition"] == c]))
            for c in sorted({r["condition"] for r in picked})
        }
    return {
        **run,
        "results": res,
        "scene_accuracy": scene_acc,
        "scene_accuracy_per_condition": per_cond,
        "train_seconds": float(seconds.read_text()) if seconds.exists() else None,
    }


def bench_models(models: list[str], out: Path, n_scenes: int) -> dict:
    path = out / "bench" / "models.json"
    if not path.exists():
        cmd = ["visloc", "bench", "models", "--models", *models, "--threads", "1", "--scenes", str(n_scenes)]
        cmd += ["--out", str(out / "bench")]
        with (out / "log" / "bench_models.log").open("a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return json.loads(path.read_text())


def _cell(r: dict, key: str = "5m_10deg") -> str:
    return f"{r['median_m']:.2f} / {r['median_deg']:.1f} ({r['recall'].get(key, float('nan')):.2f})"


def table(summaries: list[dict], bench: dict | None, scenes: list[str], epochs: int) -> str:
    per_model = {}
    for s in summaries:
        per_model.setdefault(s["model"], {}).update(s["results"])
    lines = [
        f"Budget: {epochs} epochs over every training frame (single-scene models: per scene; "
        "multi-scene models: once on all scenes).",
        "Cells: median translation m / rotation deg, in brackets the recall within 5 m / 10 deg (every "
        "threshold is in results.json). normal = day queries, shifted = dusk, night, over-exposed, crowded. "
        "scene acc = scene classification accuracy of multi-scene models on all queries.",
        "",
    ]
    head = "| model | params | ms/frame (1 thread) | " + " | ".join(f"{s} normal | {s} shifted" for s in scenes)
    lines += [head + " | scene acc | train min |", "|" + "---|" * (5 + 2 * len(scenes))]
    extra = {}
    for s in summaries:
        e = extra.setdefault(s["model"], {"acc": s.get("scene_accuracy"), "sec": 0.0})
        e["sec"] += s.get("train_seconds") or 0.0
    for model, res in per_model.items():
        b = (bench or {}).get("models", {}).get(model, {})
        params = f"{b['parameters'] / 1e6:.2f} M" if "parameters" in b else "-"
        ms = b.get("ms_1_thread")
        cells = [_cell(res[f"{s}/{p}"]) if f"{s}/{p}" in res else "-" for s in scenes for p in ("normal", "shifted")]
        lines.append(f"| {model} | {params} | {ms:.1f} | " if ms else f"| {model} | {params} | - | ")
        acc = extra[model]["acc"]
        lines[-1] += " | ".join(cells) + f" | {'-' if acc is None else f'{acc:.2f}'} | {extra[model]['sec'] / 60:.0f} |"
    multi = [s for s in summaries if s.get("scene_accuracy_per_condition")]
    if multi:
        conds = sorted(
            {c for s in multi for c in s["scene_accuracy_per_condition"]}, key=lambda c: (c not in NORMAL, c)
        )
        lines += ["", "Scene accuracy of the multi-scene models per condition (all scenes' queries):", ""]
        lines += ["| model | " + " | ".join(conds) + " | all |", "|" + "---|" * (len(conds) + 2)]
        for s in multi:
            acc = s["scene_accuracy_per_condition"]
            cells = [f"{acc[c]:.2f}" if c in acc else "-" for c in conds]
            lines.append(f"| {s['model']} | " + " | ".join(cells) + f" | {s['scene_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    args.data = str(Path(args.data).resolve())
    (out / "log").mkdir(parents=True, exist_ok=True)
    scenes = args.scenes or dataset_scenes(Path(args.data))
    # Longest first, so that the lanes finish together (relative cost per frame from `visloc bench models`).
    cost = {"ms_hyperpose": 3.0 * len(scenes), "poseformer": 2.1, "mvl_loc": 1.2 * len(scenes), "hyperpose": 1.3}
    runs = sorted(runs_for(args.models, scenes), key=lambda r: -cost.get(r["model"], 1.0))
    print(f"{len(runs)} runs, {args.jobs} at a time, {args.threads} thread(s) each; logs in {out / 'log'}", flush=True)
    failed = run_lanes(execute, runs, lambda r: r["name"], args, out)
    done = [summarize_run(r, out) for r in runs if r["name"] not in failed]
    bench = None if args.skip_bench else bench_models(args.models, out, len(scenes))
    write_atomic(out / "results.json", json.dumps({"epochs": args.epochs, "runs": done}, indent=1, default=float))
    write_atomic(out / "table.md", table(done, bench, scenes, args.epochs))
    print((out / "table.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
