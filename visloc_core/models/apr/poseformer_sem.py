"""PoseFormer_sem (paper 000): PoseFormer trained with semantic NeRF supervision.

The inference network IS PoseFormer (models/apr/poseformer.py, same architecture and options):
the semantic field only supervises training (paper 000 sec. 3.2: "we only need this semantic
supervision during joint training"). This registry name exists so that artifacts, evaluation
reports and the node name the method (``apr/poseformer_sem``); the three-stage training lives in
training/poseformer_sem.py (``task: poseformer_sem``, config/models/poseformer_sem.yaml).
"""

from __future__ import annotations

from ..registry import APR_MODELS, SceneSpec
from .poseformer import PoseFormer


@APR_MODELS.register("poseformer_sem")
def build_poseformer_sem(cfg: dict, scenes: list[SceneSpec]) -> PoseFormer:
    return PoseFormer(cfg, scenes)
