"""One multi-scene artifact served by the real node over DDS, and replayed (issue 15).

The artifact: a small MVL-Loc trained on apr_tiny's two scenes ('astro', 'coffee': different
photographs, poses 5 m apart). References: the scene each image was rendered from, the localizer's
own output on the same image (the node must add nothing but the scene's frame), the configured frame
names, and the gate's documented behaviour on a change of scene.
"""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped
from ros_helpers import TINY_CAMERA, NodeSessions, tiny_frames, trained_two_scene_artifact, write_tiny_bag

from visloc_core.data import messages as rosmsg
from visloc_core.data.layout import DatasetWriter
from visloc_core.evaluation.report import read_frames_csv
from visloc_core.localizers.loading import load_localizer
from visloc_ros import conversions as conv
from visloc_ros.localizer_node import LocalizerNode
from visloc_ros.replay import ReplayError, ReplayOptions, replay

S_VALUES = [0.213, 0.513, 0.813]  # held-out views between training poses
T0 = 1_700_000_000_000_000_000
DT = 100_000_000  # 10 Hz


@pytest.fixture(scope="module")
def artifact():
    return trained_two_scene_artifact()


@pytest.fixture
def session(ros, artifact):
    sessions = NodeSessions(model=str(artifact), image_qos="reliable", diagnostics_period_s=0.2)
    yield sessions
    sessions.close()


def _scene_frames(scenes: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(scene, image, true T_world_cam), each scene walking along S_VALUES (consecutive views of one
    scene are 0.6 m / 12 deg apart: within the gate's default bounds)."""
    out, seen = [], {}
    for scene in scenes:
        k = seen[scene] = seen.get(scene, -1) + 1
        img, T = tiny_frames([S_VALUES[k % len(S_VALUES)]], scene)[0]
        out.append((scene, img, T))
    return out


def test_each_scene_is_published_in_its_own_frame(session, artifact):
    node, probe = session(map_frame="map_{scene}", base_frame="", jump_window_s=0.0)  # gate's jump check off
    frames = _scene_frames(["astro"] * 3 + ["coffee"] * 3)
    for k, (_, img, _) in enumerate(frames):
        probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0 + k * DT, "cam_opt"))
    probe.wait_for(lambda: probe.count("pose") == len(frames), what="all poses")
    results, poses = probe.get("localization"), probe.get("pose")
    ref = load_localizer(artifact)
    for (scene, img, T_gt), msg, pose in zip(frames, results, poses, strict=True):
        expect = ref.localize(img, TINY_CAMERA, 0)
        assert msg.status == msg.LOCALIZED and msg.scene == scene == expect.scene
        assert msg.header.frame_id == pose.header.frame_id == f"map_{scene}"
        np.testing.assert_allclose(rosmsg.T_from_pose(pose.pose), expect.T_world_cam, atol=1e-5)
        # the right scene's frame: the pose is near the truth of that scene (the scenes are 5 m apart)
        assert np.linalg.norm(expect.T_world_cam[:3, 3] - T_gt[:3, 3]) < 1.0
    probe.wait_for(lambda: probe.count("/tf") == len(frames), what="/tf")
    parents = [(m.transforms[0].header.frame_id, m.transforms[0].child_frame_id) for m in probe.get("/tf")]
    assert parents == [(f"map_{scene}", "cam_opt") for scene, _, _ in frames]
    # an initialpose is accepted in any scene's frame, refused in a frame the node does not publish
    before = node.counters()["bad_input"]
    for frame in ("map_coffee", "map"):
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id = frame
        msg.pose.pose.orientation.w = 1.0
        probe.initialpose_pub.publish(msg)
    probe.wait_for(lambda: node.counters()["bad_input"] == before + 1, what="the initialpose in 'map' refused")
    assert "initialpose in frame 'map' ignored" in node.counters()["last_error"]
    assert node._prior is not None  # the one in map_coffee arrived


def test_explicit_scene_frames_and_a_scene_switch_through_the_gate(session):
    """scene_frames names the frames; a change of scene is a jump: REJECTED until three frames agree."""
    _node, probe = session(scene_frames="astro=map, coffee=coffee_map", base_frame="", jump_confirm_frames=3)
    frames = _scene_frames(["astro"] * 2 + ["coffee"] * 3)
    for k, (_, img, _) in enumerate(frames):
        probe.publish_frame(conv.rgb_to_image(img, "rgb8", T0 + k * DT, "cam_opt"))
    results = probe.get("localization")
    assert [m.scene for m in results] == [s for s, _, _ in frames]
    assert [m.status for m in results] == [0, 0, 2, 2, 0]  # LOCALIZED, LOCALIZED, REJECTED x2, LOCALIZED
    assert "scene 'coffee' differs from scene 'astro'" in results[2].status_reason
    assert [m.header.frame_id for m in results] == ["map", "map", "coffee_map", "coffee_map", "coffee_map"]
    probe.wait_for(lambda: probe.count("pose") == 3, what="the accepted poses")
    assert [m.header.frame_id for m in probe.get("pose")] == ["map", "map", "coffee_map"]


def test_bad_scene_frames_fail_configure_and_the_node_stays_up(ros, artifact):
    params = {"model": str(artifact), "scene_frames": "kitchen=map_k"}
    node = LocalizerNode(parameter_overrides=[rclpy.parameter.Parameter(k, value=v) for k, v in params.items()])
    try:
        assert not node.autostart()
        assert "not scenes of the artifact" in node.counters()["last_error"]
        assert "astro" in node.counters()["last_error"]
    finally:
        node.destroy_node()


def test_replay_scores_the_scene_against_the_truth_per_frame(tmp_path, artifact):
    """A bag with frames of both scenes; the truth (pose and scene of each frame) from a dataset."""
    scenes = ["astro", "coffee", "coffee", "astro", "coffee"]
    s_values = [S_VALUES[k % 3] for k in range(len(scenes))]
    bag, stamps, T_gt = write_tiny_bag(tmp_path / "bag", s_values, scene=scenes)
    with DatasetWriter(tmp_path / "truth", source={"type": "test"}) as w:
        for name in ("astro", "coffee"):
            w.set_scene(name)
        for k, (stamp, T, scene) in enumerate(zip(stamps, T_gt, scenes, strict=True)):
            img = tiny_frames([s_values[k]], scene)[0][0]
            w.add_frame(scene, "query", f"{k:04d}", stamp, T, TINY_CAMERA, img)
        w.set_split("test", ["astro/query", "coffee/query"])
    report = replay(
        ReplayOptions(
            bag=bag,
            artifact=artifact,
            out=tmp_path / "report",
            wait=True,
            data=tmp_path / "truth",
            node_params={"map_frame": "map_{scene}", "jump_window_s": 0.0},
        )
    )
    rows = read_frames_csv(tmp_path / "report" / "frames.csv")
    assert [r["scene"] for r in rows] == scenes  # the truth, not the node's choice
    assert [r["predicted_scene"] for r in rows] == scenes
    cls = report["scene_classification"]
    assert cls["accuracy"] == 1.0 and cls["per_scene"]["astro"]["n_frames"] == 2
    assert cls["per_scene"]["coffee"]["n_frames"] == 3 and set(report["per_scene"]) == {"astro", "coffee"}


def test_replay_of_a_one_scene_bag_needs_the_scene(tmp_path, artifact):
    bag, stamps, _ = write_tiny_bag(tmp_path / "bag", S_VALUES, scene="coffee")
    common = {"bag": bag, "artifact": artifact, "wait": True}
    with pytest.raises(ReplayError, match=r"serves 2 scenes \['astro', 'coffee'\]: pass --scene"):
        replay(ReplayOptions(**common, out=tmp_path / "r0"))
    with pytest.raises(ReplayError, match="--scene 'kitchen' is not a scene"):
        replay(ReplayOptions(**common, out=tmp_path / "r1", scene="kitchen"))
    report = replay(
        ReplayOptions(**common, out=tmp_path / "r2", scene="coffee", node_params={"map_frame": "map_{scene}"})
    )
    assert report["n_frames"] == len(stamps) and report["scene_classification"]["accuracy"] == 1.0
    assert set(report["per_scene"]) == {"coffee"}
