"""Write a rosbag2 recording of one camera sequence, as a robot records it (``visloc synth --bag``).

Topics (all stamped in int nanoseconds; the bag's log time equals the header stamp):

==============================  ===============================  ==========================================
topic                           type                             content
==============================  ===============================  ==========================================
/camera/image_raw               sensor_msgs/msg/Image            rgb8, frame camera_optical_frame
/camera/image_raw/compressed    sensor_msgs/msg/CompressedImage  JPEG (instead of image_raw, ``compressed``)
/camera/camera_info             sensor_msgs/msg/CameraInfo       K, P = [K | 0], D (plumb_bob), same stamp
/camera/depth/image_raw         sensor_msgs/msg/Image            16UC1 millimetres, 0 = no return, registered
                                                                 to the colour camera (``depth``; as an RGB-D
                                                                 camera's aligned depth)
/ground_truth/pose              geometry_msgs/msg/PoseStamped    T_map_base, frame map, at image stamps
/odom                           nav_msgs/msg/Odometry            T_odom_base (drifting), odom -> base_link
/tf                             tf2_msgs/msg/TFMessage           odom->base_link (odom rate), map->odom
                                                                 (image stamps)
/tf_static                      tf2_msgs/msg/TFMessage           base_link->camera_link (mount),
                                                                 camera_link->camera_optical_frame (REP-103)
==============================  ===============================  ==========================================

TF convention: a TransformStamped with ``header.frame_id = parent`` and ``child_frame_id = child``
carries T_parent_child (maps child points into the parent). Quaternions are written (x, y, z, w)
as ROS requires. The chain map->odom->base_link->camera_link->camera_optical_frame composes, at
every image stamp, to the dataset's T_world_cam.

The bag is written into a temporary folder next to the target and renamed when complete, so an
interrupted run never leaves a half-written bag under the final name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from ...atomic import atomic_folder
from ...geometry import (
    ROS_OPTICAL_TO_BODY,
    PinholeCamera,
    invert_T,
    quat_wxyz_from_R,
    quat_wxyz_to_xyzw,
    rotvec_from_R,
)

log = logging.getLogger(__name__)

STORAGES = ("sqlite3", "mcap")

# Frame and topic names (REP-105 frames; camera topics as usb_cam / image_transport name them).
FRAME_MAP, FRAME_ODOM, FRAME_BASE = "map", "odom", "base_link"
FRAME_CAMERA, FRAME_OPTICAL = "camera_link", "camera_optical_frame"
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_IMAGE_COMPRESSED = "/camera/image_raw/compressed"
TOPIC_CAMERA_INFO = "/camera/camera_info"
TOPIC_DEPTH = "/camera/depth/image_raw"
TOPIC_GT_POSE = "/ground_truth/pose"
TOPIC_ODOM = "/odom"
TOPIC_TF = "/tf"
TOPIC_TF_STATIC = "/tf_static"
JPEG_QUALITY = 90

# Odometry covariance (row-major 6x6, x y z roll pitch yaw): what the drift model roughly produces.
_ODOM_POSE_STD = np.array([0.05, 0.05, 0.05, 0.01, 0.01, 0.03])
_ODOM_TWIST_STD = np.array([0.02, 0.02, 0.02, 0.01, 0.01, 0.02])


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)  # the ROS distro visloc targets


def _qos(transient_local: bool) -> list:
    """Offered QoS recorded in metadata.yaml: /tf_static is latched (transient local), the rest volatile."""
    from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(9223372036, 854775807)  # rmw's "infinite" duration
    return [
        Qos(
            history=QosHistory.KEEP_LAST,
            depth=1 if transient_local else 10,
            reliability=QosReliability.RELIABLE,
            durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
            deadline=inf,
            lifespan=inf,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=inf,
            avoid_ros_namespace_conventions=False,
        )
    ]


class SequenceBagWriter:
    """One rosbag2 folder for one camera sequence. Call :meth:`set_odometry` once, then
    :meth:`write_frame` per image in time order, then :meth:`close` (or :meth:`abort`).

    ``T_base_cameralink``: the fixed camera mount (base_link -> camera_link, REP-103 body axes);
    the optical frame follows by ``geometry.ROS_OPTICAL_TO_BODY``.
    """

    def __init__(
        self,
        path: str | Path,
        camera: PinholeCamera,
        T_base_cameralink: np.ndarray,
        storage: str = "sqlite3",
        compressed: bool = False,
        overwrite: bool = False,
        depth: bool = False,
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        self.overwrite = overwrite
        self.camera = camera
        self.compressed = compressed
        self.depth = depth
        self.T_base_cameralink = np.asarray(T_base_cameralink, dtype=np.float64)
        # rosbags' Writer creates its folder itself: the temporary path is reserved, not created
        self._folder = atomic_folder(self.path, overwrite=overwrite, create=False, what="bag folder").open()
        self.ts = _typestore()
        plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
        try:
            self._writer = Writer(self._folder.path, version=9, storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            self._folder.abort()
            raise
        self._conns: dict[str, object] = {}
        image_topic, image_type = (
            (TOPIC_IMAGE_COMPRESSED, "sensor_msgs/msg/CompressedImage")
            if compressed
            else (TOPIC_IMAGE, "sensor_msgs/msg/Image")
        )
        self.image_topic = image_topic
        for topic, msgtype, latched in [
            (TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage", True),
            (TOPIC_TF, "tf2_msgs/msg/TFMessage", False),
            (TOPIC_ODOM, "nav_msgs/msg/Odometry", False),
            (TOPIC_CAMERA_INFO, "sensor_msgs/msg/CameraInfo", False),
            (image_topic, image_type, False),
            (TOPIC_GT_POSE, "geometry_msgs/msg/PoseStamped", False),
            *([(TOPIC_DEPTH, "sensor_msgs/msg/Image", False)] if depth else []),
        ]:
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.ts, offered_qos_profiles=_qos(latched)
            )
        self._odom: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._odom_next = 0
        self._static_written = False
        self._last_stamp = -1
        self.counts: dict[str, int] = dict.fromkeys(self._conns, 0)
        self._closed = False

    # ----------------------------------------------------------------------------- messages
    def _header(self, stamp_ns: int, frame_id: str):
        T = self.ts.types
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](
                sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)
            ),
            frame_id=frame_id,
        )

    def _pose_msg(self, T_44: np.ndarray):
        T = self.ts.types
        q = quat_wxyz_to_xyzw(quat_wxyz_from_R(T_44[:3, :3]))
        return T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=float(T_44[0, 3]), y=float(T_44[1, 3]), z=float(T_44[2, 3])),
            orientation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
        )

    def _transform(self, stamp_ns: int, parent: str, child: str, T_parent_child: np.ndarray):
        T = self.ts.types
        q = quat_wxyz_to_xyzw(quat_wxyz_from_R(T_parent_child[:3, :3]))
        t = T_parent_child[:3, 3]
        return T["geometry_msgs/msg/TransformStamped"](
            header=self._header(stamp_ns, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
                rotation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
            ),
        )

    def _write(self, topic: str, stamp_ns: int, msg) -> None:
        conn = self._conns[topic]
        self._writer.write(conn, int(stamp_ns), self.ts.serialize_cdr(msg, conn.msgtype))
        self.counts[topic] += 1

    def _tf(self, stamp_ns: int, transforms: list, static: bool = False) -> None:
        msg = self.ts.types["tf2_msgs/msg/TFMessage"](transforms=transforms)
        self._write(TOPIC_TF_STATIC if static else TOPIC_TF, stamp_ns, msg)

    # ----------------------------------------------------------------------------- public
    def set_odometry(self, stamps_ns: np.ndarray, T_odom_base_N44: np.ndarray, T_map_odom_N44: np.ndarray) -> None:
        """The odometry series (its own rate, >= the camera rate), written interleaved in time order:
        /odom and /tf odom->base_link at every sample, /tf map->odom at the image stamps."""
        s = np.asarray(stamps_ns, dtype=np.int64)
        if len(s) != len(T_odom_base_N44) or len(s) != len(T_map_odom_N44) or np.any(np.diff(s) <= 0):
            raise ValueError("odometry stamps must be strictly increasing and match the pose arrays")
        self._odom = (s, np.asarray(T_odom_base_N44, np.float64), np.asarray(T_map_odom_N44, np.float64))
        self._map_odom_at = {int(x): i for i, x in enumerate(s)}

    def _write_static(self, stamp_ns: int) -> None:
        self._tf(
            stamp_ns,
            [
                self._transform(stamp_ns, FRAME_BASE, FRAME_CAMERA, self.T_base_cameralink),
                self._transform(stamp_ns, FRAME_CAMERA, FRAME_OPTICAL, ROS_OPTICAL_TO_BODY),
            ],
            static=True,
        )
        self._static_written = True

    def _flush_odometry(self, until_ns: int) -> None:
        """Write odometry samples with stamp <= until_ns."""
        if self._odom is None:
            return
        s, T_ob, _ = self._odom
        T = self.ts.types
        while self._odom_next < len(s) and s[self._odom_next] <= until_ns:
            j = self._odom_next
            stamp = int(s[j])
            # body-frame twist by finite differences of the odometry itself (forward, last: backward)
            a, b = (j, j + 1) if j + 1 < len(s) else (j - 1, j)
            if b > a >= 0:
                inc = invert_T(T_ob[a]) @ T_ob[b]
                dt = (s[b] - s[a]) * 1e-9
                v, w = inc[:3, 3] / dt, rotvec_from_R(inc[:3, :3]) / dt
            else:
                v = w = np.zeros(3)
            odom = T["nav_msgs/msg/Odometry"](
                header=self._header(stamp, FRAME_ODOM),
                child_frame_id=FRAME_BASE,
                pose=T["geometry_msgs/msg/PoseWithCovariance"](
                    pose=self._pose_msg(T_ob[j]), covariance=np.diag(_ODOM_POSE_STD**2).reshape(36)
                ),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](
                        linear=T["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2])),
                        angular=T["geometry_msgs/msg/Vector3"](x=float(w[0]), y=float(w[1]), z=float(w[2])),
                    ),
                    covariance=np.diag(_ODOM_TWIST_STD**2).reshape(36),
                ),
            )
            self._write(TOPIC_ODOM, stamp, odom)
            self._tf(stamp, [self._transform(stamp, FRAME_ODOM, FRAME_BASE, T_ob[j])])
            self._odom_next += 1

    def write_frame(
        self, stamp_ns: int, rgb_HW3: np.ndarray, T_map_base: np.ndarray, depth_m_HW: np.ndarray | None = None
    ) -> None:
        """One image (uint8 RGB), its camera_info, the ground-truth base pose and map->odom at ``stamp_ns``;
        with ``depth`` also the depth image (metres, 0 = none), written as 16UC1 millimetres."""
        stamp_ns = int(stamp_ns)
        if stamp_ns <= self._last_stamp:
            raise ValueError(f"frames must come in increasing stamp order ({stamp_ns} after {self._last_stamp})")
        img = np.asarray(rgb_HW3)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        if (w, h) != (self.camera.width, self.camera.height):
            raise ValueError(f"image is {w}x{h} but camera_info says {self.camera.width}x{self.camera.height}")
        if not self._static_written:
            first = int(self._odom[0][0]) if self._odom is not None else stamp_ns
            self._write_static(min(first, stamp_ns))
        self._flush_odometry(stamp_ns)
        if self._odom is not None:
            j = self._map_odom_at.get(stamp_ns)
            if j is None:
                raise ValueError(f"image stamp {stamp_ns} is not an odometry stamp; map->odom needs one there")
            self._tf(stamp_ns, [self._transform(stamp_ns, FRAME_MAP, FRAME_ODOM, self._odom[2][j])])
        T = self.ts.types
        cam = self.camera
        K = cam.K
        P = np.zeros((3, 4))
        P[:, :3] = K
        dist = list(cam.dist) + [0.0] * max(0, 5 - len(cam.dist))
        info = T["sensor_msgs/msg/CameraInfo"](
            header=self._header(stamp_ns, FRAME_OPTICAL),
            height=h,
            width=w,
            distortion_model="plumb_bob" if len(dist) == 5 else "rational_polynomial",
            d=np.asarray(dist, dtype=np.float64),
            k=K.reshape(9).astype(np.float64),
            r=np.eye(3).reshape(9),
            p=P.reshape(12),
            binning_x=0,
            binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        self._write(TOPIC_CAMERA_INFO, stamp_ns, info)
        if self.compressed:
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            if not ok:
                raise ValueError("OpenCV could not encode the image as JPEG")
            msg = T["sensor_msgs/msg/CompressedImage"](
                header=self._header(stamp_ns, FRAME_OPTICAL),
                format="rgb8; jpeg compressed bgr8",  # image_transport's compressed format string
                data=buf.reshape(-1),
            )
        else:
            msg = T["sensor_msgs/msg/Image"](
                header=self._header(stamp_ns, FRAME_OPTICAL),
                height=h,
                width=w,
                encoding="rgb8",
                is_bigendian=0,
                step=3 * w,
                data=np.ascontiguousarray(img).reshape(-1),
            )
        self._write(self.image_topic, stamp_ns, msg)
        if self.depth:
            if depth_m_HW is None or np.asarray(depth_m_HW).shape != (h, w):
                raise ValueError(f"this bag records depth: give a ({h}, {w}) depth image in metres")
            d = np.asarray(depth_m_HW, dtype=np.float64)
            # millimetres, 0 = no return (also beyond 65.535 m, the 16UC1 range)
            mm = np.where(np.isfinite(d) & (d > 0) & (d < 65.5355), np.round(d * 1000.0), 0).astype("<u2")
            self._write(
                TOPIC_DEPTH,
                stamp_ns,
                T["sensor_msgs/msg/Image"](
                    header=self._header(stamp_ns, FRAME_OPTICAL),
                    height=h,
                    width=w,
                    encoding="16UC1",
                    is_bigendian=0,
                    step=2 * w,
                    data=np.ascontiguousarray(mm).view(np.uint8).reshape(-1),
                ),
            )
        gt = T["geometry_msgs/msg/PoseStamped"](
            header=self._header(stamp_ns, FRAME_MAP), pose=self._pose_msg(np.asarray(T_map_base, np.float64))
        )
        self._write(TOPIC_GT_POSE, stamp_ns, gt)
        self._last_stamp = stamp_ns

    def close(self) -> Path:
        """Write the remaining odometry, finish the bag and move it to its final path."""
        if self._closed:
            return self.path
        if self._odom is not None:
            self._flush_odometry(int(self._odom[0][-1]))
        try:
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._folder.commit()
        log.info("wrote bag %s (%s)", self.path, ", ".join(f"{k}: {v}" for k, v in self.counts.items()))
        return self.path

    def abort(self) -> None:
        """Drop the partial bag (on error or interruption)."""
        if self._closed:
            return
        try:
            self._writer.close()
        except Exception:  # the writer may be in any state after an error; the folder goes anyway
            log.debug("closing the partial bag failed", exc_info=True)
        self._closed = True
        self._folder.abort()

    def __enter__(self) -> SequenceBagWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
