"""``visloc eval ARTIFACT --data DATASET --out REPORT_DIR``: score an artifact on a dataset split.

Loads the artifact with ``load_localizer`` and calls ``localizer.localize(rgb, camera, stamp_ns)``
once per frame of the split, in sequence and time order, with no prior (every frame is a global
relocalization; ``reset()`` is called at the start of each sequence). The latency of a frame is the
wall time of that call (image decoding excluded). A localizer that takes the query's class map
(``localizer.uses_semantics``: the learned relpose estimator with BiasNet) gets the frame's class
map from the dataset (``--semantics dataset``, the default; frames without one get none and are
counted in ``meta.frames_without_semantics``), or none (``--semantics none``, the robot's case
without a segmentation source). Writes REPORT_DIR/report.json, frames.csv,
trajectory.png and error_cdf.png (evaluation/report.py documents them) and prints a summary.

Ctrl-C stops early and still writes the report of the frames done so far, with ``"partial": true``;
so does an error at a frame (recorded in ``meta.error``), before the error is raised.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ..data.layout import Dataset, FrameRecord
from ..evaluation.records import FrameOutcome
from ..evaluation.report import write_report
from ..interrupt import exit_code
from ..localizers.base import LocalizationResult, Status
from ..localizers.loading import load_localizer, read_artifact_meta

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", help="artifact folder from `visloc train` or `visloc map build`")
    parser.add_argument("--data", required=True, help="dataset folder in the visloc layout")
    parser.add_argument(
        "--split",
        nargs="+",
        default=["test"],
        help="split(s) of the dataset to evaluate (default: test); e.g. --split test test_unmapped adds the "
        "synthetic presets' views of places the map never saw, scored by refusal",
    )
    parser.add_argument(
        "--condition",
        default=None,
        help="only sequences of this appearance condition (e.g. normal, night; default: all)",
    )
    parser.add_argument("--scenes", nargs="+", default=None, metavar="SCENE", help="only these scenes (default: all)")
    parser.add_argument("--out", required=True, help="report folder (report.json, frames.csv, *.png)")
    parser.add_argument(
        "--device", default="cpu", help="torch device for the localizer: cpu, cuda, cuda:1 (default cpu)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate N frames evenly spaced over the selection (in order), for a quick look",
    )
    parser.add_argument(
        "--semantics",
        choices=("dataset", "none"),
        default="dataset",
        help="class maps for localizers that use them (learned relpose with BiasNet): the dataset's "
        "semantic/ images (default) or none",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip trajectory.png and error_cdf.png")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing report in --out")


def select_frames(
    ds: Dataset, split: str | list[str], condition: str | None, scenes: list[str] | None, limit: int | None
) -> tuple[list[FrameRecord], dict[str, str]]:
    """Frames to evaluate (of one split or several, in that order) and the condition of each sequence
    (key scene/sequence)."""
    if not isinstance(split, str):
        frames, conditions = [], {}
        for sp in split:
            f, c = select_frames(ds, sp, None, scenes, None)
            frames += f
            conditions.update(c)
        if condition is not None:
            if condition not in set(conditions.values()):
                raise ValueError(
                    f"--condition {condition!r}: no such sequences in splits {split}; "
                    f"conditions there: {sorted(set(conditions.values()))}"
                )
            frames = [x for x in frames if conditions[f"{x.scene}/{x.sequence}"] == condition]
        return _limit(frames, limit), conditions
    seqs = ds.sequences(split)
    known_scenes = sorted({s.scene for s in seqs})
    if scenes:
        unknown = sorted(set(scenes) - set(known_scenes))
        if unknown:
            raise ValueError(f"--scenes {unknown} not in split {split!r} of {ds.root}; it has: {known_scenes}")
    conditions = {s.key: s.condition for s in seqs}
    if condition is not None and condition not in set(conditions.values()):
        raise ValueError(
            f"--condition {condition!r}: no such sequences in split {split!r}; "
            f"conditions there: {sorted(set(conditions.values()))}"
        )
    frames = [f for f in ds.frames(split, condition=condition) if not scenes or f.scene in scenes]
    if not frames:
        raise ValueError(f"no frames selected from split {split!r} of {ds.root}")
    return _limit(frames, limit), conditions


def _limit(frames: list[FrameRecord], limit: int | None) -> list[FrameRecord]:
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        if limit < len(frames):
            idx = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int))
            frames = [frames[i] for i in idx]
    return frames


def outcome_from_result(
    frame: FrameRecord, condition: str, result: LocalizationResult, latency_ms: float
) -> FrameOutcome:
    """The FrameOutcome of one localize call: the estimate only when LOCALIZED (NaN otherwise, i.e.
    infinite error); a rejected pose is kept in ``extras['T_world_cam_rejected']`` for the report."""
    status = Status(result.status)
    T_est = np.asarray(result.T_world_cam, dtype=np.float64)
    extras: dict = {
        "status_reason": result.status_reason,
        "stage_seconds": dict(result.stage_seconds),
        "predicted_scene": result.scene,
        "reference_ids": list(result.reference_ids),
        "fallback": bool(result.extras.get("fallback", False)),
    }
    if status == Status.REJECTED and T_est.shape == (4, 4) and np.all(np.isfinite(T_est)):
        extras["T_world_cam_rejected"] = T_est.copy()
    cov = np.asarray(result.covariance_66, dtype=np.float64) if result.covariance_66 is not None else None
    return FrameOutcome(
        name=frame.key,
        stamp_ns=int(frame.stamp_ns),
        T_world_cam_est=T_est.copy() if status == Status.LOCALIZED else np.full((4, 4), np.nan),
        T_world_cam_gt=np.asarray(frame.T_world_cam, dtype=np.float64),
        status=status.name,
        latency_ms=latency_ms,
        method=result.method,
        scene=frame.scene,
        condition=condition,
        confidence=float(result.confidence),
        num_inliers=int(result.num_inliers),
        covariance_66=cov if status == Status.LOCALIZED and cov is not None and np.all(np.isfinite(cov)) else None,
        extras=extras,
    )


def _pct(d: dict | None, key: str) -> str:
    return "-" if not d else f"{100 * d[key]:.1f}%"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "inf" if x is None else f"{x:.{digits}f}"


def print_summary(report: dict, out: Path) -> None:
    """Rich table: all frames, then per condition and per scene."""
    from rich.console import Console
    from rich.table import Table

    title = f"visloc eval: {out}" + (" (PARTIAL: interrupted)" if report["partial"] else "")
    table = Table(
        title=title,
        caption="recall = fraction of all frames within both bounds; prec = fraction of the LOCALIZED frames; "
        "fallback = LOCALIZED with a fallback pose",
    )
    headers = (
        "subset", "n", "localized", "med m", "med °", "5cm5°", "25cm2°", "5m10°", "prec 25cm2°", "prec 5cm5°",
        "fallback", "ms med/p95",
    )  # fmt: skip
    for col in headers:
        table.add_column(col, justify="left" if col == "subset" else "right")

    def row(name: str, s: dict) -> None:
        rec = s["recall"]
        lat = s["latency_ms"]
        table.add_row(
            name,
            str(s["n_frames"]),
            f"{100 * (s['localized_fraction'] or 0):.0f}%",
            _fmt(s["median_translation_m"]),
            _fmt(s["median_rotation_deg"], 2),
            f"{100 * rec['0.05m_5deg']:.1f}%",
            f"{100 * rec['0.25m_2deg']:.1f}%",
            f"{100 * rec['5m_10deg']:.1f}%",
            _pct(s.get("precision"), "0.25m_2deg"),
            _pct(s.get("precision"), "0.05m_5deg"),
            str(s.get("n_fallback", 0)),
            f"{_fmt(lat['median'], 1)}/{_fmt(lat['p95'], 1)}",
        )

    row("all", report)
    if report.get("covered"):
        row("covered", report["covered"])
    if len(report["per_condition"]) > 1:
        for c, s in report["per_condition"].items():
            row(c, s)
    if len(report["per_scene"]) > 1:
        for sc, s in report["per_scene"].items():
            row(sc, s)
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    um = report.get("unmapped")
    if um:
        console.print(
            f"views the map never saw ({', '.join(um['conditions'])}): {um['n_refused']}/{um['n_frames']} refused "
            f"({100 * um['refused_fraction']:.1f}%), {um['n_localized']} LOCALIZED (wrong by construction)"
        )
    avg = report["average_of_scene_medians"]
    if avg["n_scenes"] > 1:
        console.print(
            f"average of per-scene medians: {_fmt(avg['translation_m'])} m, {_fmt(avg['rotation_deg'], 2)} deg"
        )
    cls = report.get("scene_classification")
    seen = set(cls["confusion"]) | {p for row in cls["confusion"].values() for p in row} if cls else set()
    if len(seen) > 1:  # a multi-scene model (or frames of several scenes): which scene it picked matters
        per = ", ".join(f"{c} {v['accuracy']:.2f}" for c, v in cls.get("per_condition", {}).items())
        console.print(f"scene accuracy {cls['accuracy']:.3f} on {cls['n_frames']} frames; per condition: {per}")
    cal = report.get("calibration")
    if cal:
        parts = []
        for block in ("translation", "rotation"):
            b = cal[block]
            parts.append(
                f"{block} NEES mean {b['mean_nees']:.2f} / median {b['median_nees']:.2f}, "
                f"{100 * b['fraction_within']['95%']:.0f}% within the 95% bound "
                f"(by the mean: {b['verdict']}, by the median: {b['verdict_median']})"
            )
        console.print(
            f"covariance calibration on {cal['n_frames']} frames (chi-square 3 dof: mean 3, median 2.37, 95% within): "
            + "; ".join(parts)
        )
    console.print(f"report: {out / 'report.json'}  frames: {out / 'frames.csv'}")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # checked now, not after the whole evaluation
        raise FileExistsError(f"--out {out} is a file; give a folder for the report")
    if (out / "report.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds a report; pass --overwrite or choose another --out")
    art_meta = read_artifact_meta(args.artifact)
    ds = Dataset(args.data)
    frames, conditions = select_frames(ds, args.split, args.condition, args.scenes, args.limit)
    localizer = load_localizer(args.artifact, device=args.device)
    meta = {
        "command": "visloc eval",
        "artifact": str(Path(args.artifact).resolve()),
        "artifact_kind": art_meta.get("kind"),
        "method": getattr(localizer, "method", ""),
        "dataset": str(ds.root.resolve()),
        "split": args.split[0] if isinstance(args.split, list) and len(args.split) == 1 else args.split,
        "condition": args.condition,
        "scenes": args.scenes,
        "limit": args.limit,
        "device": args.device,
        "n_frames_selected": len(frames),
        "started_unix": time.time(),
        "host": platform.node(),
    }
    try:
        import torch

        meta["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    wants_semantics = bool(getattr(localizer, "uses_semantics", False))
    use_semantics = wants_semantics and getattr(args, "semantics", "dataset") == "dataset"
    meta["query_semantics"] = "dataset" if use_semantics else "none"
    meta["frames_without_semantics"] = 0
    if use_semantics and not any(f.semantic for f in frames):
        log.warning("%s uses class maps but the dataset has none for these frames: running without", meta["method"])
    log.info("evaluating %s on %d frames of %s (split %s)", meta["method"], len(frames), ds.root, args.split)
    outcomes: list[FrameOutcome] = []
    partial, interrupted_code = False, 0
    last_seq = None
    bar = tqdm(frames, desc="eval", unit="frame", dynamic_ncols=True)
    try:
        for f in bar:
            seq = (f.scene, f.sequence)
            if seq != last_seq:
                localizer.reset()  # no temporal state carried across sequences
                last_seq = seq
            rgb = ds.load_rgb(f)
            kw = {}
            if use_semantics:
                if f.semantic:
                    kw["query_semantic_HW"] = ds.load_semantic(f)
                else:
                    meta["frames_without_semantics"] += 1
            t0 = time.perf_counter()
            result = localizer.localize(rgb, f.camera, f.stamp_ns, **kw)
            latency_ms = 1000.0 * (time.perf_counter() - t0)
            outcomes.append(outcome_from_result(f, conditions.get(f"{f.scene}/{f.sequence}", "normal"), result,
                                                latency_ms))  # fmt: skip
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (visloc_core.interrupt): 130 / 143
        partial, interrupted_code = True, exit_code(exc)
        bar.close()
        print(f"\ninterrupted after {len(outcomes)}/{len(frames)} frames; writing a partial report", file=sys.stderr)
    except Exception as err:
        # A failing frame (localizer bug, unreadable image) must not cost the frames already scored.
        bar.close()
        if outcomes:
            meta["error"] = f"{type(err).__name__}: {err} (at frame {len(outcomes) + 1} of {len(frames)})"
            write_report(outcomes, out, meta=meta, partial=True, plots=not args.no_plots)
            log.error("stopped by an error; partial report of %d frames written to %s", len(outcomes), out)
        raise
    finally:
        bar.close()
    meta["finished_unix"] = time.time()
    report = write_report(outcomes, out, meta=meta, partial=partial, plots=not args.no_plots)
    print_summary(report, out)
    return interrupted_code if partial else 0
