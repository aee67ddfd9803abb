"""Helpers of the ROS tests: a small TRAINED APR artifact (cached) and a test harness around a real
rclpy executor (the node under test plus a probe node that publishes inputs and records outputs).

The artifact is a PoseNet (MobileNetV2 with its ImageNet weights, 64x48 input) trained for 15 epochs
on test/apr_tiny.py's sliding-window scene (~25 s on one core). It is cached under
``$XDG_CACHE_HOME/visloc/test-artifacts/<key>-t<threads>-s<seed>``, the key hashing the training config and
the source files of the trainer and model, so a change of either retrains it; one per thread count and seed. ``trained_two_scene_artifact()``
is the same for a small multi-scene model (MVL-Loc) on apr_tiny's two scenes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from apr_tiny import H, W, image_at, make_tiny_dataset, make_two_scene_dataset, pose_at, scene_pose_at, scene_texture
from bounds import seed, threads

from visloc_core.geometry import PinholeCamera

REPO = Path(__file__).resolve().parents[1]

TINY_TRAIN_CFG = {
    "model": {"name": "posenet", "backbone": "mobilenet_v2", "pretrained": True, "feature_dim": 128, "dropout": 0.0},
    "data": {
        "image_width": 64,
        "image_height": 48,
        "batch_size": 8,
        "val_fraction": 0.2,
        "val_block": 4,
        "augment": {
            "crop": "center",
            "scale_jitter": 0.0,
            "brightness": 0.0,
            "contrast": 0.0,
            "saturation": 0.0,
            "hue": 0.0,
        },
    },
    "train": {"epochs": 15, "lr": 1.0e-3, "progress_bar": False, "seed": seed()},
    # no precision class: these tests check the plumbing / the regression and its calibration on a
    # toy model whose errors are decimetres; the LOCALIZED-only-within-the-class rule is tested in
    # test/test_apr_decision.py
    "decision": {"accuracy_m": None, "accuracy_deg": None},
}
TINY_N_TRAIN = 40
TINY_CAMERA = PinholeCamera(W, H, 50.0, 50.0, (W - 1) / 2, (H - 1) / 2)


# A small MVL-Loc on apr_tiny's two scenes ('astro', 'coffee'; 12 frames each): the multi-scene node
# and replay tests, which check the node against the localizer's own output, so the model only has to
# tell the two photographs apart (and stay within 1 m of each scene's truth: the scenes are 8.7 m
# apart). Cheap: the pretrained backbone is frozen (only the fusion, classifier and heads learn, ~24
# steps); loss weights start balanced (alpha = beta = 0): in so few steps the paper's -4 / -2 would
# barely move. Sweep (seeds 0-2 x 1/2 threads): scene of every held-out view right, see STATUS.md.
TWO_SCENE_TRAIN_CFG = {
    "model": {
        "name": "mvl_loc",
        "backbone": "mobilenet_v2",
        "pretrained": True,
        "d_model": 64,
        "heads": 4,
        "layers": 2,
        "ff_dim": 128,
        "embed_dim": 64,
        "head_hidden": [64],
        "dropout": 0.0,
    },
    "loss": {"name": "log_quat_l1", "alpha": 0.0, "beta": 0.0},
    "data": TINY_TRAIN_CFG["data"],
    "train": {
        "epochs": 8,
        "lr": 1.0e-3,
        "progress_bar": False,
        "seed": seed(),
        "stages": [{"name": "heads", "epochs": 8, "freeze": ["backbone."]}],
    },
    "decision": TINY_TRAIN_CFG["decision"],  # no precision class: plumbing tests (see TINY_TRAIN_CFG)
}
TWO_SCENE_N_TRAIN = 12


def _source_key(
    cfg: dict = TINY_TRAIN_CFG, n_train: int = TINY_N_TRAIN, model_files: tuple[str, ...] = ("posenet.py",)
) -> str:
    # the seed is in the config; the thread count too: a suite run with 1 thread uses a model trained with 1
    h = hashlib.sha256(repr(cfg).encode() + str(n_train).encode() + f"threads={threads()}".encode())
    # The files that define what this artifact computes (not the whole trainer: other engineers'
    # unrelated edits must not force a retrain in every session); a stale artifact that no longer
    # loads is retrained by trained_tiny_artifact().
    models = tuple(f"models/apr/{f}" for f in model_files)
    for sub in (*models, "models/backbones.py", "models/apr/artifact.py", "localizers/apr.py"):
        h.update((REPO / "visloc_core" / sub).read_bytes())
    h.update((REPO / "test" / "apr_tiny.py").read_bytes())
    return h.hexdigest()[:16]


def trained_tiny_artifact() -> Path:
    """Path of the cached trained tiny APR artifact (trains it on a cache miss)."""
    return _cached_artifact(f"apr-tiny-{_source_key()}", TINY_TRAIN_CFG, lambda d: make_tiny_dataset(d, TINY_N_TRAIN))


def trained_two_scene_artifact() -> Path:
    """Path of the cached small multi-scene (MVL-Loc) artifact of scenes 'astro' and 'coffee'."""
    key = _source_key(TWO_SCENE_TRAIN_CFG, TWO_SCENE_N_TRAIN, ("mvl_loc.py", "paper_layers.py", "text_encoders.py"))
    return _cached_artifact(
        f"apr-two-scenes-{key}", TWO_SCENE_TRAIN_CFG, lambda d: make_two_scene_dataset(d, TWO_SCENE_N_TRAIN)
    )


def _cached_artifact(name: str, cfg: dict, make_data: Callable[[Path], Path]) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visloc" / "test-artifacts"
    # one artifact per thread count and seed: make test's 2-thread pass trains its own, so a test that only
    # holds for a model trained with 1 thread fails there (test_ros_node's covariance check did, unseen)
    out = cache / f"{name}-t{threads()}-s{seed()}"
    if (out / "artifact.json").is_file():
        try:
            from visloc_core.localizers.loading import load_localizer

            load_localizer(out)
            return out
        except Exception:  # written by an older trainer: train again
            shutil.rmtree(out, ignore_errors=True)
    from visloc_core.training.apr import train
    from visloc_core.training.options import TrainOptions

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cache))
    try:
        make_data(work / "data")
        art = train(cfg, work / "data", work / "artifact", TrainOptions(work_dir=work / "train"))
        with contextlib.suppress(OSError):  # another session won the race: use theirs
            art.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def blocking_localizer(node, timeout_s: float = 120.0) -> threading.Event:
    """Make ``node``'s localizer wait for the returned event before each localization: a slow model, as a
    test double of TIMING only (the node, its worker and DDS stay real)."""
    release = threading.Event()
    real = node.localizer.localize

    def blocked(image, camera, stamp_ns, prior=None):
        release.wait(timeout_s)
        return real(image, camera, stamp_ns, prior)

    node.localizer.localize = blocked
    return release


def mean_pose_error(T_gt) -> float:
    """Median position error of always answering the mean position of these true poses: the reference of a
    model that learned nothing."""
    gt = np.stack(T_gt)[:, :3, 3]
    return float(np.median(np.linalg.norm(gt - gt.mean(axis=0), axis=1)))


def tiny_texture() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (384, 192), interpolation=cv2.INTER_AREA)


def tiny_frames(s_values, scene: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image RGB (48, 64, 3), true T_world_cam) at path parameters ``s_values`` of apr_tiny's scene
    (or of one of its two scenes, 'astro' or 'coffee')."""
    if scene is not None:
        tex = scene_texture(scene)
        return [(image_at(float(s), tex), scene_pose_at(scene, float(s))) for s in s_values]
    tex = tiny_texture()
    return [(image_at(float(s), tex), pose_at(float(s))) for s in s_values]


class Probe:
    """A real rclpy node that publishes the node's inputs and records every output message.

    ``records[topic]`` lists the messages received (in arrival order); ``arrivals[topic]`` the
    perf_counter times. Spins, together with any other node passed to ``start``, in a background
    MultiThreadedExecutor.
    """

    def __init__(self, name: str = "visloc_test_probe", compressed: bool = False) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rclpy.qos import DurabilityPolicy, QoSProfile
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_srvs.srv import Trigger
        from tf2_msgs.msg import TFMessage
        from visloc_ros.msg import LocalizationResult

        self.node = rclpy.create_node(name)
        self.records: dict[str, list] = defaultdict(list)
        self.arrivals: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        n = self.node
        self.image_pub = (
            n.create_publisher(CompressedImage, "image/compressed", 10)
            if compressed
            else n.create_publisher(Image, "image", 10)
        )
        self.info_pub = n.create_publisher(CameraInfo, "camera_info", 10)
        self.initialpose_pub = n.create_publisher(PoseWithCovarianceStamped, "initialpose", 10)
        self.odom_pub = n.create_publisher(Odometry, "odom", 50)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for topic, typ, qos in (
            ("pose", PoseStamped, 10),
            ("pose_with_covariance", PoseWithCovarianceStamped, latched),
            ("localization", LocalizationResult, 100),
            ("/tf", TFMessage, 100),
            ("/diagnostics", DiagnosticArray, 10),
        ):
            n.create_subscription(typ, topic, self._recorder(topic), qos)
        self.relocalize = n.create_client(Trigger, "relocalize")
        self._executor = None
        self._thread = None

    def _recorder(self, topic: str) -> Callable:
        def cb(msg) -> None:
            with self._lock:
                self.records[topic].append(msg)
                self.arrivals[topic].append(time.perf_counter())

        return cb

    def start(self, *other_nodes) -> Probe:
        from rclpy.executors import MultiThreadedExecutor

        self._executor = MultiThreadedExecutor(num_threads=2)
        self._executor.add_node(self.node)
        for o in other_nodes:
            self._executor.add_node(o)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=2.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.node.destroy_node()

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.records[topic])

    def get(self, topic: str) -> list:
        with self._lock:
            return list(self.records[topic])

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
        """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout_s`` (not a timing assertion:
        a generous bound so that a broken pipeline fails instead of hanging)."""
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def wait_connected(self, *publishers, timeout_s: float = 20.0) -> None:
        pubs = publishers or (self.image_pub, self.info_pub)
        self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs), timeout_s, "subscriptions to match")

    def last_diagnostics(self) -> dict[str, str]:
        msgs = self.get("/diagnostics")
        if not msgs:
            return {}
        return {kv.key: kv.value for kv in msgs[-1].status[0].values}

    def fresh_diagnostics(self, timeout_s: float = 20.0) -> dict[str, str]:
        """The values of the first /diagnostics message the node stamped after this call: its counters
        include everything it handled before (the last one received may predate the latest input)."""
        from visloc_core.data.messages import stamp_ns

        t_call = time.time_ns()  # the node stamps /diagnostics with its clock: system time (no sim time here)

        def newer() -> bool:
            msgs = self.get("/diagnostics")
            return bool(msgs) and stamp_ns(msgs[-1].header) > t_call

        self.wait_for(newer, timeout_s, "a /diagnostics message stamped after the request")
        return self.last_diagnostics()

    def publish_frame(self, msg, camera_info=None, wait_topic: str | None = "localization", timeout_s: float = 20.0):
        """Publish (camera_info and) an image; with ``wait_topic``, wait until one more message arrives there."""
        before = self.count(wait_topic) if wait_topic else 0
        if camera_info is not None:
            self.info_pub.publish(camera_info)
        self.image_pub.publish(msg)
        if wait_topic:
            self.wait_for(lambda: self.count(wait_topic) > before, timeout_s, f"a message on {wait_topic}")


class NodeSessions:
    """Factory of (LocalizerNode, Probe) pairs for one test: each node is built with ``defaults``
    updated by the call's parameters, configured and activated, its probe connected and the tiny
    camera's camera_info delivered (frame 'cam_opt'); :meth:`close` tears every pair down."""

    def __init__(self, **defaults) -> None:
        self.defaults = defaults
        self.made: list[tuple] = []

    def __call__(self, **params) -> tuple:
        import rclpy

        from visloc_ros import conversions as conv
        from visloc_ros.localizer_node import LocalizerNode

        overrides = {**self.defaults, **params}
        node = LocalizerNode(parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in overrides.items()])
        probe = Probe()
        self.made.append((node, probe))
        assert node.autostart(), "configure/activate failed"
        probe.start(node)
        probe.wait_connected()
        probe.info_pub.publish(conv.camera_to_camera_info(TINY_CAMERA, 0, "cam_opt"))
        probe.wait_for(lambda: node._camera is not None, what="camera_info at the node")
        return node, probe

    def close(self) -> None:
        for node, probe in self.made:
            node.stop()
            probe.stop()
            node.destroy_node()


def _mounts():
    from visloc_core.geometry import R_from_rotvec, T_from_R_t

    mount = T_from_R_t(R_from_rotvec(np.array([0.0, 0.1, 0.05])), np.array([0.25, -0.05, 0.6]))
    drift = T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.3])), np.array([0.4, -0.2, 0.0]))
    return mount, drift


def write_tiny_bag(
    path: Path,
    s_values,
    t0_ns: int = 1_000_000_000_000,
    period_ns: int = 100_000_000,
    storage: str = "sqlite3",
    compressed: bool = False,
    scene: str | list[str] | None = None,
) -> tuple[Path, list[int], list[np.ndarray]]:
    """A real rosbag2 of apr_tiny's scene (or of its two-scene variant's ``scene``, or one scene per
    frame when ``scene`` is a list) seen from a robot:
    camera at ``s_values``, /ground_truth/pose (T_map_base), /odom at twice the camera rate with a
    constant map->odom drift, /tf, /tf_static.
    Returns (bag path, image stamps, true T_world_cam of the optical frame per image)."""
    from visloc_core.data.bags.write import SequenceBagWriter
    from visloc_core.geometry import ROS_OPTICAL_TO_BODY, interpolate_poses, invert_T

    mount, drift = _mounts()
    T_base_cam = mount @ ROS_OPTICAL_TO_BODY
    scenes = scene if isinstance(scene, list) else [scene] * len(s_values)
    frames = [tiny_frames([s], sc)[0] for s, sc in zip(s_values, scenes, strict=True)]
    stamps = [t0_ns + i * period_ns for i in range(len(s_values))]
    T_world_cam = [T for _, T in frames]
    T_map_base = np.stack([T @ invert_T(T_base_cam) for T in T_world_cam])
    odom_stamps = np.arange(stamps[0], stamps[-1] + 1, period_ns // 2, dtype=np.int64)
    T_mb_odom, _ = interpolate_poses(np.array(stamps, dtype=np.int64), T_map_base, odom_stamps)
    T_odom_base = np.stack([invert_T(drift) @ T for T in T_mb_odom])
    w = SequenceBagWriter(path, TINY_CAMERA, mount, storage=storage, compressed=compressed)
    try:
        w.set_odometry(odom_stamps, T_odom_base, np.broadcast_to(drift, T_odom_base.shape))
        for stamp, (img, _), Tmb in zip(stamps, frames, T_map_base, strict=True):
            w.write_frame(stamp, img, Tmb)
        w.close()
    except BaseException:
        w.abort()
        raise
    return Path(path), stamps, T_world_cam


def ros_src_skip_reason(*modules: str) -> str | None:
    """Why a test of ROS 2 pieces that PyPI lacks cannot run here (None when ``modules`` import).

    scripts/build_ros.sh installs launch, launch_ros, ros2cli and tf2 from the official sources in
    ros-src when ROS 2 does not provide them; without either, these tests skip with this reason."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not installed: no ROS 2 install provides it and scripts/build_ros.sh found no "
        "ros-src (set VISLOC_ROS_SRC or put shared/ros-src next to the repository, then `make build`; README, "
        "'Tests that need ROS 2 sources')"
    )
