"""Appearance conditions: built-in presets and the sensor effects applied after rendering.

A condition (:class:`ConditionSpec`, defined here; scene files name a preset or define their own)
sets the lighting the renderer uses (ambient + one directional "sun" + an optional headlamp at the
camera, exposure gain, sky colours), which of the scene's moving actors are present, and the sensor:
motion blur (sub-frames averaged over the shutter time, done by the generator) and noise (here).
The mapping sequences use ``day``; query sets add shifted conditions the way the Extended Cambridge
Landmarks adds evening/winter/summer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConditionSpec:
    """Appearance of one sequence: lighting, exposure, sensor effects, moving occluders."""

    name: str
    ambient: float = 0.65  # ambient light intensity
    ambient_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sun_intensity: float = 0.6  # directional light intensity
    sun_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sun_azimuth_deg: float = 35.0  # direction TOWARDS the light, from +x counter-clockwise
    sun_elevation_deg: float = 50.0
    headlamp: float = 0.0  # a light at the camera (night); intensity at 1 m
    headlamp_range: float = 3.0  # metres at which the headlamp falls to half
    exposure: float = 1.0  # gain before clipping (> 1.6 over-exposes)
    sky_zenith: tuple[float, float, float] = (0.35, 0.55, 0.9)
    sky_horizon: tuple[float, float, float] = (0.75, 0.85, 0.95)
    noise_std: float = 1.0  # sensor read noise, in 8-bit grey levels
    shot_noise: float = 0.0  # photon noise: std = shot_noise * sqrt(value) (grey levels)
    blur_exposure_s: float = 0.0  # shutter time for motion blur (0 = none)
    blur_samples: int = 5  # sub-frames averaged across the shutter time
    people: int = 0  # number of the scene's person actors present
    vehicles: int = 0  # number of the scene's vehicle actors present


BUILTIN_CONDITIONS: dict[str, ConditionSpec] = {
    # The normal condition: what mapping sequences are recorded in.
    "day": ConditionSpec(name="day"),
    # Low warm sun from the side, bluish ambient, orange sky; darker overall.
    "dusk": ConditionSpec(
        name="dusk",
        ambient=0.4,
        ambient_color=(0.95, 0.75, 0.65),
        sun_intensity=0.9,
        sun_color=(1.0, 0.55, 0.25),
        sun_azimuth_deg=200.0,
        sun_elevation_deg=8.0,
        sky_zenith=(0.25, 0.2, 0.45),
        sky_horizon=(0.95, 0.5, 0.25),
        noise_std=2.0,
        shot_noise=0.3,
    ),
    # Dark blue ambient, a headlamp on the robot, noisy sensor, some blur (longer shutter).
    "night": ConditionSpec(
        name="night",
        ambient=0.05,
        ambient_color=(0.5, 0.6, 1.0),
        sun_intensity=0.0,
        headlamp=0.6,
        headlamp_range=2.0,
        sky_zenith=(0.01, 0.01, 0.04),
        sky_horizon=(0.05, 0.05, 0.1),
        noise_std=4.0,
        shot_noise=0.8,
        blur_exposure_s=0.03,
    ),
    # Bright light and a too-long exposure: clipped highlights.
    "overexposed": ConditionSpec(name="overexposed", ambient=0.7, sun_intensity=0.8, exposure=2.2, noise_std=1.0),
    # Normal lighting with many people/vehicles and motion blur.
    "crowded": ConditionSpec(name="crowded", blur_exposure_s=0.02, noise_std=2.0, shot_noise=0.3),
}


def sun_direction(cond: ConditionSpec) -> np.ndarray:
    """Unit vector (world, z up) pointing TOWARDS the directional light."""
    az = np.radians(cond.sun_azimuth_deg)
    el = np.radians(cond.sun_elevation_deg)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


class NoiseBank:
    """Standard-normal noise for images of one shape, drawn once (seeded) and sliced per frame.

    Drawing 230k normals per 320x240 frame costs more than rendering it; a bank twice the image
    size read at a random offset (with a random sign) gives per-frame noise that differs between
    frames and is still fully determined by the seeds.
    """

    def __init__(self, shape: tuple[int, ...], seed: int | list[int]) -> None:
        self.shape = tuple(shape)
        self.size = int(np.prod(self.shape))
        self._bank = np.random.default_rng(seed).standard_normal(2 * self.size + 1, dtype=np.float32)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """float32 array of ``shape`` with N(0, 1) entries, chosen by ``rng``."""
        off = int(rng.integers(0, self.size + 1))
        out = self._bank[off : off + self.size].reshape(self.shape)
        return -out if rng.integers(0, 2) else out


def apply_sensor_noise(
    rgb_HW3: np.ndarray, cond: ConditionSpec, rng: np.random.Generator, bank: NoiseBank | None = None
) -> np.ndarray:
    """Add read noise (std ``noise_std`` grey levels) and shot noise (std ``shot_noise * sqrt(value)``).

    ``rgb_HW3`` is float (0..255) or uint8; returns uint8. The noise comes from ``rng`` (through
    ``bank`` when given, which is much faster), so seeded generators give identical images.
    """
    img = rgb_HW3.astype(np.float32)
    if cond.noise_std <= 0 and cond.shot_noise <= 0:
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    std = np.float32(cond.noise_std)
    if cond.shot_noise > 0:
        std = np.sqrt(std * std + np.float32(cond.shot_noise) ** 2 * np.maximum(img, 0.0))
    if bank is not None and bank.shape == img.shape:
        noise = bank.draw(rng)
    else:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
    img += noise * std
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
