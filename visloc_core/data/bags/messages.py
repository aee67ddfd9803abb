"""Decoding of deserialized ROS 2 messages (from ``rosbags``) into numpy, with clear failures.

Every decoder raises :class:`MalformedMessageError` whose ``reason`` is a short, countable category
("unsupported encoding 'yuv422'", "data size != step * height", ...) and whose message gives the
details. Quaternions in ROS messages are (x, y, z, w); they are reordered here, at the boundary,
to visloc's (w, x, y, z). Stamps are int nanoseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ...geometry import PinholeCamera, T_from_position_quat_wxyz, quat_xyzw_to_wxyz
from ..png import encoded_image_size, image_file_kind

# Raw encodings: name -> (channels, dtype, how the stored PNG orders the channels)
RAW_ENCODINGS: dict[str, tuple[int, np.dtype, str]] = {
    "rgb8": (3, np.dtype(np.uint8), "rgb"),
    "bgr8": (3, np.dtype(np.uint8), "bgr"),
    "rgba8": (4, np.dtype(np.uint8), "rgba"),
    "bgra8": (4, np.dtype(np.uint8), "bgra"),
    "mono8": (1, np.dtype(np.uint8), "mono"),
    "mono16": (1, np.dtype(np.uint16), "mono"),
}
DEPTH_ENCODINGS = {"16UC1": np.dtype(np.uint16), "mono16": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}


class MalformedMessageError(ValueError):
    """A message that cannot be used; ``reason`` is the category counted in the from-bag summary."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def stamp_ns(header) -> int:
    """std_msgs/Header stamp as int nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _rows(msg, bytes_per_pixel: int) -> np.ndarray:
    """The image's pixel bytes as (height, width * bytes_per_pixel), dropping ``step`` padding."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise MalformedMessageError("empty image", f"{w}x{h}")
    if step < w * bytes_per_pixel:
        raise MalformedMessageError("step < width * bytes per pixel", f"step {step}, width {w}, {bytes_per_pixel} B/px")
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if data.size != step * h:
        raise MalformedMessageError("data size != step * height", f"{data.size} bytes, step {step}, height {h}")
    return data.reshape(h, step)[:, : w * bytes_per_pixel]


def raw_image_pixels(msg) -> np.ndarray:
    """sensor_msgs/Image -> pixels in PNG channel order: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W)
    grey, uint8 (uint16 for mono16, native byte order). Alpha is kept so the stored PNG is bit-exact."""
    enc = str(msg.encoding)
    if enc not in RAW_ENCODINGS:
        raise MalformedMessageError(
            f"unsupported encoding {enc!r}", f"supported: {', '.join(RAW_ENCODINGS)} (and CompressedImage)"
        )
    c, dtype, order = RAW_ENCODINGS[enc]
    rows = _rows(msg, c * dtype.itemsize)
    h, w = rows.shape[0], int(msg.width)
    if dtype == np.uint16:
        be = ">u2" if int(msg.is_bigendian) else "<u2"
        return np.ascontiguousarray(rows).view(be).reshape(h, w).astype(np.uint16)
    px = rows.reshape(h, w, c) if c > 1 else rows.reshape(h, w)
    if order == "bgr":
        px = px[:, :, ::-1]
    elif order == "bgra":
        px = px[:, :, [2, 1, 0, 3]]
    return px


def compressed_image(msg) -> tuple[bytes, str, int, int]:
    """sensor_msgs/CompressedImage -> (file bytes, 'png'|'jpg', width, height).

    The bytes are kept as recorded (no re-encoding); they are fully decoded once to make sure the
    file is not truncated or corrupt."""
    data = bytes(np.asarray(msg.data, dtype=np.uint8).tobytes())
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise MalformedMessageError("unsupported format 'compressedDepth'", "use a raw 16UC1/32FC1 depth topic")
    if not data:
        raise MalformedMessageError("empty compressed image")
    kind = image_file_kind(data)
    if kind is None:
        raise MalformedMessageError("compressed image is neither JPEG nor PNG", f"format field {msg.format!r}")
    try:
        w, h = encoded_image_size(data)
    except ValueError as err:
        raise MalformedMessageError("corrupt compressed image header", str(err)) from err
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.shape[1] != w or img.shape[0] != h:
        raise MalformedMessageError("compressed image does not decode", f"{kind}, {len(data)} bytes")
    return data, kind, w, h


def depth_metres(msg) -> np.ndarray:
    """Depth image (16UC1/mono16 in millimetres, 32FC1 in metres) -> float64 metres (H, W); 0 or
    non-finite means invalid."""
    enc = str(msg.encoding)
    if enc not in DEPTH_ENCODINGS:
        raise MalformedMessageError(f"unsupported depth encoding {enc!r}", "supported: 16UC1 (mm), 32FC1 (m)")
    dtype = DEPTH_ENCODINGS[enc]
    rows = _rows(msg, dtype.itemsize)
    h, w = rows.shape[0], int(msg.width)
    order = ">" if int(msg.is_bigendian) else "<"
    d = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(h, w).astype(np.float64)
    if dtype == np.uint16:
        d = d / 1000.0
    return np.where(np.isfinite(d) & (d > 0), d, 0.0)


def camera_from_info(msg) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera (K, plumb_bob / rational_polynomial distortion).

    Raises MalformedMessageError for an uncalibrated (zero) K, an unsupported distortion model, or a
    binned / ROI camera_info (the stored image would not match the intrinsics)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    w, h = int(msg.width), int(msg.height)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.all(np.isfinite(K)):
        raise MalformedMessageError(
            "camera_info without a calibration (K is zero or invalid)", f"K = {K.ravel().tolist()}"
        )
    if w <= 0 or h <= 0:
        raise MalformedMessageError("camera_info without image size", f"{w}x{h}")
    model = str(msg.distortion_model)
    d = tuple(float(x) for x in np.asarray(msg.d, dtype=np.float64).ravel())
    if any(not np.isfinite(x) for x in d):
        raise MalformedMessageError("camera_info with non-finite distortion")
    if model not in ("plumb_bob", "rational_polynomial", "") and any(x != 0 for x in d):
        raise MalformedMessageError(
            f"unsupported distortion model {model!r}", "supported: plumb_bob, rational_polynomial (OpenCV order)"
        )
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1:
        raise MalformedMessageError("binned camera_info is not supported", f"binning {msg.binning_x}x{msg.binning_y}")
    roi = msg.roi
    if int(roi.width) not in (0, w) or int(roi.height) not in (0, h):
        raise MalformedMessageError("camera_info with a region of interest is not supported")
    if not any(d):
        d = ()
    return PinholeCamera.from_K(K, w, h, d)


POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)


@dataclass
class PoseSample:
    """One pose message, not yet turned into a matrix (so that many convert in one numpy call)."""

    stamp_ns: int
    parent: str  # header.frame_id
    child: str  # child_frame_id ('' when the message type does not carry one)
    position: tuple[float, float, float]
    q_xyzw: tuple[float, float, float, float]  # ROS order, checked finite and unit (+-1e-3)

    @property
    def T_parent_child(self) -> np.ndarray:
        return T_from_position_quat_wxyz(np.array(self.position), quat_xyzw_to_wxyz(np.array(self.q_xyzw)))


def _checked_fields(position, orientation) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    # Plain floats and math: this runs once per message, numpy per-call overhead would dominate.
    p = (float(position.x), float(position.y), float(position.z))
    q = (float(orientation.x), float(orientation.y), float(orientation.z), float(orientation.w))
    if not all(math.isfinite(v) for v in p + q):
        raise MalformedMessageError("non-finite pose")
    n = math.sqrt(sum(v * v for v in q))
    if abs(n - 1.0) > 1e-3:
        raise MalformedMessageError("non-unit quaternion", f"|q| = {n:.6g}")
    return p, q


def pose_from_msg(msg, msgtype: str) -> PoseSample:
    """One pose sample from PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped."""
    if msgtype == "geometry_msgs/msg/PoseStamped":
        pose, child = msg.pose, ""
    elif msgtype in ("geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry"):
        pose, child = msg.pose.pose, str(getattr(msg, "child_frame_id", ""))
    elif msgtype == "geometry_msgs/msg/TransformStamped":
        p, q = _checked_fields(msg.transform.translation, msg.transform.rotation)
        return PoseSample(
            stamp_ns(msg.header), str(msg.header.frame_id).lstrip("/"), str(msg.child_frame_id).lstrip("/"), p, q
        )
    else:
        raise ValueError(f"pose topic type {msgtype!r} is not supported; use one of {', '.join(POSE_TYPES)}")
    p, q = _checked_fields(pose.position, pose.orientation)
    return PoseSample(stamp_ns(msg.header), str(msg.header.frame_id).lstrip("/"), child.lstrip("/"), p, q)


def T_from_samples(samples: list[PoseSample]) -> np.ndarray:
    """(N, 4, 4) T_parent_child of many samples in one vectorised conversion."""
    P = np.array([s.position for s in samples], dtype=np.float64).reshape(-1, 3)
    Q = np.array([s.q_xyzw for s in samples], dtype=np.float64).reshape(-1, 4)
    return T_from_position_quat_wxyz(P, quat_xyzw_to_wxyz(Q))
