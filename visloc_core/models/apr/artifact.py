"""The APR artifact folder: everything needed to run a trained absolute pose regressor.

    ARTIFACT/
      artifact.json   {"kind": "apr", "format_version": 1, "model": <APR model name>,
                       "image": {width, height, preprocessing},
                       "scenes": [{name, description, position_mean, position_scale,
                                   region_min, region_max, n_train_frames}],
                       "calibration": {translation_var_m2 [3], rotation_var_rad2 [3], method, ...},
                       "training": {dataset, epochs, best_epoch, val metrics, loss weights, ...},
                       "weights": "model.pt", "config": "config.yaml"}
      config.yaml     the merged training config (model options rebuild the architecture)
      model.pt        the model's state_dict (torch.save; loaded with weights_only=True)
      metrics.csv     training/validation log (informative; not needed to run)

Conventions: positions in metres in the dataset's world frame; the model outputs per-scene
normalised positions ``(p - position_mean) / position_scale``; quaternions (w, x, y, z).
The covariance calibration is a diagonal 6x6 over (x, y, z, rot_x, rot_y, rot_z) in the world
frame (m^2, rad^2), the order and rotation convention of localizers/base.py.

Written atomically: everything goes to a temporary folder next to ARTIFACT, renamed at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ...atomic import atomic_folder
from ...integrity import ArtifactError, check_format_version, file_digests, verify_files
from ...interrupt import signals_deferred
from ..registry import SceneSpec, build_apr_model

ARTIFACT_KIND = "apr"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class SceneStats:
    """Per-scene numbers the model and the localizer need (metres, world frame)."""

    name: str
    description: str
    position_mean: np.ndarray  # (3,)
    position_scale: float
    region_min: np.ndarray  # (3,) mapped region: box of training camera centres plus margin
    region_max: np.ndarray  # (3,)
    n_train: int

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "position_mean": [float(x) for x in self.position_mean],
            "position_scale": float(self.position_scale),
            "region_min": [float(x) for x in self.region_min],
            "region_max": [float(x) for x in self.region_max],
            "n_train_frames": int(self.n_train),
        }

    @classmethod
    def from_json(cls, d: dict) -> SceneStats:
        return cls(
            d["name"],
            d.get("description", ""),
            np.asarray(d["position_mean"], dtype=np.float64),
            float(d["position_scale"]),
            np.asarray(d["region_min"], dtype=np.float64),
            np.asarray(d["region_max"], dtype=np.float64),
            int(d.get("n_train_frames", 0)),
        )

    def contains(self, position_3: np.ndarray) -> bool:
        return bool(np.all(position_3 >= self.region_min) and np.all(position_3 <= self.region_max))


@dataclass
class APRArtifact:
    """A loaded artifact: the model in eval mode on its device, plus metadata."""

    path: Path
    meta: dict
    cfg: dict
    model: torch.nn.Module
    scenes: list[SceneStats]

    @property
    def translation_var_m2(self) -> np.ndarray:
        return np.asarray(self.meta["calibration"]["translation_var_m2"], dtype=np.float64)

    @property
    def rotation_var_rad2(self) -> np.ndarray:
        return np.asarray(self.meta["calibration"]["rotation_var_rad2"], dtype=np.float64)


def write_apr_artifact(
    out: str | Path,
    model: torch.nn.Module,
    cfg: dict,
    scenes: list[SceneStats],
    calibration: dict,
    training: dict,
    extra_files: dict[str, Path] | None = None,
    overwrite: bool = False,
    training_camera_input: dict | None = None,
) -> Path:
    """Write the artifact folder atomically; ``extra_files`` maps names in the folder to files to copy."""
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
            torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
        meta = {
            "kind": ARTIFACT_KIND,
            "format_version": FORMAT_VERSION,
            "model": cfg["model"]["name"],
            "created_unix": time.time(),
            "weights": WEIGHTS_FILE,
            "config": CONFIG_FILE,
            "image": {
                "width": int(cfg["data"]["image_width"]),
                "height": int(cfg["data"]["image_height"]),
                "preprocessing": (
                    "resize (cv2 INTER_AREA) so the image covers width x height, centre crop, RGB float in [0, 1]; "
                    "the model applies its backbone's normalisation"
                ),
                # intrinsics of (the first) training camera after that preprocessing (informative:
                # APR does not model intrinsics; the localizer warns when a query camera differs)
                "training_camera_input": training_camera_input,
            },
            "conventions": {
                "pose": "T_world_cam, OpenCV optical camera, metres",
                "quaternion_order": "wxyz",
                "position_output": "(p - position_mean) / position_scale of the scene",
                "covariance": "diagonal, (x, y, z, rot_x, rot_y, rot_z) world frame, m^2 and rad^2",
            },
            "scenes": [s.to_json() for s in scenes],
            "calibration": calibration,
            # the precision class a pose must lie within by its covariance to be LOCALIZED
            "decision": dict(cfg.get("decision") or {}),
            "training": training,
        }
        for name, src in (extra_files or {}).items():
            if Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        meta["files"] = file_digests(tmp)  # checked at load (visloc_core.integrity)
        (tmp / "artifact.json").write_text(json.dumps(meta, indent=2))
    return out


RETRAIN = "retrain it with `visloc train` (or restore the artifact from a copy)"


def check_apr_integrity(path: Path, meta: dict) -> list[SceneStats]:
    """Everything about an APR artifact that can be checked without building its model: format_version,
    required keys, checksums of every file, finite normalisation and calibration. Returns the scenes;
    raises :class:`~visloc_core.integrity.ArtifactError`."""
    meta_file = path / "artifact.json"
    check_format_version(meta, meta_file, FORMAT_VERSION, RETRAIN)
    for key in ("scenes", "calibration", "image"):
        if key not in meta:
            raise ArtifactError(f"{meta_file} has no {key!r}; the artifact is incomplete: {RETRAIN}")
    verify_files(path, meta, RETRAIN)
    try:
        scenes = [SceneStats.from_json(s) for s in meta["scenes"]]
        cal = meta["calibration"]
        var = np.asarray(cal["translation_var_m2"] + cal["rotation_var_rad2"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{meta_file}: scenes or calibration unreadable ({err}): {RETRAIN}") from err
    for s in scenes:
        stats = np.concatenate([s.position_mean, [s.position_scale], s.region_min, s.region_max])
        if not np.all(np.isfinite(stats)) or s.position_scale <= 0:
            raise ArtifactError(f"{meta_file}: scene {s.name!r} has a non-finite or zero normalisation: {RETRAIN}")
    if var.shape != (6,) or not np.all(np.isfinite(var)) or np.any(var <= 0):
        raise ArtifactError(f"{meta_file}: the covariance calibration is not 6 positive numbers: {RETRAIN}")
    return scenes


def load_apr_artifact(path: str | Path, device: str = "cpu") -> APRArtifact:
    """Rebuild the model from the artifact alone (no ImageNet weights, no dataset) on ``device``.

    Raises :class:`~visloc_core.integrity.ArtifactError` (one line naming the file and what to do) for
    a damaged file (checksums), metadata out of range (non-finite normalisation or calibration), a
    format_version this visloc does not read, and weights that do not load or are not finite."""
    path = Path(path)
    meta_file = path / "artifact.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a visloc artifact (no artifact.json); make one with `visloc train`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{meta_file} is not valid JSON ({err}): {RETRAIN}") from err
    if meta.get("kind") != ARTIFACT_KIND:
        raise ValueError(f"{meta_file}: kind is {meta.get('kind')!r}, expected {ARTIFACT_KIND!r}")
    scenes = check_apr_integrity(path, meta)
    cfg_file = path / meta.get("config", CONFIG_FILE)
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
        model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(f"{cfg_file} is unreadable ({type(err).__name__}: {err}): {RETRAIN}") from err
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = False  # the artifact's weights replace them; nothing else is read
    model = build_apr_model(cfg["model"]["name"], model_cfg, [SceneSpec(s.name, s.description) for s in scenes])
    weights = path / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the artifact is incomplete (re-run `visloc train`)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty or garbled: torch raises several types
        raise ArtifactError(f"{weights} does not load ({type(err).__name__}: {err}): {RETRAIN}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not fit model {cfg['model']['name']!r} (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}): {RETRAIN}"
        )
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{weights} holds non-finite weights ({', '.join(bad[:3])}): {RETRAIN}")
    model.to(device).eval()
    return APRArtifact(path, meta, cfg, model, scenes)
