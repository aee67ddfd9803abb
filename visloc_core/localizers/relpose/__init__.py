"""Retrieval + relative-pose localization (paper 003) with learned or geometric estimators.

Importing this package registers the ``relpose`` localizer (``load_localizer`` on an artifact of
kind "relpose", built by ``visloc map build``). Estimators are registered in RELPOSE_ESTIMATORS
by their modules (geometric.py: "xfeat", "sift"; learned.py: "learned"), imported on demand.
"""

from ..loading import LOCALIZERS
from .base import RELPOSE_ESTIMATORS, Keyframe, RelPoseEstimate, RelPoseEstimator
from .localizer import RelposeLocalizer, load_relpose_localizer

LOCALIZERS.register("relpose")(load_relpose_localizer)

__all__ = ["RELPOSE_ESTIMATORS", "Keyframe", "RelPoseEstimate", "RelPoseEstimator", "RelposeLocalizer"]
