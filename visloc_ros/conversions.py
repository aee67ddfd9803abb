"""The ONLY place where ROS messages become visloc types and back.

Conventions at this boundary:
- images become RGB uint8 (H, W, 3) numpy arrays (visloc's image convention);
- quaternions in ROS messages are (x, y, z, w); inside visloc (w, x, y, z)
  (geometry.quat_xyzw_to_wxyz / quat_wxyz_to_xyzw);
- poses are 4x4 ``T_parent_child`` (geometry_msgs/Pose in frame ``header.frame_id`` is
  ``T_frame_child``);
- covariances are 6x6 over (x, y, z, rotation about X, Y, Z) in m^2 / rad^2, stored row-major
  as 36 float64 in geometry_msgs/PoseWithCovariance;
- stamps are integer nanoseconds.

Every conversion of bad input raises :class:`BadInputError` whose message names the field that is
wrong and what is expected, so the node can log it and keep running.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseWithCovariance, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from visloc_core.geometry import (
    PinholeCamera,
    R_from_quat_wxyz,
    T_from_R_t,
    quat_wxyz_from_R,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
)
from visloc_core.localizers.base import LocalizationResult, Status


class BadInputError(ValueError):
    """An input message that cannot be used (the message says what is wrong and what to do)."""


# encoding -> (channels, numpy dtype, channel order to reach RGB)
_ENCODINGS: dict[str, tuple[int, type, str]] = {
    "rgb8": (3, np.uint8, "rgb"),
    "bgr8": (3, np.uint8, "bgr"),
    "rgba8": (4, np.uint8, "rgba"),
    "bgra8": (4, np.uint8, "bgra"),
    "mono8": (1, np.uint8, "mono"),
    "8uc1": (1, np.uint8, "mono"),
    "mono16": (1, np.uint16, "mono"),
    "16uc1": (1, np.uint16, "mono"),
}
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")


# ---------------------------------------------------------------------------------------- time


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


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


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3), a fresh contiguous array.

    Supports rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 and mono16 (grey replicated to three
    channels; 16-bit values are scaled to 8 bit by keeping the high byte, i.e. ``v >> 8``).
    Honours row padding (``step`` > width * bytes per pixel) and ``is_bigendian`` for 16-bit data.
    """
    enc = str(msg.encoding).strip().lower()
    if enc not in _ENCODINGS:
        raise BadInputError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)} "
            "(or publish sensor_msgs/CompressedImage jpeg/png and set compressed:=true)"
        )
    channels, dtype, order = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise BadInputError(f"image has size {w}x{h}; width and height must be positive")
    data = msg.data
    nbytes = len(data)
    if nbytes == 0:
        raise BadInputError(f"image {w}x{h} {enc} has empty data")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise BadInputError(f"image step {step} is smaller than width*bytes per pixel = {row_bytes} ({w}x{h} {enc})")
    if nbytes != step * h:
        raise BadInputError(
            f"image data has {nbytes} bytes but step*height = {step}*{h} = {step * h} ({w}x{h} {enc}); "
            "the publisher's step or size is wrong"
        )
    # rclpy hands uint8[] as array.array('B') (or bytes): both expose the buffer protocol, no copy.
    buf = np.frombuffer(data, dtype=np.uint8)
    rows = buf.reshape(h, step)[:, :row_bytes]
    if itemsize == 1:
        px = rows.reshape(h, w, channels)
    else:
        big = bool(msg.is_bigendian)
        px = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if big else "<")).reshape(h, w, channels)
        px = (px.astype(np.uint16) >> 8).astype(np.uint8)
    if order == "rgb":
        out = px
    elif order == "bgr":
        out = px[:, :, ::-1]
    elif order == "rgba":
        out = px[:, :, :3]
    elif order == "bgra":
        out = px[:, :, 2::-1]
    else:  # mono
        out = np.repeat(px, 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.uint8)


CLASS_ENCODINGS = ("mono8", "8uc1", "mono16", "16uc1")


def image_to_classes(msg: Image) -> np.ndarray:
    """sensor_msgs/Image of per-pixel class ids (mono8 / 8UC1 / mono16 / 16UC1, as segmentation nodes
    publish) -> integer array (H, W), uint8 or uint16, values unchanged (no scaling, unlike
    :func:`image_to_rgb`). Honours ``step`` padding and ``is_bigendian``."""
    enc = str(msg.encoding).strip().lower()
    if enc not in CLASS_ENCODINGS:
        raise BadInputError(
            f"class map encoding {msg.encoding!r} is not supported; publish class ids as mono8/8UC1 or mono16/16UC1"
        )
    dtype = np.uint8 if enc in ("mono8", "8uc1") else np.uint16
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    if h <= 0 or w <= 0 or len(msg.data) == 0:
        raise BadInputError(f"class map has size {w}x{h} and {len(msg.data)} bytes; it must be non-empty")
    if step < w * itemsize or len(msg.data) != step * h:
        raise BadInputError(
            f"class map data has {len(msg.data)} bytes, step {step}, {w}x{h} {enc}: step*height must equal the "
            "data size and step must hold a row"
        )
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * itemsize]
    if itemsize == 1:
        return np.ascontiguousarray(rows)
    order = ">" if bool(msg.is_bigendian) else "<"
    return np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).reshape(h, w).astype(np.uint16)


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


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport's compressed plugin writes) -> RGB uint8."""
    fmt = str(msg.format).lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise BadInputError(f"unsupported compressed format {msg.format!r}; supported: jpeg, png")
    if len(msg.data) == 0:
        raise BadInputError(f"compressed image ({msg.format or 'no format'}) has empty data")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise BadInputError(f"compressed image ({msg.format or 'no format'}, {buf.size} bytes) could not be decoded")
    return np.ascontiguousarray(bgr[:, :, ::-1])


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


def camera_info_to_camera(msg: CameraInfo) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera (K, size, distortion D in OpenCV order).

    Rejects an uncalibrated camera (K all zeros), non-finite or non-positive values and size 0.
    """
    w, h = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if w <= 0 or h <= 0:
        raise BadInputError(f"camera_info has size {w}x{h}; width and height must be positive")
    if K.size != 9:
        raise BadInputError(f"camera_info K has {K.size} values, expected 9 (row-major 3x3)")
    if not np.all(np.isfinite(K)):
        raise BadInputError(f"camera_info K has non-finite values {K.tolist()}")
    if not np.any(K):
        raise BadInputError("camera_info K is all zeros (uncalibrated camera); calibrate the camera or fix camera_info")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(D)):
        raise BadInputError(f"camera_info D has non-finite values {D.tolist()}")
    try:
        return PinholeCamera.from_K(K.reshape(3, 3), w, h, tuple(D.tolist()))
    except ValueError as err:
        raise BadInputError(f"camera_info is not a valid pinhole camera: {err}") from err


def camera_to_camera_info(camera: PinholeCamera, stamp_ns: int = 0, frame_id: str = "") -> CameraInfo:
    """PinholeCamera -> sensor_msgs/CameraInfo (plumb_bob with the camera's coefficients, P = [K | 0])."""
    msg = CameraInfo()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [float(d) for d in camera.dist] or [0.0] * 5
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


def _quat_xyzw_to_R(x: float, y: float, z: float, w: float, what: str) -> np.ndarray:
    q_xyzw = np.array([x, y, z, w], dtype=np.float64)
    n = float(np.linalg.norm(q_xyzw))
    if not np.all(np.isfinite(q_xyzw)) or n < 1e-6:
        raise BadInputError(f"{what}: invalid orientation quaternion (x, y, z, w) = {q_xyzw.tolist()}")
    if abs(n - 1.0) > 1e-2:
        raise BadInputError(f"{what}: orientation quaternion is not unit length (norm {n:.4f})")
    return R_from_quat_wxyz(quat_xyzw_to_wxyz(q_xyzw / n))


def pose_to_T(msg: Pose, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 (raises BadInputError on NaN or a non-unit quaternion)."""
    t = np.array([msg.position.x, msg.position.y, msg.position.z], dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise BadInputError(f"{what}: non-finite position {t.tolist()}")
    o = msg.orientation
    return T_from_R_t(_quat_xyzw_to_R(o.x, o.y, o.z, o.w, what), t)


def T_to_transform(T_44: np.ndarray) -> Transform:
    T = _check_finite_T(T_44, "T_to_transform")
    q_xyzw = quat_wxyz_to_xyzw(quat_wxyz_from_R(T[:3, :3]))
    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = (float(v) for v in T[:3, 3])
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (float(v) for v in q_xyzw)
    return msg


def transform_to_T(msg: Transform, what: str = "transform") -> np.ndarray:
    t = np.array([msg.translation.x, msg.translation.y, msg.translation.z], dtype=np.float64)
    if not np.all(np.isfinite(t)):
        raise BadInputError(f"{what}: non-finite translation {t.tolist()}")
    r = msg.rotation
    return T_from_R_t(_quat_xyzw_to_R(r.x, r.y, r.z, r.w, what), t)


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
    frame); NOT_LOCALIZED results get a NaN pose as in visloc_core.
    """
    status = Status(int(msg.status))
    if status == Status.NOT_LOCALIZED:
        T = np.full((4, 4), np.nan)
    else:
        T = pose_to_T(msg.pose.pose, "LocalizationResult.pose")
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
    )
    return result, stamp_to_ns(msg.header.stamp), msg.header.frame_id


# The byte order of this machine, for tests that build big-endian 16-bit images.
NATIVE_BIG_ENDIAN = sys.byteorder == "big"
