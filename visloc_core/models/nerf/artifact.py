"""The NeRF artifact folder: a trained scene radiance field and how well it renders held-out views.

    ARTIFACT/
      artifact.json   {"kind": "nerf", "format_version": 1, "scene", "aabb" [[min], [max]] (m, world),
                       "classes" {id: name}, "camera" (training camera at the field's resolution),
                       "field" / "sampling" (the model options), "conventions", "training", "report"}
      config.yaml     the merged training config
      model.pt        state_dict of models/nerf/scene.RadianceField (field + density grid)
      report.json     held-out PSNR, depth and class metrics (models/nerf/views.py), per split
      contact_sheet.png  real | rendered colour | classes | depth on held-out views
      metrics.csv     the training log

A NeRF artifact is a scene model, not a localizer: ``load_localizer`` does not serve it; the
PoseFormer_sem trainer and ``visloc nerf render`` load it with :func:`load_radiance_field`.
Written atomically (temporary folder renamed at the end).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from ...atomic import atomic_folder
from ...integrity import ArtifactError, check_format_version, file_digests, verify_files
from ...interrupt import signals_deferred
from .scene import RadianceField

ARTIFACT_KIND = "nerf"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
RETRAIN = "train the field again with `visloc train config/models/nerf.yaml`"


def write_nerf_artifact(
    out: str | Path,
    model: RadianceField,
    cfg: dict,
    meta: dict,
    report: dict,
    files: dict[str, Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """``meta``: scene, aabb, classes, camera, training; ``files``: name in the folder -> file to copy."""
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS_FILE)
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        full = {
            "kind": ARTIFACT_KIND,
            "format_version": FORMAT_VERSION,
            "created_unix": time.time(),
            "weights": WEIGHTS_FILE,
            "config": "config.yaml",
            "field": model.field.conf,
            "sampling": model.sampling,
            "n_classes": model.n_classes,
            "conventions": {
                "pose": "T_world_cam, OpenCV optical camera (x right, y down, z forward), metres",
                "depth": "camera-frame z of the surface, metres",
                "rays": "pixel centres at integer (u, v); t along a ray = camera-frame depth",
            },
            **meta,
            "report": "report.json",
        }
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        for name, src in (files or {}).items():
            if src is not None and Path(src).is_file():
                shutil.copyfile(src, tmp / name)
        full["files"] = file_digests(tmp)  # checked at load (visloc_core.integrity); the metadata is written last
        (tmp / "artifact.json").write_text(json.dumps(full, indent=2))
    return out


def read_nerf_meta(path: str | Path) -> dict:
    from ...localizers.loading import read_artifact_meta  # lazy: the localizers package imports models

    meta_file = Path(path) / "artifact.json"
    meta = read_artifact_meta(path)
    if meta.get("kind") != ARTIFACT_KIND:
        raise ValueError(f"{meta_file}: kind is {meta.get('kind')!r}, expected a radiance field ({ARTIFACT_KIND!r})")
    check_format_version(meta, meta_file, FORMAT_VERSION, RETRAIN, what="radiance field")
    return meta


def load_radiance_field(path: str | Path, device: str = "cpu") -> tuple[RadianceField, dict]:
    """Rebuild the field from the artifact alone; returns (model in eval mode on ``device``, metadata)."""
    path = Path(path)
    meta = read_nerf_meta(path)
    verify_files(path, meta, RETRAIN)  # a truncated or bit-flipped file: one line naming it
    model = RadianceField(meta["field"], meta["sampling"], meta["aabb"], int(meta["n_classes"]))
    weights = path / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the artifact is incomplete (re-run `visloc train`)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not fit the field in artifact.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), meta


def load_nerf_p(path: str | Path, device: str = "cpu"):
    """A NeRF-P artifact (training/nerf_p.py): (field with its pose branch, PoseDecoder, metadata),
    both in eval mode on ``device``. A plain NeRF artifact (no pose branch) is refused with what to do."""
    from .posemap import PoseDecoder

    model, meta = load_radiance_field(path, device)
    dec = meta.get("pose_decoder")
    if model.field.pose_branch is None or not dec:
        raise ValueError(
            f"{path} is a radiance field without a pose branch; train NeRF-P on it first "
            "(`visloc train config/models/nerf_p.yaml` with field.artifact set to it)"
        )
    decoder = PoseDecoder(int(dec["n_cells"]), int(dec["feature_dim"]), list(dec["hidden"]), meta["aabb"])
    weights = Path(path) / dec.get("weights", "pose_decoder.pt")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{weights} does not fit the decoder in artifact.json: missing {missing[:5]}")
    return model, decoder.to(device).eval(), meta
