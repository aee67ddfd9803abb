"""A tiny exact renderer for relpose tests: a box room whose six faces carry scikit-image photos.

Each pixel's ray is intersected analytically with the axis-aligned faces, so RGB and metric depth
of any camera pose are known exactly (no rasteriser, no random texture): two renders of the same
room from known poses are a pair with known relative pose and known 3D structure.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import skimage.data

from visloc_core.data.layout import DatasetWriter
from visloc_core.geometry import PinholeCamera, R_from_rotvec, T_from_R_t

HALF = np.array([4.0, 2.0, 4.0])  # room half-extent (x, y, z) in metres; y is down (OpenCV-like)
_TEX = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
_TEX_CACHE: list[np.ndarray] = []


def _textures() -> list[np.ndarray]:
    if not _TEX_CACHE:
        for n in _TEX:
            img = getattr(skimage.data, n)()
            _TEX_CACHE.append(np.ascontiguousarray(cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)))
    return _TEX_CACHE


def render(T_world_cam: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and z-depth in metres (H, W) of the room seen from ``T_world_cam``."""
    W, H = camera.width, camera.height
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    d_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    d = d_cam @ T_world_cam[:3, :3].T  # world direction with unit camera z
    o = T_world_cam[:3, 3]
    best_t = np.full((H, W), np.inf)
    face = np.full((H, W), -1)
    for axis in range(3):
        for s, sign in enumerate((-1.0, 1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (sign * HALF[axis] - o[axis]) / d[..., axis]
            t = np.where(t > 1e-9, t, np.inf)
            better = t < best_t
            best_t[better] = t[better]
            face[better] = 2 * axis + s
    p = o + d * best_t[..., None]
    rgb = np.zeros((H, W, 3), np.uint8)
    tex = _textures()
    for f in range(6):
        m = face == f
        if not m.any():
            continue
        axis = f // 2
        a, b = [k for k in range(3) if k != axis]
        # two textures tiles per face; texture coordinate in pixels of a 512 px image
        tu = ((p[..., a] + HALF[a]) / (HALF[a]) * 512.0).astype(np.float32)
        tv = ((p[..., b] + HALF[b]) / (HALF[b]) * 512.0).astype(np.float32)
        img = cv2.remap(tex[f], tu, tv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        rgb[m] = img[m]
    return rgb, best_t.astype(np.float32)


def look_pose(center: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """T_world_cam of a camera at ``center`` turned by yaw about the world y axis (down), then pitch."""
    R = R_from_rotvec(np.array([0.0, yaw, 0.0])) @ R_from_rotvec(np.array([pitch, 0.0, 0.0]))
    R = R @ R_from_rotvec(np.array([0.0, 0.0, roll]))
    return T_from_R_t(R, np.asarray(center, float))


def small_camera(width: int = 160, height: int = 120) -> PinholeCamera:
    return PinholeCamera(width, height, 0.6 * width, 0.6 * width, (width - 1) / 2, (height - 1) / 2)


def trajectory(n: int, seed: int, radius: float = 1.2, jitter: float = 0.15) -> list[np.ndarray]:
    """n poses on a circle around the room centre, looking outwards-ish, with some jitter."""
    rng = np.random.default_rng(seed)
    poses = []
    for k in range(n):
        a = 2 * np.pi * k / n
        c = np.array([radius * np.cos(a), 0.3 * np.sin(2 * a), radius * np.sin(a)]) + rng.normal(0, jitter, 3)
        poses.append(look_pose(c, yaw=a + rng.normal(0, 0.1), pitch=rng.normal(0, 0.1), roll=rng.normal(0, 0.05)))
    return poses


def write_dataset(out: Path, n_train: int = 24, n_test: int = 6, size: tuple[int, int] = (160, 120)) -> Path:
    """A visloc dataset of the room: train = a circle of mapping frames, test = jittered queries."""
    cam = small_camera(*size)
    with DatasetWriter(out, source={"type": "test-room"}) as w:
        for split, poses, seq in (("train", trajectory(n_train, 0), "map"), ("test", trajectory(n_test, 1), "query")):
            for i, T in enumerate(poses):
                rgb, depth = render(T, cam)
                w.add_frame("room", seq, f"{i:04d}", i * 100_000_000, T, cam, rgb, depth_m_HW=depth)
            w.set_split(split, [f"room/{seq}"])
    return out


def build_map_cli(data: Path, out: Path, *sets: str, cfg: str = "config/models/relpose_xfeat.yaml") -> Path:
    """``visloc map build CFG`` of a test dataset at its own image size (``image_size=null``), with
    extra ``--set key=value`` overrides; asserts the command succeeded."""
    from visloc_core.cli import main

    args = ["map", "build", cfg, "--data", str(data), "--out", str(out), "--no-progress", "--set", "image_size=null"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return out
