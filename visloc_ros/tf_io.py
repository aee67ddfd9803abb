"""TF in and out of the localizer node: the /tf broadcaster and the lookups the node makes.

With tf2_ros (a ROS 2 install, or geometry2's tf2, tf2_py and tf2_ros_py built from ros-src by
scripts/build_ros.sh): a ``tf2_ros.TransformBroadcaster`` and, when the node needs lookups, a
``tf2_ros.Buffer`` fed by a ``TransformListener`` on /tf and /tf_static (the real tf2 C++ core:
static and dynamic frames, interpolation at a stamp, no extrapolation). Without tf2_ros (PyPI
wheels only): /tf is published as ``tf2_msgs/msg/TFMessage`` with the same topic and QoS as the
broadcaster, and nothing is looked up (the camera extrinsic then comes from parameters and
odometry from the odom topic).

Convention: ``lookup(target, source)`` returns ``T_target_source`` (maps source-frame points into
the target frame), what ``tf2_ros.Buffer.lookup_transform(target, source, t)`` returns.
"""

from __future__ import annotations

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.time import Time

from visloc_core.data import messages as rosmsg

try:  # a full ROS 2 install or geometry2 from ros-src: the real broadcaster, buffer and listener
    import tf2_ros

    HAVE_TF2_ROS = True
except ImportError:  # PyPI wheels only (see ROS2_ON_PYPI.md)
    tf2_ros = None
    HAVE_TF2_ROS = False

try:  # real tf2_msgs, or the TFMessage-only fallback scripts/build_ros.sh builds from ros/tf2_msgs
    from tf2_msgs.msg import TFMessage
except ImportError:
    TFMessage = None


class TfUnavailableError(LookupError):
    """A transform the node needs is not in TF (not yet received, not connected, or not at that time)."""


class NodeTf:
    """The node's TF publisher and (optionally) its TF buffer; ``close()`` releases both.

    ``listen``: also subscribe to /tf and /tf_static (only with tf2_ros). ``buffer_s``: how much
    dynamic TF history the buffer keeps. ``use_tf2``: False forces the path without tf2_ros.
    """

    def __init__(self, node: Node, listen: bool, buffer_s: float = 10.0, use_tf2: bool | None = None) -> None:
        use_tf2 = HAVE_TF2_ROS if use_tf2 is None else use_tf2  # read at call time (tests switch it off)
        self._node = node
        self._broadcaster = self._pub = self._buffer = self._listener = None
        if use_tf2 and tf2_ros is not None:
            self._broadcaster = tf2_ros.TransformBroadcaster(node)
            if listen:
                self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=float(buffer_s)))
                self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)
        elif TFMessage is not None:
            # Same topic and QoS as tf2_ros.TransformBroadcaster (reliable, volatile, depth 100).
            self._pub = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))

    @property
    def can_publish(self) -> bool:
        return self._broadcaster is not None or self._pub is not None

    @property
    def listening(self) -> bool:
        """True when lookups are possible (tf2_ros installed and listen requested)."""
        return self._buffer is not None

    def send(self, transforms: list) -> None:
        """Publish geometry_msgs/TransformStamped messages on /tf."""
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(transforms)
        elif self._pub is not None:
            self._pub.publish(TFMessage(transforms=list(transforms)))

    def has_frame(self, frame: str) -> bool:
        return self._buffer is not None and bool(self._buffer._frameExists(frame))

    def connected(self, target: str, source: str) -> bool:
        """True when TF holds a chain from ``source`` to ``target`` (at some time)."""
        return self._buffer is not None and bool(self._buffer.can_transform(target, source, Time()))

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray:
        """``T_target_source`` (4x4) at ``stamp_ns`` (None: the newest available, as for a static
        extrinsic). Raises TfUnavailableError with tf2's reason."""
        if self._buffer is None:
            raise TfUnavailableError("tf2_ros is not installed: no TF lookups")
        when = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
        try:
            tf = self._buffer.lookup_transform(target, source, when)
        except tf2_ros.TransformException as err:
            raise TfUnavailableError(f"{target}->{source}: {err}") from err
        try:
            return rosmsg.T_from_transform(tf.transform)
        except rosmsg.MalformedMessageError as err:  # a NaN or zero quaternion on /tf: not usable
            raise TfUnavailableError(f"{target}->{source}: {err}") from err

    def lookup_held(self, target: str, source: str, stamp_ns: int, hold_ns: int) -> np.ndarray:
        """``T_target_source`` at ``stamp_ns``, interpolated by tf2; a stamp up to ``hold_ns`` past the
        newest transform gets the newest one (odometry often lags the camera by a fraction of its
        period), as the node's odometry buffer does. Raises TfUnavailableError otherwise."""
        try:
            return self.lookup(target, source, stamp_ns)
        except TfUnavailableError as at_stamp:
            try:
                newest_ns = self._buffer.get_latest_common_time(target, source).nanoseconds
            except tf2_ros.TransformException:
                raise at_stamp from None
            if not 0 <= int(stamp_ns) - newest_ns <= int(hold_ns):
                raise
            return self.lookup(target, source, newest_ns)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.unregister()
        if self._broadcaster is not None:
            self._node.destroy_publisher(self._broadcaster.pub_tf)
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
        self._broadcaster = self._pub = self._buffer = self._listener = None
