"""Synthetic scenes, our benchmark: ``visloc synth SCENE.yaml --out DATASET [--bag BAGDIR]``.

- :mod:`.spec`: the scene YAML (config/scenes/*.yaml) -> :class:`SceneSpec`; semantic classes.
- :mod:`.geometry`: procedural rooms, boxes, pictures, people, vehicles as textured meshes.
- :mod:`.textures`: real photographs shipped inside scikit-image (offline).
- :mod:`.trajectories`: mapping/query paths of base_link, stamps, drifting odometry.
- :mod:`.conditions`: lighting presets (day, dusk, night, overexposed, crowded), sensor noise.
- :mod:`.renderer`: moderngl/EGL, RGB + metric depth + class id in one pass, exact OpenCV projection.
- :mod:`.generate`: the loop writing the dataset (and bags through ``data.bags.write``).
"""

from .generate import SceneRenderer, SequencePlan, apply_overrides, generate, plan_sequence
from .spec import CLASS_IDS, CLASSES, SceneSpec, SceneSpecError, load_scene, parse_scene, preset_dir

__all__ = [
    "CLASSES",
    "CLASS_IDS",
    "SceneRenderer",
    "SceneSpec",
    "SceneSpecError",
    "SequencePlan",
    "apply_overrides",
    "generate",
    "load_scene",
    "parse_scene",
    "plan_sequence",
    "preset_dir",
]
