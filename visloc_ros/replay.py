"""``visloc replay``: feed a rosbag2 recording through the REAL localizer node and score it.

This is the ROS half (node process, player, resource sampler); the bag plan, the truth and the
scoring are visloc_core/evaluation/replay_plan.py and replay_scoring.py. The CLI reaches
:func:`replay` through the ``visloc.runners`` entry point (pyproject.toml).

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
   The truth carries the scene of each frame: the dataset's (``--data``), ``--scene`` (the scene the
   bag was recorded in), or the artifact's only scene; a multi-scene artifact needs one of the first
   two. The scene the node picked (``LocalizationResult.scene``) is scored against it (report
   ``scene_classification``, per condition and per scene).
4. Scores the node's /localization results (status, pose, covariance) against the truth and writes
   the report of ``visloc eval`` (evaluation/report.py) with the replay numbers under
   ``meta.replay``: end-to-end latency (image published -> result / pose received), the node's own
   latency, dropped frames, the node's CPU (% of one core) and memory (RSS). A frame the node never
   answered counts as NOT_LOCALIZED (infinite error). Ctrl-C or SIGTERM stops the replay: the node is
   stopped, the report of the frames so far is written, marked partial, and the command exits 130 / 143.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from visloc_core.data.messages import stamp_ns
from visloc_core.evaluation.replay_plan import (
    BagPlan,
    ReplayError,
    ReplayOptions,
    open_bag,
    plan_bag,
    truth_lookup,
    truth_scene,
)
from visloc_core.evaluation.replay_scoring import method_of, score_replay
from visloc_core.geometry import quat_wxyz_from_R, quat_wxyz_to_xyzw
from visloc_core.interrupt import Interrupted, as_interrupted
from visloc_ros.conversions import msg_to_result

log = logging.getLogger(__name__)


def _stamp(header) -> int:
    return stamp_ns(header)


def _node_command(o: ReplayOptions, plan: BagPlan, params_file: Path) -> list[str]:
    remaps = {"image/compressed" if plan.image_type.endswith("CompressedImage") else "image": plan.image_topic}
    if plan.camera_info_topic:
        remaps["camera_info"] = plan.camera_info_topic
    if plan.odom_topic:
        remaps["odom"] = plan.odom_topic
    cmd = [sys.executable, "-m", "visloc_ros.localizer_node", "--ros-args", "--params-file", str(params_file)]
    for a, b in remaps.items():
        cmd += ["-r", f"{a}:={b}"]
    return cmd


def _node_params(o: ReplayOptions, plan: BagPlan) -> dict:
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

    def __init__(self, plan: BagPlan, type_of: dict[str, str]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
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
        # the node's own count of the messages it received per topic (its /diagnostics), the only
        # evidence that a message reached it: DDS matching is per side, so a publisher that sees the
        # node's subscription can still lose its first message under load
        self.node_received: dict[str, int] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        # the context shut down under it (e.g. by the program embedding replay): end quietly
        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def _on_result(self, msg) -> None:
        t = time.perf_counter()
        with self._cv:
            self.results[_stamp(msg.header)] = (msg, t)
            self._cv.notify_all()

    def _on_pose(self, msg) -> None:
        self.pose_arrivals[_stamp(msg.header)] = time.perf_counter()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name != "visloc_localizer: localization":  # the node replay started (its params file)
                continue
            for kv in status.values:
                if kv.key == "received_by_topic" and kv.value:
                    counts = dict(item.split("=", 1) for item in kv.value.split("; "))
                    with self._cv:
                        self.node_received = {k: int(v) for k, v in counts.items()}
                        self._cv.notify_all()

    def wait_node_received(self, topic: str, timeout_s: float) -> bool:
        """Wait until the node's /diagnostics count at least one message received on ``topic``."""
        with self._cv:
            return self._cv.wait_for(lambda: self.node_received.get(topic, 0) > 0, timeout_s)

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
    from rclpy.signals import SignalHandlerOptions

    from visloc_core.evaluation.report import write_report
    from visloc_core.localizers.loading import artifact_scene_names, check_artifact

    plan = plan_bag(o)  # the bag's and the options' problems first, then the artifact's
    params = _node_params(o, plan)
    # An artifact the node cannot load leaves it unconfigured: fail here (damaged files, format
    # version), not after the start-up timeout.
    meta = check_artifact(o.artifact)
    truth = truth_lookup(o, plan, truth_scene(o, artifact_scene_names(meta)))
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    params_file = Path(tempfile.mkstemp(prefix=".replay-node-", suffix=".yaml", dir=out)[1])
    params_file.write_text(yaml.safe_dump({"visloc_localizer": {"ros__parameters": params}}))
    publish_topics = [plan.image_topic, plan.camera_info_topic, "/tf", "/tf_static"]
    if plan.odom_topic:
        publish_topics.append(plan.odom_topic)

    started_rclpy = not rclpy.ok()
    if started_rclpy:
        # no rclpy signal handlers: SIGINT / SIGTERM raise visloc_core.interrupt's Interrupted in the main
        # thread, which writes the partial report and stops the node; rclpy's own handler would shut the
        # context down first, under the player's spinning thread (ExternalShutdownException)
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node_proc = NodeProcess(_node_command(o, plan, params_file), o.node_log or out / "node.log")
    sampler = None
    player = None
    published: dict[int, tuple[str, float]] = {}  # stamp -> (name, perf_counter at publish)
    partial = False
    interrupted = None
    t_start = time.perf_counter()
    try:
        with open_bag(o.bag) as reader:
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
            sampler = _ResourceSampler(node_proc.pid).start()
            try:
                _prime_camera_info(o, plan, reader, player, deserialize_message, t_end)
                _play(o, plan, reader, conns, player, published, deserialize_message)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (visloc_core.interrupt)
                interrupted = as_interrupted(exc)
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
    # the one decoder of LocalizationResult messages (pose of the node's base_frame, its latency)
    decoded = {stamp: (msg_to_result(msg)[0], t_recv) for stamp, (msg, t_recv) in results.items()}
    score = score_replay(truth, plan.T_base_cam, published, decoded, pose_arrivals, o.condition)
    replay_meta = {
        "bag": str(Path(o.bag).resolve()),
        "artifact": str(Path(o.artifact).resolve()),
        "image_topic": plan.image_topic,
        "mode": "lock-step (wait for each result)" if o.wait else f"bag rate x{o.rate:g}",
        **score.meta(),
        "node_resources": resources,
        "node_exit_code": rc,
        "wall_seconds": wall,
        "node_parameters": params,
        "ground_truth": str(o.data)
        if o.data
        else f"{o.gt_topic} ({o.gt_frame}) x /tf_static {o.gt_frame}->{plan.camera_frame}",
    }
    meta = {"command": "visloc replay", "method": method_of(decoded), "replay": replay_meta}
    report = write_report(score.outcomes, out, meta=meta, partial=partial)
    if interrupted is not None:  # the report is written: now stop as interrupted (exit 130 / 143 from the CLI)
        raise Interrupted(
            interrupted.signum, kept=f"the partial report of the {len(published)} frames published so far is in {out}"
        )
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
    finally:
        bar.close()


def _prime_camera_info(o, plan, reader, player, deserialize_message, t_end: float) -> None:
    """Publish the bag's first camera_info until the node says it received one (its /diagnostics).

    The node drops images that come before any camera_info; without this handshake the first image
    of a replay was lost whenever DDS matching was slow on the node's side (a loaded machine).
    Re-sent every 0.5 s: camera_info is best-effort on the node (sensor data QoS)."""
    info_pub = player.pubs.get(plan.camera_info_topic) if plan.camera_info_topic else None
    if info_pub is None:
        return
    conns = [c for c in reader.connections if c.topic == plan.camera_info_topic]
    first = next(iter(reader.messages(connections=conns)), None)
    if first is None:
        return
    msg = deserialize_message(bytes(first[2]), player.types[plan.camera_info_topic])
    while time.monotonic() < t_end:
        info_pub.publish(msg)
        if player.wait_node_received("camera_info", 0.5):
            return
    log.warning(
        "the node did not confirm a camera_info within the start-up timeout (%.0f s): its first images may be dropped",
        o.startup_timeout_s,
    )


def message_class(msgtype: str) -> type:
    """rclpy message class of a type name like ``sensor_msgs/msg/Image``."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
