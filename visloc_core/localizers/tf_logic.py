"""Frame bookkeeping of the localizer node, without ROS: output frames, covariance, map->odom.

Convention (as in visloc_core.geometry): ``T_a_b`` maps b-frame points into frame a; metres;
stamps are integer nanoseconds. The covariance is 6x6 over (x, y, z, rotation about the WORLD
X, Y, Z axes) of a pose in the world frame, with the rotation error applied on the left
(``R_true = exp([w]x) R_est``; localizers/base.py), m^2 and rad^2 -- the order of
geometry_msgs/PoseWithCovariance.

REP-105: a localizer publishes ``map -> odom`` so that ``map -> odom -> base_link`` equals its
estimate of ``map -> base_link`` at the image stamp while odometry keeps ``odom -> base_link``:

    T_map_odom = T_map_base(t_image) @ inv(T_odom_base(t_image))

with ``T_odom_base`` interpolated from buffered odometry at the image stamp.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from ..geometry import interpolate_poses, invert_T, skew


def T_map_odom_from(T_map_base: np.ndarray, T_odom_base: np.ndarray) -> np.ndarray:
    """``T_map_odom = T_map_base @ inv(T_odom_base)``, both taken at the same stamp."""
    return np.asarray(T_map_base, dtype=np.float64) @ invert_T(np.asarray(T_odom_base, dtype=np.float64))


def pose_in_output_frame(
    T_world_cam: np.ndarray, covariance_66: np.ndarray, T_cam_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pose and covariance of a rigidly attached output frame (e.g. base_link) from the camera's.

    ``T_world_out = T_world_cam @ T_cam_out``. With the left rotation perturbation, the output
    position ``p_out = p_cam + R_world_cam t_cam_out`` moves by ``dp_cam - [a]x w`` where
    ``a = R_world_cam t_cam_out`` (the lever arm in world axes) and the rotation error is unchanged,
    so ``cov_out = J cov_cam J^T`` with ``J = [[I, -[a]x], [0, I]]``. NaN covariances stay NaN.
    """
    T_world_cam = np.asarray(T_world_cam, dtype=np.float64)
    T_cam_out = np.asarray(T_cam_out, dtype=np.float64)
    T_world_out = T_world_cam @ T_cam_out
    lever_world = T_world_cam[:3, :3] @ T_cam_out[:3, 3]
    J = np.eye(6)
    J[:3, 3:] = -skew(lever_world)
    cov = np.asarray(covariance_66, dtype=np.float64)
    return T_world_out, J @ cov @ J.T


class PoseBuffer:
    """A bounded, thread-safe time series of poses (e.g. ``T_odom_base`` from nav_msgs/Odometry).

    Keeps at most ``max_age_ns`` of history behind the newest sample (and at most ``max_len``
    samples), so memory stays bounded whatever the odometry rate. ``lookup`` interpolates at a
    stamp (linear translation, SLERP rotation); a stamp slightly past the newest sample (within
    ``extrapolation_ns``) returns the newest pose, because odometry often lags the camera by a
    fraction of a period; anything else outside the buffer returns None.
    """

    def __init__(self, max_age_ns: int = 10_000_000_000, max_len: int = 2000, extrapolation_ns: int = 50_000_000):
        self.max_age_ns = int(max_age_ns)
        self.extrapolation_ns = int(extrapolation_ns)
        self._items: deque[tuple[int, np.ndarray]] = deque(maxlen=int(max_len))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def add(self, stamp_ns: int, T_44: np.ndarray) -> str | None:
        """Append a sample. Returns None when it is stored as the newest, else what happened (one line):
        a sample older than the newest is dropped ("out of order"), except after a jump back by more
        than ``max_age_ns`` (a restarted clock, or a bogus far-future sample before it), where the
        buffer restarts from this sample, so one bad stamp cannot block the buffer for good."""
        T = np.asarray(T_44, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"pose must be a finite 4x4 matrix, got shape {T.shape}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            if self._items and stamp_ns <= self._items[-1][0]:
                newest = self._items[-1][0]
                if stamp_ns == newest:
                    self._items[-1] = (stamp_ns, T)
                    return None
                if newest - stamp_ns <= self.max_age_ns:
                    return f"out of order: {(newest - stamp_ns) * 1e-9:.3f} s older than the newest sample (dropped)"
                self._items.clear()
                self._items.append((stamp_ns, T))
                return f"stamps jumped back by {(newest - stamp_ns) * 1e-9:.3g} s: buffer restarted from this sample"
            self._items.append((stamp_ns, T))
            while self._items and self._items[0][0] < stamp_ns - self.max_age_ns:
                self._items.popleft()
        return None

    def lookup(self, stamp_ns: int) -> np.ndarray | None:
        """The pose at ``stamp_ns`` (4x4), or None when the stamp is not covered."""
        with self._lock:
            if not self._items:
                return None
            stamps = np.array([s for s, _ in self._items], dtype=np.int64)
            poses = np.stack([T for _, T in self._items])
        stamp_ns = int(stamp_ns)
        if stamp_ns > stamps[-1]:
            return poses[-1].copy() if stamp_ns - stamps[-1] <= self.extrapolation_ns else None
        T, valid = interpolate_poses(stamps, poses, np.array([stamp_ns], dtype=np.int64))
        return T[0] if valid[0] else None
