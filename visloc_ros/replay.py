"""``visloc replay``: feed a rosbag2 recording through the REAL localizer node and score it.

1. Reads the bag with ``rosbags`` (sqlite3 or mcap): the camera topic (Image or CompressedImage),
   camera_info, odometry, /tf and /tf_static, and the ground truth (a PoseStamped /
   PoseWithCovarianceStamped / Odometry topic, by default /ground_truth/pose, carrying
   T_map_base), composed with the base->camera chain of /tf_static; or the poses of a visloc
   dataset (``--data``) matched by image stamp.
2. Starts the node as a subprocess (``python -m visloc_ros.localizer_node``, autostart) with the
   camera extrinsic of the bag (base_to_camera_* parameters) and map->odom when the bag has
   odometry, so its CPU and memory can be sampled with psutil.
3. Publishes the bag's messages over DDS from the raw CDR bytes (``rclpy.serialization.
   deserialize_message`` with rclpy's message classes), in bag order, either at the bag's rate
   (``rate`` x real time; the node drops frames it cannot keep up with, as on a robot) or in
   lock-step (``wait``: each image waits for the node's result, so none is dropped).
   The bag's own map->* transforms are not republished (the node is the map->odom source).
4. Scores the node's /localization results (status, pose, covariance) against the truth and writes
   the report of ``visloc eval`` (evaluation/report.py) with the replay numbers under
   ``meta.replay``: end-to-end latency (image published -> result / pose received), the node's own
   latency, dropped frames, the node's CPU (% of one core) and memory (RSS). A frame the node never
   answered counts as NOT_LOCALIZED (infinite error). Ctrl-C stops the replay and still writes the
   report of the frames so far, marked partial.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from visloc_core.data.messages import T_from_pose, T_from_transform, stamp_ns
from visloc_core.evaluation.records import FrameOutcome
from visloc_core.geometry import interpolate_poses, invert_T, quat_wxyz_from_R, quat_wxyz_to_xyzw
from visloc_ros.conversions import list_to_covariance

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
GT_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped", "nav_msgs/msg/Odometry")
STATUS_NAMES = {0: "LOCALIZED", 1: "NOT_LOCALIZED", 2: "REJECTED"}


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
class _BagPlan:
    image_topic: str
    image_type: str
    camera_info_topic: str | None
    odom_topic: str | None
    camera_frame: str
    T_base_cam: np.ndarray
    gt_stamps_ns: np.ndarray
    T_map_base_gt: np.ndarray
    n_images: int


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def static_chain(edges: dict[tuple[str, str], np.ndarray], a: str, b: str) -> np.ndarray | None:
    """T_a_b through a graph of static transforms ``{(parent, child): T_parent_child}`` (either
    direction), or None when a and b are not connected."""
    if a == b:
        return np.eye(4)
    adj: dict[str, list[tuple[str, np.ndarray]]] = {}
    for (p, c), T in edges.items():
        adj.setdefault(p, []).append((c, T))
        adj.setdefault(c, []).append((p, invert_T(T)))
    seen, frontier = {a}, [(a, np.eye(4))]
    while frontier:
        nxt = []
        for frame, T_a_f in frontier:
            for g, T_f_g in adj.get(frame, []):
                if g in seen:
                    continue
                if g == b:
                    return T_a_f @ T_f_g
                seen.add(g)
                nxt.append((g, T_a_f @ T_f_g))
        frontier = nxt
    return None


def _stamp(header) -> int:
    return stamp_ns(header)


def plan_bag(o: ReplayOptions) -> _BagPlan:
    """First pass over the bag: topics, the camera frame and extrinsic, the ground truth."""
    from rosbags.highlevel import AnyReader

    if not Path(o.bag).exists():
        raise FileNotFoundError(f"bag {o.bag} does not exist")
    if Path(o.bag).is_dir() and not (Path(o.bag) / "metadata.yaml").is_file():
        raise ReplayError(
            f"{o.bag} is not a rosbag2 folder (no metadata.yaml); give the folder `ros2 bag record` wrote"
        )
    with AnyReader([Path(o.bag)], default_typestore=_typestore()) as reader:
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
        static_edges: dict[tuple[str, str], np.ndarray] = {}
        camera_frame = ""
        n_images = 0
        gt: list[tuple[int, np.ndarray]] = []
        for conn, _, raw in reader.messages(connections=[by_topic[t] for t in wanted]):
            if conn.topic == image_topic:
                n_images += 1
                if not camera_frame:
                    camera_frame = str(reader.deserialize(raw, conn.msgtype).header.frame_id).lstrip("/")
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/tf_static":
                for tr in msg.transforms:
                    parent, child = str(tr.header.frame_id).lstrip("/"), str(tr.child_frame_id).lstrip("/")
                    static_edges[(parent, child)] = T_from_transform(tr.transform)
            else:
                pose = msg.pose.pose if conn.msgtype != "geometry_msgs/msg/PoseStamped" else msg.pose
                gt.append((_stamp(msg.header), T_from_pose(pose)))
    if n_images == 0:
        raise ReplayError(f"{image_topic} has no messages in {o.bag}")
    base = o.gt_frame
    T_base_cam = static_chain(static_edges, base, camera_frame) if camera_frame else None
    if T_base_cam is None:
        raise ReplayError(
            f"no /tf_static chain from {base!r} to the camera frame {camera_frame!r} in {o.bag}; "
            "record /tf_static or pass --gt-frame as the camera frame"
        )
    gt.sort(key=lambda x: x[0])
    stamps = np.array([s for s, _ in gt], dtype=np.int64)
    poses = np.stack([T for _, T in gt]) if gt else np.zeros((0, 4, 4))
    return _BagPlan(image_topic, image_type, info_topic, odom_topic, camera_frame, T_base_cam, stamps, poses, n_images)


def _node_command(o: ReplayOptions, plan: _BagPlan, params_file: Path) -> list[str]:
    remaps = {"image/compressed" if plan.image_type.endswith("CompressedImage") else "image": plan.image_topic}
    if plan.camera_info_topic:
        remaps["camera_info"] = plan.camera_info_topic
    if plan.odom_topic:
        remaps["odom"] = plan.odom_topic
    cmd = [sys.executable, "-m", "visloc_ros.localizer_node", "--ros-args", "--params-file", str(params_file)]
    for a, b in remaps.items():
        cmd += ["-r", f"{a}:={b}"]
    return cmd


def _node_params(o: ReplayOptions, plan: _BagPlan) -> dict:
    q_xyzw = quat_wxyz_to_xyzw(quat_wxyz_from_R(plan.T_base_cam[:3, :3]))
    params = {
        "model": str(Path(o.artifact).resolve()),
        "device": o.device,
        "autostart": True,
        "compressed": plan.image_type.endswith("CompressedImage"),
        "image_qos": "reliable" if o.wait else "sensor_data",
        "base_frame": o.gt_frame,
        "odom_frame": "odom" if plan.odom_topic else "",
        "base_to_camera_translation": [float(v) for v in plan.T_base_cam[:3, 3]],
        "base_to_camera_rotation_xyzw": [float(v) for v in q_xyzw],
        # the bag's /tf_static chain, given as parameters: no frame waits for /tf_static to arrive
        "use_tf_extrinsic": False,
        "diagnostics_period_s": 1.0,
    }
    from visloc_ros.localizer_node import PARAMETERS

    unknown = sorted(set(o.node_params) - set(PARAMETERS) - {"use_sim_time"})  # + the one every node has
    if unknown:  # the node would ignore an undeclared parameter without a word
        raise ReplayError(
            f"--param {', '.join(unknown)}: not a localizer node parameter; known: {', '.join(PARAMETERS)}"
        )
    params.update(o.node_params)
    return params


class _ResourceSampler:
    """Samples a process's CPU time and RSS every ``period_s`` in a thread (psutil)."""

    def __init__(self, pid: int, period_s: float = 0.25) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.period_s = period_s
        self.samples: list[tuple[float, float, int]] = []  # (wall s, cpu s, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            ct = self.proc.cpu_times()
            self.samples.append((time.perf_counter(), ct.user + ct.system, self.proc.memory_info().rss))
        except Exception:  # process gone
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    def start(self) -> _ResourceSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._sample()
        self._stop.set()
        self._thread.join(timeout=2.0)
        s = np.array(self.samples, dtype=np.float64)
        if len(s) < 2:
            return {}
        wall = s[-1, 0] - s[0, 0]
        return {
            "cpu_percent_of_one_core": float(100.0 * (s[-1, 1] - s[0, 1]) / max(wall, 1e-9)),
            "rss_mb_start": float(s[0, 2] / 2**20),
            "rss_mb_end": float(s[-1, 2] / 2**20),
            "rss_mb_max": float(s[:, 2].max() / 2**20),
            "rss_mb_median": float(np.median(s[:, 2]) / 2**20),
            "samples": len(s),
            "wall_seconds": float(wall),
        }


class NodeProcess:
    """The localizer node as a subprocess; ``stop()`` sends SIGINT (then SIGKILL after a grace period)."""

    def __init__(self, cmd: list[str], log_path: Path | None = None, env: dict | None = None) -> None:
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def configure_failure(self) -> str:
        """The node's 'configure failed: ...' log line, if it logged one (else '')."""
        if self._log is subprocess.DEVNULL:
            return ""
        self._log.flush()
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if "configure failed: " in line:
                return line.split("configure failed: ", 1)[1].strip()
        return ""

    def stop(self, grace_s: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return int(self.proc.returncode or 0)


class _Player:
    """The replaying rclpy node: publishers of the bag's topics, recorder of the localizer's outputs."""

    def __init__(self, plan: _BagPlan, type_of: dict[str, str]) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from visloc_ros.msg import LocalizationResult

        self.node = rclpy.create_node("visloc_replay")
        self.pubs: dict[str, object] = {}
        self.types: dict[str, type] = {}
        for topic, msgtype in type_of.items():
            cls = message_class(msgtype)
            self.types[topic] = cls
            if topic == "/tf_static":
                qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            elif topic == plan.image_topic:
                qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            else:
                qos = QoSProfile(depth=100)
            self.pubs[topic] = self.node.create_publisher(cls, topic, qos)
        self.results: dict[int, tuple[object, float]] = {}
        self.pose_arrivals: dict[int, float] = {}
        self._cv = threading.Condition()
        self.node.create_subscription(LocalizationResult, "localization", self._on_result, 100)
        self.node.create_subscription(PoseStamped, "pose", self._on_pose, 100)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_result(self, msg) -> None:
        t = time.perf_counter()
        with self._cv:
            self.results[_stamp(msg.header)] = (msg, t)
            self._cv.notify_all()

    def _on_pose(self, msg) -> None:
        self.pose_arrivals[_stamp(msg.header)] = time.perf_counter()

    def wait_result(self, stamp_ns: int, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: stamp_ns in self.results, timeout_s)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def replay(o: ReplayOptions) -> dict:
    """Run the replay; returns the report dict (also written to ``o.out``)."""
    import rclpy
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader

    from visloc_core.evaluation.report import write_report
    from visloc_core.localizers.loading import check_artifact

    plan = plan_bag(o)  # the bag's and the options' problems first, then the artifact's
    truth = _truth(o, plan)
    params = _node_params(o, plan)
    # An artifact the node cannot load leaves it unconfigured: fail here (damaged files, format
    # version), not after the start-up timeout.
    check_artifact(o.artifact)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    params_file = Path(tempfile.mkstemp(prefix=".replay-node-", suffix=".yaml", dir=out)[1])
    params_file.write_text(yaml.safe_dump({"visloc_localizer": {"ros__parameters": params}}))
    publish_topics = [plan.image_topic, plan.camera_info_topic, "/tf", "/tf_static"]
    if plan.odom_topic:
        publish_topics.append(plan.odom_topic)

    started_rclpy = not rclpy.ok()
    if started_rclpy:
        rclpy.init()
    node_proc = NodeProcess(_node_command(o, plan, params_file), o.node_log or out / "node.log")
    sampler = None
    player = None
    published: dict[int, tuple[str, float]] = {}  # stamp -> (name, perf_counter at publish)
    partial = False
    t_start = time.perf_counter()
    try:
        with AnyReader([Path(o.bag)], default_typestore=_typestore()) as reader:
            conns = [c for c in reader.connections if c.topic in publish_topics]
            type_of = {c.topic: c.msgtype for c in conns}
            player = _Player(plan, type_of)
            image_pub = player.pubs[plan.image_topic]
            t_end = time.monotonic() + o.startup_timeout_s
            while image_pub.get_subscription_count() == 0:  # the node subscribes at activate
                if not node_proc.alive():
                    raise RuntimeError(f"the localizer node exited during start-up; see {out / 'node.log'}")
                failed = node_proc.configure_failure()
                if failed:
                    raise ReplayError(f"the localizer node did not start: {failed}")
                if time.monotonic() > t_end:
                    raise TimeoutError(
                        f"the node did not activate within {o.startup_timeout_s} s; see {out / 'node.log'}"
                    )
                time.sleep(0.05)
            info_pub = player.pubs.get(plan.camera_info_topic)
            while info_pub is not None and info_pub.get_subscription_count() == 0 and time.monotonic() < t_end:
                time.sleep(0.05)
            sampler = _ResourceSampler(node_proc.pid).start()
            try:
                _play(o, plan, reader, conns, player, published, deserialize_message)
            except KeyboardInterrupt:
                partial = True
                log.warning("interrupted: scoring the %d frames published so far", len(published))
            # trailing results (rate mode): give the node time to answer the last frames
            if published:
                last = max(published)
                player.wait_result(last, 5.0 if not o.wait else 0.1)
            time.sleep(0.3)
    finally:
        resources = sampler.stop() if sampler else {}
        rc = node_proc.stop()
        if player is not None:
            results, pose_arrivals = dict(player.results), dict(player.pose_arrivals)
            player.close()
        else:
            results, pose_arrivals = {}, {}
        if started_rclpy:
            rclpy.try_shutdown()
        params_file.unlink(missing_ok=True)
    wall = time.perf_counter() - t_start
    outcomes, e2e_ms, e2e_pose_ms, node_ms = _score(o, plan, truth, published, results, pose_arrivals)
    n_answered = sum(1 for s in published if s in results)
    replay_meta = {
        "bag": str(Path(o.bag).resolve()),
        "artifact": str(Path(o.artifact).resolve()),
        "image_topic": plan.image_topic,
        "mode": "lock-step (wait for each result)" if o.wait else f"bag rate x{o.rate:g}",
        "frames_published": len(published),
        "frames_answered": n_answered,
        "frames_dropped_or_lost": len(published) - n_answered,
        "e2e_latency_ms": _stats(e2e_ms),
        "e2e_latency_pose_ms": _stats(e2e_pose_ms),
        "node_latency_ms": _stats(node_ms),
        "node_resources": resources,
        "node_exit_code": rc,
        "wall_seconds": wall,
        "node_parameters": params,
        "ground_truth": str(o.data)
        if o.data
        else f"{o.gt_topic} ({o.gt_frame}) x /tf_static {o.gt_frame}->{plan.camera_frame}",
    }
    meta = {"command": "visloc replay", "method": _method_of(results), "replay": replay_meta}
    report = write_report(outcomes, out, meta=meta, partial=partial)
    return report


def _play(o, plan, reader, conns, player, published, deserialize_message) -> None:
    from tqdm import tqdm

    t0_bag = None
    t0_wall = time.perf_counter()
    n = 0
    limit = o.max_frames or plan.n_images
    bar = tqdm(total=min(limit, plan.n_images), desc="replay", unit="frame", disable=None)
    try:
        for conn, t_log, raw in reader.messages(connections=conns):
            if t0_bag is None:
                t0_bag = t_log
            if not o.wait and o.rate > 0:  # keep the bag's timing (scaled)
                due = t0_wall + (t_log - t0_bag) * 1e-9 / o.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            msg = deserialize_message(bytes(raw), player.types[conn.topic])
            if conn.topic == "/tf":
                # the node is the map->* source: drop the bag's recorded map->odom (or map->base)
                msg.transforms = [t for t in msg.transforms if t.header.frame_id.lstrip("/") != "map"]
                if not msg.transforms:
                    continue
            if conn.topic == plan.image_topic:
                if n >= limit:
                    break
                stamp = _stamp(msg.header)
                published[stamp] = (f"{plan.image_topic.strip('/')}/{n:06d}", time.perf_counter())
                player.pubs[conn.topic].publish(msg)
                n += 1
                bar.update(1)
                if o.wait and not player.wait_result(stamp, o.result_timeout_s):
                    log.warning("no result for the image at %d ns within %.0f s", stamp, o.result_timeout_s)
            else:
                player.pubs[conn.topic].publish(msg)
                if conn.topic == plan.camera_info_topic and n == 0:
                    time.sleep(0.2)  # let the first camera_info reach the node before the first image
    finally:
        bar.close()


def _truth(o: ReplayOptions, plan: _BagPlan):
    """stamp_ns -> T_world_cam (a function), from the bag's gt topic or the dataset of --data."""
    if o.data is not None:
        from visloc_core.data.layout import Dataset

        by_stamp = {f.stamp_ns: (f.T_world_cam, f) for f in Dataset(o.data).frames()}

        def from_data(stamp_ns: int):
            hit = by_stamp.get(int(stamp_ns))
            return (hit[0], hit[1].scene) if hit else (None, "")

        return from_data

    def from_bag(stamp_ns: int):
        T, valid = interpolate_poses(
            plan.gt_stamps_ns, plan.T_map_base_gt, np.array([stamp_ns], dtype=np.int64), max_gap_ns=500_000_000
        )
        return (T[0] @ plan.T_base_cam, "") if valid[0] else (None, "")

    return from_bag


def _score(o, plan, truth, published, results, pose_arrivals):
    outcomes, e2e_ms, e2e_pose_ms, node_ms = [], [], [], []
    for stamp, (name, t_pub) in sorted(published.items()):
        T_gt, scene = truth(stamp)
        if T_gt is None:
            log.warning("no ground truth at %d ns (%s): frame skipped from the score", stamp, name)
            continue
        hit = results.get(stamp)
        extras: dict = {}
        if hit is None:
            status, T_est, cov, latency, method, conf = (
                "NOT_LOCALIZED",
                np.full((4, 4), np.nan),
                None,
                float("nan"),
                "",
                0.0,
            )
            extras["reason"] = "no result from the node (dropped by its newest-frame policy or lost)"
        else:
            msg, t_recv = hit
            status = STATUS_NAMES.get(int(msg.status), "NOT_LOCALIZED")
            latency = 1000.0 * (t_recv - t_pub)
            e2e_ms.append(latency)
            node_ms.append(1000.0 * (msg.latency.sec + msg.latency.nanosec * 1e-9))
            if stamp in pose_arrivals:
                e2e_pose_ms.append(1000.0 * (pose_arrivals[stamp] - t_pub))
            method, conf = msg.method, float(msg.confidence)
            scene = scene or msg.scene
            extras["status_reason"] = msg.status_reason
            extras["stage_seconds"] = dict(zip(msg.stage_names, msg.stage_seconds, strict=False))
            T_map_out = T_from_pose(msg.pose.pose) if status != "NOT_LOCALIZED" else np.full((4, 4), np.nan)
            # the node published its base_frame pose: back to the camera with the same extrinsic
            T_world_cam = T_map_out @ plan.T_base_cam
            cov = None
            if status == "LOCALIZED":
                T_est = T_world_cam
                C = list_to_covariance(msg.pose.covariance)
                if np.all(np.isfinite(C)):
                    from visloc_core.localizers.tf_logic import pose_in_output_frame

                    cov = pose_in_output_frame(T_map_out, C, plan.T_base_cam)[1]
            else:
                T_est = np.full((4, 4), np.nan)
                if status == "REJECTED" and np.all(np.isfinite(T_world_cam)):
                    extras["T_world_cam_rejected"] = T_world_cam
        outcomes.append(
            FrameOutcome(
                name=name,
                stamp_ns=int(stamp),
                T_world_cam_est=T_est,
                T_world_cam_gt=T_gt,
                status=status,
                latency_ms=latency,
                method=method,
                scene=scene,
                condition=o.condition,
                confidence=conf,
                covariance_66=cov,
                extras=extras,
            )
        )
    return outcomes, e2e_ms, e2e_pose_ms, node_ms


def _stats(x: list[float]) -> dict:
    if not x:
        return {"n": 0}
    a = np.asarray(x, dtype=np.float64)
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def _method_of(results: dict) -> str:
    for msg, _ in results.values():
        return str(msg.method)
    return ""


def message_class(msgtype: str) -> type:
    """rclpy message class of a type name like ``sensor_msgs/msg/Image``."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
