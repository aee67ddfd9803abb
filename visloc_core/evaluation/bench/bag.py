"""``visloc bench bag``: ``visloc dataset from-bag`` throughput vs a plain ``rosbags`` read of the same bag.

The bag (made here unless ``--bag`` is given): ``--frames`` (300) images of ``--width`` x
``--height`` (640x480) rgb8 at 30 Hz on /camera/image_raw, camera_info, a 100 Hz PoseStamped ground
truth of base_link and /tf_static base_link -> camera_link -> camera_optical_frame, written with
rosbags' Writer (version 9) for each storage in ``--storage``.

Two timings per bag, alternated over ``--repeats`` runs (the median is reported), both starting
from a warm page cache:

- ``plain``: open the bag with rosbags' AnyReader, read and deserialize every message of the image
  topic and view its data as an (H, W, 3) array — the least any converter must do;
- ``from_bag``: :func:`visloc_core.data.bags.read.dataset_from_bag` on the same bag (both passes,
  pose interpolation, lossless PNG encoding, writing the dataset and committing it atomically).

Throughput is image payload bytes / wall time (MB = 1e6 bytes); ``ratio = from_bag MB/s / plain
MB/s`` (target >= 0.5). The CPU seconds of both (all threads, user + system) are reported too:
on a shared machine wall time includes waiting for a core. Nothing is asserted: the numbers are
measured and returned.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HELP = "from-bag throughput (MB/s) vs a plain rosbags read+deserialize of the same bag (target >= 0.5x)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", default=None, help="use this rosbag2 folder instead of making one")
    parser.add_argument("--image-topic", default="/camera/image_raw", help="image topic (with --bag)")
    parser.add_argument(
        "--pose-topic", default="/ground_truth/pose", help="pose topic for from-bag (with --bag; or use --pose-tf)"
    )
    parser.add_argument("--pose-tf", default=None, metavar="PARENT:CHILD", help="TF pose source (with --bag)")
    parser.add_argument("--frames", type=int, default=300, help="images in the generated bag")
    parser.add_argument("--width", type=int, default=640, help="image width of the generated bag")
    parser.add_argument("--height", type=int, default=480, help="image height of the generated bag")
    parser.add_argument(
        "--storage", default="both", choices=["sqlite3", "mcap", "both"], help="storage plugin(s) of the generated bag"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each reader (median reported)")
    parser.add_argument("--png-level", type=int, default=0, help="from-bag --png-level (0 = uncompressed PNG)")
    parser.add_argument("--work", default=None, help="folder for the bags and datasets (default: a temp folder)")


def make_bench_bag(path: Path, storage: str, n_frames: int, width: int, height: int) -> int:
    """Write the benchmark bag; returns the image payload in bytes (sum of serialized messages)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from skimage import data as skdata

    from ...geometry import ROS_OPTICAL_TO_BODY, T_from_R_t, position_quat_wxyz_from_T, quat_wxyz_to_xyzw
    from ...geometry.quaternion import R_from_rotvec

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]

    def header(t: int, frame: str):
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9), frame_id=frame
        )

    def pose(Tm: np.ndarray):
        p, q = position_quat_wxyz_from_T(Tm)
        x, y, z, w = (float(v) for v in quat_wxyz_to_xyzw(q))
        return T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2])),
            orientation=T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w),
        )

    def transform(parent: str, child: str, Tm: np.ndarray):
        p = pose(Tm)
        return T["geometry_msgs/msg/TransformStamped"](
            header=header(0, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=p.position.x, y=p.position.y, z=p.position.z),
                rotation=p.orientation,
            ),
        )

    # A real photograph panned across the frame, so the images are not trivially compressible.
    src = np.ascontiguousarray(skdata.astronaut())
    big = np.tile(src, (max(1, -(-height // src.shape[0])) + 1, max(1, -(-width // src.shape[1])) + 1, 1))
    K = np.array([[0.8 * width, 0, (width - 1) / 2], [0, 0.8 * width, (height - 1) / 2], [0, 0, 1.0]])
    P = np.zeros((3, 4))
    P[:3, :3] = K
    payload = 0
    t0 = 1_000_000_000
    with Writer(path, version=9, storage_plugin=plugin) as w:
        c_img = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection("/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pose = w.add_connection("/ground_truth/pose", "geometry_msgs/msg/PoseStamped", typestore=ts)
        c_tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        T_base_link = T_from_R_t(R_from_rotvec(np.array([0.0, 0.1, 0.0])), np.array([0.2, 0.0, 0.5]))
        tf = T["tf2_msgs/msg/TFMessage"](
            transforms=[
                transform("base_link", "camera_link", T_base_link),
                transform("camera_link", "camera_optical_frame", ROS_OPTICAL_TO_BODY),
            ]
        )
        w.write(c_tf, t0, ts.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
        dt_img = 1_000_000_000 // 30
        n_pose = n_frames * dt_img // 10_000_000 + 2
        for k in range(n_pose):  # 100 Hz ground truth covering every image
            t = t0 + k * 10_000_000
            s = (t - t0) * 1e-9
            Tm = T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.3 * s])), np.array([np.cos(s), np.sin(s), 0.0]))
            msg = T["geometry_msgs/msg/PoseStamped"](header=header(t, "map"), pose=pose(Tm))
            w.write(c_pose, t, ts.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped"))
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        for i in range(n_frames):
            t = t0 + 5_000_000 + i * dt_img
            ox, oy = (7 * i) % (big.shape[1] - width), (3 * i) % (big.shape[0] - height)
            img = np.ascontiguousarray(big[oy : oy + height, ox : ox + width])
            msg = T["sensor_msgs/msg/Image"](
                header=header(t, "camera_optical_frame"),
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=3 * width,
                data=img.reshape(-1),
            )
            raw = ts.serialize_cdr(msg, "sensor_msgs/msg/Image")
            payload += len(raw)
            w.write(c_img, t, raw)
            info = T["sensor_msgs/msg/CameraInfo"](
                header=header(t, "camera_optical_frame"),
                height=height,
                width=width,
                distortion_model="plumb_bob",
                d=np.zeros(5),
                k=K.reshape(9),
                r=np.eye(3).reshape(9),
                p=P.reshape(12),
                binning_x=0,
                binning_y=0,
                roi=roi,
            )
            w.write(c_info, t, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
    return payload


def plain_read(bag: Path, image_topic: str) -> tuple[int, int]:
    """Read + deserialize every image message, viewing each as (H, W, C). Returns (messages, payload bytes)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    n = payload = 0
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        conns = [c for c in reader.connections if c.topic == image_topic]
        if not conns:
            raise ValueError(f"{bag}: no topic {image_topic}")
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype == "sensor_msgs/msg/Image":
                rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
                img = rows[:, : msg.width * (msg.step // msg.width)].reshape(msg.height, msg.width, -1)
                assert img.size > 0
            n += 1
            payload += len(raw)
    return n, payload


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(args: argparse.Namespace) -> dict:
    from ...data.bags.read import FromBagOptions, dataset_from_bag
    from .timing import machine_info

    work_tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work_tmp = tempfile.mkdtemp(prefix="visloc-bench-bag-")
        work = Path(work_tmp)
    try:
        bags: list[tuple[str, Path]] = []
        if args.bag:
            from ...data.bags.read import resolve_bag_path

            bags.append(("given", resolve_bag_path(args.bag)))
        else:
            for storage in ["sqlite3", "mcap"] if args.storage == "both" else [args.storage]:
                path = work / f"bench_{storage}"
                if path.exists():
                    shutil.rmtree(path)
                t = time.perf_counter()
                size = make_bench_bag(path, storage, args.frames, args.width, args.height)
                log.info("wrote %s: %.0f MB of images in %.2f s", path, size / 1e6, time.perf_counter() - t)
                bags.append((storage, path))
        results = {}
        for name, bag in bags:
            if args.pose_tf:
                parent, child = args.pose_tf.split(":")
                opts = FromBagOptions(image_topic=args.image_topic, pose_tf=(parent, child), png_level=args.png_level)
            else:
                opts = FromBagOptions(
                    image_topic=args.image_topic, pose_topic=args.pose_topic, png_level=args.png_level
                )
            plain_s, conv_s, plain_cpu, conv_cpu = [], [], [], []
            n_msgs = payload = n_frames = 0
            plain_read(bag, args.image_topic)  # warm the page cache (and imports) for both
            for r in range(args.repeats):
                t, c = time.perf_counter(), _cpu_s()
                n_msgs, payload = plain_read(bag, args.image_topic)
                plain_s.append(time.perf_counter() - t)
                plain_cpu.append(_cpu_s() - c)
                out = work / f"ds_{name}_{r}"
                t, c = time.perf_counter(), _cpu_s()
                summary = dataset_from_bag(bag, out, opts, overwrite=True, progress=False)
                conv_s.append(time.perf_counter() - t)
                conv_cpu.append(_cpu_s() - c)
                n_frames = summary.n_frames
                shutil.rmtree(out, ignore_errors=True)
            p, c = float(np.median(plain_s)), float(np.median(conv_s))
            results[name] = {
                "bag": str(bag) if (args.bag or args.work) else "(generated in a temporary folder, removed)",
                "image_messages": n_msgs,
                "frames_written": n_frames,
                "image_payload_mb": payload / 1e6,
                "plain_s": plain_s,
                "from_bag_s": conv_s,
                "plain_mb_s": payload / 1e6 / p,
                "from_bag_mb_s": payload / 1e6 / c,
                "from_bag_ms_per_frame": 1e3 * c / max(n_msgs, 1),
                "ratio": p / c,  # from_bag MB/s / plain MB/s
                # CPU seconds of the whole process (all threads, user + system): on a shared machine
                # wall time includes waiting for a core; this says how much work each did
                "plain_cpu_s": float(np.median(plain_cpu)),
                "from_bag_cpu_s": float(np.median(conv_cpu)),
                "cpu_ratio": float(np.median(plain_cpu) / np.median(conv_cpu)),
                "target_ratio": 0.5,
            }
            log.info(
                "%s: plain %.0f MB/s, from-bag %.0f MB/s, ratio %.2f",
                name,
                results[name]["plain_mb_s"],
                results[name]["from_bag_mb_s"],
                results[name]["ratio"],
            )
        return {
            "frames": args.frames if not args.bag else None,
            "size": [args.width, args.height] if not args.bag else None,
            "png_level": args.png_level,
            "repeats": args.repeats,
            "results": results,
            "machine": machine_info(),
        }
    finally:
        if work_tmp:
            shutil.rmtree(work_tmp, ignore_errors=True)
