"""The headline command for real: `ros2 launch visloc_ros localize.launch.py model:=ARTIFACT` as a
subprocess (the real ros2cli, launch and launch_ros; installed from ros-src by scripts/build_ros.sh when
ROS 2 does not provide them), talked to over DDS by a probe node in this process.

References: the localizer's own pose on the same image (load_localizer here), the launch arguments and
the parameter file given, the lifecycle states the node reports, and the exit codes of the command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_helpers import TINY_CAMERA, Probe, ros_src_skip_reason, tiny_frames

from visloc_core.data import messages as rosmsg
from visloc_core.localizers.loading import load_localizer
from visloc_ros import conversions as conv

NO_LAUNCH = ros_src_skip_reason("launch", "launch_ros", "ros2launch", "ros2cli")
pytestmark = pytest.mark.skipif(NO_LAUNCH is not None, reason=NO_LAUNCH or "")
# `ros2 lifecycle` and `ros2 service` import rosidl_runtime_py (ros2/rosidl_runtime_py), which is neither on
# PyPI nor in ros-src, so those two CLI verbs cannot run here (a test of them could only skip); the same
# lifecycle and /relocalize services are called below through rclpy.
NODE = "/visloc_localizer"
STARTUP_S = 120.0  # generous: loading torch and the model on a loaded 2-core machine; a hang fails, not waits


class Ros2Launch:
    """`ros2 launch visloc_ros localize.launch.py ARGS` in its own process group, output collected."""

    def __init__(self, args: list[str], log_dir: Path) -> None:
        env = dict(os.environ, ROS_LOG_DIR=str(log_dir), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        self.proc = subprocess.Popen(
            ["ros2", "launch", "visloc_ros", "localize.launch.py", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # a process group of its own, as in a terminal
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float = STARTUP_S) -> str:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            hit = next((ln for ln in list(self.lines) if text in ln), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"`ros2 launch` never printed {text!r}; its output:\n{self.output}")

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`ros2 launch` still running after {timeout_s} s; output:\n{self.output}") from None
        self._reader.join(5.0)
        return code

    def ctrl_c(self) -> None:
        """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10.0)


def ros2(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """A ros2cli command without the daemon (nothing is left running after the tests). Without the daemon
    each command discovers the graph anew (--spin-time): "Node not found" after a discovery that was too
    short on a loaded machine is retried a few times."""
    cmd = ["ros2", *args]
    if "--no-daemon" in args:
        cmd += ["--spin-time", "3"]
    for _ in range(5):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if "Node not found" not in r.stdout + r.stderr:
            break
    return r


@pytest.fixture(scope="module")
def launched(ros, tiny_artifact, tmp_path_factory):
    """One `ros2 launch` for the tests of a running node: a parameter file of the test's own (config:=) and
    launch arguments, one of which (map_frame) overrides a key of that file."""
    tmp = tmp_path_factory.mktemp("launch")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "localize.yaml").read_text())
    params = cfg["visloc_localizer"]["ros__parameters"]
    # base_frame "": the camera's pose (an empty value only a file can give: ros2 launch rejects `base_frame:=`)
    params.update(map_frame="yaml_map", base_frame="", max_jump_m=2.5, transform_tolerance=0.3, warmup=False)
    (tmp / "site.yaml").write_text(yaml.safe_dump(cfg))
    launch = Ros2Launch(
        [
            f"model:={tiny_artifact}",
            f"config:={tmp / 'site.yaml'}",
            "map_frame:=world_map",
            "image_topic:=/cam/image",
            "camera_info_topic:=/cam/camera_info",
        ],
        tmp,
    )
    probe = Probe(name="visloc_launch_probe")
    from sensor_msgs.msg import CameraInfo, Image

    probe.image_pub = probe.node.create_publisher(Image, "/cam/image", 10)
    probe.info_pub = probe.node.create_publisher(CameraInfo, "/cam/camera_info", 10)
    probe.start()
    try:
        yield launch, probe
    finally:
        probe.stop()
        if launch.proc.poll() is None:
            launch.kill()


def _lifecycle(probe: Probe, transition: str | None = None) -> str:
    """The node's lifecycle state (after ``transition``, if given) through its lifecycle services, as
    `ros2 lifecycle get/set` call them."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    if transition is not None:
        client = probe.node.create_client(ChangeState, f"{NODE}/change_state")
        assert client.wait_for_service(30.0)
        req = ChangeState.Request()
        req.transition.id = {
            "deactivate": Transition.TRANSITION_DEACTIVATE,
            "activate": Transition.TRANSITION_ACTIVATE,
        }[transition]
        fut = client.call_async(req)
        probe.wait_for(fut.done, 60.0, f"{transition} response")
        assert fut.result().success, transition
    client = probe.node.create_client(GetState, f"{NODE}/get_state")
    assert client.wait_for_service(30.0)
    fut = client.call_async(GetState.Request())
    probe.wait_for(fut.done, 30.0, "get_state response")
    return fut.result().current_state.label


def _localize_one(probe: Probe, s: float, stamp_ns: int, wait_topic: str | None = "pose"):
    img, _ = tiny_frames([s])[0]
    probe.info_pub.publish(conv.camera_to_camera_info(TINY_CAMERA, stamp_ns, "cam_opt"))
    probe.publish_frame(conv.rgb_to_image(img, "rgb8", stamp_ns, "cam_opt"), wait_topic=wait_topic, timeout_s=60.0)
    return img


def test_ros2_launch_reaches_active_and_localizes(launched, tiny_artifact):
    launch, probe = launched
    active = launch.wait_for_line("active: localizing")
    assert "/cam/image" in active and "into world_map" in active  # image_topic remap and map_frame argument
    assert _lifecycle(probe) == "active"
    probe.wait_connected(probe.image_pub, probe.info_pub, timeout_s=60.0)
    stamp = 1_800_000_000_000_000_000
    img = _localize_one(probe, 0.37, stamp)
    for topic in ("pose", "pose_with_covariance", "localization", "/tf"):
        probe.wait_for(lambda t=topic: probe.count(t) >= 1, 30.0, f"a message on {topic}")
    pose, pose_cov, result = probe.get("pose")[0], probe.get("pose_with_covariance")[-1], probe.get("localization")[0]
    tf = probe.get("/tf")[0].transforms[0]
    assert result.status == result.LOCALIZED and result.method == "apr/posenet"
    assert {m.header.frame_id for m in (pose, pose_cov, result, tf)} == {"world_map"}
    assert {rosmsg.stamp_ns(m.header) for m in (pose, pose_cov, result, tf)} == {stamp}
    assert tf.child_frame_id == "cam_opt"  # base_frame "" (file): the camera's pose, frame of the image header
    T_ref = load_localizer(tiny_artifact).localize(img, TINY_CAMERA, stamp).T_world_cam  # same model, same image
    for T in (
        rosmsg.T_from_pose(pose.pose),
        rosmsg.T_from_pose(pose_cov.pose.pose),
        rosmsg.T_from_transform(tf.transform),
    ):
        np.testing.assert_allclose(T, T_ref, atol=1e-5)


def test_launch_arguments_override_the_parameter_file(launched):
    """map_frame: the launch argument (world_map) beats the file's yaml_map; base_frame, max_jump_m and
    transform_tolerance, not given as arguments: the file's values ("", 2.5, 0.3) beat the node's defaults
    (base_link, 1.0, 0.1); read back with `ros2 param get`."""
    launch, _ = launched
    launch.wait_for_line("active: localizing")
    got = {}
    for name in ("map_frame", "max_jump_m", "transform_tolerance", "base_frame"):
        r = ros2("param", "get", NODE, name, "--no-daemon")
        assert r.returncode == 0, r.stderr
        got[name] = r.stdout.strip()
    assert got == {
        "map_frame": "String value is: world_map",
        "max_jump_m": "Double value is: 2.5",
        "transform_tolerance": "Double value is: 0.3",
        "base_frame": "String value is:",  # (stripped) the empty string
    }, got


def test_lifecycle_deactivate_activate_and_relocalize_over_the_services(launched):
    """The lifecycle services `ros2 lifecycle set` calls, and the relocalize service, over DDS."""
    from std_srvs.srv import Trigger

    launch, probe = launched
    launch.wait_for_line("active: localizing")
    probe.wait_connected(probe.image_pub, probe.info_pub, timeout_s=60.0)
    assert _lifecycle(probe, "deactivate") == "inactive"
    n_before = probe.count("localization")
    _localize_one(probe, 0.5, 1_800_000_001_000_000_000, wait_topic=None)
    # inactive: no image subscription, so no result; the node still answers (get_state) meanwhile
    probe.wait_for(lambda: probe.node.count_subscribers("/cam/image") == 0, 30.0, "image subscription gone")
    assert _lifecycle(probe, "activate") == "active"
    probe.wait_connected(probe.image_pub, timeout_s=60.0)
    stamp = 1_800_000_002_000_000_000
    _localize_one(probe, 0.5, stamp, wait_topic="localization")
    assert [rosmsg.stamp_ns(m.header) for m in probe.get("localization")[n_before:]] == [stamp]
    client = probe.node.create_client(Trigger, "/relocalize")
    assert client.wait_for_service(30.0)
    fut = client.call_async(Trigger.Request())
    probe.wait_for(fut.done, 30.0, "relocalize response")
    assert fut.result().success and "reset" in fut.result().message


def test_ctrl_c_shuts_down_cleanly(launched):
    """SIGINT to the process group (a terminal's Ctrl-C: the node gets it twice, directly and from launch):
    exit code 0, the node finishes cleanly, no traceback. Runs last in this module (it ends the launch)."""
    launch, _ = launched
    launch.wait_for_line("active: localizing")
    launch.ctrl_c()
    code = launch.wait_exit(60.0)
    assert code == 0, launch.output
    assert "process has finished cleanly" in launch.output, launch.output
    assert "Traceback" not in launch.output and "process has died" not in launch.output, launch.output
    print(f"\n--- ros2 launch output (pytest -s shows it) ---\n{launch.output}")


def test_wrong_model_path_fails_with_the_nodes_error_and_nonzero_exit(ros, tmp_path):
    launch = Ros2Launch([f"model:={tmp_path / 'no_such_artifact'}"], tmp_path)
    code = launch.wait_exit(STARTUP_S)
    assert code != 0, launch.output
    # the node's own reason, naming the folder and what to do, then launch's
    assert "no_such_artifact is not a visloc artifact" in launch.output, launch.output
    assert "visloc train" in launch.output and "failed to configure" in launch.output, launch.output
    print(f"\n--- ros2 launch output, exit code {code} ---\n{launch.output}")
