"""visualization_msgs/Marker messages of what the localizer knows, for RViz (config/visloc.rviz).

- the map: a relpose map's keyframes as small camera frusta (apex at the camera centre, opening along
  the optical axis) with their centres; an APR artifact's mapped region per scene as a box;
- the current estimate: an arrow along the output frame's forward axis (base x, REP-103; the optical z
  of a camera), its 95 % position covariance ellipsoid, and a text with status and reason.

Frames and units: every marker is in the map frame (the artifact's world), metres. Colours: LOCALIZED
green, REJECTED orange (the estimate the gate or the localizer refused: shown for diagnosis, never
published as a pose), NOT_LOCALIZED red (text only: there is no pose).
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker

from visloc_core.geometry import quat_wxyz_from_R
from visloc_core.localizers.base import Status
from visloc_ros import conversions as conv

# sqrt of the 95 % quantile of chi-square with 3 degrees of freedom (7.8147): the ellipsoid
# x^T cov^-1 x <= 7.8147 holds the true position with 95 % probability under the covariance.
ELLIPSOID_SIGMAS_95 = 2.7955
STATUS_RGBA = {
    Status.LOCALIZED: (0.1, 0.8, 0.2, 1.0),
    Status.REJECTED: (1.0, 0.55, 0.0, 1.0),
    Status.NOT_LOCALIZED: (0.9, 0.1, 0.1, 1.0),
}


def covariance_ellipsoid(cov_33: np.ndarray, sigmas: float = ELLIPSOID_SIGMAS_95) -> tuple[np.ndarray, np.ndarray]:
    """(diameters (3,), R (3, 3)) of the ellipsoid ``x^T cov^-1 x <= sigmas^2``: its axes are R's columns
    (a rotation, det +1), the eigenvectors of ``cov_33``; diameters ``2 sigmas sqrt(eigenvalue)``."""
    cov = np.asarray(cov_33, dtype=np.float64)
    w, V = np.linalg.eigh(0.5 * (cov + cov.T))
    if np.linalg.det(V) < 0:
        V[:, 2] *= -1.0
    return 2.0 * sigmas * np.sqrt(np.clip(w, 0.0, None)), V


def _marker(ns: str, mid: int, mtype: int, frame: str, stamp_ns: int, rgba, scale=(1.0, 1.0, 1.0)) -> Marker:
    m = Marker()
    m.header.frame_id, m.header.stamp = frame, conv.ns_to_stamp(stamp_ns)
    m.ns, m.id, m.type, m.action = ns, mid, mtype, Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x, m.scale.y, m.scale.z = (float(s) for s in scale)
    m.color = ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))
    m.lifetime = DurationMsg()  # forever (replaced by id)
    return m


def _points(xyz_N3: np.ndarray) -> list[Point]:
    return [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(xyz_N3, dtype=np.float64)]


def frustum_segments(T_world_cam: np.ndarray, depth_m: float, aspect: float = 4.0 / 3.0) -> np.ndarray:
    """(8, 2, 3) line segments of a camera frustum: apex to the 4 corners at ``depth_m`` along the optical
    axis (z), and the rectangle joining them; half-width ``0.5 depth aspect``, half-height ``0.5 depth``."""
    hx, hy = 0.5 * depth_m * aspect, 0.5 * depth_m
    corners_cam = np.array([[-hx, -hy, depth_m], [hx, -hy, depth_m], [hx, hy, depth_m], [-hx, hy, depth_m]])
    T = np.asarray(T_world_cam, dtype=np.float64)
    corners = corners_cam @ T[:3, :3].T + T[:3, 3]
    apex = T[:3, 3]
    segs = [(apex, c) for c in corners] + [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    return np.array(segs)


def keyframe_markers(T_world_cam_N44: np.ndarray, frame: str, depth_m: float = 0.2) -> list[Marker]:
    """Two markers: every keyframe's frustum (one LINE_LIST) and the keyframe centres (SPHERE_LIST)."""
    T = np.asarray(T_world_cam_N44, dtype=np.float64).reshape(-1, 4, 4)
    blue = (0.2, 0.45, 1.0, 0.9)
    lines = _marker("keyframes", 0, Marker.LINE_LIST, frame, 0, blue, (0.01 * depth_m / 0.2, 0.0, 0.0))
    lines.points = _points(np.concatenate([frustum_segments(t, depth_m) for t in T]).reshape(-1, 3)) if len(T) else []
    centres = _marker("keyframe_centres", 0, Marker.SPHERE_LIST, frame, 0, blue, (0.25 * depth_m,) * 3)
    centres.points = _points(T[:, :3, 3])
    return [lines, centres]


def box_segments(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(12, 2, 3) edges of the axis-aligned box [lo, hi]."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    c = np.array([[(hi if (k >> i) & 1 else lo)[i] for i in range(3)] for k in range(8)])
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    return np.array([(c[a], c[b]) for a, b in edges])


def region_markers(boxes: list[tuple[np.ndarray, np.ndarray]], frame: str) -> list[Marker]:
    """One LINE_LIST with the edges of every (min, max) box (an APR artifact's mapped region per scene)."""
    m = _marker("mapped_region", 0, Marker.LINE_LIST, frame, 0, (0.2, 0.45, 1.0, 0.9), (0.02, 0.0, 0.0))
    m.points = _points(np.concatenate([box_segments(lo, hi) for lo, hi in boxes]).reshape(-1, 3)) if boxes else []
    return [m]


def estimate_markers(
    T_map_out: np.ndarray,
    covariance_66: np.ndarray,
    status: Status,
    text: str,
    frame: str,
    stamp_ns: int,
    forward_axis: int = 0,
    arrow_m: float = 0.5,
) -> list[Marker]:
    """Arrow (along column ``forward_axis`` of the rotation), 95 % position ellipsoid and a text above it.
    A non-finite pose gives the text alone (at the origin) and deletes the arrow and the ellipsoid; a
    non-finite or missing covariance deletes the ellipsoid."""
    rgba = STATUS_RGBA.get(Status(status), STATUS_RGBA[Status.NOT_LOCALIZED])
    T = np.asarray(T_map_out, dtype=np.float64)
    ok = T.shape == (4, 4) and bool(np.all(np.isfinite(T)))
    p = T[:3, 3] if ok else np.zeros(3)
    label = _marker("estimate_text", 0, Marker.TEXT_VIEW_FACING, frame, stamp_ns, rgba, (0.0, 0.0, 0.15))
    label.pose.position = Point(x=float(p[0]), y=float(p[1]), z=float(p[2] + 0.35))
    label.text = text
    arrow = _marker("estimate", 0, Marker.ARROW, frame, stamp_ns, rgba, (0.04, 0.08, 0.1))
    ellipsoid = _marker("estimate_covariance", 0, Marker.SPHERE, frame, stamp_ns, (*rgba[:3], 0.35))
    if not ok:
        arrow.action = ellipsoid.action = Marker.DELETE
        return [arrow, ellipsoid, label]
    arrow.points = _points(np.stack([p, p + arrow_m * T[:3, forward_axis]]))
    cov = np.asarray(covariance_66, dtype=np.float64)
    if cov.shape != (6, 6) or not np.all(np.isfinite(cov[:3, :3])):
        ellipsoid.action = Marker.DELETE
        return [arrow, ellipsoid, label]
    diam, R = covariance_ellipsoid(cov[:3, :3])
    ellipsoid.pose.position = Point(x=float(p[0]), y=float(p[1]), z=float(p[2]))
    w, x, y, z = quat_wxyz_from_R(R)
    ellipsoid.pose.orientation.x, ellipsoid.pose.orientation.y = float(x), float(y)
    ellipsoid.pose.orientation.z, ellipsoid.pose.orientation.w = float(z), float(w)
    ellipsoid.scale.x, ellipsoid.scale.y, ellipsoid.scale.z = (float(max(d, 1e-3)) for d in diam)
    return [arrow, ellipsoid, label]
