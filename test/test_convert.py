"""`visloc convert`: small fixtures written in each dataset's official format; converted poses are
checked INDEPENDENTLY by projecting known world points with a pose built by hand from the dataset's
documented convention (numpy / scipy, not visloc's geometry), against projecting with the converted
T_world_cam and camera."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from visloc_core.cli import main as cli_main
from visloc_core.data import Dataset
from visloc_core.data.convert import ConvertError, cambridge, sevenscenes, tartanair

RNG = np.random.default_rng(42)
X_WORLD = np.array([[0.3, -0.2, 4.0], [1.0, 0.5, 6.0], [-0.7, 0.1, 5.0]])  # points in front of the cameras


def project_converted(frame, X_N3: np.ndarray) -> np.ndarray:
    """Pixels of world points through the converted pose and camera: x = K T_world_cam^-1 X."""
    T_cam_world = np.linalg.inv(frame.T_world_cam)
    Xc = X_N3 @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    return frame.camera.project(Xc)


def pinhole(Xc: np.ndarray, f: float, cx: float, cy: float) -> np.ndarray:
    return np.stack([f * Xc[:, 0] / Xc[:, 2] + cx, f * Xc[:, 1] / Xc[:, 2] + cy], axis=1)


def write_png(path: Path, w: int, h: int, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path.read_bytes()


def look_at_R_cw(yaw: float) -> np.ndarray:
    """A camera-to-world rotation looking roughly along +z of the world (points above stay in view)."""
    return Rotation.from_euler("xyz", [0.05, yaw, 0.02]).as_matrix()


# ------------------------------------------------------------------------------------ 7-Scenes
def make_7scenes(root: Path, w: int = 64, h: int = 48) -> dict:
    """chess: TrainSplit sequence1 -> seq-01, TestSplit sequence2 -> seq-02; 3 frames each."""
    truth = {}
    sdir = root / "chess"
    sdir.mkdir(parents=True)
    (sdir / "TrainSplit.txt").write_text("sequence1\n")
    (sdir / "TestSplit.txt").write_text("sequence2\r\n\n")  # CRLF and a blank line, as in some copies
    for s in (1, 2):
        for i in range(3):
            stem = sdir / f"seq-{s:02d}" / f"frame-{i:06d}"
            rgb = write_png(Path(f"{stem}.color.png"), w, h, 10 * s + i)
            depth = np.random.default_rng(i).integers(500, 4000, size=(h, w)).astype(np.uint16)
            depth[0, :5] = 65535  # invalid
            cv2.imwrite(f"{stem}.depth.png", depth)
            T = np.eye(4)
            T[:3, :3] = look_at_R_cw(0.1 * i - 0.05 * s)
            T[:3, 3] = RNG.uniform(-0.5, 0.5, 3)
            np.savetxt(f"{stem}.pose.txt", T, fmt="%.9e", delimiter="\t")  # camera-to-world
            truth[(f"seq-{s:02d}", f"frame-{i:06d}")] = (T, rgb, depth)
    return truth


def test_7scenes_poses_intrinsics_and_splits(tmp_path):
    truth = make_7scenes(tmp_path / "src")
    summ = sevenscenes.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert summ.n_frames == 6
    ds = Dataset(tmp_path / "ds")
    assert [s.key for s in ds.sequences("train")] == ["chess/seq-01"]
    assert [s.key for s in ds.sequences("test")] == ["chess/seq-02"]
    for f in ds.frames():
        T_cw, rgb, _ = truth[(f.sequence, f.name)]
        # by hand: pose.txt maps camera to world; f = 525, c = (320, 240) at 640x480, scaled to 64x48
        # with pixel centres at integers: u' = (u + 0.5) * s - 0.5
        s = 64 / 640
        Xc = (np.linalg.inv(T_cw) @ np.c_[X_WORLD, np.ones(3)].T).T[:, :3]
        expected = pinhole(Xc, 525 * s, (320 + 0.5) * s - 0.5, (240 + 0.5) * s - 0.5)
        assert np.allclose(project_converted(f, X_WORLD), expected, atol=1e-9)
        assert ds.path(f).read_bytes() == rgb  # copied, not re-encoded
        assert f.depth == ""  # unregistered depth is not stored by default
    assert "depth_registered" not in ds.manifest


def test_7scenes_official_size_intrinsics_and_depth_opt_in(tmp_path):
    truth = make_7scenes(tmp_path / "src", 640, 480)
    sevenscenes.convert(tmp_path / "src" / "chess", tmp_path / "ds", progress=False, with_depth=True)
    ds = Dataset(tmp_path / "ds")
    assert ds.manifest["depth_registered"] is False
    assert ds.manifest["depth_camera"]["fx"] == 585.0
    f = ds.frames()[0]
    assert (f.camera.fx, f.camera.cx, f.camera.cy, f.camera.width) == (525.0, 320.0, 240.0, 640)
    raw = truth[(f.sequence, f.name)][2]
    d = ds.load_depth(f)
    assert np.array_equal(np.round(d * 1000).astype(np.uint16), np.where(raw == 65535, 0, raw))


def test_7scenes_skips_non_finite_pose_and_rejects_malformed(tmp_path):
    make_7scenes(tmp_path / "src")
    pose = tmp_path / "src/chess/seq-01/frame-000001.pose.txt"
    pose.write_text(pose.read_text().replace(pose.read_text().split()[0], "inf", 1))
    summ = sevenscenes.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert summ.n_frames == 5 and sum(summ.skipped.values()) == 1

    pose.write_text("1 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ConvertError, match=r"frame-000001.pose.txt, line 1: expected 4 numbers"):
        sevenscenes.convert(tmp_path / "src", tmp_path / "ds2", progress=False)
    (tmp_path / "src/chess/TrainSplit.txt").write_text("sequence1\nseq 3\n")
    with pytest.raises(ConvertError, match=r"TrainSplit.txt, line 2: expected 'sequenceN'"):
        sevenscenes.convert(tmp_path / "src", tmp_path / "ds2", progress=False)
    assert not (tmp_path / "ds2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers
    with pytest.raises(ConvertError, match="--scenes office: not in"):
        sevenscenes.convert(tmp_path / "src", tmp_path / "ds3", scenes=["office"], progress=False)


# ------------------------------------------------------------------------------------ Cambridge
def make_cambridge(root: Path, w: int = 96, h: int = 54) -> dict:
    """KingsCollege: seq1 (train) and seq2 (test), 3 images each, with a reconstruction.nvm."""
    sdir = root / "KingsCollege"
    truth = {}
    nvm_lines = []
    for split, seq in (("train", "seq1"), ("test", "seq2")):
        rows = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
        for i in range(3):
            name = f"{seq}/frame{i + 1:05d}.png"
            write_png(sdir / name, w, h, 100 * int(seq[-1]) + i)
            C = RNG.uniform(-3, 3, 3)
            R_cw = look_at_R_cw(0.2 * i)  # camera-to-world
            q_wc = Rotation.from_matrix(R_cw.T).as_quat()  # WORLD-TO-CAMERA, scipy order x y z w
            W_, P, Q, R = q_wc[3], q_wc[0], q_wc[1], q_wc[2]
            if i == 1:  # the sign of a quaternion must not matter
                W_, P, Q, R = -W_, -P, -Q, -R
            rows.append(f"{name} {C[0]:.9f} {C[1]:.9f} {C[2]:.9f} {W_:.12f} {P:.12f} {Q:.12f} {R:.12f}")
            focal = 1650.0 + 10 * i
            nvm_lines.append(f"{name.replace('.png', '.jpg')} {focal} 1 0 0 0 {C[0]} {C[1]} {C[2]} -0.05 0")
            truth[(seq, f"frame{i + 1:05d}")] = (C, (W_, P, Q, R), focal)
        (sdir / f"dataset_{split}.txt").write_text("\n".join(rows) + "\n")
    (sdir / "reconstruction.nvm").write_text("NVM_V3\n\n" + f"{len(nvm_lines)}\n" + "\n".join(nvm_lines) + "\n0\n")
    return truth


def cambridge_expected(C, wpqr, focal, w, h, X) -> np.ndarray:
    # by hand from DATASETS.md: R from the world-to-camera quaternion (scipy wants x y z w), x = K R (X - C)
    W_, P, Q, R_ = wpqr
    R = Rotation.from_quat([P, Q, R_, W_]).as_matrix()
    Xc = (X - C) @ R.T
    return pinhole(Xc, focal * w / 1920, (w - 1) / 2, (h - 1) / 2)


def test_cambridge_poses_focal_from_nvm(tmp_path):
    truth = make_cambridge(tmp_path / "src")
    summ = cambridge.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert summ.n_frames == 6
    ds = Dataset(tmp_path / "ds")
    assert [s.key for s in ds.sequences("train")] == ["KingsCollege/seq1"]
    assert [s.key for s in ds.sequences("test")] == ["KingsCollege/seq2"]
    for f in ds.frames():
        C, wpqr, focal = truth[(f.sequence, f.name)]
        X = C + np.array([[0.3, -0.2, 4.0], [1.0, 0.5, 6.0]]) @ look_at_R_cw(0.0).T  # in front of the camera
        expected = cambridge_expected(C, wpqr, focal, 96, 54, X)
        assert np.allclose(project_converted(f, X), expected, atol=1e-6)
        assert np.allclose(f.T_world_cam[:3, 3], C)  # the centre IS the translation of T_world_cam


def test_cambridge_resize_scales_intrinsics(tmp_path):
    truth = make_cambridge(tmp_path / "src")
    cambridge.convert(tmp_path / "src", tmp_path / "ds", progress=False, resize="48x27")
    ds = Dataset(tmp_path / "ds")
    for f in ds.frames():
        assert ds.load_rgb(f).shape == (27, 48, 3)
        C, wpqr, focal = truth[(f.sequence, f.name)]
        X = C + np.array([[0.3, -0.2, 4.0]])
        uv = cambridge_expected(C, wpqr, focal, 96, 54, X)
        expected = (uv + 0.5) * 0.5 - 0.5  # resizing by 1/2 with pixel centres at integers
        assert np.allclose(project_converted(f, X), expected, atol=1e-6)
    cambridge.convert(tmp_path / "src", tmp_path / "ds2", progress=False, resize="27")  # shorter side
    assert Dataset(tmp_path / "ds2").frames()[0].camera.width == 48


def test_cambridge_malformed_rows_name_file_and_line(tmp_path):
    make_cambridge(tmp_path / "src")
    p = tmp_path / "src/KingsCollege/dataset_train.txt"
    lines = p.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[:7])  # one field missing
    p.write_text("\n".join(lines))
    with pytest.raises(ConvertError, match=r"dataset_train.txt, line 5: expected 'image X Y Z W P Q R'"):
        cambridge.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    lines[4] = "seq1/frame00002.png 1 2 3 0.5 0.5 0.5 0.9"  # not a unit quaternion
    p.write_text("\n".join(lines))
    with pytest.raises(ConvertError, match=r"line 5: quaternion W P Q R has norm"):
        cambridge.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    (tmp_path / "src/KingsCollege/reconstruction.nvm").unlink()
    with pytest.raises(ConvertError, match="--focal"):
        cambridge.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------------------------ TartanAir
def make_tartanair(root: Path, w: int = 64, h: int = 48) -> dict:
    truth = {}
    for diff, traj in (("Easy", "P000"), ("Easy", "P001"), ("Hard", "P000")):
        d = root / "abandonedfactory" / diff / traj
        lines = []
        for i in range(3):
            write_png(d / "image_left" / f"{i:06d}_left.png", w, h, i)
            depth = np.random.default_rng(i).uniform(0.5, 30.0, size=(h, w)).astype(np.float32)
            depth[0, 0] = 1e4  # sky
            (d / "depth_left").mkdir(parents=True, exist_ok=True)
            np.save(d / "depth_left" / f"{i:06d}_left_depth.npy", depth)
            t = RNG.uniform(-2, 2, 3)
            q = Rotation.from_euler("zyx", [0.3 * i, 0.05, -0.02]).as_quat()  # x y z w, NED body in NED world
            lines.append(" ".join(f"{v:.12f}" for v in [*t, *q]))
            truth[(f"{diff}_{traj}", f"{i:06d}")] = (t, q, depth)
        (d / "pose_left.txt").write_text("\n".join(lines) + "\n")
    return truth


def test_tartanair_ned_poses_depth_and_splits(tmp_path):
    truth = make_tartanair(tmp_path / "src")
    summ = tartanair.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert summ.n_frames == 9
    ds = Dataset(tmp_path / "ds")
    assert [s.key for s in ds.sequences("test")] == ["abandonedfactory/Easy_P001"]
    assert sorted(s.key for s in ds.sequences("train")) == [
        "abandonedfactory/Easy_P000",
        "abandonedfactory/Hard_P000",
    ]
    s = 64 / 640
    for f in ds.frames():
        t, q_xyzw, depth = truth[(f.sequence, f.name)]
        R_body = Rotation.from_quat(q_xyzw).as_matrix()  # NED body -> NED world
        X_ned = t + np.array([[5.0, 0.4, -0.3], [8.0, -1.0, 0.6]]) @ R_body.T  # ahead of the camera
        # by hand: NED body axes (forward, right, down) -> optical (right, down, forward)
        Xb = (X_ned - t) @ R_body
        Xc = np.stack([Xb[:, 1], Xb[:, 2], Xb[:, 0]], axis=1)
        expected = pinhole(Xc, 320 * s, (320 + 0.5) * s - 0.5, (240 + 0.5) * s - 0.5)
        X_cv = X_ned[:, [1, 2, 0]]  # the converted world has OpenCV axes too
        assert np.allclose(project_converted(f, X_cv), expected, atol=1e-6)
        d = ds.load_depth(f)
        assert d[0, 0] == 0  # beyond the uint16 mm range: invalid
        assert np.allclose(d[1:], depth[1:], atol=5e-4)


def test_tartanair_malformed(tmp_path):
    make_tartanair(tmp_path / "src")
    p = tmp_path / "src/abandonedfactory/Easy/P000/pose_left.txt"
    p.write_text(p.read_text() + "1 2 3 0 0 0 1\n")  # a pose without an image
    with pytest.raises(ConvertError, match=r"has 4 poses but 1 images are missing"):
        tartanair.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    p.write_text("1 2 3 0 0 0\n")
    with pytest.raises(ConvertError, match=r"Easy/P000/pose_left.txt, line 1: expected 'tx ty tz qx qy qz qw'"):
        tartanair.convert(tmp_path / "src", tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_cli_convert_and_overwrite(tmp_path, capsys):
    make_tartanair(tmp_path / "src")
    args = ["convert", "tartanair", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--no-progress"]
    assert cli_main([*args, "--test-sequences", "Hard_P000", "--no-depth"]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["splits"]["test"] == ["abandonedfactory/Hard_P000"]
    assert cli_main(args) == 2 and "--overwrite" in capsys.readouterr().err  # refuses to replace
    assert cli_main([*args, "--overwrite"]) == 0
    assert len(Dataset(tmp_path / "ds").frames(split="test")) == 3


def test_synthetic_scene_in_7scenes_layout_round_trips_through_the_converter(tmp_path):
    """`visloc synth --format 7scenes` writes what 7-Scenes ships (colour, unregistered depth of a depth
    camera 2.5 cm to the side, pose.txt of the depth camera); `visloc convert 7scenes --depth` reads it
    back; a relpose map of it triangulates (its depth is marked unregistered and is never used as such)."""
    from visloc_core.data.synth import load_scene, plan_sequence
    from visloc_core.data.synth.sevenscenes import DEPTH_BASELINE_M
    from visloc_core.geometry import invert_T
    from visloc_core.localizers.relpose.mapping import structure_source

    src, out = tmp_path / "src", tmp_path / "ds"
    assert cli_main(["synth", "indoor_room", "--format", "7scenes", "--out", str(src), "--max-frames", "2",
                     "--no-progress"]) == 0  # fmt: skip
    root = src / "indoor_room"
    assert (root / "TrainSplit.txt").read_text().split() == ["sequence1", "sequence2"]
    assert (root / "TestSplit.txt").read_text().split() == [f"sequence{i}" for i in range(3, 8)]  # no unmapped
    color = cv2.imread(str(root / "seq-01" / "frame-000000.color.png"))
    depth = cv2.imread(str(root / "seq-01" / "frame-000000.depth.png"), cv2.IMREAD_UNCHANGED)
    assert color.shape == (480, 640, 3) and depth.dtype == np.uint16 and depth.shape == (480, 640)
    spec = load_scene("indoor_room")
    T_color = plan_sequence(spec, 0).T_world_cam[0]  # frame 0 is the start of the path at any length
    T_pose = sevenscenes.read_pose_file(root / "seq-01" / "frame-000000.pose.txt")
    # the pose file holds the depth camera: the colour camera's pose moved 2.5 cm along its own x axis
    np.testing.assert_allclose(invert_T(T_color) @ T_pose, np.r_[np.c_[np.eye(3), [DEPTH_BASELINE_M, 0, 0]], [[0, 0, 0, 1]]],
                               atol=1e-6)  # fmt: skip
    assert cli_main(["convert", "7scenes", str(src), "--out", str(out), "--depth", "--no-progress"]) == 0
    ds = Dataset(out)
    assert ds.manifest["depth_registered"] is False
    frames = ds.frames("train")
    np.testing.assert_allclose(frames[0].T_world_cam, T_pose, atol=1e-9)
    assert frames[0].camera.fx == 525.0 and all(f.depth for f in frames)
    assert structure_source("auto", ds, frames, "xfeat") == "triangulate"
    with pytest.raises(ValueError, match="not registered"):
        structure_source("depth", ds, frames, "xfeat")
