"""``visloc bench node``: the ROS 2 localizer node's overhead and memory, measured over real DDS.

(a) Latency: ``--latency-frames`` images (``--width`` x ``--height`` rgb8, crops of a real
    photograph) are published one at a time to the node (a subprocess started like ``visloc
    replay`` does, reliable image QoS) and each waits for its /localization result. End-to-end
    latency = result received - image published (perf_counter of this process). The same images
    go through ``localizer.localize`` in this process right after each node frame (the model's own
    time: preprocessing + inference + postprocessing, same thread count; paired, so both see the
    same machine load). ``ratio_e2e_over_localize`` =
    median e2e / median own time (target <= 1.10); ``ratio_node_internal_over_localize`` uses
    the node's own stamp-to-result latency (LocalizationResult.latency), which leaves out DDS;
    ``ratio_e2e_over_localize_in_node`` divides by the localizer's stage times inside the node
    process (LocalizationResult.stage_seconds) for the same frames, which removes the difference
    between two processes on a shared machine.
(b) Memory: ``--memory-frames`` (10 000) more frames, lock-step (or ``--flood``: published at
    ``--flood-rate`` Hz without waiting, so the node drops what it cannot process); the node's RSS
    is sampled with psutil every ``--sample-every`` frames. ``rss_slope_mb_per_1k_frames`` is the
    least-squares slope of RSS against frames after the first 10 % (warm-up); flat (~0) is the
    target.

The artifact: ``--artifact`` or, by default, a PoseNet with MobileNetV2 (ImageNet weights, not
trained on poses: accuracy is irrelevant to speed and memory) at the image size, written as a real
``apr`` artifact. It lives in visloc_ros because it drives the node over DDS (rclpy).
Nothing is asserted: the numbers are measured and returned.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HELP = "node end-to-end latency vs the model's own inference (target <= 1.10x); RSS slope over 10k frames"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact", default=None, help="localizer artifact (default: a PoseNet/MobileNetV2 made here)"
    )
    parser.add_argument("--width", type=int, default=64, help="image width in pixels (small: the node overhead shows)")
    parser.add_argument("--height", type=int, default=48, help="image height in pixels")
    parser.add_argument("--latency-frames", type=int, default=200, help="frames of the latency part")
    parser.add_argument("--memory-frames", type=int, default=10_000, help="frames of the memory part (0 = skip)")
    parser.add_argument("--sample-every", type=int, default=250, help="RSS sample period of the memory part, frames")
    parser.add_argument(
        "--flood", action="store_true", help="memory part: publish at --flood-rate without waiting for results"
    )
    parser.add_argument("--flood-rate", type=float, default=200.0, help="publish rate (Hz) with --flood")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of the node and of this process")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for the node to activate")


def _images(n: int, width: int, height: int) -> list[np.ndarray]:
    import cv2
    import skimage.data

    tex = skimage.data.astronaut()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = rng.uniform(0.3, 0.8)
        w, h = int(tex.shape[1] * s), int(tex.shape[1] * s * height / width)
        x0, y0 = rng.integers(0, tex.shape[1] - w + 1), rng.integers(0, tex.shape[0] - h + 1)
        out.append(np.ascontiguousarray(cv2.resize(tex[y0 : y0 + h, x0 : x0 + w], (width, height), cv2.INTER_AREA)))
    return out


def _default_artifact(folder: Path, width: int, height: int) -> Path:
    """A real 'apr' artifact: PoseNet/MobileNetV2 with ImageNet weights, identity pose statistics."""
    from visloc_core.models.apr.artifact import SceneStats, write_apr_artifact
    from visloc_core.models.registry import SceneSpec, build_apr_model
    from visloc_core.training.config import apr_config

    cfg = apr_config(
        {
            "model": {"name": "posenet", "backbone": "mobilenet_v2", "pretrained": True, "feature_dim": 128},
            "data": {"image_width": max(32, width), "image_height": max(32, height)},
        }
    )
    scene = SceneStats(
        "bench", "untrained (speed/memory only)", np.zeros(3), 1.0, -1e6 * np.ones(3), 1e6 * np.ones(3), 0
    )
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_apr_model("posenet", model_cfg, [SceneSpec(scene.name, scene.description)])
    calib = {"translation_var_m2": [0.01] * 3, "rotation_var_rad2": [1e-4] * 3, "method": "fixed (bench)"}
    return write_apr_artifact(folder / "bench-posenet", model, cfg, [scene], calib, {"note": "untrained bench model"})


STAMP0_NS = 1_000_000_000  # stamp of frame k: STAMP0_NS + k nanoseconds
MEMORY_BASE_K = 10_000_000  # frame numbers of the memory part start here (after the latency part's)


def run(args: argparse.Namespace) -> dict:
    import rclpy

    from visloc_core.evaluation.bench.timing import machine_info, set_threads
    from visloc_core.geometry import PinholeCamera
    from visloc_core.localizers.loading import load_localizer
    from visloc_ros.replay import NodeProcess

    set_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the node subprocess inherits it
    tmp = Path(tempfile.mkdtemp(prefix="visloc-bench-node-"))
    artifact = Path(args.artifact) if args.artifact else _default_artifact(tmp, args.width, args.height)
    W, H = args.width, args.height
    camera = PinholeCamera(W, H, 0.8 * W, 0.8 * W, (W - 1) / 2, (H - 1) / 2)
    images = _images(64, W, H)

    # the model's own time is measured in this process on the same images, interleaved with the
    # node's frames (paired: both see the same machine load; the node is idle while we time)
    loc = load_localizer(artifact)
    for img in images[:5]:
        loc.localize(img, camera, 0)

    params_file = _write_node_params(tmp, artifact)
    cmd = [sys.executable, "-m", "visloc_ros.localizer_node", "--ros-args", "--params-file", str(params_file)]
    started = not rclpy.ok()
    if started:
        # SIGINT / SIGTERM stay visloc_core.interrupt's (clean stop of the node process), not rclpy's
        rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    link = _NodeLink(tmp)
    proc = NodeProcess(cmd, tmp / "node.log")
    out: dict = {}
    try:
        link.wait_until_active(proc, args.startup_timeout)
        link.prepare(camera, images)
        link.warm_up()
        # (a) latency
        out["latency"] = _measure_latency(args, link, loc, images, camera)
        del loc
        log.info("latency: %s", out["latency"])
        # (b) memory
        if args.memory_frames > 0:
            out["memory"] = _measure_memory(args, link, proc.pid)
            log.info("memory: slope %.3f MB / 1k frames", out["memory"]["rss_slope_mb_per_1k_frames"] or float("nan"))
    finally:
        proc.stop()
        link.close()
        if started:
            rclpy.try_shutdown()
    # the made artifact and the node log are scratch: removed after a successful run (kept on error)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    out["artifact"] = str(artifact) if args.artifact else "(made by the bench, removed)"
    out["artifact_note"] = (
        "given" if args.artifact else "untrained PoseNet/MobileNetV2 (ImageNet weights) made by the bench"
    )
    out["machine"] = machine_info()
    return out


def _write_node_params(tmp: Path, artifact: Path) -> Path:
    """The localizer node's parameters file in ``tmp``: ``artifact``, autostart, reliable image QoS,
    no base frame and no jump gate (every result is published)."""
    import yaml

    params = {
        "model": str(artifact.resolve()),
        "autostart": True,
        "image_qos": "reliable",
        "image_qos_depth": 10,
        "base_frame": "",
        "max_jump_m": 0.0,
        "max_jump_deg": 0.0,
    }
    params_file = tmp / "node.yaml"
    params_file.write_text(yaml.safe_dump({"visloc_localizer": {"ros__parameters": params}}))
    return params_file


class _NodeLink:
    """This process's ROS side of the bench: publishes images + camera_info to the node and records,
    per result stamp (ns), when it arrived (perf_counter, s), the node's own latency (ms) and the
    localizer's stage time inside the node (ms). A spinning thread receives the results."""

    def __init__(self, tmp: Path) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from visloc_ros.msg import LocalizationResult

        self.tmp = tmp
        self.node = rclpy.create_node("visloc_bench_node")
        self.results: dict[int, float] = {}
        self.internal: dict[int, float] = {}
        self.stages: dict[int, float] = {}
        self.node.create_subscription(LocalizationResult, "localization", self._on_result, 100)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(Image, "image", qos)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.spin = threading.Thread(target=self.executor.spin, daemon=True)
        self.spin.start()
        self.missed = 0

    def _on_result(self, msg) -> None:
        from visloc_core.data import messages as rosmsg

        s = rosmsg.stamp_ns(msg.header)
        self.results[s] = time.perf_counter()
        self.internal[s] = 1000.0 * (msg.latency.sec + msg.latency.nanosec * 1e-9)
        self.stages[s] = 1000.0 * float(sum(msg.stage_seconds))

    def wait_until_active(self, proc, timeout_s: float) -> None:
        """Wait (at most ``timeout_s`` seconds) until the node subscribes to images and camera_info."""
        t_end = time.monotonic() + timeout_s
        while self.image_pub.get_subscription_count() == 0 or self.info_pub.get_subscription_count() == 0:
            if not proc.alive() or time.monotonic() > t_end:
                raise RuntimeError(f"the node did not activate; see {self.tmp / 'node.log'}")
            time.sleep(0.05)

    def prepare(self, camera, images: list[np.ndarray]) -> None:
        """The messages sent: ``camera``'s CameraInfo and the rgb8 Images of ``images`` (reused in turn)."""
        from visloc_ros import conversions as conv

        self.info = conv.camera_to_camera_info(camera)
        self.msgs = [conv.rgb_to_image(img, "rgb8") for img in images]

    def send(self, k: int, wait: bool) -> float:
        """Publish frame ``k`` (stamp STAMP0_NS + k ns); with ``wait``, wait up to 10 s for its result.
        Returns the perf_counter time (s) of publishing. RuntimeError after 5 frames without result."""
        from visloc_ros import conversions as conv

        # camera_info with every image, as camera drivers do (a single one can be lost while
        # DDS discovery completes: the node then reports "no camera_info" and drops the image)
        stamp = conv.ns_to_stamp(STAMP0_NS + k)
        self.info.header.stamp = stamp
        self.info_pub.publish(self.info)
        m = self.msgs[k % len(self.msgs)]
        m.header.stamp = stamp
        t_pub = time.perf_counter()
        self.image_pub.publish(m)
        if wait:
            t_stop = time.monotonic() + 10.0
            while (STAMP0_NS + k) not in self.results and time.monotonic() < t_stop:
                time.sleep(0.0002)
            self.missed = 0 if (STAMP0_NS + k) in self.results else self.missed + 1
            if self.missed >= 5:
                raise RuntimeError(
                    f"the node stopped answering (5 frames without a result); see {self.tmp / 'node.log'}"
                )
        return t_pub

    def warm_up(self) -> None:
        """Frames 0-4, each waited for up to 10 s (the first may arrive before the first camera_info)."""
        for k in range(5):
            t_stop = time.monotonic() + 10.0
            self.send(k, False)
            while (STAMP0_NS + k) not in self.results and time.monotonic() < t_stop:
                time.sleep(0.001)

    def close(self) -> None:
        """Stop the spinning thread and destroy the node."""
        self.executor.shutdown(timeout_sec=2.0)
        self.spin.join(timeout=5.0)
        self.node.destroy_node()


def _measure_latency(args: argparse.Namespace, link: _NodeLink, loc, images: list[np.ndarray], camera) -> dict:
    """(a) ``args.latency_frames`` frames lock-step: end-to-end latency, the node's internal latency
    and stage time, and ``loc.localize`` on the same image right after each (all in ms), with ratios."""
    from visloc_core.evaluation.bench.timing import ratio
    from visloc_core.evaluation.replay_scoring import latency_stats as _stats

    e2e, node_ms, own_ms, paired, in_node = [], [], [], [], []
    for k in range(5, 5 + args.latency_frames):
        t_pub = link.send(k, True)
        s = STAMP0_NS + k
        t0 = time.perf_counter()
        loc.localize(images[k % len(images)], camera, 0)
        own_ms.append(1000 * (time.perf_counter() - t0))
        if s in link.results:
            e2e.append(1000.0 * (link.results[s] - t_pub))
            node_ms.append(link.internal[s])
            in_node.append(link.stages[s])
            paired.append(e2e[-1] / own_ms[-1])
    own, e2e_s, node_s, in_node_s = _stats(own_ms), _stats(e2e), _stats(node_ms), _stats(in_node)
    return {
        "frames": args.latency_frames,
        "image_size": [args.width, args.height],
        "localize_own_ms": own,
        "node_e2e_ms": e2e_s,
        "node_internal_ms": node_s,
        "localize_in_node_ms": in_node_s,
        "ratio_e2e_over_localize_in_node": ratio(e2e_s.get("median"), in_node_s.get("median")),
        "ratio_e2e_over_localize": ratio(e2e_s.get("median"), own.get("median")),
        "ratio_node_internal_over_localize": ratio(node_s.get("median"), own.get("median")),
        "median_of_paired_ratios": float(np.median(paired)) if paired else None,
        "target_ratio": 1.10,
    }


def _measure_memory(args: argparse.Namespace, link: _NodeLink, pid: int) -> dict:
    """(b) ``args.memory_frames`` frames, lock-step or flooded: the node's RSS (MB) every
    ``args.sample_every`` frames and its least-squares slope (MB per 1000 frames) after the first 10 %."""
    import psutil
    from tqdm import tqdm

    from visloc_ros.replay import _ResourceSampler

    p = psutil.Process(pid)
    sampler = _ResourceSampler(pid, period_s=1.0).start()
    rss: list[tuple[int, float]] = [(0, p.memory_info().rss / 2**20)]
    period = 1.0 / args.flood_rate if args.flood else 0.0
    t_next = time.perf_counter()
    for k in tqdm(range(args.memory_frames), desc="memory", unit="frame", disable=None):
        link.send(MEMORY_BASE_K + k, not args.flood)
        if args.flood:
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if (k + 1) % args.sample_every == 0:
            rss.append((k + 1, p.memory_info().rss / 2**20))
    time.sleep(1.0)
    res = sampler.stop()
    arr = np.array(rss)
    warm = arr[arr[:, 0] >= 0.1 * args.memory_frames]
    slope = float(np.polyfit(warm[:, 0] / 1000.0, warm[:, 1], 1)[0]) if len(warm) >= 2 else None
    answered = sum(1 for k in range(args.memory_frames) if STAMP0_NS + MEMORY_BASE_K + k in link.results)
    return {
        "frames_published": args.memory_frames,
        "frames_answered": answered,
        "mode": f"flood at {args.flood_rate:g} Hz" if args.flood else "lock-step",
        "rss_mb_first": float(arr[0, 1]),
        "rss_mb_last": float(arr[-1, 1]),
        "rss_mb_after_warmup": float(warm[0, 1]) if len(warm) else None,
        "rss_slope_mb_per_1k_frames": slope,
        "rss_samples_mb": [[int(a), round(float(b), 2)] for a, b in arr],
        "node_cpu_percent_of_one_core": res.get("cpu_percent_of_one_core"),
    }
