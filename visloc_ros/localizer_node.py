"""The visloc localizer: a ROS 2 lifecycle node around ``visloc_core.localizers.load_localizer``.

Lifecycle: ``configure`` loads the artifact (parameter ``model``) and creates publishers and the
camera_info / initialpose / odom subscriptions; ``activate`` subscribes to the image and starts the
worker thread; ``deactivate`` stops both; ``cleanup`` frees the model. With ``autostart:=true``
(or ``python -m visloc_ros.localizer_node --ros-args -p model:=ARTIFACT -p autostart:=true``) the
node configures and activates itself; launch/localize.launch.py drives the transitions instead.

Topics (relative names; remap them):
  in   image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage, compressed:=true),
       camera_info (sensor_msgs/CameraInfo), initialpose (geometry_msgs/PoseWithCovarianceStamped, a
       prior of the BASE frame in the map), odom (nav_msgs/Odometry, when odom_frame is set)
  out  pose (geometry_msgs/PoseStamped), pose_with_covariance (PoseWithCovarianceStamped, transient
       local, depth 1), localization (visloc_ros/LocalizationResult: every attempt, with status and
       reason), /tf, /diagnostics
  srv  relocalize (std_srvs/Trigger): forget the gate's reference, the prior and the localizer's
       temporal state; the next frame is localized globally.

Every output is stamped with the image's stamp and expressed in the map frame of the scene the
localizer picked (``LocalizationResult.scene``): ``map_frame``, which may contain ``{scene}``
(``map_{scene}``), or the frame ``scene_frames`` names for it (visloc_ros/scene_frames.py), so one
multi-scene artifact serves several scenes. Only results that are LOCALIZED and pass the sanity gate
(visloc_core/localizers/gate.py; a change of scene counts as a jump) reach ``pose``,
``pose_with_covariance`` and TF; REJECTED and NOT_LOCALIZED results go only to ``localization``.

Frames: the pose published is that of ``base_frame`` (``T_map_base = T_map_cam @ inv(T_base_cam)``,
with T_base_cam from TF when tf2_ros is installed and ``use_tf_extrinsic`` (frames wait for it, as
AMCL's scans wait for the laser's TF), else from the ``base_to_camera_*`` parameters), or of the
camera when ``base_frame`` is empty. TF (REP-105): with ``odom_frame`` set, map->odom =
T_map_base(t) @ inv(T_odom_base(t)) at the image stamp t, T_odom_base interpolated by tf2 when TF
connects odom to base, else from buffered odometry of the odom topic, post-dated by
``transform_tolerance``; otherwise map->base (or map->camera) at the image stamp.
visloc_ros/tf_io.py holds the TF side (tf2_ros, or a TFMessage publisher without it).

Parameters are read at ``configure`` (nav2 style); to change one, deactivate, cleanup, set it, configure.

Newest-frame policy: the image callback only drops the message into a one-slot mailbox; a worker
thread localizes whatever is newest (visloc_ros/frame_worker.py: never two workers; deactivate
waits at most ``transition_timeout_s`` for a frame in flight). A frame replaced before the worker
took it counts as dropped.

Input checks (docs/ros_node.md): every message is decoded by visloc_core.data.messages (the same
decoder as from-bag); images above ``max_image_pixels`` are refused from their header, before
decoding; blank, noise and tiny images are REJECTED with the reason (localizers/query_checks.py);
odometry stamped far from the image clock is ignored (localizers/input_clock.py). Every refused
input is counted as bad_input by reason in /diagnostics, whose level is judged over the last
``diagnostics_window_s`` seconds (visloc_ros/node_health.py).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger

from visloc_core.data import messages as rosmsg
from visloc_core.data.messages import MalformedMessageError
from visloc_core.geometry import PinholeCamera, T_from_position_quat_wxyz, invert_T, quat_xyzw_to_wxyz
from visloc_core.localizers.base import LocalizationResult, Localizer, Status
from visloc_core.localizers.gate import GateConfig, SanityGate
from visloc_core.localizers.input_clock import ImageClock
from visloc_core.localizers.query_checks import query_image_problem
from visloc_core.localizers.tf_logic import PoseBuffer, T_map_odom_from, pose_in_output_frame
from visloc_ros import conversions as conv
from visloc_ros.frame_worker import FrameWorker, WorkerBusyError
from visloc_ros.node_health import ProblemLog, judge
from visloc_ros.scene_frames import SceneFrames
from visloc_ros.tf_io import NodeTf, TfUnavailableError
from visloc_ros.visualization import Visualizer

NODE_NAME = "visloc_localizer"

# name -> (default, description). Types follow the defaults. config/localize.yaml and
# launch/localize.launch.py must use these names (test/test_ros_launch.py checks it).
PARAMETERS: dict[str, tuple[object, str]] = {
    "model": ("", "artifact folder to load at configure (visloc train / visloc map build output)"),
    "device": ("cpu", "torch device of the localizer: cpu, cuda, cuda:1"),
    "method": ("", "expected localizer kind of the artifact (apr, relpose); empty accepts the artifact's kind"),
    "compressed": (False, "subscribe to image/compressed (sensor_msgs/CompressedImage, jpeg/png) instead of image"),
    "image_qos": (
        "reliable",
        "QoS of the image subscription: reliable (default: delivers large raw images; needs a reliable publisher), "
        "sensor_data (best effort: for best-effort cameras; large raw images may never arrive), or system_default",
    ),
    "image_qos_depth": (1, "history depth of the image subscription (the node processes only the newest)"),
    "max_image_pixels": (
        rosmsg.DEFAULT_MAX_PIXELS,
        "images with more pixels are refused from their header, before decoding (decompression bombs)",
    ),
    "map_frame": (
        "map",
        "frame_id of every output (the frame of the artifact's world); may contain {scene}, replaced by the "
        "scene the localizer picked (multi-scene artifacts: map_{scene})",
    ),
    "scene_frames": (
        "",
        "multi-scene artifacts: comma-separated scene=frame pairs giving a scene's output frame "
        "(e.g. 'indoor_room=map,plaza=plaza_map'); scenes not named follow map_frame",
    ),
    "odom_frame": ("", "odometry frame; when set, TF publishes map->odom (REP-105) from the odom topic or tf2"),
    "base_frame": ("base_link", "robot frame whose pose is published; empty = publish the camera's pose"),
    "camera_frame": ("", "camera optical frame; empty = the image header's frame_id"),
    "publish_tf": (True, "publish map->odom (odom_frame set) or map->base_frame (or map->camera) on /tf"),
    "transform_tolerance": (0.1, "seconds added to the stamp of map->odom (post-dating, as nav2 AMCL)"),
    "base_to_camera_translation": (
        [0.0, 0.0, 0.0],
        "T_base_cam translation (x, y, z) in metres: camera optical frame origin in base_frame",
    ),
    "base_to_camera_rotation_xyzw": (
        [-0.5, 0.5, -0.5, 0.5],
        "T_base_cam rotation quaternion (x, y, z, w) of the camera OPTICAL frame in base_frame; "
        "default: optical axes of a camera looking along base x (REP-103)",
    ),
    "use_tf_extrinsic": (
        True,
        "when tf2_ros is installed, the camera extrinsic is base_frame->camera frame from TF (/tf_static), and frames "
        "are skipped until it is there; false (or no tf2_ros): the base_to_camera_* parameters",
    ),
    "max_jump_m": (1.0, "sanity gate: reject a pose further than this (m) from the last accepted one; <= 0 off"),
    "max_jump_deg": (30.0, "sanity gate: reject an orientation change above this (deg); <= 0 off"),
    "jump_window_s": (2.0, "sanity gate: the last accepted pose is a reference for this long (s); <= 0 off"),
    "jump_confirm_frames": (
        3,
        "sanity gate: this many consecutive jumps that agree with each other are accepted as the new pose; 0 never",
    ),
    "prior_timeout_s": (10.0, "an initialpose is used as the localizer's prior for this long (s); <= 0 forever"),
    "odom_buffer_s": (10.0, "seconds of odometry kept for interpolation at image stamps"),
    "odom_extrapolation_s": (0.05, "an image up to this much newer than the newest odometry uses that odometry"),
    "odom_max_offset_s": (
        10.0,
        "odometry stamped further than this (s) from the image clock is ignored and counted as bad input; <= 0 off",
    ),
    "semantic": (
        False,
        "subscribe to `semantic` (sensor_msgs/Image of class ids, mono8/16, same stamps as the images) and pass "
        "each frame's class map to localizers that use one (learned relpose with BiasNet)",
    ),
    "semantic_timeout_s": (0.1, "how long a frame waits for its class map (same stamp) before going without"),
    "diagnostics_period_s": (1.0, "period of /diagnostics messages (s)"),
    "publish_markers": (
        True,
        "publish visualization_msgs/MarkerArray: map_markers (keyframes or mapped region, latched) and markers "
        "(the estimate with its 95 % covariance ellipsoid) for RViz (config/visloc.rviz)",
    ),
    "publish_debug_image": (
        False,
        "publish debug_image (sensor_msgs/Image): the query next to the retrieved keyframe, status and inliers; "
        "off: no cost",
    ),
    "diagnostics_window_s": (
        10.0,
        "/diagnostics is WARN while bad input or errors happened within this many seconds, then OK again",
    ),
    "transition_timeout_s": (
        1.0,
        "deactivate waits this long (s) for a frame in flight (the rest finishes in the background, its result "
        "discarded); activate waits as long for it, then fails with the reason",
    ),
    "autostart": (False, "configure and activate at start-up (for runs without a launch file)"),
    "warmup": (True, "run the localizer once on a blank image at configure, so the first real frame is not slow"),
}

_MISSING = object()
NO_IMAGES_WARN_S = 5.0  # publishers on the image topic but nothing received for this long: WARN
_DIAG_LEVEL = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


@dataclasses.dataclass
class _Counters:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    localized: int = 0
    not_localized: int = 0
    rejected: int = 0
    bad_input: int = 0
    errors: int = 0
    received_by_topic: dict = dataclasses.field(default_factory=dict)  # input topic -> messages received
    bad_by_topic: dict = dataclasses.field(default_factory=dict)  # input topic -> messages refused (bad_input)
    tf_skipped: int = 0
    odom_ignored: int = 0
    semantic_missing: int = 0
    latency_sum_s: float = 0.0
    last_latency_s: float = float("nan")
    last_error: str = ""
    last_status_reason: str = ""


class LocalizerNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.localizer: Localizer | None = None
        self._param_cache: dict = {}
        self._lock = threading.Lock()
        self._counts = _Counters()
        self._prev_counts = (0, 0, time.monotonic())
        self._problems = ProblemLog(float(self.get_parameter("diagnostics_window_s").value))
        self._worker = FrameWorker(self._process_item, self._on_worker_error)
        self._last_frame_mono: float | None = None
        self._activated_mono = time.monotonic()
        self._active = False
        self._camera: PinholeCamera | None = None
        self._camera_error = "no camera_info received yet"
        self._camera_info_key: tuple | None = None
        self._prior: tuple[np.ndarray, float] | None = None  # (T_map_out, monotonic time received)
        self._T_base_cam_params = np.eye(4)  # set from the parameters at configure
        self._frames: SceneFrames | None = None  # scene -> output frame, set at configure
        self._reset_pending = threading.Event()
        self._gate = SanityGate()
        self._odom = PoseBuffer()
        self._image_clock = ImageClock()
        self._image_sub = None
        self._semantic_cv = threading.Condition()
        self._semantic_maps: dict[int, np.ndarray] = {}  # stamp_ns -> class ids (H, W), the newest few
        self._aux_subs: list = []
        self._pubs: dict = {}
        self._tf: NodeTf | None = None  # TF out (and in, with tf2_ros): visloc_ros/tf_io.py
        self._viz: Visualizer | None = None  # markers and debug image: visloc_ros/visualization.py
        self._srv = None
        # /diagnostics works in every lifecycle state (so an unconfigured node shows why).
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self._p("diagnostics_period_s")), self._publish_diagnostics)

    # ------------------------------------------------------------------------------- parameters

    def _p(self, name: str):
        # Parameters are read at configure (as nav2 nodes do): change them, then cleanup + configure.
        # The cache also keeps rclpy's parameter lookups off the per-frame path.
        cached = self._param_cache.get(name, _MISSING)
        return self.get_parameter(name).value if cached is _MISSING else cached

    def _T_base_cam_from_params(self) -> np.ndarray:
        t = np.asarray(self._p("base_to_camera_translation"), dtype=np.float64)
        q = np.asarray(self._p("base_to_camera_rotation_xyzw"), dtype=np.float64)
        if t.shape != (3,) or q.shape != (4,) or not np.all(np.isfinite(t)) or not np.all(np.isfinite(q)):
            raise ValueError(
                "base_to_camera_translation must be 3 finite numbers and base_to_camera_rotation_xyzw 4 finite "
                f"numbers (x, y, z, w); got {t.tolist()} and {q.tolist()}"
            )
        n = float(np.linalg.norm(q))
        if abs(n - 1.0) > 1e-3:
            raise ValueError(f"base_to_camera_rotation_xyzw must be a unit quaternion (x, y, z, w), norm is {n:.4f}")
        return T_from_position_quat_wxyz(t, quat_xyzw_to_wxyz(q / n))

    # -------------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._param_cache = {name: self.get_parameter(name).value for name in PARAMETERS}
        model = str(self._p("model"))
        if not model:
            self.get_logger().error(
                "parameter 'model' is empty: set it to an artifact folder (model:=/path/to/artifact)"
            )
            self._set_error("parameter 'model' is empty")
            return TransitionCallbackReturn.FAILURE
        try:
            self._T_base_cam_params = self._T_base_cam_from_params()
            if self._p("odom_frame") and not self._p("base_frame"):
                raise ValueError("odom_frame is set but base_frame is empty: map->odom needs the base frame")
            if self._p("image_qos") not in ("sensor_data", "reliable", "system_default"):
                raise ValueError(f"image_qos {self._p('image_qos')!r}: use sensor_data, reliable or system_default")
            from visloc_core.localizers.loading import artifact_scene_names, load_localizer, read_artifact_meta

            meta = read_artifact_meta(model)
            kind = meta["kind"]
            if self._p("method") and self._p("method") != kind:
                raise ValueError(f"artifact {model} holds a {kind!r} localizer but method is {self._p('method')!r}")
            scenes = artifact_scene_names(meta) or [""]
            self._frames = SceneFrames(str(self._p("map_frame")), str(self._p("scene_frames")), scenes)
            if self._frames.shared_frame_warning():
                self.get_logger().warning(self._frames.shared_frame_warning())
            t0 = time.perf_counter()
            self.localizer = load_localizer(Path(model), str(self._p("device")))
            self.get_logger().info(
                f"loaded {self.localizer.method} from {model} on {self._p('device')} in {time.perf_counter() - t0:.2f} s"
            )
            if self._p("warmup"):
                self._warmup(read_artifact_meta(model))
        except Exception as err:  # any failure to load leaves the node unconfigured, running
            why = str(err) or type(err).__name__
            self.get_logger().error(f"configure failed: {why}")
            self._set_error(f"configure failed: {why}")
            self.localizer = None
            return TransitionCallbackReturn.FAILURE
        self._gate = SanityGate(
            GateConfig(  # by name: the ROS parameters carry a jump_ prefix the fields do not
                max_jump_m=float(self._p("max_jump_m")),
                max_jump_deg=float(self._p("max_jump_deg")),
                window_s=float(self._p("jump_window_s")),
                confirm_frames=int(self._p("jump_confirm_frames")),
            )
        )
        self._odom = PoseBuffer(
            max_age_ns=int(float(self._p("odom_buffer_s")) * 1e9),
            extrapolation_ns=int(float(self._p("odom_extrapolation_s")) * 1e9),
        )
        self._image_clock = ImageClock(float(self._p("odom_max_offset_s")))
        self._problems.window_s = float(self._p("diagnostics_window_s"))
        latched = QoSProfile(
            depth=1,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
            reliability=ReliabilityPolicy.RELIABLE,
            history=HistoryPolicy.KEEP_LAST,
        )
        self._pubs = {
            "pose": self.create_lifecycle_publisher(PoseStamped, "pose", 10),
            "pose_cov": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "pose_with_covariance", latched),
            "localization": self.create_lifecycle_publisher(_result_msg_type(), "localization", 10),
        }
        self._setup_tf()
        if self._p("publish_markers") or self._p("publish_debug_image"):
            self._viz = Visualizer(
                self, self.localizer, self._frames.frame_for, self._p("publish_markers"), self._p("publish_debug_image")
            )
        self._aux_subs = [
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data),
            self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initialpose, 10),
        ]
        if self._p("odom_frame"):
            self._aux_subs.append(self.create_subscription(Odometry, "odom", self._on_odom, 50))
        if self._p("semantic"):
            if not self.localizer.uses_semantics:
                self.get_logger().warning(f"semantic is on but {self.localizer.method} does not use class maps")
            self._aux_subs.append(self.create_subscription(Image, "semantic", self._on_semantic, 10))
        elif self.localizer.uses_semantics:
            self.get_logger().warning(
                f"{self.localizer.method} uses class maps (BiasNet) but semantic is off: it runs without them"
            )
        self._srv = self.create_service(Trigger, "relocalize", self._on_relocalize)
        return super().on_configure(state)

    def _warmup(self, meta: dict) -> None:
        """One localization of a blank image of the artifact's input size (lazy initialisation of
        the model runtime happens here, not on the first camera frame); the result is discarded."""
        size = meta.get("image", {})
        w, h = int(size.get("width", 64)), int(size.get("height", 48))
        t0 = time.perf_counter()
        try:
            cam = PinholeCamera(w, h, float(w), float(w), (w - 1) / 2, (h - 1) / 2)
            self.localizer.localize(np.zeros((h, w, 3), np.uint8), cam, 0)
        except Exception as err:  # a localizer that cannot run on a blank image: skip, not fatal
            self.get_logger().info(f"warm-up skipped ({type(err).__name__}: {err})")
        finally:
            self.localizer.reset()
        self.get_logger().info(f"warm-up localization took {time.perf_counter() - t0:.2f} s")

    def _setup_tf(self) -> None:
        listen = bool(self._p("base_frame")) and bool(self._p("use_tf_extrinsic") or self._p("odom_frame"))
        self._tf = NodeTf(self, listen, buffer_s=float(self._p("odom_buffer_s")))
        if not self._tf.can_publish and self._p("publish_tf"):
            self.get_logger().warning(
                "publish_tf is on but neither tf2_ros nor tf2_msgs is importable: no /tf "
                "(run scripts/build_ros.sh, which builds the TFMessage fallback)"
            )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            # never two workers: a worker still finishing a frame from before deactivate is waited
            # for (transition_timeout_s), else activation fails and says why
            self._worker.start(float(self._p("transition_timeout_s")))
        except WorkerBusyError as err:
            self.get_logger().error(f"activate failed: {err}")
            self._problems.record("error", f"activate failed: {err}")
            return TransitionCallbackReturn.FAILURE
        depth = max(1, int(self._p("image_qos_depth")))
        if self._p("image_qos") == "sensor_data":
            qos = QoSProfile(
                depth=depth,
                reliability=ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.VOLATILE,
                history=HistoryPolicy.KEEP_LAST,
            )
        elif self._p("image_qos") == "reliable":
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        else:
            qos = QoSProfile(depth=depth)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_image_qos_incompatible)
        self._last_frame_mono = None
        self._activated_mono = time.monotonic()
        if self._p("compressed"):
            self._image_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, qos, event_callbacks=events
            )
        else:
            self._image_sub = self.create_subscription(Image, "image", self._on_image, qos, event_callbacks=events)
        self._active = True
        self.get_logger().info(
            f"active: localizing {self._image_sub.topic_name} ({self._p('image_qos')} QoS) "
            f"into {self._p('map_frame')}, output frame {self._p('base_frame') or 'camera'}"
        )
        return super().on_activate(state)

    def _on_image_qos_incompatible(self, event) -> None:
        policy = getattr(getattr(event, "last_policy_kind", None), "name", str(getattr(event, "last_policy_kind", "")))
        self.get_logger().warning(
            f"an image publisher's QoS is incompatible with image_qos={self._p('image_qos')} (policy {policy}): "
            "its images are never delivered; for a best-effort camera set image_qos:=sensor_data",
            throttle_duration_sec=5.0,
        )

    def _stop_processing(self) -> None:
        self._active = False
        if not self._worker.stop(float(self._p("transition_timeout_s"))):
            self.get_logger().warning(
                f"a frame is still being localized after {float(self._p('transition_timeout_s')):.1f} s: it finishes "
                "in the background and its result is discarded; the next activate waits for it"
            )
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return super().on_shutdown(state)

    def _release(self) -> None:
        self._param_cache = {}
        for sub in self._aux_subs:
            self.destroy_subscription(sub)
        self._aux_subs = []
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        if self._viz is not None:
            self._viz.close()
            self._viz = None
        if self._srv is not None:
            self.destroy_service(self._srv)
            self._srv = None
        self.localizer = None
        self._frames = None

    def autostart(self) -> bool:
        """configure + activate (what the launch file's lifecycle events do)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        """Stop the worker (call before destroy_node)."""
        self._stop_processing()

    # -------------------------------------------------------------------------------- callbacks

    def _on_image(self, msg) -> None:
        if not self._active:
            return
        now = time.monotonic()
        with self._lock:
            self._counts.received += 1
            self._count_received("image")
        self._last_frame_mono = now
        stamp = rosmsg.stamp_ns(msg.header)
        if stamp > 0:
            self._image_clock.observe(stamp)
        if self._worker.put((msg, time.perf_counter())):
            with self._lock:
                self._counts.dropped += 1

    def _count_received(self, topic: str) -> None:  # (holding self._lock)
        self._counts.received_by_topic[topic] = self._counts.received_by_topic.get(topic, 0) + 1

    def _on_semantic(self, msg: Image) -> None:
        with self._lock:
            self._count_received("semantic")
        stamp_ns = rosmsg.stamp_ns(msg.header)
        try:
            classes = rosmsg.class_ids(msg, int(self._p("max_image_pixels")))
        except MalformedMessageError as err:
            self._bad_input(f"class map dropped: {err} (stamp {stamp_ns} ns)", f"semantic: {err.reason}")
            return
        with self._semantic_cv:
            self._semantic_maps[stamp_ns] = classes
            while len(self._semantic_maps) > 30:  # bounded: a few seconds of camera frames
                del self._semantic_maps[min(self._semantic_maps)]
            self._semantic_cv.notify_all()

    def _semantic_for(self, stamp_ns: int) -> np.ndarray | None:
        """The class map with exactly this stamp, waiting up to semantic_timeout_s for it."""
        deadline = time.monotonic() + float(self._p("semantic_timeout_s"))
        with self._semantic_cv:
            while stamp_ns not in self._semantic_maps:
                left = deadline - time.monotonic()
                if left <= 0 or not self._worker.is_current():
                    return None
                self._semantic_cv.wait(left)
            return self._semantic_maps.pop(stamp_ns)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._count_received("camera_info")
        key = (msg.width, msg.height, tuple(msg.k), tuple(msg.d), msg.distortion_model, msg.binning_x,
               msg.binning_y, msg.roi.width, msg.roi.height)  # fmt: skip
        if key == self._camera_info_key and self._camera is not None:
            return  # unchanged: skip re-validation at camera rate
        try:
            cam = rosmsg.camera_from_info(msg)
        except MalformedMessageError as err:
            self._camera, self._camera_info_key = None, None
            self._camera_error = f"invalid camera_info: {err}"
            self._bad_input(self._camera_error, f"camera_info: {err.reason}")
            return
        self._camera, self._camera_info_key, self._camera_error = cam, key, ""

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        with self._lock:
            self._count_received("initialpose")
        frame = msg.header.frame_id
        frames = self._frames.frames if self._frames is not None else {self._p("map_frame")}
        if frame and frame not in frames:
            self._bad_input(
                f"initialpose in frame {frame!r} ignored: must be in {' or '.join(repr(f) for f in sorted(frames))}",
                "initialpose: wrong frame",
            )
            return
        try:
            T_map_out = rosmsg.T_from_pose(msg.pose.pose)
        except MalformedMessageError as err:
            self._bad_input(f"initialpose ignored: {err}", f"initialpose: {err.reason}")
            return
        self._prior = (T_map_out, time.monotonic())  # output frame; moved to the camera per frame
        self._reset_pending.set()  # a new hint of where we are: the gate's old reference is void
        self.get_logger().info(f"initialpose received: prior at {np.round(T_map_out[:3, 3], 2).tolist()} m")

    def _on_odom(self, msg: Odometry) -> None:
        with self._lock:
            self._count_received("odom")
        odom_frame, base_frame = self._p("odom_frame"), self._p("base_frame")
        if msg.header.frame_id and msg.header.frame_id != odom_frame:
            self._odom_ignored(
                f"odometry in frame {msg.header.frame_id!r} ignored: odom_frame is {odom_frame!r}", "wrong frame"
            )
            return
        if msg.child_frame_id and msg.child_frame_id != base_frame:
            self._odom_ignored(
                f"odometry of {msg.child_frame_id!r} ignored: base_frame is {base_frame!r}", "wrong child frame"
            )
            return
        try:
            stamp = rosmsg.checked_stamp_ns(msg.header, "odometry")
            T_odom_base = rosmsg.T_from_pose(msg.pose.pose)
        except MalformedMessageError as err:
            self._odom_ignored(f"odometry ignored: {err}", err.reason)
            return
        why = self._image_clock.implausible(stamp, "odometry")
        if why is not None:
            self._odom_ignored(why, "stamp far from the image clock")
            return
        note = self._odom.add(stamp, T_odom_base)
        if note is not None:
            self._odom_ignored(f"odometry {note}", note.split(":")[0])

    def _odom_ignored(self, what: str, reason: str) -> None:
        with self._lock:
            self._counts.odom_ignored += 1
        self._bad_input(what, f"odom: {reason}")

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.localizer is None:
            response.success, response.message = False, "not configured: no localizer loaded"
            return response
        self._prior = None
        self._odom.clear()  # refills at the odometry rate; drops anything a bad stamp left behind
        self._reset_pending.set()
        response.success = True
        response.message = (
            "gate, prior, odometry buffer and localizer state reset: the next frame is localized globally"
        )
        self.get_logger().info("relocalize: " + response.message)
        return response

    # ---------------------------------------------------------------------------------- worker

    def _process_item(self, item: tuple) -> None:
        msg, t_received = item
        self._process(msg, t_received)

    def _on_worker_error(self, err: BaseException) -> None:
        what = f"processing failed: {type(err).__name__}: {err}"
        with self._lock:
            self._counts.errors += 1
            self._counts.last_error = what
        self._problems.record("error", what)
        self.get_logger().error(what)

    def _T_base_cam(self, camera_frame: str) -> np.ndarray:
        """T_base_cam of the camera optical frame. From TF when tf2 is installed and use_tf_extrinsic is on
        (then required, as AMCL requires its laser's: raises TfUnavailableError until it is there; the newest,
        as for a static mount), else from the base_to_camera_* parameters."""
        if self._tf is not None and self._tf.listening and self._p("use_tf_extrinsic"):
            try:
                return self._tf.lookup(self._p("base_frame"), camera_frame)
            except TfUnavailableError as err:
                raise TfUnavailableError(
                    f"camera extrinsic not in TF ({err}); publish {self._p('base_frame')}->{camera_frame} on "
                    "/tf_static, or set use_tf_extrinsic:=false to use the base_to_camera_* parameters"
                ) from None
        return self._T_base_cam_params

    def _T_odom_base(self, stamp_ns: int) -> np.ndarray | None:
        """odom->base at the image stamp: from TF when TF connects odom to base (so map->odom composes with
        the odom->base that TF users see, REP-105), else from the odom topic; None when not covered.
        (Not "TF has the odom frame": our own map->odom puts it there.)"""
        odom_frame, base_frame = self._p("odom_frame"), self._p("base_frame")
        if self._tf is not None and self._tf.connected(odom_frame, base_frame):
            try:
                return self._tf.lookup_held(odom_frame, base_frame, stamp_ns, self._odom.extrapolation_ns)
            except TfUnavailableError:
                return None
        return self._odom.lookup(stamp_ns)

    def _process(self, msg, t_received: float) -> None:
        raw_stamp = rosmsg.stamp_ns(msg.header)
        try:
            stamp_ns = rosmsg.checked_stamp_ns(msg.header, "image")
            rgb = rosmsg.image_rgb8(msg, int(self._p("max_image_pixels")))
        except MalformedMessageError as err:
            self._bad_input(f"image dropped: {err} (stamp {raw_stamp} ns)", f"image: {err.reason}")
            return
        camera = self._camera
        if camera is None:
            self._bad_input(
                f"image dropped: {self._camera_error} on camera_info (stamp {stamp_ns} ns)",
                "image: no valid camera_info",
            )
            return
        h, w = rgb.shape[:2]
        if (camera.width, camera.height) != (w, h):
            self._bad_input(
                f"image dropped: image is {w}x{h} but camera_info says {camera.width}x{camera.height} "
                f"(stamp {stamp_ns} ns)",
                "image: size differs from camera_info",
            )
            return
        problem = query_image_problem(rgb)
        if problem is not None:
            # decoded, but nothing to localize from: REJECTED on `localization` (never a pose), counted as bad input
            self._bad_input(f"image rejected: {problem} (stamp {stamp_ns} ns)", f"image: {problem.split(' (')[0]}")
            if self._worker.is_current():
                rejected = LocalizationResult.not_localized(self.localizer.method, problem)
                rejected.status = Status.REJECTED
                self._pubs["localization"].publish(
                    conv.result_to_msg(
                        rejected, stamp_ns, self._p("map_frame"), latency_s=time.perf_counter() - t_received
                    )
                )
            return
        try:
            camera_frame = self._p("camera_frame") or msg.header.frame_id or "camera"
            T_base_cam = self._T_base_cam(camera_frame) if self._p("base_frame") else np.eye(4)
        except TfUnavailableError as err:
            self._bad_input(f"image dropped: {err} (stamp {stamp_ns} ns)", "image: camera extrinsic not in TF")
            return
        if self._reset_pending.is_set():
            self._reset_pending.clear()
            self._gate.reset()
            self.localizer.reset()
        prior = None
        if self._prior is not None:
            T_prior, t_prior = self._prior
            timeout = float(self._p("prior_timeout_s"))
            if timeout <= 0 or time.monotonic() - t_prior <= timeout:
                prior = T_prior @ T_base_cam
        kw = {}
        if self._p("semantic") and self.localizer.uses_semantics:
            classes = self._semantic_for(stamp_ns)
            if classes is not None and classes.shape != (h, w):
                self._bad_input(
                    f"class map at {stamp_ns} ns is {classes.shape[1]}x{classes.shape[0]}, image {w}x{h}",
                    "semantic: size differs from the image",
                )
                classes = None
            if classes is None:
                with self._lock:
                    self._counts.semantic_missing += 1
            else:
                kw["query_semantic_HW"] = classes
        result = self.localizer.localize(rgb, camera, stamp_ns, prior, **kw)
        result = self._gate.check(result, stamp_ns)
        latency_s = time.perf_counter() - t_received
        self._publish(result, camera_frame, T_base_cam, stamp_ns, latency_s, rgb)

    def _publish(
        self,
        result: LocalizationResult,
        camera_frame: str,
        T_base_cam: np.ndarray,
        stamp_ns: int,
        latency_s: float,
        rgb: np.ndarray,
    ) -> None:
        if not self._worker.is_current():
            return  # a worker finishing its frame after deactivate: the result is discarded
        map_frame = self._frames.frame_for(result.scene) if self._frames is not None else self._p("map_frame")
        base_frame = self._p("base_frame")
        T_cam_out = invert_T(T_base_cam)
        out_frame = base_frame or camera_frame
        T_map_out, cov_out = result.T_world_cam, result.covariance_66
        if np.all(np.isfinite(result.T_world_cam)):
            T_map_out, cov_out = pose_in_output_frame(result.T_world_cam, result.covariance_66, T_cam_out)
        stamp = conv.ns_to_stamp(stamp_ns)
        with self._lock:
            c = self._counts
            c.processed += 1
            c.latency_sum_s += latency_s
            c.last_latency_s = latency_s
            if result.status == Status.LOCALIZED:
                c.localized += 1
            elif result.status == Status.REJECTED:
                c.rejected += 1
                c.last_status_reason = result.status_reason
            else:
                c.not_localized += 1
                c.last_status_reason = result.status_reason
        self._pubs["localization"].publish(
            conv.result_to_msg(result, stamp_ns, map_frame, T_map_out, cov_out, latency_s)
        )
        if self._viz is not None:  # forward axis: base x (REP-103), or the optical z of a camera
            self._viz.publish(result, T_map_out, cov_out, stamp_ns, camera_frame, rgb, 0 if base_frame else 2)
        if result.status != Status.LOCALIZED:
            self.get_logger().info(f"{result.status.name} at {stamp_ns} ns: {result.status_reason}")
            return
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, map_frame
        pose.pose = conv.T_to_pose(T_map_out)
        self._pubs["pose"].publish(pose)
        pose_cov = PoseWithCovarianceStamped()
        pose_cov.header.stamp, pose_cov.header.frame_id = stamp, map_frame
        pose_cov.pose = conv.to_pose_with_covariance(T_map_out, cov_out)
        self._pubs["pose_cov"].publish(pose_cov)
        if self._p("publish_tf"):
            self._publish_tf(T_map_out, map_frame, out_frame, stamp_ns)

    def _publish_tf(self, T_map_out: np.ndarray, map_frame: str, out_frame: str, stamp_ns: int) -> None:
        odom_frame = self._p("odom_frame")
        if odom_frame:
            T_odom_base = self._T_odom_base(stamp_ns)
            if T_odom_base is None:
                with self._lock:
                    self._counts.tf_skipped += 1
                self.get_logger().warning(
                    f"no {odom_frame}->{out_frame} odometry at the image stamp {stamp_ns} ns: map->odom not published",
                    throttle_duration_sec=5.0,
                )
                return
            tolerance_ns = int(float(self._p("transform_tolerance")) * 1e9)
            tf = conv.transform_stamped(
                T_map_odom_from(T_map_out, T_odom_base), map_frame, odom_frame, stamp_ns + tolerance_ns
            )
        else:
            tf = conv.transform_stamped(T_map_out, map_frame, out_frame, stamp_ns)
        if self._tf is not None:
            self._tf.send([tf])

    # ----------------------------------------------------------------------------- diagnostics

    def _bad_input(self, what: str, reason: str) -> None:
        """Count one refused input; ``what`` is the line shown, ``reason`` its countable category,
        "TOPIC: category" (the topic's bad_input count is kept too)."""
        topic = reason.split(":", 1)[0]
        with self._lock:
            self._counts.bad_input += 1
            self._counts.bad_by_topic[topic] = self._counts.bad_by_topic.get(topic, 0) + 1
            self._counts.last_error = what
        self._problems.record("bad_input", what, reason)
        self.get_logger().warning(f"bad input: {what}", throttle_duration_sec=1.0)

    def _set_error(self, what: str) -> None:
        with self._lock:
            self._counts.last_error = what

    def counters(self) -> dict:
        """A snapshot of the frame counters (what /diagnostics reports)."""
        with self._lock:
            return dataclasses.asdict(self._counts)

    def _conditions(self, now: float) -> tuple[list[str], int]:
        """Standing problems (one line each) and the number of publishers on the image topic."""
        conditions = []
        lingering = self._worker.lingering_s()
        if lingering > 0:
            conditions.append(f"a frame from before deactivate is still being localized ({lingering:.1f} s)")
        n_pub = 0
        if self._active and self._image_sub is not None:
            topic = self._image_sub.topic_name
            pubs = self.get_publishers_info_by_topic(topic)
            n_pub = len(pubs)
            last = self._last_frame_mono if self._last_frame_mono is not None else self._activated_mono
            silent = now - last
            best_effort = sum(p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in pubs)
            if self._p("image_qos") == "reliable" and best_effort:
                conditions.append(
                    f"{best_effort} best-effort publisher(s) on {topic} cannot reach this reliable subscription "
                    "(incompatible QoS): set image_qos:=sensor_data for a best-effort camera"
                )
            elif n_pub > 0 and silent > NO_IMAGES_WARN_S:
                conditions.append(
                    f"{n_pub} publisher(s) on {topic} but no image received for {silent:.0f} s: a QoS mismatch, "
                    f"or images too large for best effort (image_qos={self._p('image_qos')}; try reliable)"
                )
        return conditions, n_pub

    def _publish_diagnostics(self) -> None:
        with self._lock:
            c = dataclasses.replace(self._counts)
            c.received_by_topic, c.bad_by_topic = dict(c.received_by_topic), dict(c.bad_by_topic)
        now = time.monotonic()
        prev_received, prev_processed, prev_t = self._prev_counts
        dt = max(now - prev_t, 1e-6)
        self._prev_counts = (c.received, c.processed, now)
        state = "active" if self._active else ("inactive" if self.localizer is not None else "unconfigured")
        conditions, n_pub = self._conditions(now)
        recent = self._problems.recent(now)
        last_t = self._problems.last_t
        level, message = judge(
            self.localizer is not None,
            state,
            c.last_error,
            recent,
            self._problems.last_text,
            None if last_t is None else now - last_t,
            conditions,
        )
        status = DiagnosticStatus()
        status.level = _DIAG_LEVEL[level]
        status.name = f"{self.get_name()}: localization"
        status.message = message
        status.hardware_id = str(self._p("model"))
        values = {
            "state": state,
            "method": self.localizer.method if self.localizer is not None else "",
            "frames_received": c.received,
            "frames_processed": c.processed,
            "frames_dropped": c.dropped,
            "frames_localized": c.localized,
            "frames_not_localized": c.not_localized,
            "frames_rejected": c.rejected,
            "bad_input": c.bad_input,
            "errors": c.errors,
            "bad_input_recent": recent.get("bad_input", 0),
            "errors_recent": recent.get("error", 0),
            "problems_by_reason": self._problems.reasons_text(),
            "received_by_topic": _kv(c.received_by_topic),
            "bad_input_by_topic": _kv(c.bad_by_topic),
            "tf_skipped": c.tf_skipped,
            "odom_ignored": c.odom_ignored,
            "semantic_missing": c.semantic_missing,
            "image_publishers": n_pub,
            "last_error": c.last_error,
            "last_status_reason": c.last_status_reason,
            "input_rate_hz": f"{(c.received - prev_received) / dt:.2f}",
            "processing_rate_hz": f"{(c.processed - prev_processed) / dt:.2f}",
            "mean_latency_ms": f"{1000 * c.latency_sum_s / c.processed:.2f}" if c.processed else "nan",
            "last_latency_ms": f"{1000 * c.last_latency_s:.2f}",
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diag_pub.publish(array)


def _kv(d: dict) -> str:
    """{'image': 3, 'odom': 1} -> 'image=3; odom=1' (a /diagnostics value)."""
    return "; ".join(f"{k}={v}" for k, v in sorted(d.items()))


def _result_msg_type():
    from visloc_ros.msg import LocalizationResult as LocalizationResultMsg

    return LocalizationResultMsg


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``localizer_node`` executable and of ``python -m visloc_ros.localizer_node``."""
    rclpy.init(args=args if args is not None else sys.argv)
    node = LocalizerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter("autostart").value and not node.autostart():
            node.get_logger().error("autostart failed (see above); the node stays up, unconfigured")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT / SIGTERM shut the context down (rclpy's handler) while a callback was running, e.g. the
        # diagnostics timer's graph query, which then fails with "rcl node's context is invalid": that
        # error is the shutdown itself, not a failure (test/test_signals.py). Anything else is raised.
        if node.context.ok():
            raise
    finally:
        # Ctrl-C in a terminal reaches the node twice (the process group and `ros2 launch` forwarding
        # it): a second SIGINT must not interrupt the clean-up (launch escalates to SIGTERM if stuck).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.stop()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
