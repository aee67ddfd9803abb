"""Report plots (matplotlib, Agg backend, PNG bytes): trajectory top view and error CDF.

Top view: per scene, the two world axes along which the TRUE camera centres spread most (the axis of
least spread is taken as vertical: robots and hand-held captures move mostly on a floor). Truth is
drawn as a grey line per sequence, LOCALIZED estimates as dots coloured by translation error and tied
to their true position by a thin line; REJECTED and NOT_LOCALIZED frames are marked at their true
position. The view is framed on the truth (plus a margin); estimates outside it are counted in the title.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection

from .records import FrameOutcome, frame_errors

_AXES = "xyz"
# (metres, degrees) thresholds drawn on the CDF: the ones the report's recall table leads with
_CDF_T_LINES = (0.05, 0.25, 0.5, 5.0)
_CDF_R_LINES = (2.0, 5.0, 10.0)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def trajectory_png(outcomes: Sequence[FrameOutcome]) -> bytes:
    t_err, _ = frame_errors(outcomes)
    by_scene: dict[str, list[int]] = defaultdict(list)
    for i, o in enumerate(outcomes):
        by_scene[o.scene or "(no scene)"].append(i)
    scenes = sorted(by_scene)
    ncol = min(3, len(scenes))
    nrow = math.ceil(len(scenes) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(5.0 * ncol + 1.2, 4.6 * nrow + 0.5), squeeze=False, layout="constrained"
    )
    finite = t_err[np.isfinite(t_err)]
    vmax = float(np.percentile(finite, 95)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    norm = matplotlib.colors.Normalize(0.0, vmax)
    cmap = plt.get_cmap("viridis")
    for ax, scene in zip(axes.flat, scenes):
        idx = by_scene[scene]
        gt = np.stack([outcomes[i].T_world_cam_gt[:3, 3] for i in idx])
        spread = gt.max(axis=0) - gt.min(axis=0)
        a, b = sorted(np.argsort(spread)[1:])  # drop the axis of least spread (vertical)
        # Truth: one line per sequence, in time order.
        seqs: dict[str, list[int]] = defaultdict(list)
        for j, i in enumerate(idx):
            seqs[outcomes[i].name.rsplit("/", 1)[0]].append(j)
        for k, js in enumerate(seqs.values()):
            js = sorted(js, key=lambda j: outcomes[idx[j]].stamp_ns)
            ax.plot(gt[js, a], gt[js, b], "-", color="0.55", lw=1.2, zorder=1, label="truth" if k == 0 else None)
        loc = [j for j, i in enumerate(idx) if np.isfinite(t_err[i])]
        if loc:
            est = np.stack([outcomes[idx[j]].T_world_cam_est[:3, 3] for j in loc])
            err = t_err[[idx[j] for j in loc]]
            segs = np.stack([gt[loc][:, [a, b]], est[:, [a, b]]], axis=1)
            ax.add_collection(LineCollection(segs, colors=cmap(norm(err)), linewidths=0.6, alpha=0.6, zorder=2))
            ax.scatter(est[:, a], est[:, b], c=err, cmap=cmap, norm=norm, s=14, zorder=3)
            # Legend proxy: a scatter's own legend entry takes the colour of its first point.
            ax.scatter([], [], color="0.35", s=14, label="estimate (colour: error)")
        for status, marker, color in (("REJECTED", "x", "tab:red"), ("NOT_LOCALIZED", "+", "black")):
            js = [j for j, i in enumerate(idx) if outcomes[i].status == status]
            if js:
                ax.scatter(gt[js, a], gt[js, b], marker=marker, color=color, s=40, lw=1.4, zorder=4,
                           label=f"{status.lower().replace('_', ' ')} ({len(js)})")  # fmt: skip
        # Frame on the truth so a few wild estimates do not shrink the trajectory to a dot.
        lo, hi = gt[:, [a, b]].min(axis=0), gt[:, [a, b]].max(axis=0)
        margin = np.maximum(0.15 * (hi - lo).max(), 0.5)
        ax.set_xlim(lo[0] - margin, hi[0] + margin)
        ax.set_ylim(lo[1] - margin, hi[1] + margin)
        ax.set_aspect("equal", adjustable="box")
        outside = 0
        if loc:
            inside = (
                (est[:, a] >= lo[0] - margin)
                & (est[:, a] <= hi[0] + margin)
                & (est[:, b] >= lo[1] - margin)
                & (est[:, b] <= hi[1] + margin)
            )
            outside = int((~inside).sum())
        med = np.median(t_err[idx])
        title = f"{scene}: {len(idx)} frames, median {med:.2f} m" if np.isfinite(med) else f"{scene}: {len(idx)} frames"
        if outside:
            title += f"\n{outside} estimates outside this view"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"world {_AXES[a]} (m)")
        ax.set_ylabel(f"world {_AXES[b]} (m)")
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    for ax in axes.flat[len(scenes) :]:
        ax.set_visible(False)
    if finite.size:
        cb = fig.colorbar(
            matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.85, extend="max"
        )
        cb.set_label("translation error (m)")
    fig.suptitle("Trajectory, top view: truth vs estimate")
    return _png(fig)


def _cdf(ax: plt.Axes, values: np.ndarray, label: str, x_max: float, **kw) -> None:
    """Fraction of ALL frames with error <= x (not-localized frames keep the curve below 1)."""
    n = values.size
    v = np.sort(values[np.isfinite(values)])
    if n == 0 or v.size == 0:
        ax.plot([], [], label=f"{label} (n={n}, none localized)", **kw)
        return
    v = np.maximum(v, 1e-4)  # log axis
    y = np.arange(1, v.size + 1) / n
    # Continue flat to the right edge: the plateau is the fraction of frames localized.
    x = np.concatenate([[v[0]], v, [x_max]])
    ax.step(x, np.concatenate([[0.0], y, [y[-1]]]), where="post", label=f"{label} (n={n})", **kw)


def error_cdf_png(outcomes: Sequence[FrameOutcome]) -> bytes:
    t_err, r_err = frame_errors(outcomes)
    conditions = sorted({o.condition for o in outcomes})
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 5.0))
    groups = [("all", np.ones(len(outcomes), bool))] if len(conditions) > 1 else []
    groups += [(c, np.array([o.condition == c for o in outcomes])) for c in conditions]
    limits = {}
    for ax, err, lines in ((ax_t, t_err, _CDF_T_LINES), (ax_r, r_err, _CDF_R_LINES)):
        fin = np.maximum(err[np.isfinite(err)], 1e-4)
        lo = min(float(fin.min()) if fin.size else lines[0], lines[0]) / 1.5
        hi = max(float(fin.max()) if fin.size else lines[-1], lines[-1]) * 1.5
        limits[ax] = (lo, hi)
    for k, (name, m) in enumerate(groups):
        style = {"color": "black", "lw": 2.0} if name == "all" else {"color": f"C{k}", "lw": 1.5}
        _cdf(ax_t, t_err[m], name, limits[ax_t][1], **style)
        _cdf(ax_r, r_err[m], name, limits[ax_r][1], **style)
    for ax, lines, unit, title in (
        (ax_t, _CDF_T_LINES, "m", "translation error"),
        (ax_r, _CDF_R_LINES, "deg", "rotation error"),
    ):
        ax.set_xlim(*limits[ax])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        for x in lines:
            ax.axvline(x, color="0.6", ls="--", lw=0.8)
            ax.text(x, 1.01, f"{x:g} {unit}", ha="center", va="bottom", fontsize=7, color="0.4",
                    transform=ax.get_xaxis_transform())  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0, 1.0)
        ax.set_xlabel(f"{title} ({unit}, log scale)")
        ax.set_ylabel("fraction of frames with error <= x")
        ax.set_title(title, pad=14)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    # One legend under both plots: inside, it would hide the steep part of the curves.
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    n_miss = int(np.sum(~np.isfinite(t_err)))
    fig.suptitle(f"Error CDF: {len(outcomes)} frames; {n_miss} not localized or rejected (counted as misses)")
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(labels) - 1) // 4), 1, 1))
    return _png(fig)
