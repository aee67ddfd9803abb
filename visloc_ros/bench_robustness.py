"""``visloc bench robustness``: how the node and the writing commands survive what an attacker (or a
bad day) sends them. Four parts, each a figure in docs/STATUS.md:

- **fuzz**: malformed messages of every kind (images: encodings, sizes, steps, stamps, blank, noise,
  a decompression bomb, garbage JPEG/PNG; camera_info: NaN, zero, absurd intrinsics, D lengths,
  fisheye; odometry: NaN, non-unit quaternions, 2038 stamps, wrong frames; initialpose) sent over
  DDS to the real node in its own process (raw and compressed image mode). Figures: messages sent,
  received by the node, counted (bad_input, or dropped by the newest-frame policy), unaccounted,
  node crashes, processing errors; then valid frames must still be LOCALIZED.
- **soak**: a valid camera stream for ``--soak-s`` seconds; the node's RSS sampled every 0.5 s and
  its slope fitted after the first 20 % (warm-up), in MB per minute.
- **kill**: each writing command (synth, from-bag, map build, train) killed with SIGKILL at a random
  moment of its run, ``--kills`` times, each time writing over an existing --out with --overwrite:
  the old --out must still be complete (datasets load, artifacts pass their checksums), and a rerun
  must succeed and leave nothing else beside --out.
- **corruption**: every file of an APR model and a relpose map truncated, emptied, bit-flipped (and
  artifact.json's normalisation / format_version edited): loading must fail with one line naming the
  file (a "clear error"), never load silently or raise something else.
- **qos** (only with ``--parts qos``): raw images of growing size published best effort at 10 Hz,
  received by the node with image_qos sensor_data vs reliable (docs/ros_node.md).

Inputs are built in the work folder: ``visloc synth indoor_room`` at 160x120 (dataset + bags), a
relpose SIFT map of it; or given with ``--artifact``/``--data``/``--bag``. ``--quick`` is the short
version (seconds per part) that the test suite runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HELP = "robustness of the node (malformed-message fuzz, soak RSS slope) and writers (kill -9, artifact corruption)"
PARTS = ("fuzz", "soak", "kill", "corruption", "qos")
REPO = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["fuzz", "soak", "kill", "corruption"])
    parser.add_argument("--quick", action="store_true", help="short version (what `make test` runs): ~a minute")
    parser.add_argument("--fuzz-messages", type=int, default=10000, help="malformed messages to send (default 10000)")
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak duration in seconds (default 600)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs per writing command (default 8)")
    parser.add_argument("--corruptions", type=int, default=3, help="random corruptions per file and kind (default 3)")
    parser.add_argument("--artifact", help="artifact for the node (default: a relpose map built in the work folder)")
    parser.add_argument("--data", help="dataset whose test frames feed the node (default: built in the work folder)")
    parser.add_argument("--work", help="scratch folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fuzz, kill moments and corruptions")


# ------------------------------------------------------------------------------------ helpers
def _visloc(*args: str) -> list[str]:
    return [sys.executable, "-m", "visloc_core.cli", *args]


def _run(cmd: list[str], timeout: float = 900.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _peak_rss_mb(pid: int) -> float:
    """Peak RSS of a live process since it started (VmHWM, Linux), in MB; NaN where not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def prepare_inputs(work: Path, quick: bool) -> dict:
    """A small synthetic dataset with bags and a relpose SIFT map of it (the node's artifact)."""
    ds, bags = work / "inputs" / "data", work / "inputs" / "bags"
    if not (ds / "manifest.json").is_file():
        r = _run(
            _visloc(
                "synth",
                "indoor_room",
                "--out",
                str(ds),
                "--bag",
                str(bags),
                "--size",
                "160x120",
                "--max-frames",
                "12" if quick else "24",
                "--no-progress",
                "--overwrite",
            )
        )
        if r.returncode:
            raise RuntimeError(f"visloc synth failed: {r.stderr[-2000:]}")
    art = work / "inputs" / "map"
    if not (art / "artifact.json").is_file():
        r = _run(
            _visloc(
                "map",
                "build",
                str(REPO / "config/models/relpose_sift.yaml"),
                "--data",
                str(ds),
                "--out",
                str(art),
                "--set",
                "image_size=null",
                "--no-progress",
                "--overwrite",
            )
        )
        if r.returncode:
            raise RuntimeError(f"visloc map build failed: {r.stderr[-2000:]}")
    bag = sorted(p for p in bags.iterdir() if "map" in p.name)[0]
    return {"data": ds, "artifact": art, "bag": bag}


def test_frames(data: Path, n: int) -> list[tuple[np.ndarray, object]]:
    """(RGB, camera) of the first n test frames of a dataset."""
    from visloc_core.data.layout import Dataset

    d = Dataset(data)
    frames = d.frames("test")[:n] or d.frames()[:n]
    return [(d.load_rgb(f), f.camera) for f in frames]


class _NodeUnderTest:
    """The localizer node in its own process, plus an in-process rclpy probe that publishes its inputs
    and keeps the newest /diagnostics values and every `localization` status."""

    def __init__(self, work: Path, artifact: Path, **params) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from nav_msgs.msg import Odometry
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from visloc_ros.msg import LocalizationResult
        from visloc_ros.replay import NodeProcess

        p = {
            "model": str(artifact),
            "autostart": True,
            "diagnostics_period_s": 0.05,
            "warmup": True,
            "odom_frame": "odom",
            "base_frame": "base_link",
            "use_tf_extrinsic": False,  # no TF publisher here: the base_to_camera_* parameters
            "max_jump_m": 0.0,  # the jump gate is not the subject here: every valid frame stands alone
            "max_jump_deg": 0.0,
            **params,
        }
        self.compressed = bool(p.get("compressed", False))
        import yaml

        pfile = work / f"node_params_{os.getpid()}_{id(self)}.yaml"
        pfile.write_text(yaml.safe_dump({"visloc_localizer": {"ros__parameters": p}}))
        cmd = [sys.executable, "-m", "visloc_ros.localizer_node", "--ros-args", "--params-file", str(pfile)]
        self.log_path = work / f"node_{id(self)}.log"
        self.proc = NodeProcess(cmd, self.log_path)
        self._started_rclpy = not rclpy.ok()
        if self._started_rclpy:
            # SIGINT / SIGTERM stay visloc_core.interrupt's (clean stop of the node process), not rclpy's
            rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"visloc_robustness_probe_{os.getpid()}")
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.pubs = {
            "image": n.create_publisher(
                CompressedImage if self.compressed else Image,
                "image/compressed" if self.compressed else "image",
                reliable,
            ),
            "camera_info": n.create_publisher(CameraInfo, "camera_info", reliable),
            "odom": n.create_publisher(Odometry, "odom", reliable),
            "initialpose": n.create_publisher(PoseWithCovarianceStamped, "initialpose", reliable),
        }
        self.diag: dict[str, str] = {}
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        n.create_subscription(LocalizationResult, "localization", self._on_result, 100)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 180
        while not all(p.get_subscription_count() > 0 for p in self.pubs.values()):
            if not self.proc.alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the node did not start; see {self.log_path}")
            time.sleep(0.05)

    def _on_diag(self, msg) -> None:
        with self._lock:
            self.diag = {kv.key: kv.value for kv in msg.status[0].values}

    def _on_result(self, msg) -> None:
        with self._lock:
            self.statuses.append(int(msg.status))

    def values(self) -> dict[str, str]:
        with self._lock:
            return dict(self.diag)

    def by_topic(self, key: str) -> dict[str, int]:
        text = self.values().get(key, "")
        return {k: int(v) for k, v in (item.split("=") for item in text.split("; ") if "=" in item)}

    def wait_caught_up(self, sent: dict[str, int], settle_s: float = 1.0, timeout_s: float = 30.0) -> bool:
        """Until the node has received ``sent`` per topic; stops early (False) when nothing more arrived for
        ``settle_s`` (messages lost in transport are reported, not waited for)."""
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            rx = self.by_topic("received_by_topic")
            if all(rx.get(k, 0) >= v for k, v in sent.items()):
                return True
            if rx != last:
                last, since = rx, time.monotonic()
            elif time.monotonic() - since > settle_s:
                return False
            time.sleep(0.01)
        return False

    def wait(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> int:
        import rclpy

        rc = self.proc.stop()
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        if self._started_rclpy:
            rclpy.try_shutdown()
        return rc


# --------------------------------------------------------------------------------------- fuzz
@functools.lru_cache(maxsize=4)
def png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height 1-bit grey zeros (it decodes to width*height pixels; 20000x20000 is
    ~60 KB, 32000x32000 ~150 KB, as in issue 10's attack), built chunk by chunk so that building it never
    holds the decoded image."""
    import struct
    import zlib

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.compress(row * (height % 1000))
    idat += comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def malformed_messages(kind: str, i: int, rng: np.random.Generator, rgb: np.ndarray, camera, stamp: int):
    """The i-th malformed message of ``kind`` (image / compressed / camera_info / odom / initialpose)."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import CompressedImage

    from visloc_ros import conversions as conv

    h, w = rgb.shape[:2]
    case = i % 12
    if kind == "image":
        m = conv.rgb_to_image(rgb, "rgb8", stamp)
        if case == 0:
            m.encoding = rng.choice(["yuv422", "bayer_rggb8", "32FC1", "8UC3", "", "RGB 8"])
        elif case == 1:
            m.step = int(rng.integers(0, 3 * w))
        elif case == 2:
            m.data = bytes(m.data)[: int(rng.integers(0, len(m.data)))]
        elif case == 3:
            m.width, m.height = 0, int(rng.integers(0, 100))
        elif case == 4:
            m.width, m.height, m.step = 40000, 40000, 120000  # claims 1.6 Gpx with a small buffer
        elif case == 5:
            m.header.stamp.sec = -int(rng.integers(1, 10**9))
        elif case == 6:
            m.header.stamp.sec, m.header.stamp.nanosec = 0, 0
        elif case == 7:
            m = conv.rgb_to_image(np.full_like(rgb, int(rng.integers(0, 256))), "rgb8", stamp)
        elif case == 8:
            m = conv.rgb_to_image(rng.integers(0, 256, rgb.shape, dtype=np.uint8), "rgb8", stamp)
        elif case == 9:
            m = conv.rgb_to_image(rgb[: h // 2], "rgb8", stamp)  # not the camera_info's size
        elif case == 10:
            m.data = bytes(rng.integers(0, 256, len(m.data), dtype=np.uint8))  # right size, random bytes
            m.encoding = "mono16"
            m.step = 2 * w
            m.width, m.height = w, len(m.data) // (2 * w)
            m.data = bytes(m.data)[: m.step * m.height]
            m.header.stamp.sec = 0  # and unstamped
        else:
            m = conv.rgb_to_image(rgb[:1, :1].copy(), "rgb8", stamp)
        return m
    if kind == "compressed":
        m = conv.rgb_to_compressed(rgb, "png" if i % 2 else "jpeg", stamp)
        data = bytes(m.data)
        if case in (0, 1):
            m.data = data[: int(rng.integers(0, len(data)))]
        elif case == 2:
            m.data = bytes(rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8))
        elif case == 3:
            side = int(rng.choice([20000, 32000]))
            m = CompressedImage(format="png", data=png_bomb(side, side))  # decodes to 0.4 / 1 Gpx
            m.header.stamp = conv.ns_to_stamp(stamp)
        elif case == 4:
            m.data = b""
        elif case == 5:
            m.format = "compressedDepth png"
        elif case == 6:
            m.header.stamp.sec = -5
        elif case == 7:
            m = conv.rgb_to_compressed(np.zeros_like(rgb), "png", stamp)
        elif case == 8:
            buf = bytearray(data)
            k = int(rng.integers(20, len(buf)))
            buf[k : k + 64] = bytes(rng.integers(0, 256, len(buf[k : k + 64]), dtype=np.uint8))
            m.data = bytes(buf)
            m.header.stamp.sec = 0  # corrupt AND unstamped: counted once
        elif case == 9:
            m = conv.rgb_to_compressed(rgb[:20], "png", stamp)  # size differs from camera_info
        elif case == 10:
            m.data = b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 300, dtype=np.uint8))  # JPEG magic, garbage
        else:
            m = conv.rgb_to_compressed(rng.integers(0, 256, rgb.shape, dtype=np.uint8), "png", stamp)
        return m
    if kind == "camera_info":
        m = conv.camera_to_camera_info(camera, stamp)
        k = list(m.k)
        if case == 0:
            k[int(rng.integers(0, 9))] = float("nan")
        elif case == 1:
            k = [0.0] * 9
        elif case == 2:
            k[0] = k[4] = float(rng.choice([1e-300, 1e300, -5.0]))
        elif case == 3:
            k[2] = -1e9
        elif case == 4:
            k[7] = 0.3
        elif case == 5:
            m.d = list(rng.normal(0, 0.1, int(rng.choice([1, 2, 3, 4, 6, 7, 9, 14, 100]))))
        elif case == 6:
            m.distortion_model, m.d = "equidistant", [0.1, 0.01, 0.0, 0.0]
        elif case == 7:
            m.distortion_model, m.d = str(rng.choice(["fov", "unified", "double_sphere"])), [0.3, 0.1, 0.0, 0.0, 0.0]
        elif case == 8:
            m.binning_x = m.binning_y = 4
        elif case == 9:
            m.width = 0
        elif case == 10:
            m.d = [float("inf")] * 5
        else:
            k[1] = 0.5 * k[0]  # skew
        m.k = k
        return m
    if kind == "odom":
        m = Odometry()
        m.header.stamp = conv.ns_to_stamp(stamp)
        m.header.frame_id, m.child_frame_id = "odom", "base_link"
        m.pose.pose.orientation.w = 1.0
        c = case % 7
        if c == 0:
            m.pose.pose.position.x = float("nan")
        elif c == 1:
            m.pose.pose.orientation.w = float(rng.uniform(1.5, 10.0))
        elif c == 2:
            m.pose.pose.orientation.w = 0.0
        elif c == 3:
            m.header.stamp.sec = 2_147_483_000  # 2038
        elif c == 4:
            m.header.frame_id = "not_odom"
        elif c == 5:
            m.child_frame_id = "not_base"
        else:
            m.header.stamp.sec = -1
        return m
    if kind == "initialpose":
        m = PoseWithCovarianceStamped()
        m.header.stamp = conv.ns_to_stamp(stamp)
        m.header.frame_id = "map"
        m.pose.pose.orientation.w = 1.0
        c = case % 3
        if c == 0:
            m.header.frame_id = "odom"
        elif c == 1:
            m.pose.pose.position.y = float("inf")
        else:
            m.pose.pose.orientation.x = 0.9
        return m
    raise ValueError(kind)


def fuzz(work: Path, artifact: Path, frames: list, n_messages: int, seed: int = 0) -> dict:
    """Send ``n_messages`` malformed messages (half to a raw-image node, half to a compressed-image
    node; images are half of them), paced so that DDS loses none, then valid frames (to be LOCALIZED as
    often as by a fresh localizer in this process); returns the accounting of the module docstring. Every message the node receives must be counted: as bad_input
    of its topic, or (images) as dropped by the newest-frame policy or processed."""
    rng = np.random.default_rng(seed)
    out = {
        "messages_sent": 0,
        "received": 0,
        "counted": 0,
        "unaccounted": 0,
        "lost_in_transport": 0,
        "crashes": 0,
        "errors": 0,
        "valid_frames_sent": 0,
        "valid_frames_localized": 0,
        "valid_frames_localized_by_a_fresh_localizer": 0,
        "by_mode": {},
    }
    # reference: the same valid frames through the artifact's localizer in this process, untouched by the storm
    from visloc_core.localizers.base import Status
    from visloc_core.localizers.loading import load_localizer

    reference = load_localizer(artifact)
    for k, (img, cam) in enumerate(frames):
        status = reference.localize(img, cam, 1_700_000_000 * 10**9 + k * 100_000_000).status
        out["valid_frames_localized_by_a_fresh_localizer"] += 2 * int(status == Status.LOCALIZED)  # both modes
    for mode in ("raw", "compressed"):
        # a deep image queue: the subscription must not lose what this bench counts (the mailbox still drops)
        node = _NodeUnderTest(work, artifact, compressed=(mode == "compressed"), image_qos_depth=100)
        try:
            row = _fuzz_node(node, mode, frames, n_messages // 2, rng)
        finally:
            crashed = not node.proc.alive()
            node.close()
        out["crashes"] += int(crashed)
        for k in ("messages_sent", "received", "counted", "unaccounted", "lost_in_transport", "errors"):
            out[k] += row[k]
        out["valid_frames_sent"] += row["valid_frames_sent"]
        out["valid_frames_localized"] += row["valid_frames_localized"]
        out["by_mode"][mode] = row
    return out


def _images_decided(node: _NodeUnderTest) -> bool:
    """Every image the node received is decided: refused, dropped by the newest-frame policy or processed."""
    v, bad, rx = node.values(), node.by_topic("bad_input_by_topic"), node.by_topic("received_by_topic")
    decided = bad.get("image", 0) + int(v.get("frames_dropped", 0)) + int(v.get("frames_processed", 0))
    return decided >= rx.get("image", 0) > 0


def _fuzz_node(node: _NodeUnderTest, mode: str, frames: list, n: int, rng: np.random.Generator) -> dict:
    from visloc_ros import conversions as conv

    image_kind = "compressed" if mode == "compressed" else "image"
    kinds = [image_kind, "camera_info", image_kind, "odom", image_kind, "initialpose"]
    rgb, camera = frames[0]
    sent = dict.fromkeys(["image", "camera_info", "odom", "initialpose"], 0)
    rss0 = _rss_mb(node.proc.pid)
    stamp = 1_700_000_000 * 10**9
    # valid camera_info first (images need one), sent until the node has it: camera_info is best effort and
    # may drop under load; only what arrives before the storm is subtracted from the accounting below
    for _ in range(20):
        node.pubs["camera_info"].publish(conv.camera_to_camera_info(camera, stamp))
        sent["camera_info"] += 1
        if node.wait(lambda: node.by_topic("received_by_topic").get("camera_info", 0) > 0, 0.5):
            break
    time.sleep(0.3)  # a resent copy still in flight lands before the storm's counts start
    valid_sent = sent["camera_info"]
    valid_rx = node.by_topic("received_by_topic").get("camera_info", 0)

    bomb_case = 3 if mode == "compressed" else 4  # see malformed_messages
    bombs = 0
    for i in range(n):
        kind = kinds[i % len(kinds)]
        topic = "image" if kind == "compressed" else kind
        bombs += int(topic == "image" and (i // len(kinds)) % 12 == bomb_case)
        stamp += 1_000_000
        node.pubs[topic].publish(malformed_messages(kind, i // len(kinds), rng, rgb, camera, stamp))
        sent[topic] += 1
        if i % 10 == 9:  # paced: let the node receive what was sent (camera_info is best effort: may drop)
            node.wait_caught_up(sent)
            if not node.proc.alive():
                break
    node.wait_caught_up(sent, settle_s=3.0)

    node.wait(lambda: _images_decided(node), 60.0)
    time.sleep(0.3)
    v, received, bad = node.values(), node.by_topic("received_by_topic"), node.by_topic("bad_input_by_topic")
    dropped, processed = int(v.get("frames_dropped", 0)), int(v.get("frames_processed", 0))
    counted = sum(bad.values()) + dropped + processed
    n_rx = sum(received.values()) - valid_rx  # the valid camera_info is not counted as anything
    row = {
        "messages_sent": sum(sent.values()) - valid_sent,
        "received": n_rx,
        "counted": counted,
        "unaccounted": n_rx - counted,
        "lost_in_transport": sum(sent.values()) - valid_sent - n_rx,
        "lost_by_topic": {
            k: n_sent - n_got
            for k, n_sent, n_got in (
                (
                    k,
                    v - (valid_sent if k == "camera_info" else 0),
                    received.get(k, 0) - (valid_rx if k == "camera_info" else 0),
                )
                for k, v in sent.items()
            )
            if n_sent != n_got
        },
        "valid_camera_info_received": valid_rx,
        "errors": int(v.get("errors", 0)),
        "sent_by_topic": dict(sent),
        "received_by_topic": received,
        "bad_input_by_topic": bad,
        "frames_dropped": dropped,
        "frames_processed": processed,
        "problems_by_reason": v.get("problems_by_reason", ""),
        "rss_mb_start": rss0,
        "rss_mb_end": _rss_mb(node.proc.pid) if node.proc.alive() else float("nan"),
        "rss_mb_peak": _peak_rss_mb(node.proc.pid),  # a decoded bomb would show here (GBs)
        "bombs_sent": bombs,  # raw images claiming 1.6 Gpx; real PNG bombs of 0.4 and 1 Gpx
    }
    # valid frames after the storm, one at a time: they must be localized
    info_rx = received.get("camera_info", 0)
    for _ in range(20):  # camera_info is best effort: sent again until the node has it
        node.pubs["camera_info"].publish(conv.camera_to_camera_info(camera, stamp))
        if node.wait(lambda: node.by_topic("received_by_topic").get("camera_info", 0) > info_rx, 0.5):
            break
    n0 = len(node.statuses)
    for k, (img, _cam) in enumerate(frames):
        stamp += 100_000_000
        if mode == "compressed":
            node.pubs["image"].publish(conv.rgb_to_compressed(img, "png", stamp))
        else:
            node.pubs["image"].publish(conv.rgb_to_image(img, "rgb8", stamp))
        node.wait(lambda k=k: len(node.statuses) > n0 + k, 60.0)
    row["valid_frames_sent"] = len(frames)
    row["valid_frames_localized"] = sum(1 for st in node.statuses[n0:] if st == 0)
    return row


# --------------------------------------------------------------------------------------- soak
def soak(work: Path, artifact: Path, frames: list, seconds: float, rate_hz: float = 15.0) -> dict:
    """A valid stream for ``seconds``; the node's RSS every 0.5 s and its slope after the warm-up."""
    from visloc_ros import conversions as conv

    node = _NodeUnderTest(work, artifact)
    samples: list[tuple[float, float]] = []
    sent = 0
    try:
        stamp = 1_800_000_000 * 10**9
        t0 = time.monotonic()
        next_sample = t0
        while time.monotonic() - t0 < seconds:
            img, camera = frames[sent % len(frames)]
            stamp += int(1e9 / rate_hz)
            # camera_info with every image, as camera drivers do (its subscription is best effort: one may drop)
            node.pubs["camera_info"].publish(conv.camera_to_camera_info(camera, stamp))
            node.pubs["image"].publish(conv.rgb_to_image(img, "rgb8", stamp))
            sent += 1
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, _rss_mb(node.proc.pid)))
                next_sample += 0.5
            time.sleep(max(0.0, t0 + sent / rate_hz - time.monotonic()))
        node.wait_caught_up({"image": sent}, settle_s=3.0)
        node.wait(lambda: _images_decided(node), 60.0)  # the newest frame is always processed
        time.sleep(0.3)
        v = node.values()
    finally:
        alive = node.proc.alive()
        node.close()
    t = np.array([a for a, _ in samples])
    rss = np.array([b for _, b in samples])
    keep = t >= 0.2 * seconds
    slope = float(np.polyfit(t[keep] / 60.0, rss[keep], 1)[0]) if keep.sum() >= 3 else float("nan")
    return {
        "seconds": seconds,
        "frames_sent": sent,
        "frames_processed": int(v.get("frames_processed", 0)),
        "frames_localized": int(v.get("frames_localized", 0)),
        "errors": int(v.get("errors", 0)),
        "crashed": not alive,
        "rss_mb_first": float(rss[0]) if len(rss) else float("nan"),
        "rss_mb_last": float(rss[-1]) if len(rss) else float("nan"),
        "rss_mb_max": float(rss.max()) if len(rss) else float("nan"),
        "rss_slope_mb_per_min_after_warmup": slope,
        "samples": len(samples),
    }


# --------------------------------------------------------------------------------------- kill
def writing_commands(work: Path, inputs: dict, quick: bool) -> dict[str, tuple[list[str], Path, str]]:
    """name -> (command writing over --out with --overwrite, --out, how to check a complete --out)."""
    cfg = work / "tiny_posenet.yaml"
    cfg.write_text(
        "model: {name: posenet, backbone: mobilenet_v2, pretrained: true, feature_dim: 64, dropout: 0.0}\n"
        "data: {image_width: 64, image_height: 48, batch_size: 8}\n"
        "train: {epochs: 2, lr: 1.0e-3, progress_bar: false}\n"
    )
    out = work / "kill"
    cmds = {
        "dataset from-bag": (
            _visloc(
                "dataset",
                "from-bag",
                str(inputs["bag"]),
                "--image-topic",
                "/camera/image_raw",
                "--pose-topic",
                "/ground_truth/pose",
                "--out",
                str(out / "from_bag"),
                "--overwrite",
                "--no-progress",
            ),
            out / "from_bag",
            "dataset",
        ),
        "map build": (
            _visloc(
                "map",
                "build",
                str(REPO / "config/models/relpose_sift.yaml"),
                "--data",
                str(inputs["data"]),
                "--out",
                str(out / "map"),
                "--set",
                "image_size=null",
                "--overwrite",
                "--no-progress",
            ),
            out / "map",
            "artifact",
        ),
    }
    if not quick:
        cmds["train"] = (
            _visloc("train", str(cfg), "--data", str(inputs["data"]), "--out", str(out / "apr"), "--overwrite"),
            out / "apr",
            "artifact",
        )
        cmds["synth"] = (
            _visloc(
                "synth",
                "indoor_room",
                "--out",
                str(out / "synth"),
                "--bag",
                str(out / "synth_bags"),
                "--size",
                "96x72",
                "--max-frames",
                "6",
                "--overwrite",
                "--no-progress",
            ),
            out / "synth",
            "dataset",
        )
    return cmds


def _complete(path: Path, kind: str) -> bool:
    try:
        if kind == "dataset":
            from visloc_core.data.layout import Dataset

            d = Dataset(path)
            return all(d.path(f).is_file() for f in d.frames())
        from visloc_core.localizers.loading import check_artifact

        check_artifact(path)
        return True
    except Exception:
        return False


_TEMPORARY = re.compile(r"^\..+\.(partial-\d+-[0-9a-f]+|old-\d+-[0-9a-f]+|lock|interrupted-\d+)$")


def _leftovers(root: Path) -> list[str]:
    """Temporaries, locks and kept partials of visloc_core.atomic anywhere below ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if _TEMPORARY.match(p.name))


def kill(cmds: dict[str, tuple[list[str], Path, str]], kills: int, seed: int = 0) -> dict:
    """Each command of ``cmds`` (see :func:`writing_commands`) run cleanly once, then ``kills`` times
    killed with SIGKILL at a uniformly random moment of a clean run's duration and rerun."""
    rng = np.random.default_rng(seed)
    res: dict = {
        "kills": 0,
        "out_incomplete_after_kill": 0,
        "leftovers_after_rerun": 0,
        "rerun_failures": 0,
        "leftovers_before_rerun": 0,
        "by_command": {},
    }
    for name, (cmd, out, kind) in cmds.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        r = _run(cmd)
        clean_s = time.monotonic() - t0
        if r.returncode or not _complete(out, kind):
            raise RuntimeError(f"{name}: the clean run failed: {r.stderr[-2000:]}")
        row = {
            "clean_run_s": round(clean_s, 2),
            "kills": 0,
            "finished_before_the_kill": 0,
            "incomplete": 0,
            "leftovers_before_rerun": 0,
            "leftovers_after_rerun": 0,
            "rerun_failures": 0,
        }
        for _ in range(kills):
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(float(rng.uniform(0.05, 1.0)) * clean_s)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                row["kills"] += 1
            else:
                row["finished_before_the_kill"] += 1
            proc.wait()
            if not _complete(out, kind):  # --out must be the old (or the new) complete result, never missing
                row["incomplete"] += 1
            row["leftovers_before_rerun"] += len(_leftovers(out.parent))
            rr = _run(cmd)
            if rr.returncode or not _complete(out, kind):
                row["rerun_failures"] += 1
            left = _leftovers(out.parent)
            row["leftovers_after_rerun"] += len(left)
            if left:
                row.setdefault("leftover_examples", left[:5])
        res["by_command"][name] = row
        res["kills"] += row["kills"]
        res["out_incomplete_after_kill"] += row["incomplete"]
        res["leftovers_before_rerun"] += row["leftovers_before_rerun"]
        res["leftovers_after_rerun"] += row["leftovers_after_rerun"]
        res["rerun_failures"] += row["rerun_failures"]
    return res


# --------------------------------------------------------------------------------- corruption
def _corruptions(rng: np.random.Generator, n_random: int):
    """(name, function(path)) of the corruptions applied to each file."""

    def truncate(frac):
        return lambda p: p.write_bytes(p.read_bytes()[: int(p.stat().st_size * frac)])

    def flip(n, at):
        def f(p):
            data = bytearray(p.read_bytes())
            k = min(n, len(data))
            start = int(at * (len(data) - k))
            data[start : start + k] = bytes(b ^ 0xFF for b in data[start : start + k])
            p.write_bytes(bytes(data))

        return f

    cases = [
        ("empty", lambda p: p.write_bytes(b"")),
        ("truncated to half", truncate(0.5)),
        ("4 KB flipped in the middle", flip(4096, 0.5)),
    ]
    for _ in range(n_random):
        frac = float(rng.uniform(0.01, 0.99))
        cases.append((f"truncated to {frac:.0%}", truncate(frac)))
        n, at = int(rng.integers(1, 4097)), float(rng.uniform(0, 1))
        cases.append((f"{n} bytes flipped at {at:.0%}", flip(n, at)))
    cases.append(("garbage appended", lambda p: p.write_bytes(p.read_bytes() + b"\x00garbage")))
    return cases


def corruption(work: Path, artifacts: list[Path], n_random: int, seed: int = 0) -> dict:
    """Every file of each artifact damaged in every way: load_localizer must refuse with one line naming it."""
    from visloc_core.localizers.loading import load_localizer

    rng = np.random.default_rng(seed)
    res = {"corruptions": 0, "clear_errors": 0, "unclear_errors": 0, "loaded_anyway": 0, "examples": {}}
    scratch = work / "corrupt"
    for art in artifacts:
        meta = json.loads((art / "artifact.json").read_text())
        edits = {
            "artifact.json: format_version 99": lambda m: m.__setitem__("format_version", 99),
            "artifact.json: not JSON": None,
        }
        if meta["kind"] == "apr":
            edits["artifact.json: NaN normalisation"] = lambda m: m["scenes"][0]["position_mean"].__setitem__(
                0, float("nan")
            )
        jobs = [(rel, name, fn) for rel in meta.get("files", {}) for name, fn in _corruptions(rng, n_random)]
        jobs += [("artifact.json", name, edit) for name, edit in edits.items()]
        for rel, name, fn in jobs:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(art, scratch)
            target = scratch / rel
            if rel == "artifact.json":
                if fn is None:
                    target.write_text(target.read_text()[:-20])
                else:
                    m = json.loads(target.read_text())
                    fn(m)
                    target.write_text(json.dumps(m))
            else:
                fn(target)
            res["corruptions"] += 1
            try:
                load_localizer(scratch)
                res["loaded_anyway"] += 1
                res["examples"].setdefault("loaded_anyway", f"{art.name}/{rel}: {name}")
            except (ValueError, FileNotFoundError) as err:
                text = str(err)
                if str(target) in text and "\n" not in text:
                    res["clear_errors"] += 1
                    res["examples"].setdefault(f"{meta['kind']}/{rel}", text)
                else:
                    res["unclear_errors"] += 1
                    res["examples"].setdefault("unclear", f"{art.name}/{rel} {name}: {text[:300]}")
            except Exception as err:  # anything else is a failure of ours: no clear message
                res["unclear_errors"] += 1
                res["examples"].setdefault("unclear", f"{art.name}/{rel} {name}: {type(err).__name__}: {err}")
    shutil.rmtree(scratch, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------- qos
def qos(work: Path, artifact: Path, sizes=((320, 240), (640, 480), (1280, 720), (1920, 1080)), n: int = 20) -> dict:
    """Raw rgb8 images published BEST EFFORT (like a sensor_data camera driver) at 10 Hz, received by
    the node with image_qos sensor_data; and published RELIABLE to the default (reliable) node."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from visloc_ros import conversions as conv

    res = {}
    for label, pub_rel, node_qos in (
        ("best-effort publisher, image_qos sensor_data", ReliabilityPolicy.BEST_EFFORT, "sensor_data"),
        ("reliable publisher, image_qos reliable (default)", ReliabilityPolicy.RELIABLE, "reliable"),
    ):
        node = _NodeUnderTest(work, artifact, image_qos=node_qos, image_qos_depth=1)
        try:
            pub = node.node.create_publisher(Image, "image", QoSProfile(depth=1, reliability=pub_rel))
            node.wait(lambda p=pub: p.get_subscription_count() > 0, 20.0)
            row = {}
            for w, h in sizes:
                img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
                before = node.by_topic("received_by_topic").get("image", 0)
                for k in range(n):
                    pub.publish(conv.rgb_to_image(img, "rgb8", 1_900_000_000 * 10**9 + k))
                    time.sleep(0.1)
                time.sleep(1.0)
                row[f"{w}x{h}"] = f"{node.by_topic('received_by_topic').get('image', 0) - before}/{n}"
            res[label] = row
        finally:
            node.close()
    return res


# ---------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict:
    quick = bool(args.quick)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="visloc-bench-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"quick": quick, "parts": list(args.parts)}
    try:
        inputs = prepare_inputs(work, quick)
        if args.artifact:
            inputs["artifact"] = Path(args.artifact)
        if args.data:
            inputs["data"] = Path(args.data)
        frames = test_frames(inputs["data"], 3 if quick else 8)
        if "fuzz" in args.parts:
            result["fuzz"] = fuzz(work, inputs["artifact"], frames, 400 if quick else args.fuzz_messages, args.seed)
        if "soak" in args.parts:
            result["soak"] = soak(work, inputs["artifact"], frames, 5.0 if quick else args.soak_s)
        if "kill" in args.parts:
            result["kill"] = kill(writing_commands(work, inputs, quick), 1 if quick else args.kills, args.seed)
        if "corruption" in args.parts:
            arts = [inputs["artifact"]] + ([work / "kill" / "apr"] if (work / "kill" / "apr").is_dir() else [])
            result["corruption"] = corruption(work, arts, 1 if quick else args.corruptions, args.seed)
        if "qos" in args.parts:
            result["qos"] = qos(work, inputs["artifact"])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return result
