"""A tiny analytic room for radiance-field tests: an axis-aligned box room (4 x 3 x 2.5 m, floor at
z = 0) seen from cameras on a small loop, ray-cast in numpy. Every pixel's surface, class, colour and
camera-frame depth are known exactly: walls class 1, floor 2, ceiling 3; each surface has its own
colour, modulated by a checker pattern of 0.5 m squares (texture for the photometric loss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visloc_core.data.layout import DatasetWriter
from visloc_core.geometry import PinholeCamera, R_from_rotvec, T_from_R_t

ROOM_MIN = np.array([-2.0, -1.5, 0.0])
ROOM_MAX = np.array([2.0, 1.5, 2.5])
# (axis, side 0=min 1=max) -> class id, base colour
SURFACES = {
    (0, 0): (1, (200, 60, 60)),
    (0, 1): (1, (60, 200, 60)),
    (1, 0): (1, (60, 60, 200)),
    (1, 1): (1, (200, 200, 60)),
    (2, 0): (2, (120, 80, 40)),
    (2, 1): (3, (230, 230, 230)),
}
CLASSES = {0: "void", 1: "wall", 2: "floor", 3: "ceiling"}


def camera_pose(angle: float, radius: float = 0.5, height: float = 1.2) -> np.ndarray:
    """T_world_cam of a camera on a circle looking outwards, optical axis horizontal."""
    c = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
    # optical frame: z forward (outwards), x right, y down (world -z)
    z = np.array([np.cos(angle), np.sin(angle), 0.0])
    y = np.array([0.0, 0.0, -1.0])
    x = np.cross(y, z)
    R = np.stack([x, y, z], axis=1)
    R = R @ R_from_rotvec(np.array([-0.3, 0.0, 0.0]))  # look down a little
    return T_from_R_t(R, c)


def cast(T_world_cam: np.ndarray, cam: PinholeCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (rgb uint8 HxWx3, depth float32 HxW camera z, classes uint8 HxW) of the room."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    d_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1)
    d = d_cam @ T_world_cam[:3, :3].T
    o = T_world_cam[:3, 3]
    best_t = np.full(u.shape, np.inf)
    rgb = np.zeros(u.shape + (3,))
    cls = np.zeros(u.shape, np.uint8)
    for (axis, side), (k, colour) in SURFACES.items():
        plane = (ROOM_MIN, ROOM_MAX)[side][axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (plane - o[axis]) / d[..., axis]
        ok = (t > 0) & (t < best_t)
        p = o + t[..., None] * d
        other = [a for a in range(3) if a != axis]
        chk = (np.floor(p[..., other[0]] / 0.5) + np.floor(p[..., other[1]] / 0.5)) % 2
        shade = np.where(chk > 0, 1.0, 0.6)[..., None] * np.array(colour)
        best_t = np.where(ok, t, best_t)
        rgb = np.where(ok[..., None], shade, rgb)
        cls = np.where(ok, k, cls)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), best_t.astype(np.float32), cls.astype(np.uint8)


def make_room_dataset(out: str | Path, n_frames: int = 24, width: int = 32, height: int = 24) -> Path:
    cam = PinholeCamera(width, height, 0.45 * width, 0.45 * width, (width - 1) / 2, (height - 1) / 2)
    with DatasetWriter(out, source={"type": "test-analytic-room"}) as w:
        w.set_scene("room", description="an analytic box room")
        w.set_classes(CLASSES)
        for seq, angles in (
            ("map", np.linspace(0, 2 * np.pi, n_frames, endpoint=False)),
            ("query_day", np.linspace(0.1, 2 * np.pi + 0.1, 6, endpoint=False)),
        ):
            w.set_sequence("room", seq, condition="day")
            for i, a in enumerate(angles):
                T = camera_pose(a, radius=0.5 if seq == "map" else 0.4)
                rgb, depth, cls = cast(T, cam)
                w.add_frame("room", seq, f"{i:04d}", i * 100_000_000, T, cam, rgb, depth, cls)
        w.set_split("train", ["room/map"])
        w.set_split("test", ["room/query_day"])
    return Path(out)
