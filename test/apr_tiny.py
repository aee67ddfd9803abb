"""A tiny dataset whose images are a deterministic function of the camera pose (for APR tests).

The camera slides along a line (x from 0 to 2 m, y = 0.2 x, z = 1) while yawing from -20 to +20
degrees; each image is a 64x48 window of a real photograph (skimage astronaut) whose horizontal
offset follows x and whose vertical offset follows y, so a network can learn pose from appearance.
Sequences: 'seq-train' (training, every frame) and 'seq-test' (the poses half-way between the
training poses, i.e. held-out views inside the mapped region).

``make_two_scene_dataset``: two such scenes for multi-scene models, 'astro' (the astronaut) and
'coffee' (skimage's coffee photograph, its poses 5 m away), each with a description.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import skimage.data

from visloc_core.data.layout import DatasetWriter
from visloc_core.geometry import PinholeCamera, R_from_rotvec, T_from_R_t

W, H = 64, 48
SCENE_OFFSET_M = {"astro": 0.0, "coffee": 5.0}  # the coffee scene's poses: + this in x, y and z
SCENE_DESCRIPTIONS = {
    "astro": "an astronaut in a white space suit in front of a flag",
    "coffee": "a cup of coffee on a saucer on a wooden table",
}


def pose_at(s: float) -> np.ndarray:
    """T_world_cam at path parameter s in [0, 1]."""
    x = 2.0 * s
    yaw = np.deg2rad(-20.0 + 40.0 * s)
    R = R_from_rotvec(np.array([0.0, yaw, 0.0]))  # about the camera's y (down) axis
    return T_from_R_t(R, np.array([x, 0.2 * x, 1.0]))


def image_at(s: float, texture: np.ndarray) -> np.ndarray:
    th, tw = texture.shape[:2]
    x0 = round(s * (tw - 2 * W))
    y0 = round(s * (th - 2 * H) * 0.5)
    return np.ascontiguousarray(texture[y0 : y0 + 2 * H : 2, x0 : x0 + 2 * W : 2])


def make_tiny_dataset(out: str | Path, n_train: int = 20) -> Path:
    texture = cv2.resize(skimage.data.astronaut(), (384, 192), interpolation=cv2.INTER_AREA)
    cam = PinholeCamera(W, H, 50.0, 50.0, (W - 1) / 2, (H - 1) / 2)
    s_train = np.linspace(0.0, 1.0, n_train)
    s_test = 0.5 * (s_train[1:] + s_train[:-1])
    with DatasetWriter(out, source={"type": "test-tiny"}) as w:
        w.set_scene("line", description="a photograph seen through a sliding window")
        for seq, ss in (("seq-train", s_train), ("seq-test", s_test)):
            for i, s in enumerate(ss):
                w.add_frame("line", seq, f"{i:04d}", i * 100_000_000, pose_at(s), cam, image_at(s, texture))
        w.set_split("train", ["line/seq-train"])
        w.set_split("test", ["line/seq-test"])
    return Path(out)


def scene_texture(scene: str) -> np.ndarray:
    photo = {"astro": skimage.data.astronaut, "coffee": skimage.data.coffee}[scene]()
    return cv2.resize(photo, (384, 192), interpolation=cv2.INTER_AREA)


def scene_pose_at(scene: str, s: float) -> np.ndarray:
    T = pose_at(s)
    T[:3, 3] += SCENE_OFFSET_M[scene]
    return T


def make_two_scene_dataset(out: str | Path, n_train: int = 4, with_test: bool = False) -> Path:
    """Scenes 'astro' and 'coffee' (different photographs, 5 m apart), ``n_train`` training frames
    each ('seq-train'), and with ``with_test`` the half-way poses as 'seq-test' (split test)."""
    cam = PinholeCamera(W, H, 50.0, 50.0, (W - 1) / 2, (H - 1) / 2)
    s_train = np.linspace(0.0, 1.0, n_train)
    seqs = [("seq-train", s_train)] + ([("seq-test", 0.5 * (s_train[1:] + s_train[:-1]))] if with_test else [])
    with DatasetWriter(out, source={"type": "test-two-scenes"}) as w:
        for scene, text in SCENE_DESCRIPTIONS.items():
            w.set_scene(scene, description=text)
            tex = scene_texture(scene)
            for seq, ss in seqs:
                for i, s in enumerate(ss):
                    T = scene_pose_at(scene, s)
                    w.add_frame(scene, seq, f"{i:04d}", i * 100_000_000, T, cam, image_at(s, tex))
        w.set_split("train", [f"{sc}/seq-train" for sc in SCENE_DESCRIPTIONS])
        if with_test:
            w.set_split("test", [f"{sc}/seq-test" for sc in SCENE_DESCRIPTIONS])
    return Path(out)
