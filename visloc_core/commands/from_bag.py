"""``visloc dataset from-bag BAG --image-topic T (--pose-topic T | --pose-tf PARENT:CHILD) --out DATASET``.

Thin wrapper: the logic is :func:`visloc_core.data.bags.read.dataset_from_bag`.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Make a visloc dataset from a rosbag2 recording (sqlite3 or mcap; read with rosbags, no ROS "
        "needed). Each image gets the camera pose T_world_cam = T_world_body(t) @ T_body_cam at its "
        "header stamp, interpolated from the pose source (linear translation, SLERP rotation). "
        "Malformed messages are counted and skipped; a summary lists everything skipped and why. "
        "The dataset is written atomically: an interrupted run leaves nothing at --out."
    )
    parser.add_argument("bag", metavar="BAG", help="rosbag2 folder (with metadata.yaml)")
    parser.add_argument("--out", required=True, metavar="DATASET", help="output dataset folder")
    parser.add_argument(
        "--image-topic",
        required=True,
        help="sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or sensor_msgs/CompressedImage "
        "(jpeg, png) topic",
    )
    parser.add_argument(
        "--camera-info-topic",
        default=None,
        help="sensor_msgs/CameraInfo topic (default: <image namespace>/camera_info if the bag has it)",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--pose-topic",
        help="pose source topic: geometry_msgs/PoseStamped, PoseWithCovarianceStamped, TransformStamped "
        "or nav_msgs/Odometry; its header.frame_id becomes the world frame",
    )
    src.add_argument(
        "--pose-tf",
        metavar="PARENT:CHILD",
        help="pose source from /tf + /tf_static: the chain PARENT -> ... -> CHILD (e.g. map:base_link), "
        "composed and interpolated at each image stamp",
    )
    parser.add_argument(
        "--pose-frame",
        default=None,
        help="frame whose pose a PoseStamped/PoseWithCovarianceStamped topic carries (these messages do not "
        "say); default: Odometry/TransformStamped child_frame_id, else base_link",
    )
    parser.add_argument(
        "--camera-frame",
        default=None,
        help="camera OPTICAL frame in TF (z forward, x right, y down); default: the image header frame_id",
    )
    parser.add_argument(
        "--extrinsic",
        default=None,
        metavar='"x y z qx qy qz qw"',
        help="T_body_cam: the camera optical frame in the pose frame, translation in metres and quaternion in "
        "ROS order (qx qy qz qw, scalar LAST). Default: identity if the image frame is the pose frame, else "
        "the /tf_static chain from the pose frame to the image frame",
    )
    parser.add_argument(
        "--intrinsics",
        default=None,
        metavar='"fx fy cx cy"',
        help="pinhole intrinsics (pixels, at the image size) when the bag has no camera_info",
    )
    parser.add_argument(
        "--depth-topic",
        default=None,
        help="depth image topic registered to the colour image: 16UC1 (millimetres) or 32FC1 (metres)",
    )
    parser.add_argument(
        "--depth-max-dt",
        type=float,
        default=0.01,
        help="seconds between image and depth stamps to pair them (default 0.01)",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        default=0.1,
        help="seconds: a frame is kept only if it lies on a pose sample or between two pose samples at most "
        "this far apart (no extrapolation); others are skipped and counted (default 0.1)",
    )
    parser.add_argument("--stride", type=int, default=1, help="keep every N-th image message (default 1)")
    parser.add_argument("--scene", default=None, help="scene name (default: the bag folder name)")
    parser.add_argument("--sequence", default="seq-01", help="sequence name (default seq-01)")
    parser.add_argument("--split", default="train", help="split the sequence is listed in: train (default), test, ...")
    parser.add_argument(
        "--condition", default="normal", help="appearance condition of the sequence (day, night, ...; default normal)"
    )
    parser.add_argument("--tf-topic", default="/tf", help="dynamic TF topic (default /tf)")
    parser.add_argument("--tf-static-topic", default="/tf_static", help="static TF topic (default /tf_static)")
    parser.add_argument(
        "--png-level",
        type=int,
        default=0,
        choices=range(10),
        metavar="0-9",
        help="PNG compression of raw images: 0 writes uncompressed PNGs (fastest, same size as the bag), "
        "1-9 deflate (smaller, slower). Always lossless (default 0)",
    )
    parser.add_argument(
        "--stamps",
        choices=("header", "bag"),
        default="header",
        help="time of each message: its header stamp (default), or when the bag recorded it ('bag', for "
        "drivers that leave header stamps at zero; recording delays then shift the poses)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=40_000_000,
        help="images with more pixels are refused (counted) from their header, before decoding (default 40e6)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _intrinsics(text: str) -> tuple[float, float, float, float]:
    """ "fx fy cx cy" in pixels; the image size comes from each image."""
    try:
        fx, fy, cx, cy = (float(v) for v in text.replace(",", " ").split())
    except ValueError as err:
        raise ValueError(f'--intrinsics needs 4 numbers "fx fy cx cy", got {text!r}') from err
    return fx, fy, cx, cy


def options_from_args(args: argparse.Namespace):
    """FromBagOptions from the parsed command line."""
    from ..data.bags.read import BagError, FromBagOptions, parse_extrinsic

    pose_tf = None
    if args.pose_tf:
        if args.pose_tf.count(":") != 1 or not all(args.pose_tf.split(":")):
            raise BagError(f"--pose-tf needs PARENT:CHILD (e.g. map:base_link), got {args.pose_tf!r}")
        pose_tf = tuple(args.pose_tf.split(":"))
    return FromBagOptions(
        image_topic=args.image_topic,
        pose_topic=args.pose_topic,
        pose_tf=pose_tf,
        camera_info_topic=args.camera_info_topic,
        depth_topic=args.depth_topic,
        pose_frame=args.pose_frame,
        camera_frame=args.camera_frame,
        extrinsic=parse_extrinsic(args.extrinsic) if args.extrinsic else None,
        intrinsics_fxfycxcy=_intrinsics(args.intrinsics) if args.intrinsics else None,
        max_gap_s=args.max_gap,
        depth_max_dt_s=args.depth_max_dt,
        stride=args.stride,
        tf_topic=args.tf_topic,
        tf_static_topic=args.tf_static_topic,
        scene=args.scene,
        sequence=args.sequence,
        split=args.split,
        condition=args.condition,
        png_level=args.png_level,
        stamps=getattr(args, "stamps", "header"),
        max_image_pixels=getattr(args, "max_image_pixels", 40_000_000),
    )


def run(args: argparse.Namespace) -> int:
    from ..data.bags.read import dataset_from_bag

    summary = dataset_from_bag(
        args.bag, args.out, options_from_args(args), overwrite=args.overwrite, progress=not args.no_progress
    )
    for line in summary.lines():
        print(line, file=sys.stderr)
    print(f"dataset written to {summary.out}")
    return 0
