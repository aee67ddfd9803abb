"""PoseFormer vs PoseFormer_sem (paper 000) under one budget, per scene, normal and shifted queries.

Usage (from the repo root, in .venv):

    visloc synth indoor_room plaza --out runs/ms
    python scripts/sem_ablation.py --data runs/ms --out runs/sem_ablation --epochs 9 --refine-epochs 2 \
        --nerf-epochs 5 --control   # what docs/models.md reports

Per scene (one lane each, ``--jobs`` in parallel, ``--threads`` torch threads per process):

1. ``poseformer__<scene>``: PoseFormer (config/models/poseformer.yaml) for ``--epochs`` epochs;
2. ``baseline__<scene>``: the same run continued for ``--refine-epochs`` more epochs with its pose
   loss (a copy of its checkpoints, ``visloc train --resume``): PoseFormer at epochs + refine-epochs;
3. ``nerf__<scene>``: the semantic field (config/models/nerf.yaml, ``--nerf-epochs`` if given);
4. ``poseformer_sem__<scene>``: stage 3 of PoseFormer_sem (config/models/poseformer_sem.yaml) from
   the artifacts of 1 and 3 for ``--refine-epochs`` epochs: the same number of passes over the
   training images as 2, with eq. 12 instead of the pose loss;
5. with ``--control``, ``bnstats__<scene>``: step 4 at learning rate 0, so that nothing but the
   batch-norm running statistics changes (stage 3 trains batch norm in training mode): which part
   of row 4's change is eq. 12's and which is re-estimated statistics.

Rows 1, 2, 4 (and 5) are evaluated with ``visloc eval`` on the test split (normal = day queries, shifted =
dusk, night, over-exposed, crowded). Finished steps are kept (artifacts are written atomically):
rerunning the command does only what is missing. Output: OUT/table.md (also per condition),
OUT/results.json, logs in OUT/log/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apr_ablation import dataset_scenes, frame_stats, run_lanes, scene_stats, write_atomic

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "config" / "models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="see the module docstring")
    p.add_argument("--data", required=True, help="dataset (visloc layout) with train and test splits")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=9, help="stage-1 PoseFormer epochs (default 9)")
    p.add_argument("--refine-epochs", type=int, default=2, help="epochs of stage 3 and of the baseline's continuation")
    p.add_argument("--nerf-epochs", type=int, default=None, help="field epochs (default: nerf.yaml's)")
    p.add_argument("--scenes", nargs="+", default=None, help="scenes (default: all of the dataset)")
    p.add_argument("--control", action="store_true", help="also run step 5 (stage 3 at learning rate 0)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _run(cmd: list[str], log: Path, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _config(path: Path, base: str, changes: dict) -> Path:
    cfg = yaml.safe_load((MODELS / base).read_text())
    # the paper's numbers score every pose: no precision class (localizers/precision_class.py)
    if "model" in cfg:
        cfg["decision"] = {"accuracy_m": None, "accuracy_deg": None}
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def lane(scene: str, args: argparse.Namespace, out: Path) -> None:
    log = out / "log" / f"{scene}.log"
    data, t = str(args.data), args.threads
    s1 = out / f"poseformer__{scene}"
    if not (s1 / "artifact").is_dir():
        cfg = _config(s1 / "config.yaml", "poseformer.yaml", {"data.scenes": [scene]})
        cmd = ["visloc", "train", str(cfg), "--data", data, "--out", str(s1 / "artifact"), "--epochs", str(args.epochs)]
        if (s1 / "artifact.train" / "checkpoints" / "last.ckpt").is_file():
            cmd.append("--resume")
        _run(cmd, log, t)
    base = out / f"baseline__{scene}"
    if not (base / "artifact").is_dir():
        if not (base / "artifact.train").is_dir():
            shutil.copytree(s1 / "artifact.train", base / "artifact.train")
        shutil.copyfile(s1 / "config.yaml", base / "config.yaml")
        total = args.epochs + args.refine_epochs
        cmd = ["visloc", "train", str(base / "config.yaml"), "--data", data, "--out", str(base / "artifact")]
        _run(cmd + ["--resume", "--epochs", str(total)], log, t)
    nerf = out / f"nerf__{scene}"
    if not (nerf / "artifact").is_dir():
        cfg = _config(nerf / "config.yaml", "nerf.yaml", {"data.scene": scene})
        cmd = ["visloc", "train", str(cfg), "--data", data, "--out", str(nerf / "artifact")]
        if args.nerf_epochs:
            cmd += ["--epochs", str(args.nerf_epochs)]
        if (nerf / "artifact.train" / "checkpoints" / "last.ckpt").is_file():
            cmd.append("--resume")
        _run(cmd, log, t)
    changes = {
        "scene": scene,
        "stage1.artifact": str(s1 / "artifact"),
        "stage2.artifact": str(nerf / "artifact"),
        "stage3.epochs": args.refine_epochs,
    }
    sems = {"poseformer_sem": changes, "bnstats": {**changes, "stage3.lr": 0.0}}
    if not args.control:
        sems.pop("bnstats")
    for name, change in sems.items():
        sem = out / f"{name}__{scene}"
        if not (sem / "artifact").is_dir():
            cfg = _config(sem / "config.yaml", "poseformer_sem.yaml", change)
            cmd = ["visloc", "train", str(cfg), "--data", data, "--out", str(sem / "artifact")]
            if (sem / "artifact.train" / "checkpoints" / "last.ckpt").is_file():
                cmd.append("--resume")
            _run(cmd, log, t)
    for run in [s1, base] + [out / f"{name}__{scene}" for name in sems]:
        if not (run / "eval" / "frames.csv").is_file():
            cmd = ["visloc", "eval", str(run / "artifact"), "--data", data, "--out", str(run / "eval")]
            _run(cmd + ["--overwrite", "--no-plots", "--scenes", scene], log, t)


ROWS = ("poseformer", "baseline", "poseformer_sem", "bnstats")


def condition_stats(rows: list[dict], scene: str) -> dict:
    """frame_stats of each condition of one scene's eval rows ("scene/condition")."""
    conds = sorted({r["condition"] for r in rows if r["scene"] == scene})
    return {
        f"{scene}/{c}": frame_stats([r for r in rows if r["scene"] == scene and r["condition"] == c]) for c in conds
    }


def summarize(out: Path, scenes: list[str]) -> dict:
    from visloc_core.evaluation.report import read_frames_csv

    res: dict = {}
    for scene in scenes:
        res.setdefault("nerf", {})[scene] = json.loads(
            (out / f"nerf__{scene}" / "artifact" / "report.json").read_text()
        )
        for row in ROWS:
            frames = out / f"{row}__{scene}" / "eval" / "frames.csv"
            if frames.is_file():  # bnstats only with --control
                rows = read_frames_csv(frames)
                res.setdefault(row, {}).update(scene_stats(rows, scene))
                res.setdefault(f"{row}_per_condition", {}).update(condition_stats(rows, scene))
    return res


def _cell(r: dict) -> str:
    return f"{r['median_m']:.2f} / {r['median_deg']:.1f} ({r['recall'].get('5m_10deg', float('nan')):.2f})"


def table(res: dict, scenes: list[str], args: argparse.Namespace) -> str:
    e, k = args.epochs, args.refine_epochs
    names = {
        "poseformer": f"PoseFormer, {e} epochs (stage 1)",
        "baseline": f"PoseFormer, {e + k} epochs",
        "poseformer_sem": f"PoseFormer_sem, {e} + {k} epochs (stage 3, eq. 12)",
        "bnstats": f"control: stage 3 at lr 0, {e} + {k} epochs (batch-norm statistics only)",
    }
    names = {row: label for row, label in names.items() if row in res}
    head = "| model | " + " | ".join(f"{s} normal | {s} shifted" for s in scenes) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(scenes))]
    for row, label in names.items():
        cells = [_cell(res[row][f"{s}/{part}"]) for s in scenes for part in ("normal", "shifted")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for s in scenes:
        conds = sorted({key.split("/")[1] for key in res["poseformer_per_condition"] if key.startswith(s + "/")})
        lines += ["", f"| {s} | " + " | ".join(conds) + " |", "|" + "---|" * (1 + len(conds))]
        for row, label in names.items():
            cells = [_cell(res[f"{row}_per_condition"][f"{s}/{c}"]) for c in conds]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| field | held-out PSNR dB | depth median / mean abs m | depth mean rel | class acc | mIoU | day queries PSNR |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for s in scenes:
        r = res["nerf"][s]
        h, q = r["held_out"], r.get("test_day", {})
        lines.append(
            f"| {s} | {h['psnr_db']:.2f} | {h['depth_median_abs_m']:.3f} / {h['depth_mean_abs_m']:.3f} | "
            f"{h['depth_mean_rel']:.3f} | {h['class_accuracy']:.3f} | {h['class_miou']:.3f} | {q.get('psnr_db', float('nan')):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    args.data = str(Path(args.data).resolve())
    (out / "log").mkdir(parents=True, exist_ok=True)
    scenes = args.scenes or dataset_scenes(Path(args.data))
    failed = run_lanes(lane, scenes, str, args, out)
    if failed:
        return 1
    res = summarize(out, scenes)
    write_atomic(out / "results.json", json.dumps(res, indent=1, default=float))
    write_atomic(out / "table.md", table(res, scenes, args))
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
