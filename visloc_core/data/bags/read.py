"""A rosbag2 recording (sqlite3 or mcap) -> a dataset in the visloc layout (``visloc dataset from-bag``).

Read with the pure-Python ``rosbags`` (no ROS needed), in two passes:

1. the small topics: the pose source (a PoseStamped / PoseWithCovarianceStamped / Odometry /
   TransformStamped topic, or /tf), /tf_static and camera_info;
2. the image topic (and the optional depth topic); each image gets the camera pose interpolated at
   its header stamp and is written straight to the dataset (no image is held in memory longer
   than needed to pair it with its depth image).

Pose of a frame::

    T_world_cam(t) = T_world_body(t) @ T_body_cam

``T_world_body`` is the pose source at the image stamp (linear / SLERP interpolation with
:func:`visloc_core.geometry.interpolate_poses`; a frame is kept only when it lies on a pose sample
or between two samples at most ``max_gap_s`` apart; no extrapolation). ``body`` is the frame the
pose source describes (Odometry's child_frame_id, the CHILD of ``--pose-tf PARENT:CHILD``, or
``pose_frame`` for PoseStamped, default base_link). ``T_body_cam`` (the extrinsic) is, in order: the
``extrinsic`` option; the identity when the image's frame_id is ``body``; the /tf_static chain from
``body`` to the image frame (with ``--pose-tf``, any TF chain, interpolated at the stamp). The image
frame must be the camera's OPTICAL frame (REP-103: z forward, x right, y down), as the header of a
sensor_msgs/Image is by definition.

Images: raw ones are stored as PNG holding exactly the message's pixels (bit-exact round trip;
``step`` padding dropped; bgr/bgra reordered to PNG's RGB/RGBA; mono8/mono16 as grey PNGs);
compressed ones as their original bytes. Every skipped or malformed message is counted by reason
in :class:`FromBagSummary`; only configuration errors (missing topic, no pose source, no
intrinsics, unresolvable extrinsic) stop the run. The output is written atomically
(:class:`~visloc_core.data.layout.DatasetWriter`): a failed or interrupted run leaves no dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from ...geometry import PinholeCamera, T_from_position_quat_wxyz, interpolate_poses, quat_xyzw_to_wxyz
from ..layout import DatasetWriter
from ..messages import (
    DEFAULT_MAX_PIXELS,
    POSE_TYPES,
    MalformedMessageError,
    PoseSample,
    T_from_samples,
    camera_from_info,
    compressed_image,
    depth_metres,
    pose_from_msg,
    raw_image_pixels,
    stamp_ns,
)
from ..png import encode_png
from .salvage import SalvageError, SalvageReader, storage_files
from .tf_graph import FrameGraph, TFLookupError

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"
WRITER_THREADS = 2  # PNG encoding + file writing threads (beside the reading thread)
# Frames whose poses are interpolated in one call. Small on purpose: every frame waiting holds its
# message buffer (~1 MB for VGA), and many live buffers make the allocator map fresh pages for each
# new message (page faults cost more than the interpolation calls saved); measured on 640x480.
POSE_BATCH = 8
_scratch = threading.local()  # per writer thread: reusable PNG row buffer


class BagError(ValueError):
    """The bag cannot be converted with these options; the message says what to change."""


@dataclass
class FromBagOptions:
    """What to read from the bag. Stamps and gaps in seconds are converted to int ns internally."""

    image_topic: str
    pose_topic: str | None = None  # PoseStamped / PoseWithCovarianceStamped / Odometry / TransformStamped
    pose_tf: tuple[str, str] | None = None  # (PARENT, CHILD): T_PARENT_CHILD from /tf + /tf_static
    camera_info_topic: str | None = None  # None: <image namespace>/camera_info when the bag has it
    depth_topic: str | None = None  # 16UC1 (mm) or 32FC1 (m), registered to the image (same size)
    pose_frame: str | None = None  # frame described by a PoseStamped topic (default base_link)
    camera_frame: str | None = None  # overrides the image header frame_id (must be an optical frame)
    extrinsic: np.ndarray | None = None  # 4x4 T_body_cam (camera optical frame in the body frame); overrides TF
    intrinsics_fxfycxcy: tuple[float, float, float, float] | None = None  # pixels; when the bag has no camera_info
    max_gap_s: float = 0.1  # longest interval between the two pose samples around a frame
    depth_max_dt_s: float = 0.01  # |image stamp - depth stamp| accepted when pairing depth
    stride: int = 1  # keep every stride-th image message
    tf_topic: str = "/tf"
    tf_static_topic: str = "/tf_static"
    scene: str | None = None  # default: the bag folder name
    sequence: str = "seq-01"
    split: str = "train"
    condition: str = "normal"
    png_level: int = 0  # 0: uncompressed PNG (fast, bit-exact); 1-9: smaller files, slower
    # "header": every message's header stamp (the default, what drivers should set). "bag": the
    # time each message was recorded, for drivers that leave header stamps at zero; recording
    # delays then go into the poses (seconds of latency = metres at speed), so prefer headers.
    stamps: str = "header"
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused from their header, before decoding

    def __post_init__(self) -> None:
        if self.stamps not in ("header", "bag"):
            raise BagError(f"--stamps must be 'header' or 'bag', got {self.stamps!r}")
        if (self.pose_topic is None) == (self.pose_tf is None):
            raise BagError("give exactly one pose source: --pose-topic TOPIC or --pose-tf PARENT:CHILD")
        if self.max_gap_s <= 0:
            raise BagError(f"--max-gap must be > 0 seconds, got {self.max_gap_s}")
        if self.stride < 1:
            raise BagError(f"--stride must be >= 1, got {self.stride}")
        if self.extrinsic is not None:
            T = np.asarray(self.extrinsic, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise BagError("the extrinsic must be a finite 4x4 T_body_cam")


@dataclass
class FromBagSummary:
    """What happened: counts of messages seen, frames written and everything skipped, by reason."""

    out: Path | None = None
    n_image_messages: int = 0
    n_frames: int = 0
    n_with_depth: int = 0
    n_pose_samples: int = 0
    n_camera_infos: int = 0
    n_without_depth: int = 0  # frames written without depth although a depth topic was given
    image_bytes: int = 0  # payload bytes of the image messages read (for throughput)
    skipped: Counter = field(default_factory=Counter)  # reason -> count of image frames not written
    malformed: Counter = field(default_factory=Counter)  # "topic: reason" -> count (non-image messages too)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds of pass1, pass2, commit

    def lines(self) -> list[str]:
        out = [
            f"frames written: {self.n_frames} of {self.n_image_messages} image messages"
            + (f" ({self.n_with_depth} with depth)" if self.n_with_depth else ""),
            f"pose samples: {self.n_pose_samples}, camera_info messages: {self.n_camera_infos}",
        ]
        if self.skipped:
            out.append("frames skipped:")
            out += [f"  {n:6d}  {reason}" for reason, n in self.skipped.most_common()]
        if self.malformed:
            out.append("malformed messages (counted, not fatal):")
            out += [f"  {n:6d}  {reason}" for reason, n in self.malformed.most_common()]
        out += [f"note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict:
        return {
            "n_image_messages": self.n_image_messages,
            "n_frames": self.n_frames,
            "n_with_depth": self.n_with_depth,
            "n_pose_samples": self.n_pose_samples,
            "n_camera_infos": self.n_camera_infos,
            "skipped": dict(self.skipped),
            "malformed": dict(self.malformed),
            "notes": list(self.notes),
        }


def parse_extrinsic(text: str) -> np.ndarray:
    """ "x y z qx qy qz qw" (metres; quaternion x, y, z, w as in ROS) -> 4x4 T_body_cam."""
    try:
        vals = [float(v) for v in text.replace(",", " ").split()]
    except ValueError as err:
        raise BagError(f"--extrinsic {text!r}: not numbers ({err})") from err
    if len(vals) != 7 or not np.all(np.isfinite(vals)):
        raise BagError(f'--extrinsic needs 7 finite numbers "x y z qx qy qz qw", got {text!r}')
    q = np.asarray(vals[3:], dtype=np.float64)
    if abs(np.linalg.norm(q) - 1.0) > 1e-3:
        raise BagError(f"--extrinsic quaternion (qx qy qz qw) must have unit norm, |q| = {np.linalg.norm(q):.6g}")
    return T_from_position_quat_wxyz(np.asarray(vals[:3]), quat_xyzw_to_wxyz(q))


def resolve_bag_path(bag: str | Path) -> Path:
    """A rosbag2 folder (with metadata.yaml, or without it when it holds one .db3/.mcap: a recording
    killed before it was closed); a .db3/.mcap file inside one is accepted too."""
    p = Path(bag)
    if not p.exists():
        raise FileNotFoundError(f"bag {p} does not exist")
    if p.is_file():
        if (p.parent / "metadata.yaml").is_file() or storage_files(p.parent) == [p]:
            return p.parent
        raise BagError(f"{p} is a file without metadata.yaml next to it; give the rosbag2 folder")
    if not (p / "metadata.yaml").is_file() and len(storage_files(p)) != 1:
        raise BagError(
            f"{p} is not a rosbag2 folder (no metadata.yaml and {len(storage_files(p))} .db3/.mcap files); "
            "if it is one, `ros2 bag reindex` recreates its metadata.yaml"
        )
    return p


def _default_camera_info_topic(image_topic: str) -> str:
    # /camera/image_raw -> /camera/camera_info ; /camera/image_raw/compressed -> /camera/camera_info
    parts = image_topic.rstrip("/").split("/")
    if parts[-1] in ("compressed", "compressedDepth", "theora"):
        parts = parts[:-1]
    return "/".join(parts[:-1] + ["camera_info"])


class _PoseSeries:
    """Poses of one topic: sorted, duplicate stamps dropped (last wins), interpolated on demand."""

    def __init__(self, samples: list[PoseSample]) -> None:
        by_stamp: dict[int, PoseSample] = {s.stamp_ns: s for s in samples}  # the last of equal stamps wins
        self.stamps = np.array(sorted(by_stamp), dtype=np.int64)
        self.T = T_from_samples([by_stamp[int(t)] for t in self.stamps])

    def at(self, stamps_ns: np.ndarray, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        return interpolate_poses(self.stamps, self.T, stamps_ns, max_gap_ns)


def _connections(reader: AnyReader, topic: str | None) -> list:
    if topic is None:
        return []
    return [c for c in reader.connections if c.topic == topic]


def _topics_listing(reader: AnyReader) -> str:
    return ", ".join(f"{t} ({info.msgtype})" for t, info in sorted(reader.topics.items()))


def dataset_from_bag(
    bag: str | Path,
    out: str | Path,
    options: FromBagOptions,
    overwrite: bool = False,
    progress: bool = True,
) -> FromBagSummary:
    """Convert ``bag`` into a visloc dataset at ``out`` (see the module docstring). Returns the summary.

    A damaged bag (truncated .mcap or .db3, no metadata.yaml) is converted as far as it is readable
    (bags/salvage.py); the summary's notes say what was lost and how to repair the file."""
    bag_path = resolve_bag_path(bag)
    reader = open_bag(bag_path)
    try:
        try:
            return _convert(bag_path, out, options, overwrite, progress, reader)
        except BagReadError as err:  # rosbags failed half-way through: again, reading what is readable
            reader.close()
            log.warning("%s: reading failed part-way (%s); converting what is readable", bag_path, err)
            try:
                reader = SalvageReader(bag_path, str(err))
            except SalvageError as err2:
                raise BagError(f"cannot read bag {bag_path}: {err}; {err2}") from err
            return _convert(bag_path, out, options, overwrite, progress, reader)
    except BagError as err:
        if isinstance(reader, SalvageReader) and not isinstance(err, BagReadError):
            raise BagError(f"{err}\n" + "\n".join(reader.report)) from err
        raise
    finally:
        reader.close()


class BagReadError(BagError):
    """rosbags failed while reading messages (a damaged storage file)."""


class _CheckedReader:
    """rosbags' AnyReader whose message iteration turns storage errors into :class:`BagReadError`."""

    def __init__(self, reader: AnyReader) -> None:
        self._reader = reader

    def __getattr__(self, name: str):
        return getattr(self._reader, name)

    def messages(self, connections=()):
        it = iter(self._reader.messages(connections=connections))
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as err:  # sqlite/apsw, mcap, struct, CDR errors of a damaged file
                raise BagReadError(f"{type(err).__name__}: {err}") from err
            yield item


def open_bag(bag_path: Path):
    """rosbags' AnyReader when it reads the bag, else a :class:`SalvageReader` of what is readable."""
    reason = "no metadata.yaml"
    if (bag_path / "metadata.yaml").is_file():
        try:
            reader = AnyReader([bag_path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            reader.open()
            return _CheckedReader(reader)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # AnyReaderError, or a storage error while opening
            reason = str(err)
    try:
        salvage = SalvageReader(bag_path, reason)
    except SalvageError as err:
        raise BagError(f"cannot open bag {bag_path}: {reason}; {err}") from err
    log.warning("bag %s is damaged (%s): converting what is readable", bag_path, reason)
    return salvage


def _convert(
    bag_path: Path, out: str | Path, o: FromBagOptions, overwrite: bool, progress: bool, reader
) -> FromBagSummary:
    """One conversion of ``reader`` (rosbags' or the salvage reader of ``bag_path``) into ``out``:
    topics checked, pass 1 (poses, TF, camera_info), pass 2 (images and depth, written as frames)."""
    summary = FromBagSummary()
    if isinstance(reader, SalvageReader):
        summary.notes.extend(reader.report)
    max_gap_ns = round(o.max_gap_s * 1e9)
    scene = o.scene or bag_path.name
    img_conns, depth_conns, info_conns, info_topic = _checked_topics(reader, o)

    # ---------------------------------------------------------------- pass 1: small topics
    t_start = time.perf_counter()
    graph, pose_samples, cams = _read_small_topics(reader, o, info_conns, info_topic, summary)
    world, body, world_body, pose_skip_reason = _pose_source(o, graph, pose_samples, max_gap_ns, summary)
    source = _source_manifest(bag_path, o, info_topic, world, body)

    # ---------------------------------------------------------------- pass 2: images
    t_pass2 = time.perf_counter()
    summary.timings["pass1_s"] = t_pass2 - t_start
    writer = DatasetWriter(out, source=source, overwrite=overwrite)
    with writer:
        writer.set_scene(scene)
        writer.set_sequence(scene, o.sequence, condition=o.condition)
        writer.set_split(o.split, [f"{scene}/{o.sequence}"])
        _write_images(
            reader, writer, o, scene, img_conns, depth_conns, cams, graph, body, source, world_body,
            pose_skip_reason, summary, progress,
        )  # fmt: skip
        _add_notes(o, summary)
        if summary.n_frames == 0:
            raise BagError(
                "no frame could be written:\n"
                + "\n".join(summary.lines())
                + "\n(check --max-gap, the pose source and the image topic)"
            )
        summary.timings["pass2_s"] = time.perf_counter() - t_pass2
        writer.manifest["source"]["summary"] = summary.to_dict()
        t_commit = time.perf_counter()
    summary.timings["commit_s"] = time.perf_counter() - t_commit
    summary.out = Path(out)
    for line in summary.lines():
        log.info(line)
    log.debug("timings: %s", {k: round(v, 3) for k, v in summary.timings.items()})
    return summary


def _checked_topics(reader, o: FromBagOptions) -> tuple[list, list, list, str | None]:
    """The connections of the image, depth and camera_info topics and the camera_info topic used
    (``o.camera_info_topic``, else the one beside the image topic if recorded, else None); BagError
    when a requested topic is missing or has the wrong type, or there are no intrinsics."""
    img_conns = _connections(reader, o.image_topic)
    if not img_conns:
        raise BagError(f"image topic {o.image_topic!r} is not in the bag; topics: {_topics_listing(reader)}")
    img_type = img_conns[0].msgtype
    if img_type not in (IMAGE_TYPE, COMPRESSED_TYPE):
        raise BagError(f"{o.image_topic} has type {img_type}; need {IMAGE_TYPE} or {COMPRESSED_TYPE}")
    depth_conns = _connections(reader, o.depth_topic)
    if o.depth_topic and not depth_conns:
        raise BagError(f"depth topic {o.depth_topic!r} is not in the bag; topics: {_topics_listing(reader)}")
    if depth_conns and depth_conns[0].msgtype != IMAGE_TYPE:
        raise BagError(f"{o.depth_topic} has type {depth_conns[0].msgtype}; need {IMAGE_TYPE} (16UC1 or 32FC1)")
    info_topic = o.camera_info_topic
    if info_topic is None:
        guess = _default_camera_info_topic(o.image_topic)
        info_topic = guess if _connections(reader, guess) else None
    info_conns = _connections(reader, info_topic)
    if o.camera_info_topic and not info_conns:
        raise BagError(
            f"camera_info topic {o.camera_info_topic!r} is not in the bag; topics: {_topics_listing(reader)}"
        )
    if not info_conns and o.intrinsics_fxfycxcy is None:
        raise BagError(
            f"no camera_info found for {o.image_topic} (tried {_default_camera_info_topic(o.image_topic)}); "
            "pass --camera-info-topic or --intrinsics"
        )
    return img_conns, depth_conns, info_conns, info_topic


def _read_small_topics(
    reader, o: FromBagOptions, info_conns: list, info_topic: str | None, summary: FromBagSummary
) -> tuple[FrameGraph, list[PoseSample], list[tuple[int, PinholeCamera]]]:
    """Pass 1: the pose topic, TF and camera_info read into (TF graph, pose samples, cameras as
    (stamp ns, camera) where the calibration changes, sorted by stamp); malformed messages counted
    in ``summary``. BagError when the pose source is missing or no camera_info is usable."""
    graph = FrameGraph()
    pose_samples: list[PoseSample] = []
    cams: list[tuple[int, PinholeCamera]] = []  # (stamp, camera) where the calibration changes
    cam_cache: dict[tuple, PinholeCamera] = {}
    info_errors: dict[str, str] = {}  # reason -> full message of refused camera_info
    n_infos = 0
    static_conns = _connections(reader, o.tf_static_topic)
    tf_conns = _connections(reader, o.tf_topic) if o.pose_tf else []
    pose_conns = _connections(reader, o.pose_topic)
    if o.pose_topic:
        if not pose_conns:
            raise BagError(f"pose topic {o.pose_topic!r} is not in the bag; topics: {_topics_listing(reader)}")
        if pose_conns[0].msgtype not in POSE_TYPES:
            raise BagError(f"{o.pose_topic} has type {pose_conns[0].msgtype}; supported: {', '.join(POSE_TYPES)}")
    elif not tf_conns and not static_conns:
        raise BagError(f"--pose-tf needs {o.tf_topic} and/or {o.tf_static_topic}; topics: {_topics_listing(reader)}")
    pose_topic_ids = {c.id for c in pose_conns}
    for conn, bag_t_ns, raw in reader.messages(connections=pose_conns + tf_conns + static_conns + info_conns):
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as err:  # rosbags raises several types for broken CDR
            summary.malformed[f"{conn.topic}: cannot deserialize"] += 1
            log.debug("%s: %s", conn.topic, err)
            continue
        try:
            if conn.id in pose_topic_ids:
                sample = pose_from_msg(msg, conn.msgtype)
                pose_samples.append(dataclasses.replace(sample, stamp_ns=_msg_time(o, sample.stamp_ns, bag_t_ns)))
            elif conn.msgtype == CAMERA_INFO_TYPE:
                # camera_info repeats with every image: build (and check) each distinct one once
                key = (msg.width, msg.height, msg.distortion_model, msg.k.tobytes(), msg.d.tobytes(),
                       msg.binning_x, msg.binning_y, msg.roi.width, msg.roi.height)  # fmt: skip
                if key not in cam_cache:
                    try:
                        cam_cache[key] = camera_from_info(msg)
                    except MalformedMessageError as err:
                        info_errors[err.reason] = str(err)  # the full text (with what to do) for the error below
                        raise
                if not cams or cams[-1][1] is not cam_cache[key]:
                    cams.append((_msg_time(o, stamp_ns(msg.header), bag_t_ns), cam_cache[key]))
                n_infos += 1
            elif conn.msgtype == TF_TYPE:
                static = conn.topic == o.tf_static_topic
                for tr in msg.transforms:
                    try:
                        sample = pose_from_msg(tr, "geometry_msgs/msg/TransformStamped")
                        sample = dataclasses.replace(sample, stamp_ns=_msg_time(o, sample.stamp_ns, bag_t_ns))
                        graph.add(sample.parent, sample.child, sample, sample.stamp_ns, static)
                    except MalformedMessageError as err:
                        summary.malformed[f"{conn.topic}: {err.reason}"] += 1
                    except ValueError as err:
                        summary.malformed[f"{conn.topic}: invalid transform ({err})"] += 1
        except MalformedMessageError as err:
            summary.malformed[f"{conn.topic}: {err.reason}"] += 1
            log.debug("%s: %s", conn.topic, err)

    summary.n_camera_infos = n_infos
    if info_conns and not cams and o.intrinsics_fxfycxcy is None:
        raise BagError(
            f"{info_topic} has no usable camera_info message: {'; '.join(info_errors.values()) or 'none read'}"
        )
    cams.sort(key=lambda c: c[0])
    return graph, pose_samples, cams


def _pose_source(
    o: FromBagOptions, graph: FrameGraph, pose_samples: list[PoseSample], max_gap_ns: int, summary: FromBagSummary
):
    """The pose source: (world frame, body frame, ``world_body(stamps ns) -> (T_world_body (N,4,4),
    valid (N,))``, ``pose_skip_reason(stamp ns) -> str`` for the summary) from the pose topic's
    samples or the TF ``graph`` (``--pose-tf``); poses further than ``max_gap_ns`` from a sample are
    invalid."""
    if o.pose_topic:
        if not pose_samples:
            raise BagError(f"pose topic {o.pose_topic} has no usable message")
        series = _PoseSeries(pose_samples)
        summary.n_pose_samples = int(series.stamps.size)
        world = pose_samples[0].parent
        body = o.pose_frame or pose_samples[0].child or "base_link"
        if len({s.parent for s in pose_samples}) > 1:
            raise BagError(f"{o.pose_topic} mixes frames {sorted({s.parent for s in pose_samples})}")

        def world_body(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return series.at(stamps, max_gap_ns)

        def pose_skip_reason(stamp: int) -> str:
            # The summary tells "outside the recording of poses" apart from "a hole in it".
            if stamp < series.stamps[0] or stamp > series.stamps[-1]:
                return "no pose: image stamp outside the time range of the pose topic"
            return f"no pose: gap between pose samples > --max-gap {o.max_gap_s} s"
    else:
        world, body = (f.lstrip("/") for f in o.pose_tf)
        try:
            graph.path(world, body)
        except TFLookupError as err:
            raise BagError(f"--pose-tf {world}:{body}: {err}") from err
        summary.n_pose_samples = graph.n_dynamic_samples

        def world_body(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return graph.lookup(world, body, stamps, max_gap_ns)

        def pose_skip_reason(stamp: int) -> str:
            return (
                f"no pose: TF {world}->{body} not available at the image stamp "
                f"(outside the recorded transforms or a gap > --max-gap {o.max_gap_s} s)"
            )

    return world, body, world_body, pose_skip_reason


def _source_manifest(bag_path: Path, o: FromBagOptions, info_topic: str | None, world: str, body: str) -> dict:
    """The dataset manifest's ``source`` entry: where the frames and poses came from."""
    return {
        "type": "rosbag2",
        "path": str(bag_path.resolve()),
        "storage": _storage_of(bag_path),
        "image_topic": o.image_topic,
        "camera_info_topic": info_topic,
        "depth_topic": o.depth_topic,
        "pose_source": o.pose_topic or f"tf {world}:{body}",
        "world_frame": world,
        "body_frame": body,
        "max_gap_s": o.max_gap_s,
        "stamps": "image header stamps" if o.stamps == "header" else "bag record times (--stamps bag)",
    }


def _write_images(
    reader,
    writer: DatasetWriter,
    o: FromBagOptions,
    scene: str,
    img_conns: list,
    depth_conns: list,
    cams: list[tuple[int, PinholeCamera]],
    graph: FrameGraph,
    body: str,
    source: dict,
    world_body,
    pose_skip_reason,
    summary: FromBagSummary,
    progress: bool,
) -> None:
    """Pass 2: every image (each ``o.stride``-th) given its pose (``world_body`` @ the camera
    extrinsic) and the depth image nearest in time, then written to ``writer`` by worker threads;
    counts in ``summary``."""
    depth_dt_ns = round(o.depth_max_dt_s * 1e9)
    cam_stamps = np.array([c[0] for c in cams], dtype=np.int64)
    resolved: dict[str, dict] = {}  # image frame_id -> {"fn": stamps -> (T_body_cam, valid)}

    def body_cam(frame_id: str, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if frame_id not in resolved:
            resolved[frame_id] = _resolve_extrinsic(o, graph, body, frame_id, source)
        return resolved[frame_id]["fn"](stamps)

    # Encoding and writing run on worker threads (numpy copies, zlib, crc32 and file writes
    # release the GIL), overlapping with reading and deserializing the next messages in this
    # thread. PNGs are encoded and written in parallel (DatasetWriter.add_frame is thread-safe
    # and writes its files unlocked). At most `max_inflight` frames wait in memory (few: see
    # POSE_BATCH).
    pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="from-bag-writer")
    inflight: deque = deque()
    max_inflight = 2 * WRITER_THREADS
    pending: deque = deque()  # images waiting for their depth: (bag_t, stamp, frame dict)
    depths: deque = deque()  # recent depth images: (bag_t, stamp, depth_m)
    batch: list[tuple[int, dict]] = []  # decoded frames waiting for their pose: (bag_t, frame)
    seen_stamps: set[int] = set()
    n_total = sum(c.msgcount for c in img_conns)
    img_ids = {c.id for c in img_conns}
    bar = tqdm(total=n_total, unit="img", desc="from-bag", disable=not progress)
    index = -1
    window_ns = max(depth_dt_ns, 1_000_000_000)  # bag-time window to wait for a matching depth

    def emit(frame: dict, depth_m: np.ndarray | None) -> None:
        if depth_m is not None and depth_m.shape != (frame["camera"].height, frame["camera"].width):
            summary.malformed[f"{o.depth_topic}: size differs from the colour image"] += 1
            depth_m = None
        while len(inflight) >= max_inflight:
            inflight.popleft().result()  # re-raises a failure of the worker here
        inflight.append(pool.submit(_write_frame, writer, o, scene, frame, depth_m))
        summary.n_frames += 1
        summary.n_with_depth += depth_m is not None

    def flush(now_bag_t: int | None) -> None:
        # Frames whose depth did not arrive within the window are written without depth.
        while pending and (now_bag_t is None or now_bag_t - pending[0][0] > window_ns):
            _, _, fr = pending.popleft()
            summary.n_without_depth += 1
            emit(fr, None)
        while depths and now_bag_t is not None and now_bag_t - depths[0][0] > window_ns:
            depths.popleft()

    def process_batch() -> None:
        # Poses of a batch of frames in one vectorised interpolation (one call per frame
        # would cost more than reading the image).
        if not batch:
            return
        stamps = np.array([fr["stamp"] for _, fr in batch], dtype=np.int64)
        T_wb, ok_wb = world_body(stamps)
        T_bc, ok_bc = body_cam(batch[0][1]["frame_id"], stamps)
        for k, (bag_t, fr) in enumerate(batch):
            if not ok_wb[k]:
                summary.skipped[pose_skip_reason(fr["stamp"])] += 1
                continue
            if not ok_bc[k]:
                summary.skipped["no camera extrinsic (TF) within --max-gap of the stamp"] += 1
                continue
            fr["T_world_cam"] = T_wb[k] @ T_bc[k]
            if not depth_conns:
                emit(fr, None)
                continue
            match = _nearest(depths, fr["stamp"], depth_dt_ns)
            if match is not None:
                emit(fr, match)
            else:
                pending.append((bag_t, fr["stamp"], fr))
            flush(bag_t)
        batch.clear()

    try:
        for conn, bag_t, raw in reader.messages(connections=img_conns + depth_conns):
            if conn.id in img_ids:
                index += 1
                bar.update(1)
                summary.n_image_messages += 1
                summary.image_bytes += len(raw)
                if index % o.stride:
                    summary.skipped[f"--stride {o.stride}"] += 1
                    continue
                frame = _image_frame(reader, conn, raw, index, o, cams, cam_stamps, summary, bag_t)
                if frame is None:
                    continue
                if frame["stamp"] in seen_stamps:
                    summary.skipped["duplicate image stamp"] += 1
                    continue
                seen_stamps.add(frame["stamp"])
                if batch and frame["frame_id"] != batch[0][1]["frame_id"]:
                    process_batch()  # one extrinsic per batch
                batch.append((bag_t, frame))
                if len(batch) >= POSE_BATCH:
                    process_batch()
                continue
            process_batch()  # depth pairing sees every earlier image
            d = _depth_sample(reader, conn, raw, bag_t, o, summary)
            if d is None:
                continue
            # pair with a waiting image if one is close enough in time
            for i, (_, st, fr) in enumerate(pending):
                if abs(st - d[1]) <= depth_dt_ns:
                    del pending[i]
                    emit(fr, d[2])
                    break
            else:
                depths.append(d)
            flush(bag_t)
        process_batch()
        flush(None)
        while inflight:
            inflight.popleft().result()
    finally:
        # On any failure (or Ctrl-C) stop the worker before the writer removes its folder.
        pool.shutdown(wait=True, cancel_futures=True)
    bar.close()


def _write_frame(writer: DatasetWriter, o: FromBagOptions, scene: str, frame: dict, depth_m: np.ndarray | None) -> None:
    """Write one frame (a worker thread's job): its image as received (compressed) or encoded to PNG
    here, and its depth ``depth_m`` (H, W) in metres or None."""
    if frame["pixels"] is None:
        data = frame["bytes"]
    else:
        if not hasattr(_scratch, "d"):
            _scratch.d = {}
        data = encode_png(frame["pixels"], o.png_level, scratch=_scratch.d)
    writer.add_frame(  # thread-safe; the files are written in parallel
        scene,
        o.sequence,
        frame["name"],
        frame["stamp"],
        frame["T_world_cam"],
        frame["camera"],
        rgb_encoded=data,
        rgb_ext=frame["ext"],
        depth_m_HW=depth_m,
    )


def _depth_sample(reader, conn, raw, bag_t: int, o: FromBagOptions, summary: FromBagSummary) -> tuple | None:
    """A depth message as (bag time ns, stamp ns, depth (H, W) in metres), or None (counted in
    ``summary.malformed``) when it cannot be read."""
    try:
        dmsg = reader.deserialize(raw, conn.msgtype)
        return (bag_t, _msg_time(o, stamp_ns(dmsg.header), bag_t), depth_metres(dmsg, o.max_image_pixels))
    except MalformedMessageError as err:
        summary.malformed[f"{conn.topic}: {err.reason}"] += 1
    except Exception as err:
        summary.malformed[f"{conn.topic}: cannot deserialize"] += 1
        log.debug("%s: %s", conn.topic, err)
    return None


def _add_notes(o: FromBagOptions, summary: FromBagSummary) -> None:
    """Notes on frames written without depth and on images that repeat a header stamp."""
    if summary.n_without_depth:
        summary.notes.append(
            f"{summary.n_without_depth} frames written without depth (no valid depth image within "
            f"{o.depth_max_dt_s} s of their stamp)"
        )
    n_dup = summary.skipped.get("duplicate image stamp", 0)
    if n_dup > summary.n_image_messages // 2:
        summary.notes.append(
            f"{n_dup} of {summary.n_image_messages} images repeat an earlier header stamp: the camera "
            "driver may not stamp its images (header.stamp), which from-bag needs to match poses"
        )


def _storage_of(bag_path: Path) -> str:
    if any(bag_path.glob("*.mcap")):
        return "mcap"
    if any(bag_path.glob("*.db3")):
        return "sqlite3"
    return "unknown"


def _nearest(depths: deque, stamp: int, tol_ns: int) -> np.ndarray | None:
    best, best_dt = None, None
    for i, (_, st, _d) in enumerate(depths):
        dt = abs(st - stamp)
        if dt <= tol_ns and (best_dt is None or dt < best_dt):
            best, best_dt = i, dt
    if best is None:
        return None
    d = depths[best][2]
    del depths[best]
    return d


def _msg_time(o: FromBagOptions, header_ns: int, bag_ns: int) -> int:
    """The time a message stands for: its header stamp, or with ``--stamps bag`` its record time."""
    return bag_ns if o.stamps == "bag" else header_ns


def _image_frame(reader, conn, raw, index, o, cams, cam_stamps, summary, bag_t: int) -> dict | None:
    """Decode one image message into what add_frame needs; counts and returns None when unusable."""
    try:
        msg = reader.deserialize(raw, conn.msgtype)
    except Exception as err:
        summary.skipped["malformed image message (cannot deserialize)"] += 1
        summary.malformed[f"{conn.topic}: cannot deserialize"] += 1
        log.debug("%s: %s", conn.topic, err)
        return None
    try:
        if conn.msgtype == IMAGE_TYPE:
            px = raw_image_pixels(msg, o.max_image_pixels)
            w, h = px.shape[1], px.shape[0]
            data, ext = b"", "png"  # encoded on the writer thread
        else:
            px = None
            data, ext, w, h = compressed_image(msg, o.max_image_pixels)
    except MalformedMessageError as err:
        summary.skipped[f"malformed image: {err.reason}"] += 1
        summary.malformed[f"{conn.topic}: {err.reason}"] += 1
        log.debug("%s message %d: %s", conn.topic, index, err)
        return None
    stamp = _msg_time(o, stamp_ns(msg.header), bag_t)
    if not cams:
        try:
            cam = PinholeCamera(w, h, *o.intrinsics_fxfycxcy)
        except ValueError as err:
            raise BagError(f"--intrinsics: {err}") from err
    else:
        i = int(np.searchsorted(cam_stamps, stamp, side="right")) - 1
        cam = cams[max(i, 0)][1]  # the latest camera_info at or before the image (else the first)
    if (cam.width, cam.height) != (w, h):
        summary.skipped[f"image size {w}x{h} differs from camera_info {cam.width}x{cam.height}"] += 1
        return None
    frame_id = o.camera_frame or str(msg.header.frame_id).lstrip("/")
    return {
        "name": f"frame-{index:06d}",
        "stamp": stamp,
        "camera": cam,
        "bytes": data,
        "pixels": px,
        "ext": ext,
        "frame_id": frame_id,
    }


def _resolve_extrinsic(o: FromBagOptions, graph: FrameGraph, body: str, cam_frame: str, source: dict) -> dict:
    """How T_body_cam is obtained (see the module docstring); records the choice in the manifest source."""
    if o.extrinsic is not None:
        T = np.asarray(o.extrinsic, dtype=np.float64)
        source["extrinsic"] = {"from": "--extrinsic", "T_body_cam": T.tolist()}
        return {"fn": lambda s: (np.broadcast_to(T, (len(s), 4, 4)).copy(), np.ones(len(s), bool))}
    if not cam_frame:
        raise BagError(
            "the image header has no frame_id; pass --camera-frame FRAME (the camera optical frame in TF) "
            'or --extrinsic "x y z qx qy qz qw" (T_body_cam)'
        )
    source["camera_frame"] = cam_frame
    if cam_frame == body:
        source["extrinsic"] = {"from": "identity (the pose source is the camera frame)"}
        return {"fn": lambda s: (np.broadcast_to(np.eye(4), (len(s), 4, 4)).copy(), np.ones(len(s), bool))}
    if o.pose_topic and not (graph.connected(body, cam_frame) and graph.is_static_path(body, cam_frame)):
        raise BagError(
            f"no /tf_static chain from the pose frame {body!r} to the camera frame {cam_frame!r}:\n"
            f"{graph.describe() or '(no static transforms)'}\n"
            'pass --extrinsic "x y z qx qy qz qw" (T_body_cam: camera optical frame in the body frame, '
            "quaternion x y z w), or --pose-frame if the pose topic describes another frame"
        )
    try:
        graph.path(body, cam_frame)
    except TFLookupError as err:
        raise BagError(f"camera extrinsic: {err}\npass --extrinsic or --camera-frame") from err
    if graph.is_static_path(body, cam_frame):
        T = graph.lookup(body, cam_frame, np.array([0]))[0][0]
        source["extrinsic"] = {"from": f"tf_static {body} -> {cam_frame}", "T_body_cam": T.tolist()}
        return {"fn": lambda s: (np.broadcast_to(T, (len(s), 4, 4)).copy(), np.ones(len(s), bool))}
    source["extrinsic"] = {"from": f"tf {body} -> {cam_frame} (time-varying, interpolated)"}
    max_gap_ns = round(o.max_gap_s * 1e9)
    return {"fn": lambda s: graph.lookup(body, cam_frame, s, max_gap_ns)}
