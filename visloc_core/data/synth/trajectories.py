"""Robot trajectories: base_link poses as a continuous function of time, frame stamps, odometry drift.

Conventions: ``T_map_base`` maps base_link points (REP-103: x forward, y left, z up) into the map
(world) frame, metres. Time ``t`` is seconds since the start of the sequence; a sequence of
``n_frames`` at ``rate_hz`` spans t in [0, n_frames / rate_hz) and covers ``laps`` of its path, so
the pose is defined for any t (blur sub-frames and odometry samples in between frames). Stamps are
integer nanoseconds; the camera period is an exact multiple of the odometry period so that every
image stamp is also an odometry stamp.
"""

from __future__ import annotations

import math

import numpy as np

from ...geometry import T_from_R_t, invert_T
from .spec import R_from_rpy, SequenceSpec, TrajectorySpec

# Stamps start at this epoch (2023-11-14T22:13:20Z) plus each sequence's t0_s: a plausible ROS time.
BASE_STAMP_NS = 1_700_000_000 * 1_000_000_000


def periods_ns(rate_hz: float, odom_rate_factor: int) -> tuple[int, int]:
    """(camera period, odometry period) in ns; camera = odom_rate_factor * odometry exactly."""
    odom = round(1e9 / (rate_hz * odom_rate_factor))
    return odom * odom_rate_factor, odom


def frame_stamps_ns(seq: SequenceSpec, rate_hz: float, odom_rate_factor: int) -> np.ndarray:
    """int64 (n_frames,) image stamps of a sequence."""
    cam_ns, _ = periods_ns(rate_hz, odom_rate_factor)
    t0 = BASE_STAMP_NS + round(seq.t0_s * 1e9)
    return t0 + cam_ns * np.arange(seq.n_frames, dtype=np.int64)


def _waypoint_pos(wp: np.ndarray, d: float) -> tuple[np.ndarray, float]:
    seg = np.roll(wp, -1, axis=0) - wp
    lengths = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    d = d % cum[-1]
    i = int(np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(wp) - 1))
    frac = (d - cum[i]) / max(lengths[i], 1e-12)
    return wp[i] + frac * seg[i], math.atan2(seg[i][1], seg[i][0])


def base_pose(traj: TrajectorySpec, s: float) -> np.ndarray:
    """T_map_base (4x4) at path fraction ``s`` (0 at the start, 1 at the end of the sequence)."""
    if traj.type == "ellipse":
        theta = math.radians(traj.start_deg) + traj.direction * 2 * math.pi * traj.laps * s
        rx, ry = traj.radii
        xy = traj.center + np.array([rx * math.cos(theta), ry * math.sin(theta)])
        dxy = traj.direction * np.array([-rx * math.sin(theta), ry * math.cos(theta)])
        forward_yaw = math.atan2(dxy[1], dxy[0])
    else:
        wp = traj.waypoints
        total = float(np.linalg.norm(np.roll(wp, -1, axis=0) - wp, axis=1).sum())
        xy, forward_yaw = _waypoint_pos(wp, traj.start_deg / 360.0 * total + traj.laps * total * s)
    if traj.look == "forward":
        yaw = forward_yaw
    else:
        r = xy - traj.center
        yaw = math.atan2(r[1], r[0]) if np.linalg.norm(r) > 1e-9 else forward_yaw
        if traj.look == "inward":
            yaw += math.pi
    phi = 2 * math.pi * traj.wobble_cycles * s
    yaw += math.radians(traj.yaw_offset_deg) + math.radians(traj.yaw_wobble_deg) * math.sin(phi)
    pitch = math.radians(traj.pitch_wobble_deg) * math.sin(1.7 * phi + 0.5)
    roll = math.radians(traj.roll_wobble_deg) * math.sin(0.6 * phi + 1.0)
    z = traj.height + traj.height_wobble * math.sin(0.5 * phi + 0.3)
    return T_from_R_t(R_from_rpy(roll, pitch, yaw), np.array([xy[0], xy[1], z]))


def base_pose_at(seq: SequenceSpec, rate_hz: float, t_s: float) -> np.ndarray:
    """T_map_base at ``t_s`` seconds since the sequence start."""
    duration = seq.n_frames / rate_hz
    return base_pose(seq.trajectory, t_s / duration)


def drifting_odometry(
    T_map_base_N44: np.ndarray, drift: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Wheel/visual odometry that drifts: returns (T_odom_base_N44, T_map_odom_N44).

    The odometry integrates the true relative motions between consecutive samples, each corrupted
    by a scale error, a heading bias per metre travelled and random-walk noise (``drift`` keys:
    scale_error, yaw_bias_deg_per_m, trans_noise_m_per_sqrt_m, yaw_noise_deg_per_sqrt_m). The odom
    frame starts at the first pose, so T_map_odom starts as T_map_base[0] and then drifts:
    T_map_odom = T_map_base @ inv(T_odom_base) (exactly, by construction), never the identity.
    """
    n = len(T_map_base_N44)
    T_odom_base = np.empty_like(T_map_base_N44)
    T_odom_base[0] = np.eye(4)
    for i in range(1, n):
        inc = invert_T(T_map_base_N44[i - 1]) @ T_map_base_N44[i]
        dist = float(np.linalg.norm(inc[:3, 3]))
        noisy = inc.copy()
        noisy[:3, 3] = inc[:3, 3] * (1.0 + drift["scale_error"]) + rng.standard_normal(3) * drift[
            "trans_noise_m_per_sqrt_m"
        ] * math.sqrt(dist)
        dyaw = math.radians(drift["yaw_bias_deg_per_m"]) * dist + math.radians(
            drift["yaw_noise_deg_per_sqrt_m"]
        ) * math.sqrt(dist) * float(rng.standard_normal())
        noisy[:3, :3] = R_from_rpy(0.0, 0.0, dyaw) @ inc[:3, :3]
        T_odom_base[i] = T_odom_base[i - 1] @ noisy
    T_map_odom = T_map_base_N44 @ invert_T(T_odom_base)
    return T_odom_base, T_map_odom
