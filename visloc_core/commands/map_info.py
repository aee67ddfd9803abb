"""``visloc map info MAP [--plot FILE]``: what a relpose map holds, its 3D points and its calibration.

Prints the keyframes, the structure source (depth / triangulated / none), the points with their track
lengths, reprojection errors and triangulation angles (structure.py), the keypoint coverage of the
keyframes, the triangulation statistics of the build (and the check against a dataset's depth when it
had one), and the map's self-calibration (decision thresholds, covariance scales). ``--plot`` draws a
top view of the points (coloured by reprojection error) and the keyframe centres and viewing
directions, plus histograms of track length, reprojection error and triangulation angle.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[1].replace("\n", " ")
    parser.add_argument("map", help="relpose map artifact folder (visloc map build)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the points and keyframes into this PNG")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    parser.add_argument(
        "--queries", nargs="+", metavar="FRAMES.csv", default=None,
        help="coverage: also draw where the queries of these eval/replay frames.csv files were (true pose, "
        "viewing direction) and whether they were LOCALIZED, NOT_LOCALIZED or REJECTED (needs --plot)",
    )  # fmt: skip


def summarize_map(artifact: Path) -> dict:
    """The numbers ``visloc map info`` prints (JSON-safe)."""
    from ..localizers.relpose.structure import SparseModel

    meta = json.loads((artifact / "artifact.json").read_text())
    if meta.get("kind") != "relpose":
        raise ValueError(f"{artifact} is a {meta.get('kind')!r} artifact; map info reads relpose maps")
    kfs = json.loads((artifact / "keyframes.json").read_text())
    out: dict = {
        "map": str(artifact),
        "keyframes": len(kfs),
        "scenes": meta.get("scenes"),
        "estimator": meta.get("estimator"),
        "descriptor": meta.get("descriptor"),
        "image_size": meta.get("image_size"),
        "structure": meta.get("structure", "depth" if meta.get("has_depth") else "none"),
        "size_mb": round(sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()) / 2**20, 2),
    }
    pts = artifact / "points.npz"
    if pts.is_file():
        m = SparseModel.load(pts)
        per_kf = np.array([int((i >= 0).sum()) for i in m.kf_point_ids])
        n_kp = np.array([len(i) for i in m.kf_point_ids])
        out["points"] = {
            "n": m.n_points,
            "source": m.source,
            "track_length": _quantiles(m.track_length_P),
            "reprojection_error_px": _quantiles(m.error_px_P),
            "triangulation_angle_deg": _quantiles(m.angle_deg_P),
            "points_per_keyframe": _quantiles(per_kf),
            "keypoints_with_a_point": float(per_kf.sum() / max(n_kp.sum(), 1)),
            "keyframes_with_fewer_than_25_points": int((per_kf < 25).sum()),
        }
    st = meta.get("stats", {}).get("structure")
    if st:
        out["build"] = {k: v for k, v in st.items() if k != "config"}
    if (artifact / "calibration.json").is_file():
        cal = json.loads((artifact / "calibration.json").read_text())
        out["calibration"] = {k: v for k, v in cal.items() if k != "stats"} | {"stats": cal.get("stats", {})}
    return out


def _quantiles(x) -> dict:
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "min": float(x.min()), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "max": float(x.max())}  # fmt: skip


STATUS_STYLE = {"LOCALIZED": ("tab:green", "o"), "NOT_LOCALIZED": ("tab:orange", "s"), "REJECTED": ("tab:red", "x")}


def read_query_outcomes(paths: list[str | Path]) -> dict[str, np.ndarray]:
    """Status, true centre and viewing direction (+z of the camera, world) of every frame of eval /
    replay ``frames.csv`` files (visloc_core/evaluation/report.py columns)."""
    import csv

    from ..geometry import R_from_quat_wxyz

    status, c, z = [], [], []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"--queries {p}: no such file (the frames.csv of `visloc eval` or `visloc replay`)")
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"status", "gt_tx", "gt_qw"} - set(rows[0] if rows else {})
        if missing:
            raise ValueError(f"--queries {p}: not a frames.csv of visloc eval/replay (no column(s) {sorted(missing)})")
        for r in rows:
            t = np.array([float(r["gt_tx"]), float(r["gt_ty"]), float(r["gt_tz"])])
            q = np.array([float(r[k]) for k in ("gt_qw", "gt_qx", "gt_qy", "gt_qz")])
            if not (np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
                continue  # no ground truth: nowhere to draw it
            status.append(r["status"])
            c.append(t)
            z.append(R_from_quat_wxyz(q)[:, 2])
    return {"status": np.array(status), "center_N3": np.array(c).reshape(-1, 3), "dir_N3": np.array(z).reshape(-1, 3)}


def plot_map(artifact: Path, path: Path, queries: dict[str, np.ndarray] | None = None) -> None:
    """Top view (the two world axes with the largest spread) of points and keyframes, and histograms;
    with ``queries`` (:func:`read_query_outcomes`), where each was and whether it localized."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.report import atomic_write_bytes
    from ..localizers.relpose.structure import SparseModel

    kfs = json.loads((artifact / "keyframes.json").read_text())
    T = np.array([np.asarray(k["T_world_cam"]).reshape(4, 4) for k in kfs])
    c, z = T[:, :3, 3], T[:, :3, 2]
    m = SparseModel.load(artifact / "points.npz") if (artifact / "points.npz").is_file() else None
    spread = np.ptp(np.concatenate([c, m.xyz_P3]) if m is not None and m.n_points else c, axis=0)
    a, b = np.argsort(-spread)[:2]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5), gridspec_kw={"width_ratios": [2, 1, 1, 1]})
    ax = axes[0]
    if m is not None and m.n_points:
        sub = np.random.default_rng(0).permutation(m.n_points)[:20000]
        sc = ax.scatter(m.xyz_P3[sub, a], m.xyz_P3[sub, b], s=0.5, c=m.error_px_P[sub], cmap="viridis", vmin=0)
        fig.colorbar(sc, ax=ax, label="reprojection error (px)")
    arrow = 0.03 * float(max(spread[a], spread[b], 1e-6))  # viewing directions, 3 % of the extent long
    ax.quiver(c[:, a], c[:, b], z[:, a] * arrow, z[:, b] * arrow, color="red", angles="xy", scale_units="xy", scale=1,
              width=0.002, label="keyframes (viewing direction)")  # fmt: skip
    if queries is not None and len(queries["status"]):
        qc, qz = queries["center_N3"], queries["dir_N3"]
        for st, (colour, marker) in STATUS_STYLE.items():
            sel = queries["status"] == st
            if not sel.any():
                continue
            ax.scatter(qc[sel, a], qc[sel, b], s=14, c=colour, marker=marker, label=f"queries {st} ({int(sel.sum())})",
                       zorder=3)  # fmt: skip
            ax.quiver(qc[sel, a], qc[sel, b], qz[sel, a] * arrow, qz[sel, b] * arrow, color=colour, angles="xy",
                      scale_units="xy", scale=1, width=0.002, zorder=3)  # fmt: skip
    ax.legend(loc="best", fontsize=7)
    ax.set_xlabel(f"world {'xyz'[a]} (m)")
    ax.set_ylabel(f"world {'xyz'[b]} (m)")
    ax.set_aspect("equal")
    ax.set_title(
        f"{artifact.name}: {len(kfs)} keyframes, {m.n_points if m else 0} points ({m.source if m else 'none'})"
    )
    if m is not None and m.n_points:
        for ax, x, label in (
            (axes[1], m.track_length_P, "track length (keyframes)"),
            (axes[2], m.error_px_P, "mean reprojection error (px)"),
            (axes[3], m.angle_deg_P, "triangulation angle (deg)"),
        ):
            ax.hist(x, bins=40)
            ax.set_xlabel(label)
    else:
        for ax in axes[1:]:
            ax.axis("off")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    artifact = Path(args.map)
    if not (artifact / "artifact.json").is_file():
        raise FileNotFoundError(
            f"{artifact} is not a map artifact (no artifact.json); build one with `visloc map build`"
        )
    info = summarize_map(artifact)
    if args.queries and not args.plot:
        raise ValueError("--queries draws into the plot: pass --plot FILE.png too")
    if args.plot:
        queries = read_query_outcomes(args.queries) if args.queries else None
        plot_map(artifact, Path(args.plot), queries)
        if queries is not None:
            info["queries"] = {st: int((queries["status"] == st).sum()) for st in STATUS_STYLE}
        info["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"map {info['map']}: {info['keyframes']} keyframes of {info['scenes']}, {info['estimator']} + "
          f"{info['descriptor']}, {info['image_size']}, {info['size_mb']} MB; 3D structure: {info['structure']}")  # fmt: skip
    p = info.get("points")
    if p:
        q = lambda d, f="{:.2f}": f"median {f.format(d['median'])}, p90 {f.format(d['p90'])}, max {f.format(d['max'])}"  # noqa: E731
        print(f"points: {p['n']} ({p['source']}); {100 * p['keypoints_with_a_point']:.0f} % of keypoints have one")
        print(f"  track length: {q(p['track_length'], '{:.0f}')}")
        print(f"  reprojection error (px): {q(p['reprojection_error_px'])}")
        print(f"  triangulation angle (deg): {q(p['triangulation_angle_deg'], '{:.1f}')}")
        print(f"  points per keyframe: {q(p['points_per_keyframe'], '{:.0f}')}; "
              f"{p['keyframes_with_fewer_than_25_points']} keyframes with fewer than 25")  # fmt: skip
    b = info.get("build")
    if b and b.get("source") == "triangulated":
        print(f"triangulation: {b['n_pairs']} pairs, {b['n_verified_matches']}/{b['n_matches']} matches verified "
              f"by the known poses, {b['n_tracks']} tracks, {b['seconds_total']:.1f} s")  # fmt: skip
        if b.get("depth_check", {}).get("n"):
            d = b["depth_check"]
            print(f"  against the dataset's depth: relative depth error median {100 * d['relative_depth_error_median']:.1f} %, "
                  f"{100 * d['fraction_within_5_percent']:.0f} % within 5 %, distance median {d['distance_m_median']:.3f} m")  # fmt: skip
    cal = info.get("calibration")
    if cal:
        s = cal["stats"]
        print(f"calibration: thresholds {cal['thresholds']}; covariance scale translation {cal['scale_translation']:.2f}, "
              f"rotation {cal['scale_rotation']:.2f}; from {s.get('n_near', 0)} held-out keyframes ({s.get('near_right', 0)} "
              f"right) and {s.get('n_unseen', 0)} with their view removed ({s.get('unseen_localized', 0)} localized)")  # fmt: skip
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
