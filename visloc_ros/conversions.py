"""Building rclpy messages from visloc types (the ROS half of the boundary).

DECODING ROS messages into numpy is the core's job: ``visloc_core.data.messages`` (one decoder for
from-bag, the node and replay; it takes rclpy messages as they are). This module only builds
messages, plus :func:`msg_to_result`, the adapter from visloc_ros/LocalizationResult to the core
``LocalizationResult``.

Conventions at this boundary:
- images are RGB uint8 (H, W, 3) numpy arrays (visloc's image convention);
- quaternions in ROS messages are (x, y, z, w); inside visloc (w, x, y, z)
  (geometry.quat_xyzw_to_wxyz / quat_wxyz_to_xyzw);
- poses are 4x4 ``T_parent_child`` (geometry_msgs/Pose in frame ``header.frame_id`` is
  ``T_frame_child``);
- covariances are 6x6 over (x, y, z, rotation about X, Y, Z) in m^2 / rad^2, stored row-major
  as 36 float64 in geometry_msgs/PoseWithCovariance;
- stamps are integer nanoseconds.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseWithCovariance, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import PinholeCamera, quat_wxyz_from_R, quat_wxyz_to_xyzw
from visloc_core.localizers.base import LocalizationResult, Status

# What rgb_to_image can build (the decoder accepts more: visloc_core.data.messages).
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")

# ---------------------------------------------------------------------------------------- time


def ns_to_stamp(stamp_ns: int) -> Time:
    """Integer nanoseconds (>= 0) -> builtin_interfaces/Time."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"stamp must be >= 0 ns, got {stamp_ns}")
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def seconds_to_duration(seconds: float) -> Duration:
    ns = max(0, round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# -------------------------------------------------------------------------------------- images


def classes_to_image(classes_HW: np.ndarray, stamp_ns: int = 0, frame_id: str = "") -> Image:
    """Integer class ids (H, W) -> sensor_msgs/Image, mono8 when all ids fit in 8 bits, else mono16."""
    c = np.asarray(classes_HW)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() > 65535:
        raise ValueError(f"need class ids (H, W) in 0..65535, got {c.dtype} {c.shape}")
    px = c.astype(np.uint8) if c.max() <= 255 else c.astype("<u2")
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(c.shape[0]), int(c.shape[1])
    msg.encoding = "mono8" if px.dtype == np.uint8 else "mono16"
    msg.is_bigendian = 0
    msg.step = int(c.shape[1] * px.dtype.itemsize)
    msg.data = np.ascontiguousarray(px).view(np.uint8).tobytes()
    return msg


def rgb_to_image(
    image_rgb_HW3: np.ndarray, encoding: str = "rgb8", stamp_ns: int = 0, frame_id: str = "", row_padding: int = 0
) -> Image:
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8, mono16).

    mono8 is the ITU-R 601 luma (cv2.COLOR_RGB2GRAY); mono16 is that luma times 257 (so ``>> 8``
    gives it back); ``row_padding`` extra zero bytes per row exercise ``step`` handling.
    """
    img = np.asarray(image_rgb_HW3)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"need RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
    enc = encoding.lower()
    if enc == "rgb8":
        px = img
    elif enc == "bgr8":
        px = img[:, :, ::-1]
    elif enc == "rgba8":
        px = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif enc == "bgra8":
        px = np.concatenate([img[:, :, ::-1], np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif enc == "mono8":
        px = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    elif enc == "mono16":
        px = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    else:
        raise ValueError(f"cannot encode {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    h, w = img.shape[:2]
    # little-endian bytes, one row per image row (is_bigendian = 0)
    rows = np.ascontiguousarray(px.astype(px.dtype.newbyteorder("<"))).view(np.uint8).reshape(h, -1)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = h, w
    msg.encoding = enc
    msg.is_bigendian = 0
    msg.step = int(rows.shape[1])
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


def rgb_to_compressed(
    image_rgb_HW3: np.ndarray, fmt: str = "jpeg", stamp_ns: int = 0, frame_id: str = ""
) -> CompressedImage:
    """RGB uint8 -> sensor_msgs/CompressedImage (jpeg quality 95, or png)."""
    ext = ".png" if fmt == "png" else ".jpg"
    ok, enc = cv2.imencode(ext, np.ascontiguousarray(np.asarray(image_rgb_HW3)[:, :, ::-1]))
    if not ok:
        raise ValueError(f"OpenCV could not encode the image as {fmt}")
    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = "png" if fmt == "png" else "jpeg"
    msg.data = enc.tobytes()
    return msg


# ------------------------------------------------------------------------------------- cameras


def camera_to_camera_info(camera: PinholeCamera, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    """PinholeCamera -> sensor_msgs/CameraInfo (plumb_bob with the camera's coefficients, P = [K | 0])."""
    msg = CameraInfo()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model, msg.d = rosmsg.distortion_model_for(camera.dist)
    msg.k = [float(v) for v in camera.K.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


# --------------------------------------------------------------------------------------- poses


def _check_finite_T(T: np.ndarray, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"{what}: need a 4x4 pose, got {T.shape}")
    return T


def T_to_pose(T_44: np.ndarray) -> Pose:
    """4x4 T_parent_child -> geometry_msgs/Pose (quaternion x, y, z, w)."""
    T = _check_finite_T(T_44, "T_to_pose")
    q_xyzw = quat_wxyz_to_xyzw(quat_wxyz_from_R(T[:3, :3]))
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in T[:3, 3])
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(v) for v in q_xyzw)
    return msg


def T_to_transform(T_44: np.ndarray) -> Transform:
    T = _check_finite_T(T_44, "T_to_transform")
    q_xyzw = quat_wxyz_to_xyzw(quat_wxyz_from_R(T[:3, :3]))
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in T[:3, 3])
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (float(v) for v in q_xyzw)
    return msg


def transform_stamped(T_parent_child: np.ndarray, parent: str, child: str, stamp_ns: int) -> TransformStamped:
    """geometry_msgs/TransformStamped of ``T_parent_child`` (header.frame_id = parent)."""
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    msg.transform = T_to_transform(T_parent_child)
    return msg


def covariance_to_list(covariance_66: np.ndarray) -> list[float]:
    """6x6 -> 36 floats, row-major (NaN stays NaN: 'unknown')."""
    C = np.asarray(covariance_66, dtype=np.float64)
    if C.shape != (6, 6):
        raise ValueError(f"covariance must be 6x6, got {C.shape}")
    return [float(v) for v in C.reshape(-1)]


def list_to_covariance(values: list[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != 36:
        raise ValueError(f"covariance must have 36 values (6x6 row-major), got {v.size}")
    return v.reshape(6, 6).copy()


def to_pose_with_covariance(T_44: np.ndarray, covariance_66: np.ndarray) -> PoseWithCovariance:
    msg = PoseWithCovariance()
    msg.pose = T_to_pose(T_44)
    msg.covariance = covariance_to_list(covariance_66)
    return msg


# ---------------------------------------------------------------------------- LocalizationResult


def result_to_msg(
    result: LocalizationResult,
    stamp_ns: int,
    frame_id: str,
    T_map_out: np.ndarray | None = None,
    covariance_66: np.ndarray | None = None,
    latency_s: float = 0.0,
):
    """visloc LocalizationResult -> visloc_ros/msg/LocalizationResult.

    ``T_map_out`` / ``covariance_66`` are the pose and covariance of the node's output frame
    (base_link or the camera; default: the result's camera pose). A non-finite pose (NOT_LOCALIZED)
    is written as identity with a NaN covariance, as the message documents.
    """
    from visloc_ros.msg import LocalizationResult as LocalizationResultMsg

    T = result.T_world_cam if T_map_out is None else T_map_out
    C = result.covariance_66 if covariance_66 is None else covariance_66
    T = np.asarray(T, dtype=np.float64)
    msg = LocalizationResultMsg()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    if not np.all(np.isfinite(T)):
        T = np.eye(4)
        C = np.full((6, 6), np.nan)
    msg.pose = to_pose_with_covariance(T, C)
    msg.status = int(Status(result.status))
    msg.status_reason = str(result.status_reason)
    msg.method = str(result.method)
    msg.scene = str(result.scene)
    conf = float(result.confidence)
    msg.confidence = conf if math.isfinite(conf) else 0.0
    msg.num_inliers = max(0, int(result.num_inliers))
    msg.reference_ids = [str(r) for r in result.reference_ids]
    msg.latency = seconds_to_duration(latency_s)
    msg.stage_names = [str(k) for k in result.stage_seconds]
    msg.stage_seconds = [float(v) for v in result.stage_seconds.values()]
    return msg


def msg_to_result(msg) -> tuple[LocalizationResult, int, str]:
    """visloc_ros/msg/LocalizationResult -> (LocalizationResult with the message's pose, stamp_ns, frame_id).

    The pose is the message's output frame (``T_world_cam`` only when the node outputs the camera
    frame); NOT_LOCALIZED results get a NaN pose as in visloc_core. The node's latency field goes to
    ``extras['latency_s']`` (seconds).
    """
    status = Status(int(msg.status))
    T = np.full((4, 4), np.nan) if status == Status.NOT_LOCALIZED else rosmsg.T_from_pose(msg.pose.pose)
    result = LocalizationResult(
        T_world_cam=T,
        covariance_66=list_to_covariance(msg.pose.covariance),
        status=status,
        method=msg.method,
        confidence=float(msg.confidence),
        num_inliers=int(msg.num_inliers),
        reference_ids=list(msg.reference_ids),
        scene=msg.scene,
        status_reason=msg.status_reason,
        stage_seconds=dict(zip(msg.stage_names, (float(s) for s in msg.stage_seconds), strict=False)),
        extras={"latency_s": msg.latency.sec + msg.latency.nanosec * 1e-9},
    )
    return result, rosmsg.stamp_ns(msg.header), msg.header.frame_id


# The byte order of this machine, for tests that build big-endian 16-bit images.
NATIVE_BIG_ENDIAN = sys.byteorder == "big"
