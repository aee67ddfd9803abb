"""Every dataset's and middleware's pose convention, converted to visloc's T_world_cam.

visloc: T_world_cam maps OpenCV-optical camera points (x right, y down, z forward) to the world.
Each function below states the source convention it undoes (see shared DATASETS.md).
"""

from __future__ import annotations

import numpy as np

from .pose import T_from_R_t, invert_T
from .quaternion import R_from_quat_wxyz, quat_xyzw_to_wxyz

# Axis permutation from NED body axes (x forward, y right, z down) to OpenCV optical axes
# (x right, y down, z forward): p_opencv = P @ p_ned.
_P_OPENCV_FROM_NED = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
T_ned_to_opencv = T_from_R_t(_P_OPENCV_FROM_NED, np.zeros(3))

# ROS REP-103: a camera's optical frame (z forward, x right, y down) relative to its body frame
# (x forward, y left, z up): T_body_optical. The usual static transform camera_link -> camera_optical.
ROS_OPTICAL_TO_BODY = T_from_R_t(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), np.zeros(3))


def T_world_cam_from_7scenes(pose_44: np.ndarray) -> np.ndarray:
    """7-Scenes ``frame-XXXXXX.pose.txt``: already camera-to-world (of the depth sensor, which the
    benchmark treats as the camera). Returns a float64 copy; rejects non-finite (some frames hold inf)."""
    T = np.asarray(pose_44, dtype=np.float64).reshape(4, 4).copy()
    if not np.all(np.isfinite(T)):
        raise ValueError("7-Scenes pose has non-finite entries")
    return T


def T_world_cam_from_cambridge(center_xyz: np.ndarray, q_wxyz_world_to_cam: np.ndarray) -> np.ndarray:
    """Cambridge Landmarks ``dataset_*.txt`` row ``X Y Z W P Q R``.

    X Y Z is the camera CENTRE in the world; W P Q R is the quaternion (scalar first) of the
    WORLD-TO-CAMERA rotation R_cam_world. So T_cam_world = [R | -R C] and T_world_cam = [R^T | C].
    """
    R_cam_world = R_from_quat_wxyz(np.asarray(q_wxyz_world_to_cam, dtype=np.float64))
    C = np.asarray(center_xyz, dtype=np.float64)
    T_cam_world = T_from_R_t(R_cam_world, -R_cam_world @ C)
    return invert_T(T_cam_world)


def T_world_cam_from_tartanair(t_xyz_ned: np.ndarray, q_xyzw_ned: np.ndarray) -> np.ndarray:
    """TartanAir ``pose_left.txt`` row ``tx ty tz qx qy qz qw`` (scalar LAST): the camera body pose
    in an NED world, both in NED axes. Returns T_world_cam with the world and camera both in
    OpenCV axes: T = P T_ned P^-1 with P the NED->OpenCV permutation.
    """
    T_ned = T_from_R_t(R_from_quat_wxyz(quat_xyzw_to_wxyz(q_xyzw_ned)), np.asarray(t_xyz_ned, dtype=np.float64))
    return T_ned_to_opencv @ T_ned @ invert_T(T_ned_to_opencv)
