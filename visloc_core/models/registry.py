"""Registries of model families, picked by name from YAML configs.

APR_MODELS: factories ``(cfg: dict, scenes: list[SceneSpec]) -> nn.Module`` whose forward is
``forward(image_B3HW, scene_id_B=None) -> dict`` with at least

- ``position_B3``: normalised position (the trainer undoes the per-scene normalisation),
- ``quat_B4``: orientation quaternion (w, x, y, z), not necessarily unit norm,
- ``scene_logits_BS`` (multi-scene models only): scene classification logits.

``image_B3HW`` is float in [0, 1], RGB; models apply their backbone's own normalisation.
Multi-scene models also split their forward into ``image_features(image_B3HW) -> dict`` (the image
encoder) and ``forward_features(feats, scene_id_B=None) -> dict`` (the rest), so that the part after
a frozen encoder can train on cached features (training/cached_features.py).
Each model's module registers it on import; the table below names that module, so the registry
imports a model on first use and lists every model without importing all of them.
To add a model: one module in ``models/apr/`` + one YAML in ``config/models/`` + one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry

APR_MODELS: Registry = Registry(
    "APR model",
    key="model.name",
    modules={  # model name -> module that registers it
        "posenet": "visloc_core.models.apr.posenet",
        "poseformer": "visloc_core.models.apr.poseformer",
        "poseformer_sem": "visloc_core.models.apr.poseformer_sem",
        "hyperpose": "visloc_core.models.apr.hyperpose",
        "ms_hyperpose": "visloc_core.models.apr.ms_hyperpose",
        "mvl_loc": "visloc_core.models.apr.mvl_loc",
        "pmnet": "visloc_core.models.apr.pmnet",
    },
)


@dataclass
class SceneSpec:
    """What a multi-scene model needs to know about each scene it is trained on."""

    name: str
    description: str = ""  # natural-language description (MVL-Loc); from the dataset manifest


def build_apr_model(name: str, cfg: dict, scenes: list[SceneSpec]):
    return APR_MODELS.build(name, cfg, scenes)
