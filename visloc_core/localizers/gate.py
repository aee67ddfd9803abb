"""Sanity gate applied to localizer results before anything is published as a pose (no ROS).

Two checks, in this order:

1. the localizer's own verdict: a result that is not LOCALIZED (e.g. REJECTED because the pose
   lies outside the mapped region, or NOT_LOCALIZED) passes through unchanged;
2. a jump check: a LOCALIZED result whose camera centre lies more than ``max_jump_m`` metres, or
   whose orientation differs by more than ``max_jump_deg`` degrees, from the last ACCEPTED pose
   is turned into REJECTED (with a reason) -- but only while that last accepted pose is recent
   (within ``window_s`` seconds of the new stamp). After the window the gate accepts again, so a
   wrong first fix cannot lock the gate forever; ``reset()`` (the node's ``relocalize`` service,
   a new /initialpose) forgets the reference at once. And when ``confirm_frames`` consecutive
   jump-rejected results agree with each other (each within the bounds of the one before), the
   newest is accepted and becomes the reference: a wrong fix that slipped through is then
   replaced after a few frames instead of blocking correct ones for the whole window.

A result in another scene than the reference (``LocalizationResult.scene``, multi-scene artifacts:
each scene has its own world frame) is a jump of unknown size: rejected until ``confirm_frames``
consecutive results agree on the new scene and pose, exactly like a jump.

Poses are 4x4 ``T_world_cam`` (geometry conventions), stamps integer nanoseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..geometry import rotation_angle_deg
from .base import LocalizationResult, Status


@dataclass
class GateConfig:
    max_jump_m: float = 1.0  # largest accepted camera-centre move from the last accepted pose (m); <= 0 disables
    max_jump_deg: float = 30.0  # largest accepted orientation change (deg); <= 0 disables
    window_s: float = 2.0  # the last accepted pose is a reference for this long (s); <= 0 disables the jump check
    confirm_frames: int = 3  # this many consecutive, mutually consistent jumps are accepted; <= 0 never


class SanityGate:
    """Stateful jump check; see the module docstring. Not thread-safe: call from one thread."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self._last_stamp_ns: int | None = None
        self._last_T_world_cam: np.ndarray | None = None
        self._last_scene = ""
        self._jumps: list[tuple[str, np.ndarray]] = []  # consecutive jump-rejected (scene, pose) that agree

    def _within_bounds(self, T_a: np.ndarray, T_b: np.ndarray) -> tuple[bool, float, float]:
        cfg = self.config
        jump_m = float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]))
        jump_deg = float(rotation_angle_deg(T_a[:3, :3] @ T_b[:3, :3].T))
        too_far = cfg.max_jump_m > 0 and jump_m > cfg.max_jump_m
        too_turned = cfg.max_jump_deg > 0 and jump_deg > cfg.max_jump_deg
        return not (too_far or too_turned), jump_m, jump_deg

    @property
    def reference(self) -> tuple[int, np.ndarray] | None:
        """(stamp_ns, T_world_cam) of the last accepted pose, or None."""
        if self._last_stamp_ns is None:
            return None
        return self._last_stamp_ns, self._last_T_world_cam.copy()

    def reset(self) -> None:
        """Forget the last accepted pose (forced global relocalization)."""
        self._last_stamp_ns = None
        self._last_T_world_cam = None
        self._last_scene = ""
        self._jumps = []

    def check(self, result: LocalizationResult, stamp_ns: int) -> LocalizationResult:
        """Return ``result`` unchanged when accepted (and remember it), or a REJECTED copy."""
        if result.status != Status.LOCALIZED:
            return result
        T = np.asarray(result.T_world_cam, dtype=np.float64)
        if not np.all(np.isfinite(T)):
            return dataclasses.replace(result, status=Status.REJECTED, status_reason="non-finite pose")
        cfg = self.config
        ref = self.reference
        if ref is not None and cfg.window_s > 0:
            ref_stamp, ref_T = ref
            dt_s = abs(int(stamp_ns) - ref_stamp) * 1e-9
            if dt_s <= cfg.window_s:
                scene = str(result.scene or "")
                same_scene = scene == self._last_scene
                ok, jump_m, jump_deg = self._within_bounds(T, ref_T) if same_scene else (False, np.inf, np.inf)
                if not ok:
                    # a run of jumps that agree with each other is a new place, not an outlier
                    if self._jumps and (
                        self._jumps[-1][0] != scene or not self._within_bounds(T, self._jumps[-1][1])[0]
                    ):
                        self._jumps = []
                    self._jumps.append((scene, T.copy()))
                    if cfg.confirm_frames <= 0 or len(self._jumps) < cfg.confirm_frames:
                        if same_scene:
                            what = f"jump of {jump_m:.2f} m / {jump_deg:.1f} deg from the pose accepted {dt_s:.2f} s earlier "
                            what += f"exceeds the bound {cfg.max_jump_m:g} m / {cfg.max_jump_deg:g} deg"
                        else:
                            what = (
                                f"scene {scene!r} differs from scene {self._last_scene!r} accepted {dt_s:.2f} s earlier"
                            )
                        reason = f"{what} (call the relocalize service to accept a new place)"
                        extras = dict(result.extras, jump_m=jump_m, jump_deg=jump_deg)
                        return dataclasses.replace(result, status=Status.REJECTED, status_reason=reason, extras=extras)
        self._jumps = []
        self._last_stamp_ns = int(stamp_ns)
        self._last_T_world_cam = T.copy()
        self._last_scene = str(result.scene or "")
        return result
