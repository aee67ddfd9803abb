"""A matplotlib view of visualization_msgs/Marker and TF messages, drawn as RViz draws them.

For documentation and for machines where RViz cannot be installed (ours: RViz is not on PyPI): the
messages are the ones received over DDS, so the picture shows what RViz would show with
config/visloc.rviz (markers and TF frames; the images are shown beside it). Supported marker types:
LINE_LIST, LINE_STRIP, POINTS, SPHERE_LIST, ARROW (two points), SPHERE (an ellipsoid: pose and scale
as diameters), TEXT_VIEW_FACING; every marker must be in the fixed frame. Metres.
"""

from __future__ import annotations

import numpy as np
from visualization_msgs.msg import Marker

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import T_from_position_quat_wxyz


def _xyz(points) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in points], dtype=np.float64).reshape(-1, 3)


def _rgba(m: Marker) -> tuple[float, float, float, float]:
    return (m.color.r, m.color.g, m.color.b, m.color.a)


def draw_markers(ax, markers: list[Marker]) -> None:
    """Draw ADD markers on a 3D matplotlib axis (later markers with the same ns/id replace earlier ones)."""
    latest: dict[tuple[str, int], Marker] = {}
    for m in markers:
        latest[(m.ns, m.id)] = m
    for m in latest.values():
        if m.action != Marker.ADD:
            continue
        c = _rgba(m)
        if m.type == Marker.LINE_LIST:
            p = _xyz(m.points).reshape(-1, 2, 3)
            for a, b in p:
                ax.plot(*zip(a, b, strict=True), color=c, lw=0.8)
        elif m.type == Marker.LINE_STRIP:
            ax.plot(*_xyz(m.points).T, color=c, lw=1.0)
        elif m.type in (Marker.POINTS, Marker.SPHERE_LIST):
            p = _xyz(m.points)
            ax.scatter(*p.T, color=c, s=12, depthshade=False)
        elif m.type == Marker.ARROW and len(m.points) == 2:
            a, b = _xyz(m.points)
            ax.quiver(*a, *(b - a), color=c, lw=2.5, arrow_length_ratio=0.3)
        elif m.type == Marker.SPHERE:
            q = m.pose.orientation
            T = T_from_position_quat_wxyz(
                np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z]), np.array([q.w, q.x, q.y, q.z])
            )
            u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
            unit = np.stack([np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v)], -1)
            pts = (unit * 0.5 * np.array([m.scale.x, m.scale.y, m.scale.z])) @ T[:3, :3].T + T[:3, 3]
            ax.plot_surface(pts[..., 0], pts[..., 1], pts[..., 2], color=c[:3], alpha=max(c[3], 0.15), linewidth=0)
        elif m.type == Marker.TEXT_VIEW_FACING:
            p = m.pose.position
            ax.text(p.x, p.y, p.z, m.text, color=c, fontsize=7)


def tf_poses(tf_messages: list, fixed_frame: str) -> dict[str, np.ndarray]:
    """T_fixed_frame (4x4) of every frame connected to ``fixed_frame`` through the newest transform of each
    child in ``tf_messages`` (tf2_msgs/TFMessage, /tf and /tf_static alike)."""
    edges: dict[str, tuple[str, np.ndarray]] = {}
    for msg in tf_messages:
        for t in msg.transforms:
            edges[t.child_frame_id] = (t.header.frame_id, rosmsg.T_from_transform(t.transform))
    out = {fixed_frame: np.eye(4)}
    changed = True
    while changed:
        changed = False
        for child, (parent, T) in edges.items():
            if child not in out and parent in out:
                out[child] = out[parent] @ T
                changed = True
    return out


def draw_tf(ax, poses: dict[str, np.ndarray], axis_m: float = 0.4) -> None:
    """TF frames as RViz's TF display draws them: x red, y green, z blue, with the frame name."""
    for name, T in poses.items():
        o = T[:3, 3]
        for k, col in enumerate(("red", "green", "blue")):
            e = o + axis_m * T[:3, k]
            ax.plot(*zip(o, e, strict=True), color=col, lw=1.5)
        ax.text(*o, f" {name}", color="black", fontsize=7)
