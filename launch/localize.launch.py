"""Launch the visloc localizer lifecycle node, configured and activated automatically.

    ros2 launch visloc_ros localize.launch.py model:=/path/to/artifact \
        image_topic:=/camera/image_raw camera_info_topic:=/camera/camera_info

Arguments map onto node parameters; an argument that is not given leaves the parameter to the
parameter file (``config:=``, default config/localize.yaml), so a site file can set frames and the
command line overrides them (``ros2 launch`` takes no empty values: an empty frame, e.g.
``base_frame: ""`` for the camera's own pose, goes in the file). Topics are remappings. With ``autostart:=true`` (default) launch drives the lifecycle:
configure at start, activate once the node reaches 'inactive'. A node that fails to configure (e.g.
a wrong ``model``: the node logs why) or to activate ends the launch with a non-zero exit code, as a
lifecycle manager would refuse to bring the system up. Set ``autostart:=false`` to hand the node to
a lifecycle manager (e.g. nav2_lifecycle_manager with node_names: [visloc_localizer]); the node then
stays up, unconfigured, and says why on /diagnostics.

Without ``ros2 launch`` (PyPI-only installs), the same node runs with
``python -m visloc_ros.localizer_node --ros-args --params-file config/localize.yaml -p model:=ARTIFACT
-p autostart:=true -r image:=/camera/image_raw -r camera_info:=/camera/camera_info``.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitution import Substitution
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

# launch argument -> (default, description); parameters of the node unless listed in REMAPS / LAUNCH_ONLY.
# A parameter argument's default "" means "not given": the parameter file decides (ros2 launch rejects
# empty values, so "" cannot be a value given on the command line).
ARGUMENTS = {
    "model": ("", "artifact folder (visloc train / visloc map build output)"),
    "device": ("", "torch device: cpu, cuda, cuda:1 (file: cpu)"),
    "method": ("", "expected localizer kind of the artifact (apr, relpose); file: any"),
    "compressed": ("", "true: subscribe to <image_topic>/compressed (jpeg/png) instead of the raw image (file: false)"),
    "map_frame": ("", "frame of every output (file: map)"),
    "odom_frame": ("", "odometry frame; set it (e.g. odom) to publish map->odom per REP-105 (file: none)"),
    "base_frame": ("", "robot frame whose pose is published (file: base_link; empty in the file = the camera's)"),
    "camera_frame": ("", "camera optical frame (file: none = the image header's frame_id)"),
    "publish_tf": ("", "publish map->odom (or map->base_frame) on /tf (file: true)"),
    "image_topic": ("/camera/image_raw", "raw image topic (its /compressed sibling with compressed:=true)"),
    "camera_info_topic": ("/camera/camera_info", "camera_info topic"),
    "odom_topic": ("/odom", "nav_msgs/Odometry topic (used when odom_frame is set)"),
    "initialpose_topic": ("/initialpose", "prior pose topic (RViz '2D Pose Estimate')"),
    "config": (None, "parameter file (default: share/visloc_ros/config/localize.yaml)"),
    "autostart": ("true", "configure and activate the node from this launch file"),
}
REMAPS = {"image_topic", "camera_info_topic", "odom_topic", "initialpose_topic"}
LAUNCH_ONLY = {"config", "autostart"}
BOOL_PARAMETERS = {"compressed", "publish_tf"}


class _GivenArguments(Substitution):
    """Path of a parameter file (written at launch time) that holds the parameter arguments given on the
    command line, typed as the node declares them; loaded after the parameter file, so they win."""

    def perform(self, context) -> str:
        import tempfile

        import yaml

        given = {}
        for name in ARGUMENTS.keys() - REMAPS - LAUNCH_ONLY:
            value = context.launch_configurations.get(name, "")
            if value == "":
                continue
            if name in BOOL_PARAMETERS:
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"launch argument {name}:={value}: use true or false")
                given[name] = value.lower() == "true"
            else:
                given[name] = value
        with tempfile.NamedTemporaryFile("w", prefix="visloc_launch_args_", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({"/**": {"ros__parameters": given}}, f)
        return f.name


def _fail_launch(what: str) -> OpaqueFunction:
    """An action that ends the launch with exit code 1: launch turns an exception raised while handling
    an event into a logged error, a shutdown and a non-zero return code."""

    def fail(context) -> None:
        raise RuntimeError(f"visloc_localizer {what} (its error is logged above); shutting down")

    return OpaqueFunction(function=fail)


def generate_launch_description() -> LaunchDescription:
    default_config = PathJoinSubstitution([FindPackageShare("visloc_ros"), "config", "localize.yaml"])
    declared = [
        DeclareLaunchArgument(name, default_value=default if default is not None else default_config, description=desc)
        for name, (default, desc) in ARGUMENTS.items()
    ]
    image_topic = LaunchConfiguration("image_topic")
    node = LifecycleNode(
        package="visloc_ros",
        executable="localizer_node",
        name="visloc_localizer",
        namespace="",
        output="screen",
        parameters=[LaunchConfiguration("config"), _GivenArguments()],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
            ("odom", LaunchConfiguration("odom_topic")),
            ("initialpose", LaunchConfiguration("initialpose_topic")),
        ],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE),
        condition=autostart,
    )
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_ACTIVATE
                    )
                )
            ],
        ),
        condition=autostart,
    )
    # A failed transition goes back to the previous primary state (or through errorprocessing).
    failures = [
        RegisterEventHandler(
            OnStateTransition(
                target_lifecycle_node=node, start_state=start, goal_state=goal, entities=[_fail_launch(what)]
            ),
            condition=autostart,
        )
        for start, goal, what in (
            ("configuring", "unconfigured", "failed to configure"),
            ("activating", "inactive", "failed to activate"),
            ("errorprocessing", "unconfigured", "raised an error in a transition"),
            ("errorprocessing", "finalized", "raised an error in a transition"),
        )
    ]
    return LaunchDescription([*declared, node, activate, *failures, configure])
