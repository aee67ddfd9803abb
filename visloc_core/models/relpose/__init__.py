"""Learned relative-pose network of paper 003 (siamese AttNet + BiasNet + correlation + E regression)."""

from .net import (
    CBAM,
    BiasNet,
    RelPoseNet,
    correlation_volume,
    default_conf,
    essential_loss,
    merge_conf,
    one_hot_semantic,
    pose_candidates,
    project_to_essential,
)

__all__ = [
    "CBAM",
    "BiasNet",
    "RelPoseNet",
    "correlation_volume",
    "default_conf",
    "essential_loss",
    "merge_conf",
    "one_hot_semantic",
    "pose_candidates",
    "project_to_essential",
]
