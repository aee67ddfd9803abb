#!/usr/bin/env python
"""Make docs/img/rviz_view.png: what RViz shows with config/visloc.rviz, drawn from the real messages.

RViz is not installable on our machines (not on PyPI), so this renders, with matplotlib
(visloc_ros/marker_view.py), the MarkerArray, TF, camera and debug-image messages that a probe node
received over DDS from the real localizer node:
  1. `visloc synth indoor_room` (40 frames per sequence, 320x240) and `visloc map build` with
     config/models/relpose_xfeat.yaml, in --work (kept: a second run reuses them);
  2. the node (base_link, odom, the debug image on) localizes the query sequence, with the camera
     mount on /tf_static and a drifting odometry on /tf, as a robot would publish them;
  3. one figure: markers + TF frames in the map frame, the camera image and the debug image.

    python scripts/rviz_snapshot.py --out docs/img/rviz_view.png [--work runs/rviz_snapshot] [--frames 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _visloc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "visloc_core.cli", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/img/rviz_view.png", help="PNG to write")
    ap.add_argument("--work", default="runs/rviz_snapshot", help="folder for the dataset and the map (reused)")
    ap.add_argument("--frames", type=int, default=8, help="query frames to localize")
    a = ap.parse_args()
    work = Path(a.work)
    data, amap = work / "data", work / "map"
    if not data.exists():
        _visloc("synth", "indoor_room", "--out", str(data), "--max-frames", "40", "--size", "320x240", "--no-progress")
    if not amap.exists():
        _visloc(
            "map", "build", "config/models/relpose_xfeat.yaml", "--data", str(data), "--out", str(amap), "--no-progress"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rclpy
    import tf2_ros
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import Image
    from visualization_msgs.msg import MarkerArray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
    from ros_helpers import Probe

    from visloc_core.data.layout import Dataset
    from visloc_core.geometry import ROS_OPTICAL_TO_BODY, R_from_rotvec, T_from_R_t, invert_T
    from visloc_ros import conversions as conv
    from visloc_ros import marker_view
    from visloc_ros.localizer_node import LocalizerNode

    ds = Dataset(data)
    splits = ds.manifest["splits"]
    split = "test" if "test" in splits else sorted(splits)[-1]
    frames = sorted(ds.frames(split), key=lambda f: (f.scene, f.sequence, f.stamp_ns))
    frames = [f for f in frames if (f.scene, f.sequence) == (frames[0].scene, frames[0].sequence)]  # one path
    frames = frames[:: max(1, len(frames) // (2 * a.frames))][: a.frames]  # along its first half, real stamps
    mount = T_from_R_t(np.eye(3), np.array([0.2, 0.0, 0.3])) @ ROS_OPTICAL_TO_BODY  # base_link -> camera optical
    drift = T_from_R_t(R_from_rotvec(np.array([0.0, 0.0, 0.15])), np.array([0.6, -0.4, 0.0]))  # map -> odom (true)

    rclpy.init()
    params = {
        "model": str(amap.resolve()),
        "base_frame": "base_link",
        "odom_frame": "odom",
        "publish_debug_image": True,
        "image_qos": "reliable",
    }
    node = LocalizerNode(parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in params.items()])
    probe = Probe(name="rviz_snapshot")
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for topic, typ, qos in (
        ("map_markers", MarkerArray, latched),
        ("markers", MarkerArray, 10),
        ("debug_image", Image, 10),
        ("/tf_static", __import__("tf2_msgs.msg", fromlist=["TFMessage"]).TFMessage, latched),
    ):
        probe.node.create_subscription(typ, topic, probe._recorder(topic), qos)
    try:
        assert node.autostart(), "the node did not configure"
        probe.start(node)
        probe.wait_connected()
        static = tf2_ros.StaticTransformBroadcaster(probe.node)
        tfb = tf2_ros.TransformBroadcaster(probe.node)
        cam_frame = "camera_optical"
        static.sendTransform(conv.transform_stamped(mount, "base_link", cam_frame, 0))
        probe.wait_for(lambda: node._tf.has_frame(cam_frame), what="/tf_static at the node")
        last_rgb = None
        for fr in frames:
            stamp = 1_000_000_000_000 + (fr.stamp_ns - frames[0].stamp_ns)
            T_map_base = fr.T_world_cam @ invert_T(mount)
            for dt in (-50_000_000, 0, 50_000_000):  # odometry around the image stamp
                tfb.sendTransform(conv.transform_stamped(invert_T(drift) @ T_map_base, "odom", "base_link", stamp + dt))
            time.sleep(0.05)
            rgb = ds.load_rgb(fr)
            probe.info_pub.publish(conv.camera_to_camera_info(fr.camera, stamp, cam_frame))
            probe.publish_frame(conv.rgb_to_image(rgb, "rgb8", stamp, cam_frame), wait_topic="localization")
            last_rgb = rgb
        probe.wait_for(lambda: probe.count("debug_image") >= len(frames), what="debug images")
        time.sleep(0.5)
        marks = [m for arr in probe.get("map_markers") + probe.get("markers") for m in arr.markers]
        poses = marker_view.tf_poses(probe.get("/tf_static") + probe.get("/tf"), "map")
        dbg = probe.get("debug_image")[-1]
        dbg_rgb = np.frombuffer(bytes(dbg.data), np.uint8).reshape(dbg.height, dbg.width, 3)
        results = probe.get("localization")
    finally:
        node.stop()
        probe.stop()
        node.destroy_node()
        rclpy.try_shutdown()

    fig = plt.figure(figsize=(14, 7.5), dpi=72)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    marker_view.draw_markers(ax, marks)
    marker_view.draw_tf(ax, {f: T for f, T in poses.items() if f in ("map", "odom", "base_link", cam_frame)})
    pts = np.array([T[:3, 3] for T in poses.values()] + [fr.T_world_cam[:3, 3] for fr in frames])
    lo, hi = pts.min(0) - 1.0, pts.max(0) + 1.0
    span = float((hi - lo).max())
    c = 0.5 * (lo + hi)
    ax.set_xlim(c[0] - span / 2, c[0] + span / 2)
    ax.set_ylim(c[1] - span / 2, c[1] + span / 2)
    ax.set_zlim(c[2] - span / 4, c[2] + span / 4)
    ax.view_init(elev=35, azim=-60)
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_title("markers (map keyframes, estimate + 95 % ellipsoid) and TF, fixed frame map", fontsize=9)
    ax2 = fig.add_subplot(2, 2, 2)
    ax2.imshow(last_rgb)
    ax2.set_title(f"Camera /camera/image_raw ({cam_frame})", fontsize=9)
    ax2.axis("off")
    ax3 = fig.add_subplot(2, 2, 4)
    ax3.imshow(dbg_rgb)
    ax3.set_title("debug_image (publish_debug_image:=true)", fontsize=9)
    ax3.axis("off")
    n_loc = sum(r.status == r.LOCALIZED for r in results)
    fig.suptitle(
        f"RViz-compatible render of the messages received over DDS (config/visloc.rviz); "
        f"indoor_room query, {n_loc}/{len(results)} LOCALIZED",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    from PIL import Image as PILImage  # a 256-colour palette: a third of the size, no visible loss here

    PILImage.open(out).convert("RGB").quantize(256).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
