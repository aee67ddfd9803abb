"""What ``visloc replay`` needs to know about a bag before anything is played: its topics, the camera
frame and extrinsic, and the ground truth of each image stamp. No ROS here (``rosbags`` reads the
bag); the ROS half (node process, player, sampler) is visloc_ros/replay.py, the scoring is
replay_scoring.py.

Ground truth: a PoseStamped / PoseWithCovarianceStamped / Odometry topic carrying ``T_map_base`` of
``gt_frame`` (by default /ground_truth/pose of base_link), composed with the base->camera chain of
/tf_static (``data/bags/tf_graph.FrameGraph``), interpolated at each image stamp (at most 0.5 s
from a sample); or the poses of a visloc dataset (``--data``) matched by image stamp.

Scene of each frame (the truth of the scene a multi-scene artifact's node picks): the dataset's
(``--data``), ``--scene`` (the scene the bag was recorded in), or the artifact's only scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.bags.tf_graph import FrameGraph, TFLookupError
from ..data.messages import MalformedMessageError, T_from_samples, pose_from_msg
from ..geometry import interpolate_poses

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
GT_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")
#: largest gap (ns) between two ground-truth samples an image stamp may fall in
GT_MAX_GAP_NS = 500_000_000

#: stamp_ns -> (T_world_cam or None when there is no truth at that stamp, scene name or '')
Truth = Callable[[int], tuple[np.ndarray | None, str]]


class ReplayError(ValueError):
    """A bag or option that cannot be replayed (the message says what to change)."""


@dataclass
class ReplayOptions:
    bag: Path
    artifact: Path
    out: Path
    image_topic: str | None = None  # default: the bag's only image topic
    camera_info_topic: str | None = None  # default: the bag's only CameraInfo topic
    gt_topic: str = "/ground_truth/pose"
    gt_frame: str = "base_link"  # frame whose pose the gt topic carries (PoseStamped has no child frame)
    odom_topic: str | None = "/odom"  # None: no map->odom
    data: Path | None = None  # dataset with the truth (instead of the gt topic)
    scene: str | None = None  # scene the bag was recorded in (truth of the node's scene choice)
    rate: float = 1.0  # x real time (rate mode)
    wait: bool = False  # lock-step: wait for each result
    result_timeout_s: float = 30.0
    startup_timeout_s: float = 180.0
    device: str = "cpu"
    condition: str = "normal"
    max_frames: int | None = None
    node_params: dict = field(default_factory=dict)  # extra node parameters (override)
    node_log: Path | None = None


@dataclass
class BagPlan:
    image_topic: str
    image_type: str
    camera_info_topic: str | None
    odom_topic: str | None
    camera_frame: str
    T_base_cam: np.ndarray  # (4, 4) gt_frame -> camera frame, from /tf_static
    gt_stamps_ns: np.ndarray  # (N,) int64, sorted
    T_map_base_gt: np.ndarray  # (N, 4, 4) the gt topic's poses at those stamps
    n_images: int


def open_bag(bag: Path):
    """A ``rosbags`` AnyReader of a rosbag2 folder or file (sqlite3 or mcap); use it as a context manager."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    return AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_HUMBLE))


def static_chain(edges: dict[tuple[str, str], np.ndarray], a: str, b: str) -> np.ndarray | None:
    """T_a_b through static transforms ``{(parent, child): T_parent_child}`` (a TF tree, walked in
    either direction by FrameGraph), or None when a and b are not connected."""
    if a == b:
        return np.eye(4)
    graph = FrameGraph()
    for (parent, child), T in edges.items():
        graph.add(parent, child, T, 0, static=True)
    try:
        return graph.lookup(a, b, np.zeros(1, dtype=np.int64))[0][0]
    except TFLookupError:
        return None


def plan_bag(o: ReplayOptions) -> BagPlan:
    """First pass over the bag: topics, the camera frame and extrinsic, the ground truth."""
    if not Path(o.bag).exists():
        raise FileNotFoundError(f"bag {o.bag} does not exist")
    if Path(o.bag).is_dir() and not (Path(o.bag) / "metadata.yaml").is_file():
        raise ReplayError(
            f"{o.bag} is not a rosbag2 folder (no metadata.yaml); give the folder `ros2 bag record` wrote"
        )
    with open_bag(o.bag) as reader:
        by_topic = {c.topic: c for c in reader.connections}
        listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections)
        if o.image_topic:
            if o.image_topic not in by_topic or by_topic[o.image_topic].msgtype not in IMAGE_TYPES:
                raise ReplayError(f"--image-topic {o.image_topic} is not an image topic of {o.bag}; topics: {listing}")
            image_topic = o.image_topic
        else:
            cands = [c.topic for c in reader.connections if c.msgtype in IMAGE_TYPES]
            if len(cands) != 1:
                raise ReplayError(
                    f"pick the camera with --image-topic (image topics: {cands or 'none'}); topics: {listing}"
                )
            image_topic = cands[0]
        image_type = by_topic[image_topic].msgtype
        info_topic = o.camera_info_topic
        if info_topic is None:
            cands = [c.topic for c in reader.connections if c.msgtype == "sensor_msgs/msg/CameraInfo"]
            if len(cands) != 1:
                raise ReplayError(f"pick --camera-info-topic (CameraInfo topics: {cands or 'none'}); topics: {listing}")
            info_topic = cands[0]
        elif info_topic not in by_topic:
            raise ReplayError(f"--camera-info-topic {info_topic} is not in {o.bag}; topics: {listing}")
        odom_topic = o.odom_topic if o.odom_topic in by_topic else None
        wanted = [image_topic]
        if o.data is None:
            if o.gt_topic not in by_topic or by_topic[o.gt_topic].msgtype not in GT_TYPES:
                raise ReplayError(
                    f"no ground truth: {o.gt_topic} is not a pose topic of {o.bag} (types {', '.join(GT_TYPES)}); "
                    f"use --gt-topic or --data DATASET; topics: {listing}"
                )
            wanted.append(o.gt_topic)
        if "/tf_static" in by_topic:
            wanted.append("/tf_static")
        static_edges: dict[tuple[str, str], np.ndarray] = {}  # /tf_static is latched: the last one counts
        camera_frame = ""
        n_images = 0
        gt = []
        for conn, _, raw in reader.messages(connections=[by_topic[t] for t in wanted]):
            if conn.topic == image_topic:
                n_images += 1
                if not camera_frame:
                    camera_frame = str(reader.deserialize(raw, conn.msgtype).header.frame_id).lstrip("/")
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            try:
                if conn.topic == "/tf_static":
                    for tr in msg.transforms:
                        s = pose_from_msg(tr, "geometry_msgs/msg/TransformStamped")
                        static_edges[(s.parent, s.child)] = s.T_parent_child
                else:
                    gt.append(pose_from_msg(msg, conn.msgtype))
            except MalformedMessageError as err:
                raise ReplayError(f"{conn.topic} in {o.bag}: {err}") from err
    if n_images == 0:
        raise ReplayError(f"{image_topic} has no messages in {o.bag}")
    base = o.gt_frame
    try:
        T_base_cam = static_chain(static_edges, base, camera_frame) if camera_frame else None
    except ValueError as err:  # not a tree (a frame with two parents)
        raise ReplayError(f"/tf_static of {o.bag}: {err}") from err
    if T_base_cam is None:
        raise ReplayError(
            f"no /tf_static chain from {base!r} to the camera frame {camera_frame!r} in {o.bag}; "
            "record /tf_static or pass --gt-frame as the camera frame"
        )
    gt.sort(key=lambda s: s.stamp_ns)
    stamps = np.array([s.stamp_ns for s in gt], dtype=np.int64)
    poses = T_from_samples(gt) if gt else np.zeros((0, 4, 4))
    return BagPlan(image_topic, image_type, info_topic, odom_topic, camera_frame, T_base_cam, stamps, poses, n_images)


def truth_scene(o: ReplayOptions, artifact_scenes: list[str]) -> str:
    """The scene of the bag's frames when the truth comes from the bag: ``o.scene`` or the artifact's
    only scene ("" when the artifact names none). Checks ``o.scene`` against ``artifact_scenes``
    (``loading.artifact_scene_names``); a multi-scene artifact needs ``o.scene`` or ``o.data``."""
    scenes = list(artifact_scenes)
    if o.scene is not None:
        if scenes and o.scene not in scenes:
            raise ReplayError(f"--scene {o.scene!r} is not a scene of {o.artifact}; its scenes: {scenes}")
        return o.scene
    if len(scenes) > 1 and o.data is None:
        raise ReplayError(
            f"{o.artifact} serves {len(scenes)} scenes {scenes}: pass --scene (the scene the bag was recorded in) "
            "or --data DATASET, so the scene the node picks can be scored"
        )
    return scenes[0] if len(scenes) == 1 else ""


def truth_lookup(o: ReplayOptions, plan: BagPlan, bag_scene: str = "") -> Truth:
    """stamp_ns -> (T_world_cam, scene), from the bag's gt topic (every frame in scene ``bag_scene``,
    see :func:`truth_scene`) or the dataset of ``o.data`` (the frame's own scene)."""
    if o.data is not None:
        from ..data.layout import Dataset

        by_stamp = {f.stamp_ns: (f.T_world_cam, f) for f in Dataset(o.data).frames()}

        def from_data(stamp: int) -> tuple[np.ndarray | None, str]:
            hit = by_stamp.get(int(stamp))
            return (hit[0], hit[1].scene) if hit else (None, "")

        return from_data

    def from_bag(stamp: int) -> tuple[np.ndarray | None, str]:
        T, valid = interpolate_poses(
            plan.gt_stamps_ns, plan.T_map_base_gt, np.array([stamp], dtype=np.int64), max_gap_ns=GT_MAX_GAP_NS
        )
        return (T[0] @ plan.T_base_cam, bag_scene) if valid[0] else (None, "")

    return from_bag
