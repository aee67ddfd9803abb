"""launch/localize.launch.py and config/localize.yaml, statically: parsed with ast, cross-checked against the
node's declared parameters, and the YAML loaded by the real rclpy parser (runs without `launch` too;
test_ros_launch_cli.py runs the launch file with the real `ros2 launch`)."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import rclpy
import yaml
from rclpy.lifecycle import TransitionCallbackReturn

from visloc_ros.localizer_node import NODE_NAME, PARAMETERS, LocalizerNode

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "localize.launch.py"
CONFIG = REPO / "config" / "localize.yaml"


def _module_constants(tree: ast.Module) -> dict:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # not a literal: not a constant table
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_launch_file_structure():
    tree = ast.parse(LAUNCH.read_text())
    consts = _module_constants(tree)
    args, remaps, launch_only, bools = (
        consts["ARGUMENTS"],
        consts["REMAPS"],
        consts["LAUNCH_ONLY"],
        consts["BOOL_PARAMETERS"],
    )
    for name in (
        "model",
        "device",
        "method",
        "image_topic",
        "camera_info_topic",
        "compressed",
        "map_frame",
        "odom_frame",
        "base_frame",
        "publish_tf",
        "config",
    ):
        assert name in args, f"launch argument {name} missing"
    params = set(args) - remaps - launch_only
    assert params <= set(PARAMETERS), f"launch arguments without a node parameter: {params - set(PARAMETERS)}"
    assert bools == {n for n in params if isinstance(PARAMETERS[n][0], bool)}
    # a parameter argument not given leaves the parameter to the file: its default is "" (a value ros2
    # launch cannot receive), and the launch file passes only the given ones (_GivenArguments)
    for n in params:
        assert args[n][0] == "", f"launch default of {n} is {args[n][0]!r}: the parameter file would be overridden"
    src = LAUNCH.read_text()
    # a LifecycleNode of our executable, driven by configure/activate events
    calls = {
        n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
    }
    assert {"LifecycleNode", "ChangeState", "OnStateTransition", "EmitEvent", "RegisterEventHandler"} <= calls
    assert "TRANSITION_CONFIGURE" in src and "TRANSITION_ACTIVATE" in src
    kw = {
        k.arg: k.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "LifecycleNode"
        for k in n.keywords
    }
    assert ast.literal_eval(kw["executable"]) == "localizer_node" and ast.literal_eval(kw["name"]) == NODE_NAME
    assert ast.literal_eval(kw["package"]) == "visloc_ros"
    remapped = {ast.literal_eval(t.elts[0]) for t in kw["remappings"].elts}
    assert remapped == {"image", "image/compressed", "camera_info", "odom", "initialpose"}
    # the executable and the launch/config folders are installed by CMake
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "scripts/localizer_node" in cmake and "install(DIRECTORY launch config" in cmake


def test_config_matches_declared_parameters():
    cfg = yaml.safe_load(CONFIG.read_text())
    params = cfg[NODE_NAME]["ros__parameters"]
    assert set(params) == set(PARAMETERS), set(params) ^ set(PARAMETERS)
    for name, value in params.items():
        default = PARAMETERS[name][0]
        assert type(value) is type(default), (
            f"{name}: {type(value).__name__} in YAML, {type(default).__name__} declared"
        )
        assert value == default, f"{name}: YAML {value!r} differs from the node default {default!r}"
    for name, (_, description) in PARAMETERS.items():
        assert len(description) > 15, f"parameter {name} needs a description"


def test_config_loads_into_the_real_node(tmp_path):
    """rclpy's own parser reads the file; types agree with the declarations (a mismatch raises)."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": {"max_jump_m": 2.5, "map_frame": "world"}}}))
    rclpy.init(args=["--ros-args", "--params-file", str(CONFIG), "--params-file", str(override)])
    try:
        node = LocalizerNode()
        try:
            assert node.get_parameter("max_jump_m").value == 2.5
            assert node.get_parameter("map_frame").value == "world"
            assert list(node.get_parameter("base_to_camera_rotation_xyzw").value) == [-0.5, 0.5, -0.5, 0.5]
            desc = node.describe_parameters(["max_jump_m"])[0].description
            assert "sanity gate" in desc
            # model is empty in the shipped config: configure fails with a clear reason, the node stays up
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
            assert "model" in node.counters()["last_error"]
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_rviz_config_shows_the_nodes_topics():
    """config/visloc.rviz (RViz 2 format) names the node's topics with matching QoS, the map frame, and the
    /initialpose the node listens to; its displays are rviz_default_plugins classes."""
    rviz = yaml.safe_load((REPO / "config" / "visloc.rviz").read_text())
    vm = rviz["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == PARAMETERS["map_frame"][0]
    displays = {d["Class"]: d for d in vm["Displays"]}
    by_topic = {d["Topic"]["Value"]: d for d in vm["Displays"] if "Topic" in d}
    assert all(c.startswith("rviz_default_plugins/") for c in displays)
    assert {"rviz_default_plugins/TF", "rviz_default_plugins/MarkerArray", "rviz_default_plugins/Image"} <= set(
        displays
    )
    cfg = yaml.safe_load(CONFIG.read_text())[NODE_NAME]["ros__parameters"]
    consts = _module_constants(ast.parse(LAUNCH.read_text()))
    expected = {
        "/map_markers": ("rviz_default_plugins/MarkerArray", "Transient Local"),  # latched by the node
        "/markers": ("rviz_default_plugins/MarkerArray", "Volatile"),
        "/pose_with_covariance": ("rviz_default_plugins/PoseWithCovariance", "Transient Local"),
        "/debug_image": ("rviz_default_plugins/Image", "Volatile"),
        consts["ARGUMENTS"]["image_topic"][0]: ("rviz_default_plugins/Image", "Volatile"),
    }
    for topic, (cls, durability) in expected.items():
        assert topic in by_topic, f"{topic} missing from config/visloc.rviz"
        assert by_topic[topic]["Class"] == cls and by_topic[topic]["Topic"]["Durability Policy"] == durability
    # the camera's default QoS in the node is sensor_data (best effort): RViz must not ask for reliable
    if cfg["image_qos"] == "sensor_data":
        assert by_topic[consts["ARGUMENTS"]["image_topic"][0]]["Topic"]["Reliability Policy"] == "Best Effort"
    tool = next(t for t in vm["Tools"] if t["Class"] == "rviz_default_plugins/SetInitialPose")
    assert tool["Topic"]["Value"] == consts["ARGUMENTS"]["initialpose_topic"][0]
    # the CMake install carries config/ (the .rviz is found under share/visloc_ros/config)
    assert "install(DIRECTORY launch config" in (REPO / "CMakeLists.txt").read_text()
