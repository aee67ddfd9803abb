"""The localizer node's outputs for people: markers for RViz and the debug image (config/visloc.rviz).

Topics (relative to the node's namespace):
  map_markers   visualization_msgs/MarkerArray, transient local (latched), published once at configure:
                a relpose map's keyframes (frusta, centres) or an APR artifact's mapped region
  markers       visualization_msgs/MarkerArray per localization: the estimate (arrow, 95 % covariance
                ellipsoid, status text), also for REJECTED results (orange) and NOT_LOCALIZED (text)
  debug_image   sensor_msgs/Image rgb8, only with ``publish_debug_image``: visloc_ros/debug_image.py
Nothing here is created when ``publish_markers`` and ``publish_debug_image`` are both off, and the debug
image costs nothing when it is off (not composed, no publisher).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from visualization_msgs.msg import MarkerArray

from visloc_core.localizers.base import LocalizationResult, Localizer
from visloc_ros import conversions as conv
from visloc_ros import debug_image, markers


def map_markers(localizer: Localizer, frame_for: Callable[[str], str]) -> list:
    """Keyframe frusta of a relpose map, or the mapped-region boxes of an APR artifact ([] otherwise);
    each scene's in the frame ``frame_for(scene)`` (visloc_ros/scene_frames.py), marker id = the
    scene's index."""
    out = []
    kfs = getattr(localizer, "keyframes", None)
    if kfs:
        T = np.stack([kf.T_world_cam for kf in kfs])
        extent = float(np.ptp(T[:, :3, 3], axis=0).max()) if len(T) > 1 else 1.0
        scene_of = [kf.key.split("/", 1)[0] for kf in kfs]
        for k, scene in enumerate(dict.fromkeys(scene_of)):
            sel = [i for i, s in enumerate(scene_of) if s == scene]
            out += markers.keyframe_markers(T[sel], frame_for(scene), depth_m=float(np.clip(0.03 * extent, 0.05, 0.5)))
            for m in out[-2:]:
                m.id = k
        return out
    for k, s in enumerate(getattr(localizer, "scenes", None) or []):
        if getattr(s, "region_min", None) is not None and getattr(s, "region_max", None) is not None:
            box = (np.asarray(s.region_min, np.float64), np.asarray(s.region_max, np.float64))
            out += markers.region_markers([box], frame_for(s.name))
            out[-1].id = k
    return out


class Visualizer:
    """Publishers of the visual outputs of one configured node; ``close()`` destroys them."""

    def __init__(
        self,
        node,
        localizer: Localizer,
        frame_for: Callable[[str], str],
        publish_markers: bool,
        publish_debug: bool,
    ):
        """``frame_for(scene)``: the map frame of a scene's markers (visloc_ros/scene_frames.py)."""
        self._node, self._frame_for = node, frame_for
        self._markers = self._map = self._debug = None
        self._keyframe_paths: dict[str, str] = {}
        if publish_markers:
            latched = QoSProfile(
                depth=1,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
                reliability=ReliabilityPolicy.RELIABLE,
                history=HistoryPolicy.KEEP_LAST,
            )
            self._map = node.create_publisher(MarkerArray, "map_markers", latched)
            self._map.publish(MarkerArray(markers=map_markers(localizer, frame_for)))
            self._markers = node.create_lifecycle_publisher(MarkerArray, "markers", 10)
        if publish_debug:
            self._keyframe_paths = debug_image.keyframe_images(localizer)
            self._debug = node.create_lifecycle_publisher(Image, "debug_image", 2)

    def publish(
        self,
        result: LocalizationResult,
        T_map_out: np.ndarray,
        covariance_66: np.ndarray,
        stamp_ns: int,
        image_frame: str,
        query_rgb: np.ndarray,
        forward_axis: int,
    ) -> None:
        if self._markers is not None:
            text = f"{result.status.name} {result.confidence:.2f}"
            if result.status_reason:
                text += f"\n{result.status_reason[:60]}"
            self._markers.publish(
                MarkerArray(
                    markers=markers.estimate_markers(
                        T_map_out,
                        covariance_66,
                        result.status,
                        text,
                        self._frame_for(result.scene),
                        stamp_ns,
                        forward_axis,
                    )
                )
            )
        if self._debug is not None:
            img = debug_image.compose(query_rgb, result, self._keyframe_paths)
            self._debug.publish(conv.rgb_to_image(img, "rgb8", stamp_ns, image_frame))

    def close(self) -> None:
        if self._map is not None:
            self._node.destroy_publisher(self._map)
        for pub in (self._markers, self._debug):
            if pub is not None:
                self._node.destroy_lifecycle_publisher(pub)
        self._markers = self._map = self._debug = None
