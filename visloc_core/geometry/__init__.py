"""The one owner of visloc's pose, frame and quaternion conventions.

Convention (everywhere in visloc):
- A pose is a 4x4 homogeneous matrix ``T_world_cam`` that maps camera-frame points to the world:
  ``p_world = T_world_cam @ p_cam``. Batched poses have shape (..., 4, 4); names carry the shape
  (``T_world_cam_N44``).
- The camera frame is the OpenCV optical frame: x right, y down, z forward. Units are metres.
- Quaternions inside visloc are (w, x, y, z), scalar first, unit norm, hemisphere w >= 0 where a
  canonical form is needed. ROS messages are (x, y, z, w): convert with
  :func:`quat_xyzw_to_wxyz` / :func:`quat_wxyz_to_xyzw` at the boundary.
- Relative pose between cameras a and b: ``T_b_a = inv(T_world_b) @ T_world_a`` maps a-frame points
  into b; its essential matrix is ``E = [t]x R`` with (R, t) = T_b_a, so that ``x_b^T E x_a = 0``.
- Errors follow the reference code of the benchmarks: rotation error is the angle of
  ``R_est R_gt^T`` (degrees); translation error is the distance between camera centres (metres);
  a frame that was not localized has infinite error.
"""

from .averaging import average_rotations
from .camera import PinholeCamera
from .conventions import (
    ROS_OPTICAL_TO_BODY,
    T_ned_to_opencv,
    T_world_cam_from_7scenes,
    T_world_cam_from_cambridge,
    T_world_cam_from_tartanair,
)
from .epipolar import (
    decompose_essential,
    essential_from_relative_pose,
    skew,
    triangulate_point_from_rays,
    triangulate_points_dlt,
)
from .interpolation import interpolate_poses, slerp_quat_wxyz
from .metrics import (
    RECALL_THRESHOLDS,
    pose_errors,
    recall_at_thresholds,
    rotation_error_deg,
    translation_error_m,
)
from .pose import (
    T_from_position_quat_wxyz,
    T_from_R_t,
    camera_center,
    invert_T,
    position_quat_wxyz_from_T,
    relative_pose,
    transform_points,
)
from .quaternion import (
    R_from_quat_wxyz,
    R_from_rotvec,
    quat_canonical_wxyz,
    quat_multiply_wxyz,
    quat_wxyz_from_R,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    rotation_angle_deg,
    rotvec_from_R,
)

__all__ = [
    "RECALL_THRESHOLDS",
    "ROS_OPTICAL_TO_BODY",
    "PinholeCamera",
    "R_from_quat_wxyz",
    "R_from_rotvec",
    "T_from_R_t",
    "T_from_position_quat_wxyz",
    "T_ned_to_opencv",
    "T_world_cam_from_7scenes",
    "T_world_cam_from_cambridge",
    "T_world_cam_from_tartanair",
    "average_rotations",
    "camera_center",
    "decompose_essential",
    "essential_from_relative_pose",
    "interpolate_poses",
    "invert_T",
    "pose_errors",
    "position_quat_wxyz_from_T",
    "quat_canonical_wxyz",
    "quat_multiply_wxyz",
    "quat_wxyz_from_R",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
    "recall_at_thresholds",
    "relative_pose",
    "rotation_angle_deg",
    "rotation_error_deg",
    "rotvec_from_R",
    "skew",
    "slerp_quat_wxyz",
    "transform_points",
    "translation_error_m",
    "triangulate_point_from_rays",
    "triangulate_points_dlt",
]
