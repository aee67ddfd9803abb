"""The ONE decoder of ROS 2 messages into numpy: images, camera_info, poses, transforms, stamps.

Used by ``visloc dataset from-bag`` (messages deserialized by ``rosbags``), the localizer node and
replay (rclpy messages): both kinds of object have the same field names, so every function here
takes either. The accepted encodings, distortion models and limits are therefore the same
everywhere, and so is every refusal.

Every decoder raises :class:`MalformedMessageError` whose ``reason`` is a short, countable category
("unsupported encoding 'yuv422'", "data size != step * height", ...) and whose message adds the
details and what to do. Quaternions in ROS messages are (x, y, z, w); they are reordered here, at
the boundary, to visloc's (w, x, y, z). Stamps are int nanoseconds.

Accepted:
- sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8 (= 8UC1), mono16 (= 16UC1), little or big
  endian, any ``step`` padding; encodings are matched case-insensitively. Depth: 16UC1/mono16 (mm),
  32FC1 (m). Class maps: mono8/8UC1, mono16/16UC1.
- sensor_msgs/CompressedImage: PNG or JPEG, recognised by their magic bytes (the ``format``
  string is informational). The size is read from the file HEADER and checked against
  ``max_pixels`` BEFORE anything is decoded, so a small "decompression bomb" (a 100 KB PNG that
  claims 32000x32000) costs nothing.
- sensor_msgs/CameraInfo: plumb_bob (5 coefficients), rational_polynomial (8), or no distortion
  (empty D / all zeros). Refused, with the reason: equidistant (fisheye) and other models, a D of
  the wrong length for its model, K that is not an upper-triangular pinhole matrix with last row
  [0 0 1], absurd intrinsics (field of view outside 0.5-179 deg, principal point far outside the
  image, skew), binning and ROI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import PinholeCamera, T_from_position_quat_wxyz, quat_xyzw_to_wxyz
from .png import encoded_image_size, image_file_kind

# An image above this many pixels is refused before decoding (8K UHD is 33 Mpx). Node parameter
# max_image_pixels and from-bag's --max-image-pixels change it.
DEFAULT_MAX_PIXELS = 40_000_000

# Raw encodings (lower case): name -> (channels, dtype, channel order of the PNG visloc stores)
RAW_ENCODINGS: dict[str, tuple[int, np.dtype, str]] = {
    "rgb8": (3, np.dtype(np.uint8), "rgb"),
    "bgr8": (3, np.dtype(np.uint8), "bgr"),
    "rgba8": (4, np.dtype(np.uint8), "rgba"),
    "bgra8": (4, np.dtype(np.uint8), "bgra"),
    "mono8": (1, np.dtype(np.uint8), "mono"),
    "8uc1": (1, np.dtype(np.uint8), "mono"),
    "mono16": (1, np.dtype(np.uint16), "mono"),
    "16uc1": (1, np.dtype(np.uint16), "mono"),
}
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1")
DEPTH_ENCODINGS = {"16uc1": np.dtype(np.uint16), "mono16": np.dtype(np.uint16), "32fc1": np.dtype(np.float32)}
CLASS_ENCODINGS = {"mono8": np.dtype(np.uint8), "8uc1": np.dtype(np.uint8), "mono16": np.dtype(np.uint16),
                   "16uc1": np.dtype(np.uint16)}  # fmt: skip

# distortion model -> number of coefficients (OpenCV order)
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}
MIN_FOV_DEG, MAX_FOV_DEG = 0.5, 179.0


class MalformedMessageError(ValueError):
    """A message that cannot be used; ``reason`` is the category counted in summaries and /diagnostics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------- stamps
def stamp_ns(header) -> int:
    """std_msgs/Header (or anything with ``.stamp``) stamp as int nanoseconds."""
    stamp = header.stamp if hasattr(header, "stamp") else header
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def checked_stamp_ns(header, what: str = "message") -> int:
    """The header stamp in ns; MalformedMessageError for a zero or negative stamp (a driver that does
    not stamp its messages: visloc pairs images with poses and TF by stamp)."""
    ns = stamp_ns(header)
    if ns < 0:
        raise MalformedMessageError(f"negative {what} stamp", f"{ns} ns; the publisher's clock or header is wrong")
    if ns == 0:
        raise MalformedMessageError(
            f"{what} stamp is zero", "the publisher does not set header.stamp; visloc matches messages by stamp"
        )
    return ns


# ---------------------------------------------------------------------------------------- images
def _u8(data) -> np.ndarray:
    """A message's uint8[] payload (numpy array from rosbags, array.array/bytes from rclpy) without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise MalformedMessageError(
            "image too large",
            f"{w}x{h} = {w * h} pixels > the limit of {max_pixels} (raise max_image_pixels if this camera is real)",
        )


def _rows(msg, bytes_per_pixel: int, max_pixels: int) -> np.ndarray:
    """The image's pixel bytes as (height, width * bytes_per_pixel), dropping ``step`` padding."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise MalformedMessageError("empty image", f"size {w}x{h}")
    _check_pixels(w, h, max_pixels)
    if step < w * bytes_per_pixel:
        raise MalformedMessageError("step < width * bytes per pixel", f"step {step}, width {w}, {bytes_per_pixel} B/px")
    data = _u8(msg.data)
    if data.size == 0:
        raise MalformedMessageError("image has empty data", f"{w}x{h} {msg.encoding}")
    if data.size != step * h:
        raise MalformedMessageError(
            "data size != step * height",
            f"{data.size} bytes but step*height = {step}*{h} = {step * h}; the publisher's step or size is wrong",
        )
    return data.reshape(h, step)[:, : w * bytes_per_pixel]


def _encoding(msg, table: dict, what: str, hint: str) -> str:
    enc = str(msg.encoding).strip().lower()
    if enc not in table:
        raise MalformedMessageError(f"unsupported {what} {msg.encoding!r}", hint)
    return enc


def raw_image_pixels(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> pixels as stored losslessly: (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey;
    uint8, or uint16 for mono16/16UC1 (native byte order). Alpha is kept so a stored PNG is bit-exact."""
    enc = _encoding(
        msg,
        RAW_ENCODINGS,
        "encoding",
        f"supported: {', '.join(SUPPORTED_ENCODINGS)}; or publish sensor_msgs/CompressedImage (jpeg/png) and "
        "set compressed:=true",
    )
    c, dtype, order = RAW_ENCODINGS[enc]
    rows = _rows(msg, c * dtype.itemsize, max_pixels)
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


def pixels_to_rgb8(px: np.ndarray) -> np.ndarray:
    """Lossless pixels (as :func:`raw_image_pixels` returns) -> RGB uint8 (H, W, 3), the way the
    stored PNG reads back with OpenCV's IMREAD_COLOR: alpha dropped, grey replicated, 16 bit -> the
    high byte (``v >> 8``)."""
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return np.ascontiguousarray(np.repeat(px[:, :, None], 3, axis=2))
    return np.ascontiguousarray(px[:, :, :3])


def compressed_header(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, str, int, int]:
    """sensor_msgs/CompressedImage -> (file bytes, 'png'|'jpg', width, height) from the file header
    only (nothing decoded); refuses other codecs, empty data and images above ``max_pixels``."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise MalformedMessageError("unsupported format 'compressedDepth'", "use a raw 16UC1/32FC1 depth topic")
    data = _u8(msg.data).tobytes()
    if not data:
        raise MalformedMessageError("compressed image has empty data", f"format {msg.format!r}")
    kind = image_file_kind(data)
    if kind is None:
        raise MalformedMessageError(
            "compressed image is neither JPEG nor PNG", f"format field {msg.format!r}; supported: jpeg, png"
        )
    try:
        w, h = encoded_image_size(data)
    except ValueError as err:
        raise MalformedMessageError("corrupt compressed image header", str(err)) from err
    if w <= 0 or h <= 0:
        raise MalformedMessageError("empty image", f"{kind} header says {w}x{h}")
    _check_pixels(w, h, max_pixels)
    return data, kind, w, h


def _imdecode(data: bytes, kind: str, w: int, h: int, flags: int) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.shape[1] != w or img.shape[0] != h:
        raise MalformedMessageError("compressed image does not decode", f"{kind}, {len(data)} bytes (truncated?)")
    return img


def compressed_image(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, str, int, int]:
    """Like :func:`compressed_header`, and the file is decoded once to make sure it is not
    truncated or corrupt (from-bag keeps the bytes as recorded)."""
    data, kind, w, h = compressed_header(msg, max_pixels)
    _imdecode(data, kind, w, h, cv2.IMREAD_UNCHANGED)
    return data, kind, w, h


def image_rgb8(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> RGB uint8 (H, W, 3), a fresh contiguous array: exactly
    what ``visloc dataset from-bag`` followed by ``Dataset.load_rgb`` gives for the same message."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        data, kind, w, h = compressed_header(msg, max_pixels)
        bgr = _imdecode(data, kind, w, h, cv2.IMREAD_COLOR)
        return np.ascontiguousarray(bgr[:, :, ::-1])
    return pixels_to_rgb8(raw_image_pixels(msg, max_pixels))


def class_ids(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image of per-pixel class ids (mono8/8UC1/mono16/16UC1) -> (H, W) uint8 or uint16,
    values unchanged (no scaling, unlike :func:`image_rgb8`)."""
    enc = _encoding(msg, CLASS_ENCODINGS, "class map encoding", "publish class ids as mono8/8UC1 or mono16/16UC1")
    dtype = CLASS_ENCODINGS[enc]
    rows = _rows(msg, dtype.itemsize, max_pixels)
    if dtype == np.uint8:
        return np.ascontiguousarray(rows)
    order = ">" if int(msg.is_bigendian) else "<"
    return np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(rows.shape[0], -1).astype(np.uint16)


def depth_metres(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Depth image (16UC1/mono16 in millimetres, 32FC1 in metres) -> float64 metres (H, W); 0 or
    non-finite means invalid."""
    enc = _encoding(msg, DEPTH_ENCODINGS, "depth encoding", "supported: 16UC1 (mm), 32FC1 (m)")
    dtype = DEPTH_ENCODINGS[enc]
    rows = _rows(msg, dtype.itemsize, max_pixels)
    h, w = rows.shape[0], int(msg.width)
    order = ">" if int(msg.is_bigendian) else "<"
    d = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(h, w).astype(np.float64)
    if dtype == np.uint16:
        d = d / 1000.0
    return np.where(np.isfinite(d) & (d > 0), d, 0.0)


# ---------------------------------------------------------------------------------------- cameras
def camera_from_info(msg) -> PinholeCamera:
    """sensor_msgs/CameraInfo -> PinholeCamera (K, size, distortion in OpenCV order); see the module
    docstring for what is refused."""
    w, h = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if w <= 0 or h <= 0:
        raise MalformedMessageError("camera_info without image size", f"{w}x{h}; width and height must be positive")
    if K.size != 9:
        raise MalformedMessageError("camera_info K is not 3x3", f"{K.size} values")
    if not np.all(np.isfinite(K)):
        raise MalformedMessageError("camera_info K has non-finite values", f"K = {K.tolist()}")
    if not np.any(K):
        raise MalformedMessageError(
            "camera_info K is all zeros", "an uncalibrated camera: calibrate it or fix the camera_info"
        )
    K = K.reshape(3, 3)
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or abs(K[2, 2] - 1.0) > 1e-9:
        raise MalformedMessageError(
            "camera_info K is not a pinhole matrix", f"need rows [fx 0 cx] [0 fy cy] [0 0 1], got {K.tolist()}"
        )
    if fx <= 0 or fy <= 0:
        raise MalformedMessageError("camera_info focal length <= 0", f"fx = {fx:g}, fy = {fy:g}")
    fov_x = math.degrees(2 * math.atan(w / (2 * fx)))
    fov_y = math.degrees(2 * math.atan(h / (2 * fy)))
    if not (MIN_FOV_DEG <= fov_x <= MAX_FOV_DEG and MIN_FOV_DEG <= fov_y <= MAX_FOV_DEG):
        raise MalformedMessageError(
            "camera_info focal length is absurd",
            f"fx = {fx:g}, fy = {fy:g} px give a field of view of {fov_x:.4g} x {fov_y:.4g} deg for {w}x{h} "
            f"(a pinhole camera has {MIN_FOV_DEG}-{MAX_FOV_DEG} deg)",
        )
    if not (-0.5 * w <= cx <= 1.5 * w and -0.5 * h <= cy <= 1.5 * h):
        raise MalformedMessageError(
            "camera_info principal point far outside the image", f"(cx, cy) = ({cx:g}, {cy:g}) for {w}x{h}"
        )
    if abs(skew) > 1e-3 * fx:
        raise MalformedMessageError("camera_info K has skew", f"K[0][1] = {skew:g}; visloc models zero skew")
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(d)):
        raise MalformedMessageError("camera_info D has non-finite values", f"D = {d.tolist()}")
    model = str(msg.distortion_model).strip()
    if d.size and np.any(d):
        if model not in DISTORTION_MODELS:
            hint = (
                "fisheye cameras: rectify the images (image_proc) and publish the rectified camera_info"
                if model in ("equidistant", "fisheye", "kannala_brandt")
                else f"supported: {', '.join(DISTORTION_MODELS)} (OpenCV coefficient order), or no distortion"
            )
            raise MalformedMessageError(f"unsupported distortion model {model!r}", hint)
        if d.size != DISTORTION_MODELS[model]:
            raise MalformedMessageError(
                f"camera_info D has {d.size} coefficients for {model}",
                f"{model} has {DISTORTION_MODELS[model]} (OpenCV order)",
            )
        if np.any(np.abs(d) > 1e4):
            raise MalformedMessageError("camera_info D is absurd", f"D = {d.tolist()}")
        dist = tuple(float(x) for x in d)
    else:
        dist = ()
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1:
        raise MalformedMessageError("binned camera_info is not supported", f"binning {msg.binning_x}x{msg.binning_y}")
    roi = msg.roi
    if int(roi.width) not in (0, w) or int(roi.height) not in (0, h):
        raise MalformedMessageError("camera_info with a region of interest is not supported")
    return PinholeCamera(w, h, float(fx), float(fy), float(cx), float(cy), dist)


def distortion_model_for(dist: tuple[float, ...]) -> tuple[str, list[float]]:
    """(distortion_model, D) to write a camera's OpenCV coefficients into a CameraInfo: plumb_bob
    (padded to 5) up to 5 coefficients, rational_polynomial (padded to 8) up to 8."""
    d = [float(x) for x in dist]
    if len(d) <= 5:
        return "plumb_bob", d + [0.0] * (5 - len(d))
    if len(d) <= 8:
        return "rational_polynomial", d + [0.0] * (8 - len(d))
    raise ValueError(f"{len(d)} distortion coefficients fit no CameraInfo model (plumb_bob 5, rational_polynomial 8)")


# ------------------------------------------------------------------------------------------ poses
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
        raise MalformedMessageError("non-finite pose", f"position {list(p)}, quaternion (x, y, z, w) {list(q)}")
    n = math.sqrt(sum(v * v for v in q))
    if abs(n - 1.0) > 1e-3:
        raise MalformedMessageError("non-unit quaternion", f"|q| = {n:.6g} (x, y, z, w) = {list(q)}")
    return p, (q[0] / n, q[1] / n, q[2] / n, q[3] / n)


def T_from_pose(pose) -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 T_parent_child (MalformedMessageError on NaN or a non-unit quaternion)."""
    p, q = _checked_fields(pose.position, pose.orientation)
    return T_from_position_quat_wxyz(np.array(p), quat_xyzw_to_wxyz(np.array(q)))


def T_from_transform(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 T_parent_child."""
    p, q = _checked_fields(transform.translation, transform.rotation)
    return T_from_position_quat_wxyz(np.array(p), quat_xyzw_to_wxyz(np.array(q)))


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
