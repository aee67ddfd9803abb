"""Synthetic scene generator: exact projection and depth against ray-plane geometry, poses written
to the dataset, determinism, conditions, occluders, spec checks, presets and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from synth_scene import ROOM, tiny

from visloc_core.data import Dataset
from visloc_core.data.synth import CLASS_IDS, SceneSpecError, apply_overrides, generate, load_scene, parse_scene
from visloc_core.data.synth.generate import SceneRenderer, plan_sequence
from visloc_core.data.synth.geometry import clearance_m
from visloc_core.data.synth.renderer import projection_from_intrinsics
from visloc_core.data.synth.spec import R_from_rpy
from visloc_core.data.synth.trajectories import base_pose_at
from visloc_core.geometry import PinholeCamera, T_from_R_t, invert_T, transform_points


def _room_planes() -> list[tuple[np.ndarray, float, str]]:
    """(unit normal n, offset d, class) with n . p = d for the six room planes."""
    lx, ly, h = ROOM
    return [
        (np.array([0, 0, 1.0]), 0.0, "floor"),
        (np.array([0, 0, 1.0]), h, "ceiling"),
        (np.array([1.0, 0, 0]), lx / 2, "wall"),
        (np.array([1.0, 0, 0]), -lx / 2, "wall"),
        (np.array([0, 1.0, 0]), ly / 2, "wall"),
        (np.array([0, 1.0, 0]), -ly / 2, "wall"),
    ]


def analytic_room(T_world_cam: np.ndarray, cam: PinholeCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: z-depth of the first room plane hit by the pixel's ray, its class id, and the
    relative gap to the second-nearest plane (small gap = the pixel lies on an edge)."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    rays_cam = cam.unproject(np.stack([u.ravel(), v.ravel()], 1).astype(np.float64))  # z = 1
    rays_world = rays_cam @ T_world_cam[:3, :3].T
    c = T_world_cam[:3, 3]
    ts, cls = [], []
    for n, d, name in _room_planes():
        denom = rays_world @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (d - c @ n) / denom
        ts.append(np.where(t > 0, t, np.inf))
        cls.append(CLASS_IDS[name])
    ts = np.stack(ts, 1)
    order = np.argsort(ts, 1)
    t1 = np.take_along_axis(ts, order[:, :1], 1)[:, 0]
    t2 = np.take_along_axis(ts, order[:, 1:2], 1)[:, 0]
    shape = (cam.height, cam.width)
    return t1.reshape(shape), np.asarray(cls)[order[:, 0]].reshape(shape), ((t2 - t1) / t1).reshape(shape)


def _generic_pose() -> np.ndarray:
    """A camera inside the room, turned, pitched down and rolled (OpenCV optical)."""
    R_world_body = R_from_rpy(np.radians(7.0), np.radians(25.0), np.radians(35.0))
    R_body_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return T_from_R_t(R_world_body @ R_body_optical, np.array([0.4, -0.3, 1.6]))


@pytest.fixture(scope="module")
def tiny_renderer():
    spec = parse_scene(tiny(actors=[]))
    sr = SceneRenderer(spec)
    yield sr
    sr.release()


def test_projection_matrix_maps_opencv_pixels_to_window_pixels():
    cam = PinholeCamera(64, 48, 50.0, 52.0, 30.2, 22.7)
    P = projection_from_intrinsics(cam, 0.1, 100.0)
    p_cam = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 7.0]])
    clip = np.c_[p_cam, np.ones(2)] @ P.T
    ndc = clip[:, :3] / clip[:, 3:]
    window = np.c_[(ndc[:, 0] + 1) * cam.width / 2, (ndc[:, 1] + 1) * cam.height / 2]
    np.testing.assert_allclose(window - 0.5, cam.project(p_cam), atol=1e-12)  # pixel centres at +0.5
    z_near = (np.array([0, 0, 0.1, 1]) @ P.T)[2] / 0.1
    z_far = (np.array([0, 0, 100.0, 1]) @ P.T)[2] / 100.0
    assert z_near == pytest.approx(-1.0) and z_far == pytest.approx(1.0)


def test_render_depth_and_classes_match_ray_plane_geometry(tiny_renderer):
    sr = tiny_renderer
    T = _generic_pose()
    out = sr.renderer.render(T, sr.camera, sr.spec.conditions["day"])
    depth, cls, gap = analytic_room(T, sr.camera)
    # depth: every pixel, exact up to float32 (the GPU's precision)
    np.testing.assert_allclose(out.depth_HW, depth, rtol=2e-6, atol=2e-6)
    # classes: a mirrored/flipped projection would swap floor and ceiling or left and right
    interior = gap > 0.02
    assert interior.mean() > 0.8
    np.testing.assert_array_equal(out.class_HW[interior], cls[interior])
    assert {CLASS_IDS["floor"], CLASS_IDS["wall"]} <= set(np.unique(out.class_HW).tolist())


def test_projected_room_corner_lands_where_classes_meet(tiny_renderer):
    """PinholeCamera.project of the room's floor corner is where floor and two walls meet."""
    sr = tiny_renderer
    lx, ly, _ = ROOM
    corner = np.array([[lx / 2, ly / 2, 0.0]])
    # camera looking at the +x/+y floor corner from the room centre
    R_world_body = R_from_rpy(0.0, np.arctan2(1.5, np.hypot(lx, ly) / 2), np.arctan2(ly, lx))
    R_body_optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    T = T_from_R_t(R_world_body @ R_body_optical, np.array([0.0, 0.0, 1.5]))
    uv = sr.camera.project(transform_points(invert_T(T), corner))[0]
    np.testing.assert_allclose(uv, [31.5, 23.5], atol=1e-9)  # the image centre (cx, cy)
    out = sr.renderer.render(T, sr.camera, sr.spec.conditions["day"])
    u, v = (int(x) for x in np.rint(uv))
    # below the corner: floor; above-left and above-right: the two walls (depth rises to the corner)
    assert out.class_HW[v + 3, u] == CLASS_IDS["floor"]
    assert out.class_HW[v - 3, u - 3] == CLASS_IDS["wall"] and out.class_HW[v - 3, u + 3] == CLASS_IDS["wall"]
    d_corner = float(transform_points(invert_T(T), corner)[0, 2])
    assert out.depth_HW[v - 1 : v + 2, u - 1 : u + 2].max() == pytest.approx(d_corner, rel=0.05)


def test_dataset_poses_are_the_rendered_poses(tmp_path):
    """Depth PNGs (mm) written by `generate` agree with the analytic depth of the stored T_world_cam,
    and T_world_cam = T_map_base @ T_base_optical of the planned trajectory."""
    spec = parse_scene(tiny(actors=[]))
    ds_path = generate(spec, tmp_path / "ds", progress=False)
    ds = Dataset(ds_path)
    plan = plan_sequence(spec, 0)
    frames = ds.sequence_frames("tiny", "map")
    assert len(frames) == 3
    for i, f in enumerate(frames):
        np.testing.assert_allclose(f.T_world_cam, plan.T_map_base[i] @ spec.T_base_optical, atol=1e-12)
        assert f.stamp_ns == plan.stamps_ns[i]
        depth, cls, gap = analytic_room(f.T_world_cam, f.camera)
        stored = ds.load_depth(f)
        np.testing.assert_allclose(stored, depth, atol=0.5e-3 + 1e-5)
        interior = gap > 0.02
        np.testing.assert_array_equal(ds.load_semantic(f)[interior], cls[interior])
    assert ds.classes[CLASS_IDS["person"]] == "person" and ds.classes[CLASS_IDS["vehicle"]] == "vehicle"
    assert ds.scene_info("tiny")["description"] == "a test room"
    assert [s.sequence for s in ds.sequences("train")] == ["map"]
    assert [(s.sequence, s.condition) for s in ds.sequences("test")] == [("query_night", "night")]


def test_same_seed_identical_images_other_seed_differs(tmp_path):
    spec = parse_scene(tiny())
    a = generate(spec, tmp_path / "a", progress=False)
    b = generate(spec, tmp_path / "b", progress=False)
    spec.seed = 4
    c = generate(spec, tmp_path / "c", progress=False)
    n_same = n_diff = 0
    for f in Dataset(a).frames():
        rel = f"tiny/{f.sequence}/{f.rgb}"
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
        assert (a / f"tiny/{f.sequence}/{f.semantic}").read_bytes() == (
            b / f"tiny/{f.sequence}/{f.semantic}"
        ).read_bytes()
        n_same += 1
        n_diff += (a / rel).read_bytes() != (c / rel).read_bytes()
    assert n_same == 5 and n_diff == n_same  # sensor noise follows the seed


def _render_condition(spec_dict: dict, condition: str) -> np.ndarray:
    d = copy.deepcopy(spec_dict)
    d["sequences"] = [dict(d["sequences"][0], condition=condition, n_frames=2)]
    spec = parse_scene(d)
    sr = SceneRenderer(spec)
    try:
        plan = plan_sequence(spec, 0)
        return sr.render_frame(plan, 1).rgb_HW3.astype(np.float64)
    finally:
        sr.release()


def test_conditions_shift_appearance():
    base = tiny(actors=[])
    day = _render_condition(base, "day")
    dusk = _render_condition(base, "dusk")
    night = _render_condition(base, "night")
    over = _render_condition(base, "overexposed")
    assert night.mean() < 0.6 * day.mean()
    assert dusk.mean() < day.mean()
    assert (over >= 250).mean() > (day >= 250).mean() + 0.05
    # dusk light is warm: more red than blue relative to day
    assert dusk[..., 0].mean() / dusk[..., 2].mean() > day[..., 0].mean() / day[..., 2].mean()


def test_occluders_have_their_classes_and_are_in_front():
    d = tiny()
    # camera at the origin looking +x along the walkers' paths: person crosses at x=1.2, vehicle at x=2
    d["conditions"] = {"busy": {"base": "day", "people": 1, "vehicles": 1, "noise_std": 0.0}}
    d["actors"][0]["path"] = [[1.2, -0.05], [1.2, 0.05]]
    d["actors"][1]["path"] = [[2.4, -0.05], [2.4, 0.05]]
    traj = {"type": "waypoints", "waypoints": [[0.0, 0.0], [0.001, 0.0]], "look": "forward", "height": 0.8}
    d["sequences"] = [{"name": "busy", "condition": "busy", "n_frames": 1, "trajectory": traj}]
    spec = parse_scene(d)
    sr = SceneRenderer(spec)
    try:
        plan = plan_sequence(spec, 0)
        assert plan.actors == ["p1", "v1"]
        out = sr.render_frame(plan, 0)
        person = out.class_HW == CLASS_IDS["person"]
        vehicle = out.class_HW == CLASS_IDS["vehicle"]
        assert person.sum() > 20 and vehicle.sum() > 20
        # the person is nearer than the vehicle, both nearer than the wall at x = 3
        assert np.median(out.depth_HW[person]) < np.median(out.depth_HW[vehicle]) < 3.0
        # without actors the same pixels show the room
        spec.conditions["busy"].people = spec.conditions["busy"].vehicles = 0
        plan = plan_sequence(spec, 0)
        out2 = sr.render_frame(plan, 0)
        assert not np.isin(out2.class_HW, [CLASS_IDS["person"], CLASS_IDS["vehicle"]]).any()
    finally:
        sr.release()


def test_motion_blur_is_the_average_over_the_shutter():
    """RGB = mean of renders at poses spread over the shutter time around the stamp; depth and
    classes are those of the mid-exposure pose; the image loses sharpness."""
    d = tiny(actors=[])
    d["conditions"] = {"blurred": {"base": "day", "noise_std": 0.0, "blur_exposure_s": 0.08, "blur_samples": 5}}
    d["sequences"] = [dict(d["sequences"][0], condition="blurred", n_frames=50)]  # one lap in 5 s
    spec = parse_scene(d)
    seq, cond, rate = spec.sequences[0], spec.conditions["blurred"], spec.camera.rate_hz
    sr = SceneRenderer(spec)
    try:
        plan = plan_sequence(spec, 0)
        out = sr.render_frame(plan, 25)
        t = 25 / rate
        subs = [
            sr.renderer.render(base_pose_at(seq, rate, t + dt) @ spec.T_base_optical, sr.camera, cond).rgb_HW3
            for dt in np.linspace(-0.04, 0.04, 5)
        ]
        sharp = sr.renderer.render(plan.T_world_cam[25], sr.camera, cond)
    finally:
        sr.release()
    ref = np.mean(np.stack(subs).astype(np.float64), axis=0)
    assert np.abs(out.rgb_HW3 - ref).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(out.depth_HW, sharp.depth_HW)
    np.testing.assert_array_equal(out.class_HW, sharp.class_HW)

    def grad(im):
        return np.abs(np.diff(im.astype(np.float64).mean(2), axis=1)).mean()

    assert grad(out.rgb_HW3) < 0.9 * grad(sharp.rgb_HW3)  # 0.83 here (a 5-degree turn at 64 px)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key"),
        ({"room": {"size": ROOM, "walls": ["brick", "brick", "brick", "nope"]}}, "unknown texture 'nope'"),
        ({"room": {"size": ROOM, "walls": ["brick"]}}, "give 4 wall materials"),
        (
            {"conditions": {"crowd": {"base": "day", "people": 5}}, "sequences": [{"name": "a", "condition": "crowd"}]},
            "add actors",
        ),
        ({"sequences": [{"name": "a", "condition": "winter"}]}, "unknown 'winter'"),
        ({"sequences": []}, "'sequences' is empty"),
    ],
)
def test_spec_errors_name_the_problem(change, message):
    with pytest.raises(SceneSpecError, match=message):
        parse_scene(tiny(**change), "tiny.yaml")


@pytest.mark.parametrize("preset", ["indoor_room", "large_hall", "plaza"])
def test_presets_queries_leave_the_mapping_path(preset):
    spec = load_scene(preset)
    assert spec.description and len(spec.description) > 100
    train = [i for i, s in enumerate(spec.sequences) if s.split == "train"]
    test = [i for i, s in enumerate(spec.sequences) if s.split == "test"]
    assert train and len(test) >= 4
    assert {spec.conditions[spec.sequences[i].condition].name for i in test} >= {"day", "dusk", "night"}
    assert all(spec.sequences[i].condition == "day" for i in train)
    assert all(50 <= spec.sequences[i].n_frames <= 100 for i in test)
    C_map = np.concatenate([plan_sequence(spec, i).T_world_cam[:, :3, 3] for i in train])
    for i in test:
        C_q = plan_sequence(spec, i).T_world_cam[:, :3, 3]
        dist = np.linalg.norm(C_q[:, None] - C_map[None], axis=2).min(1)
        assert np.median(dist) > 0.15, f"{spec.sequences[i].name} runs on a mapping path"
    assert any(spec.conditions[spec.sequences[i].condition].people > 0 for i in test)
    # no camera path runs through furniture, buildings or walls; the unmapped views (split test_unmapped)
    # run in an annex outside the room's box (negative room clearance, by design): there only the
    # boxes (the annex's walls and furniture) count
    unmapped = [i for i, s in enumerate(spec.sequences) if s.split == "test_unmapped"]
    for i in range(len(spec.sequences)):
        C = plan_sequence(spec, i).T_world_cam[:, :3, 3]
        if i in unmapped and spec.room is not None:
            assert clearance_m(spec, C).max() < 0  # outside the mapped room
            assert clearance_m(dataclasses.replace(spec, room=None), C).min() > 0.5
        else:
            assert clearance_m(spec, C).min() > 0.5


def test_clearance_against_a_box_and_the_room():
    d = tiny(actors=[])
    d["objects"] = [{"name": "b", "shape": "box", "center": [1.0, 0.0, 0.0], "size": [1.0, 2.0, 1.0], "yaw_deg": 90}]
    spec = parse_scene(d)
    p = np.array([[1.0, 0.0, 0.5], [2.5, 0.0, 0.5], [1.0, 0.0, 1.5], [0.0, 2.4, 2.0]])
    # turned 90 deg the box spans x 0..2, y -0.5..0.5: inside (-0.5), 0.5 m beside it, above it (room
    # ceiling 1.3 m away), 0.1 m from the +y wall
    np.testing.assert_allclose(clearance_m(spec, p), [-0.5, 0.5, 1.3, 0.1], atol=1e-12)


def test_cli_writes_dataset_preview_and_refuses_overwrite(tmp_path, capsys):
    from visloc_core.cli import main

    out = tmp_path / "ds"
    args = [
        "synth",
        "indoor_room",
        "--out",
        str(out),
        "--size",
        "64x48",
        "--max-frames",
        "2",
        "--preview",
        "--no-progress",
    ]
    assert main(args) == 0
    mf = json.loads((out / "manifest.json").read_text())
    assert mf["source"]["type"] == "synth" and mf["source"]["size"] == [64, 48]
    assert set(mf["splits"]) == {"train", "test", "test_unmapped"}  # the annex the map never sees
    assert mf["sequences"]["indoor_room/query_night"]["condition"] == "night"
    assert (out / "preview.png").stat().st_size > 1000
    ds = Dataset(out)
    f = ds.frames("test")[0]
    assert ds.load_rgb(f).shape == (48, 64, 3) and f.camera.width == 64
    assert main(args) == 2  # exists: clear error, not overwritten
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["synth", "indoor_room", "--out", str(tmp_path / "d2"), "--bag", str(tmp_path / "a_file")]) == 2
    assert "--bag" in capsys.readouterr().err and not (tmp_path / "d2").exists()


def test_several_scenes_make_one_dataset(tmp_path):
    a = parse_scene(tiny(actors=[]))
    b = parse_scene(tiny(name="tiny2", description="another room", actors=[], seed=5))
    ds = Dataset(generate([a, b], tmp_path / "ds", preview=True, progress=False))
    assert ds.scenes == ["tiny", "tiny2"]
    assert ds.scene_info("tiny2")["description"] == "another room"
    assert sorted(s.key for s in ds.sequences("train")) == ["tiny/map", "tiny2/map"]
    assert len(ds.frames("test", scene="tiny2")) == 2
    assert (tmp_path / "ds" / "preview.png").is_file()
    with pytest.raises(ValueError, match="distinct names"):
        generate([a, a], tmp_path / "dup", progress=False)


def test_apply_overrides_keeps_field_of_view():
    spec = load_scene("indoor_room")
    small = apply_overrides(spec, size=(160, 120), max_frames=7)
    c0, c1 = spec.camera.pinhole(), small.camera.pinhole()
    assert c1.width == 160 and c0.fx / c0.width == pytest.approx(c1.fx / c1.width)
    assert max(s.n_frames for s in small.sequences) == 7
    with pytest.raises(ValueError, match="8x8"):
        apply_overrides(spec, size=(4, 4))
