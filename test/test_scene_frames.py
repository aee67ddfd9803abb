"""Output frames of multi-scene artifacts (visloc_ros/scene_frames.py; no ROS needed): the {scene}
placeholder, explicit scene=frame pairs, and the errors a wrong parameter gets."""

from __future__ import annotations

import pytest

from visloc_ros.scene_frames import SceneFrames, parse_scene_frames

SCENES = ["indoor_room", "plaza", "large_hall"]


def test_placeholder_gives_one_frame_per_scene():
    f = SceneFrames("map_{scene}", "", SCENES)
    assert [f.frame_for(s) for s in SCENES] == ["map_indoor_room", "map_plaza", "map_large_hall"]
    assert f.frames == {"map_indoor_room", "map_plaza", "map_large_hall"}
    assert f.shared_frame_warning() is None
    assert f.frame_for("") == "map_indoor_room" and f.frame_for("unknown") == "map_indoor_room"


def test_explicit_pairs_override_map_frame():
    f = SceneFrames("map", " plaza = plaza_map ,large_hall=/hall ", SCENES)
    assert [f.frame_for(s) for s in SCENES] == ["map", "plaza_map", "/hall"]
    assert parse_scene_frames("") == {} and parse_scene_frames("a=b,") == {"a": "b"}


def test_one_frame_for_several_scenes_warns_single_scene_does_not():
    assert "3 scenes" in SceneFrames("map", "", SCENES).shared_frame_warning()
    assert SceneFrames("map", "", ["line"]).shared_frame_warning() is None
    assert SceneFrames("map_{scene}", "", ["line"]).frame_for("line") == "map_line"


@pytest.mark.parametrize(
    ("map_frame", "pairs", "match"),
    [
        ("map", "plaza", "scene=frame pairs"),
        ("map", "kitchen=map_k", r"not scenes of the artifact.*indoor_room"),
        ("map", "plaza=a,plaza=b", "twice"),
        ("map", "plaza=bad frame", "not a valid frame id"),
        ("map_{name}", "", "the only placeholder is"),
        ("9map", "", "not a valid frame id"),
    ],
)
def test_bad_parameters_are_named(map_frame, pairs, match):
    with pytest.raises(ValueError, match=match):
        SceneFrames(map_frame, pairs, SCENES)
