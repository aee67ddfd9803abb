"""The Localizer interface: what the node, ``visloc eval`` and ``visloc replay`` all call.

Convention: ``T_world_cam`` (4x4, OpenCV optical camera frame, metres) as in visloc_core.geometry;
the covariance is 6x6 over (x, y, z, rotation about world X, Y, Z) of the camera pose in the
world frame, in m^2 / rad^2 (the order of geometry_msgs/PoseWithCovariance); the rotation part is a
small rotation applied on the left: R_true = exp([w]x) R_est.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import PinholeCamera


class Status(enum.IntEnum):
    """Same values as the constants of visloc_ros/msg/LocalizationResult."""

    LOCALIZED = 0
    NOT_LOCALIZED = 1
    REJECTED = 2


@dataclass
class LocalizationResult:
    """One localization attempt. ``T_world_cam`` is NaN-filled when NOT_LOCALIZED."""

    T_world_cam: np.ndarray
    covariance_66: np.ndarray
    status: Status
    method: str
    confidence: float = 0.0
    num_inliers: int = 0
    reference_ids: list[str] = field(default_factory=list)
    scene: str = ""
    status_reason: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)  # per-stage wall time, seconds
    extras: dict[str, Any] = field(default_factory=dict)  # method-specific diagnostics

    @classmethod
    def not_localized(cls, method: str, reason: str, **kw: Any) -> LocalizationResult:
        return cls(
            np.full((4, 4), np.nan), np.full((6, 6), np.nan), Status.NOT_LOCALIZED, method, status_reason=reason, **kw
        )


def check_query_image(image_rgb_HW3: np.ndarray, camera: PinholeCamera | None) -> np.ndarray:
    """The input contract of ``Localizer.localize``: an RGB uint8 (H, W, 3) image of the size
    ``camera`` gives (when given). Returns it as an array; raises ValueError naming what is wrong."""
    img = np.asarray(image_rgb_HW3)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"localize expects an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"image too small: {w}x{h}")
    if camera is not None and (camera.width, camera.height) != (w, h):
        raise ValueError(
            f"image is {w}x{h} but the camera says {camera.width}x{camera.height}; pass the camera_info of this image"
        )
    return img


class Localizer(ABC):
    """Relocalizes one image against what it was built from (a trained model or a map)."""

    #: registry name plus variant, e.g. "apr/posenet" or "relpose/xfeat"
    method: str = "unknown"
    #: True when ``localize`` also takes ``query_semantic_HW`` (the query's class-id map, e.g. for
    #: paper 003's BiasNet); callers that have class maps (datasets, a segmentation topic) pass them.
    uses_semantics: bool = False

    @abstractmethod
    def localize(
        self,
        image_rgb_HW3: np.ndarray,
        camera: PinholeCamera,
        stamp_ns: int,
        prior: np.ndarray | None = None,
    ) -> LocalizationResult:
        """Localize an RGB uint8 image (H, W, 3) taken with ``camera`` at ``stamp_ns`` (nanoseconds).

        ``prior`` is an optional 4x4 T_world_cam hint (e.g. from /initialpose); localizers may use
        it to restrict their search, never to replace the measurement.
        """

    def reset(self) -> None:  # noqa: B027  (optional hook)
        """Forget any temporal state (a forced global relocalization)."""
