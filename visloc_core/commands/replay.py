"""``visloc replay BAG ARTIFACT --out REPORT_DIR``: a bag through the real localizer node, scored.

The arguments are parsed here; the ROS part (node process, player, sampler) is the ``replay``
plugin of visloc_ros (``visloc.runners`` entry point, visloc_core/plugins.py), loaded only when the
command runs, so the rest of the CLI works without rclpy; the bag plan and the scoring are
evaluation/replay_plan.py and replay_scoring.py. Output: the report of ``visloc eval`` (report.json, frames.csv,
trajectory.png, error_cdf.png) with ``meta.replay`` holding the end-to-end latency (image published
-> result received), the node's own latency, dropped frames, and the node's CPU and memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", metavar="BAG", help="rosbag2 folder or file (sqlite3 or mcap)")
    parser.add_argument("artifact", metavar="ARTIFACT", help="model/map artifact folder for the node")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (created; files replaced)")
    parser.add_argument("--image-topic", help="camera topic, Image or CompressedImage (default: the bag's only one)")
    parser.add_argument("--camera-info-topic", help="CameraInfo topic (default: the bag's only one)")
    parser.add_argument(
        "--gt-topic",
        default="/ground_truth/pose",
        help="ground-truth pose topic (PoseStamped, PoseWithCovarianceStamped or Odometry) of --gt-frame in the map",
    )
    parser.add_argument(
        "--gt-frame",
        default="base_link",
        help="frame whose pose --gt-topic carries; /tf_static must link it to the camera frame (default base_link). "
        "It is also the node's base_frame",
    )
    parser.add_argument(
        "--odom-topic",
        default="/odom",
        help="nav_msgs/Odometry topic fed to the node for map->odom (ignored when the bag has none; '' = off)",
    )
    parser.add_argument("--data", help="take the truth from this visloc dataset instead (frames matched by stamp)")
    parser.add_argument(
        "--scene",
        help="the scene the bag was recorded in: the truth of the scene the node picks (needed with a multi-scene "
        "artifact unless --data gives each frame's scene)",
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="playback speed as a multiple of the bag's rate (default 1.0)"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="lock-step: publish the next image only after the node answered the previous one (no drops; "
        "measures latency without queueing)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the node (cpu, cuda)")
    parser.add_argument("--condition", default="normal", help="condition label of these frames in the report")
    parser.add_argument("--max-frames", type=positive_int, help="replay only the first N images")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra node parameter (YAML value), e.g. --param max_jump_m=2.0; repeatable",
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from .. import plugins
    from ..evaluation.replay_plan import ReplayOptions

    try:
        replay = plugins.load(plugins.RUNNERS, "replay", "visloc replay")
    except plugins.PluginUnavailableError as err:
        print(f"visloc: {err}", file=sys.stderr)
        return 2
    params = {}
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        params[k.strip()] = yaml.safe_load(v)
    if args.rate <= 0:
        raise ValueError(f"--rate must be > 0, got {args.rate}")
    o = ReplayOptions(
        bag=Path(args.bag),
        artifact=Path(args.artifact),
        out=Path(args.out),
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        gt_topic=args.gt_topic,
        gt_frame=args.gt_frame,
        odom_topic=args.odom_topic or None,
        data=Path(args.data) if args.data else None,
        scene=args.scene,
        rate=args.rate,
        wait=args.wait,
        device=args.device,
        condition=args.condition,
        max_frames=args.max_frames,
        node_params=params,
    )
    report = replay(o)
    r = report["meta"]["replay"]
    summary = {
        "frames": report["n_frames"],
        "localized": report["n_localized"],
        "localized_fraction": report["localized_fraction"],
        "precision_of_localized": report["precision"],
        "fallbacks": report["n_fallback"],
        "median_translation_m": report["median_translation_m"],
        "median_rotation_deg": report["median_rotation_deg"],
        "recall": report["recall"],
        "e2e_latency_ms": r["e2e_latency_ms"],
        "node_latency_ms": r["node_latency_ms"],
        "node_resources": r["node_resources"],
        "dropped_or_lost": r["frames_dropped_or_lost"],
    }
    print(json.dumps(summary, indent=2))
    print(f"report: {Path(args.out) / 'report.json'} (frames.csv, trajectory.png, error_cdf.png)")
    return 0
