"""Random view synthesis (RVS, paper 001 sec. 3.1 eq. 5 and 4.1): perturbed training poses.

A perturbed pose keeps the camera near a training camera: the camera centre moves by a translation
drawn uniformly per world axis in [-max_translation_m, +max_translation_m] and the orientation turns
by three rotations about the camera's own x, y, z axes, each by an angle drawn uniformly in
[-max_rotation_deg, +max_rotation_deg] (paper 001: delta_t = [0.2, 0.2, 0.2] m, delta_r = [10, 10,
10] deg indoors; [3, 3, 3] m, [7.5, 7.5, 7.5] deg outdoors). ``T_rvs = [R R_x(a) R_y(b) R_z(c) |
t + dt]`` for ``T_world_cam = [R | t]`` (OpenCV camera, metres).
"""

from __future__ import annotations

import numpy as np

from ..geometry import R_from_rotvec

RVS_PRESETS: dict[str, tuple[float, float]] = {"indoor": (0.2, 10.0), "outdoor": (3.0, 7.5)}  # paper 001 sec. 4.1


def perturb_poses(
    T_world_cam_N44: np.ndarray, max_translation_m: float, max_rotation_deg: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perturbed poses (N, 4, 4) and the drawn perturbations: world translations (N, 3) in metres and
    camera-frame angles (N, 3) about x, y, z in degrees (see the module docstring)."""
    T = np.asarray(T_world_cam_N44, dtype=np.float64).reshape(-1, 4, 4)
    if max_translation_m < 0 or max_rotation_deg < 0:
        raise ValueError("RVS perturbation bounds must be >= 0 (metres, degrees)")
    dt = rng.uniform(-max_translation_m, max_translation_m, (len(T), 3))
    ang = rng.uniform(-max_rotation_deg, max_rotation_deg, (len(T), 3))
    out = T.copy()
    eye = np.eye(3)
    for i in range(len(T)):
        dR = eye
        for axis in range(3):
            dR = dR @ R_from_rotvec(eye[axis] * np.deg2rad(ang[i, axis]))
        out[i, :3, :3] = T[i, :3, :3] @ dR
        out[i, :3, 3] = T[i, :3, 3] + dt[i]
    return out, dt, ang
