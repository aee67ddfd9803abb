"""Helpers that write real rosbag2 files (sqlite3 / mcap, with rosbags' Writer, version 9) from
numpy data, for the from-bag tests. Quaternions given to these helpers are visloc's (w, x, y, z);
they are written to the messages in ROS order (x, y, z, w)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from visloc_core.geometry import (
    ROS_OPTICAL_TO_BODY,
    T_from_R_t,
    position_quat_wxyz_from_T,
    quat_wxyz_to_xyzw,
)
from visloc_core.geometry.quaternion import R_from_rotvec

TS = get_typestore(Stores.ROS2_HUMBLE)
T_ = TS.types
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


def header(stamp_ns: int, frame_id: str):
    return T_["std_msgs/msg/Header"](
        stamp=T_["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)),
        frame_id=frame_id,
    )


def ros_pose(T: np.ndarray):
    t, q = position_quat_wxyz_from_T(T)
    x, y, z, w = quat_wxyz_to_xyzw(q)
    return T_["geometry_msgs/msg/Pose"](
        position=T_["geometry_msgs/msg/Point"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=T_["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)),
    )


def ros_transform(T: np.ndarray):
    p = ros_pose(T)
    return T_["geometry_msgs/msg/Transform"](
        translation=T_["geometry_msgs/msg/Vector3"](x=p.position.x, y=p.position.y, z=p.position.z),
        rotation=p.orientation,
    )


def pose_stamped(stamp_ns: int, frame: str, T: np.ndarray):
    return T_["geometry_msgs/msg/PoseStamped"](header=header(stamp_ns, frame), pose=ros_pose(T))


def pose_cov_stamped(stamp_ns: int, frame: str, T: np.ndarray):
    pwc = T_["geometry_msgs/msg/PoseWithCovariance"](pose=ros_pose(T), covariance=np.zeros(36))
    return T_["geometry_msgs/msg/PoseWithCovarianceStamped"](header=header(stamp_ns, frame), pose=pwc)


def odometry(stamp_ns: int, frame: str, child: str, T: np.ndarray):
    pwc = T_["geometry_msgs/msg/PoseWithCovariance"](pose=ros_pose(T), covariance=np.zeros(36))
    v0 = T_["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    twc = T_["geometry_msgs/msg/TwistWithCovariance"](
        twist=T_["geometry_msgs/msg/Twist"](linear=v0, angular=v0), covariance=np.zeros(36)
    )
    return T_["nav_msgs/msg/Odometry"](header=header(stamp_ns, frame), child_frame_id=child, pose=pwc, twist=twc)


def tf_message(items: list[tuple[int, str, str, np.ndarray]]):
    """items: (stamp_ns, parent, child, T_parent_child)."""
    trs = [
        T_["geometry_msgs/msg/TransformStamped"](header=header(s, p), child_frame_id=c, transform=ros_transform(T))
        for s, p, c, T in items
    ]
    return T_["tf2_msgs/msg/TFMessage"](transforms=trs)


def image_msg(
    stamp_ns: int, frame: str, data: np.ndarray, encoding: str, width: int, height: int, step: int, bigendian: int = 0
):
    return T_["sensor_msgs/msg/Image"](
        header=header(stamp_ns, frame),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=bigendian,
        step=step,
        data=np.ascontiguousarray(data, dtype=np.uint8).reshape(-1),
    )


def compressed_msg(stamp_ns: int, frame: str, data: bytes, fmt: str):
    return T_["sensor_msgs/msg/CompressedImage"](
        header=header(stamp_ns, frame), format=fmt, data=np.frombuffer(data, dtype=np.uint8).copy()
    )


def camera_info(stamp_ns: int, frame: str, width: int, height: int, K: np.ndarray, d=(0.0, 0.0, 0.0, 0.0, 0.0)):
    P = np.zeros((3, 4))
    P[:3, :3] = K
    roi = T_["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T_["sensor_msgs/msg/CameraInfo"](
        header=header(stamp_ns, frame),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.asarray(d, dtype=np.float64),
        k=np.asarray(K, dtype=np.float64).reshape(9),
        r=np.eye(3).reshape(9),
        p=P.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


class BagWriter:
    """``with BagWriter(path, 'mcap') as b: b.write('/topic', msg, t_ns)``; raw bytes with write_raw."""

    def __init__(self, path: Path, storage: str) -> None:
        self.w = Writer(path, version=9, storage_plugin=STORAGES[storage])
        self.conns: dict[str, object] = {}

    def __enter__(self) -> BagWriter:
        self.w.open()
        return self

    def __exit__(self, *exc) -> None:
        self.w.close()

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.w.add_connection(topic, msgtype, typestore=TS)
        return self.conns[topic]

    def write(self, topic: str, msg, t_ns: int) -> None:
        self.w.write(self._conn(topic, msg.__msgtype__), t_ns, TS.serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, topic: str, msgtype: str, data: bytes, t_ns: int) -> None:
        self.w.write(self._conn(topic, msgtype), t_ns, data)


# ------------------------------------------------------------------ an analytic robot trajectory
def T_map_base(t: float) -> np.ndarray:
    """Robot body pose in the map at time t (s): a helix-like drive with yaw, pitch and roll."""
    p = np.array([2.0 * np.cos(0.4 * t), 1.5 * np.sin(0.4 * t), 0.1 * t])
    R = R_from_rotvec(np.array([0.05 * np.sin(t), 0.03 * np.cos(0.7 * t), 0.4 * t + 1.0]))
    return T_from_R_t(R, p)


def T_map_odom(t: float) -> np.ndarray:
    """Odometry drift: map -> odom is NOT the identity and changes with time."""
    return T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.2 + 0.02 * t])), np.array([0.5 + 0.03 * t, -0.3, 0.01 * t]))


# base_link -> camera_link (mounted forward, 0.5 m up, pitched down 0.1 rad), then the optical frame
T_BASE_CAMLINK = T_from_R_t(R_from_rotvec(np.array([0.0, 0.1, 0.05])), np.array([0.2, 0.03, 0.5]))
T_CAMLINK_OPTICAL = ROS_OPTICAL_TO_BODY.copy()
T_BASE_OPTICAL = T_BASE_CAMLINK @ T_CAMLINK_OPTICAL

W, H = 64, 48
K = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])


def noise_image(i: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """Deterministic noise image number i: (H, W, channels) (or (H, W) for channels=1)."""
    rng = np.random.default_rng(1000 + i)
    hi = np.iinfo(dtype).max
    img = rng.integers(0, hi, size=(H, W, channels), endpoint=True).astype(dtype)
    return img[:, :, 0] if channels == 1 else img
