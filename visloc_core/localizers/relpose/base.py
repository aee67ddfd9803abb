"""Interfaces of the retrieval + relative-pose localizer (paper 003 and our geometric variant).

Convention: the query camera is q, a retrieved map keyframe is r. ``T_q_r`` maps r-camera points
into the q-camera frame (``x_q = R x_r + t``); ``E = [t]x R`` of that pose (x_q^T E x_r = 0).
Translations are metres when ``metric`` is True, otherwise unit direction only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...geometry import PinholeCamera
from ...registry import Registry


class ConfigSection:
    """Mixin of the dataclasses that hold one section of a relpose config (``retrieval:``,
    ``filtering:``, ...): ``from_dict`` refuses unknown keys (a typo must not fall back to a default
    silently), then ``validate`` checks the values."""

    section: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, d: dict | None):
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            known = sorted(cls.__dataclass_fields__)  # type: ignore[attr-defined]
            raise ValueError(f"unknown {cls.section} keys {sorted(unknown)}; known: {known}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the key when a value is out of range."""


@dataclass
class Keyframe:
    """A map image with its pose and whatever the estimators cached for it."""

    key: str  # scene/sequence/name in the source dataset
    T_world_cam: np.ndarray  # (4, 4)
    camera: PinholeCamera
    image_path: str = ""  # absolute path of the RGB image (learned estimators read it)
    semantic_path: str = ""  # absolute path of the class map, '' if none
    depth_path: str = ""  # absolute path of the depth image (metres = value / depth_scale), '' if none
    depth_scale: float = 1000.0
    cache: dict = field(default_factory=dict)  # e.g. local features (keypoints, descriptors)
    # World point (metres) of each keypoint of the cached features, NaN where there is none: from
    # registered depth or the triangulated sparse model (structure.py); None = direction-only map.
    points_world_N3: np.ndarray | None = None  # noqa: N815  (shape suffix, STYLE.md)


@dataclass
class RelPoseEstimate:
    """Relative pose of the query w.r.t. one reference keyframe."""

    T_q_r: np.ndarray  # (4, 4); translation is unit-norm unless metric
    metric: bool  # True when the translation has metric scale (e.g. PnP against map depth)
    E: np.ndarray | None = None  # (3, 3) essential matrix when estimated as one
    num_inliers: int = 0
    confidence: float = 0.0  # in [0, 1]
    ok: bool = True  # False when the estimator failed (too few matches, degenerate)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # True when T_q_r is the one decomposition of E that passed a cheirality check (feature-based
    # estimators). When False and E is given, the hypothesis filter considers both rotations of E and
    # both signs of t, as paper 003 does for a regressed E.
    cheirality_checked: bool = False
    # Metric estimates from PnP may keep their inlier 2D-3D correspondences: query points in
    # normalised coordinates (N, 2) and world points (N, 3), so that the localizer can refine one
    # pose jointly over all agreeing references. None when not available.
    points2d_query_N2: np.ndarray | None = None  # noqa: N815  (shape suffix, STYLE.md)
    points3d_world_N3: np.ndarray | None = None  # noqa: N815
    # metric estimates: largest standard deviation (m) of the query centre from the PnP's first-order
    # covariance (image noise from the inlier residuals); 0 when unknown
    sigma_center_m: float = 0.0


class RelPoseEstimator(ABC):
    """Estimates T_q_r for a query image against map keyframes."""

    name: str = "unknown"

    def prepare_keyframe(self, kf: Keyframe, image_rgb_HW3: np.ndarray) -> None:  # noqa: B027
        """Cache per-keyframe data at map-build time (e.g. local features in kf.cache)."""

    @abstractmethod
    def estimate(
        self,
        query_rgb_HW3: np.ndarray,
        query_camera: PinholeCamera,
        refs: list[Keyframe],
        query_semantic_HW: np.ndarray | None = None,
    ) -> list[RelPoseEstimate]:
        """One estimate per reference, in the same order."""


# name -> factory (cfg: dict, device: str) -> RelPoseEstimator, imported from its module on first use.
# To add an estimator: one module registering it + one map YAML (config/models/relpose_*.yaml) + one line here.
RELPOSE_ESTIMATORS: Registry[RelPoseEstimator] = Registry(
    "relative-pose estimator",
    key="estimator.name",
    modules={
        "xfeat": "visloc_core.localizers.relpose.geometric",
        "sift": "visloc_core.localizers.relpose.geometric",
        "learned": "visloc_core.localizers.relpose.learned",
    },
)
