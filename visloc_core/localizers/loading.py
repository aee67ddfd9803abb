"""Artifact folders and ``load_localizer``.

An artifact folder holds ``artifact.json`` (at least ``{"kind": "<localizer name>", ...}``), its
config and weights, and all metadata needed to run it. ``load_localizer(path)`` needs nothing else.
Each localizer module registers a loader ``(artifact_dir: Path, device: str) -> Localizer``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ..integrity import ArtifactError
from ..registry import Registry, UnknownNameError
from .base import Localizer

# artifact kind -> loader, imported from its module on first use (loading one kind does not import all).
# To add a localizer: one module registering its loader + the config/command that writes its artifact + one line here.
LOCALIZERS: Registry[Localizer] = Registry(
    "artifact kind",
    modules={
        "apr": "visloc_core.localizers.apr",
        "relpose": "visloc_core.localizers.relpose",
    },
)
# what to do about a damaged artifact of each kind
REMEDY = {
    "apr": "retrain it with `visloc train` (or restore the artifact from a copy)",
    "relpose": "rebuild it with `visloc map build` (or restore the map from a copy)",
}


def read_artifact_meta(artifact_dir: str | Path) -> dict:
    path = Path(artifact_dir)
    meta_file = path / "artifact.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a visloc artifact (no artifact.json); make one with `visloc train` or `visloc map build`"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{meta_file} is not valid JSON ({err}); the artifact is damaged, rebuild it") from err
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ValueError(f"{meta_file} has no 'kind' (expected one of: {', '.join(LOCALIZERS.names())})")
    return meta


# kind -> "module:function" checking an artifact without loading its models (format version, checksums)
_INTEGRITY_CHECKS = {
    "apr": "visloc_core.models.apr.artifact:check_apr_integrity",
    "relpose": "visloc_core.localizers.relpose.mapping:check_map_integrity",
}


def check_artifact(artifact_dir: str | Path) -> dict:
    """What can be checked of an artifact without loading its models (artifact.json, kind, format
    version, the checksum of every file): raises ArtifactError / ValueError with one line naming the
    file and what to do; returns the metadata. Cheap: used before starting a node on the artifact."""
    meta = read_artifact_meta(artifact_dir)
    kind = meta["kind"]
    try:
        LOCALIZERS.check(kind)
    except UnknownNameError as err:
        raise ValueError(f"{artifact_dir}: {err}") from err
    if kind in _INTEGRITY_CHECKS:  # a kind registered at run time may have none
        module, func = _INTEGRITY_CHECKS[kind].split(":")
        getattr(importlib.import_module(module), func)(Path(artifact_dir), meta)
    return meta


def artifact_scene_names(meta: dict) -> list[str]:
    """Names of the scenes an artifact serves (``meta["scenes"]``: APR artifacts list dicts with a
    ``name``, relocalization maps plain names), in the artifact's order; [] when it names none."""
    return [str(s["name"]) if isinstance(s, dict) else str(s) for s in meta.get("scenes") or []]


def check_device(device: str) -> None:
    """Raise ValueError naming ``device`` if torch does not parse it (torch's own error comes later,
    from deep inside weight loading)."""
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from err


def load_localizer(artifact_dir: str | Path, device: str = "cpu") -> Localizer:
    """Build the localizer stored in an artifact folder (model or map) on ``device`` ('cpu', 'cuda', 'cuda:1')."""
    meta = read_artifact_meta(artifact_dir)
    check_device(device)
    kind = meta["kind"]
    if kind == "nerf":
        raise ValueError(
            f"{artifact_dir} is a scene radiance field (kind nerf), not a localizer: render it with "
            "`visloc nerf render`, or use it to train one (config/models/poseformer_sem.yaml, stage2.artifact)"
        )
    try:
        loader = LOCALIZERS.get(kind)
    except UnknownNameError as err:
        raise ValueError(f"{artifact_dir}: {err}") from err
    remedy = REMEDY.get(kind, "rebuild it")
    try:
        return loader(Path(artifact_dir), device)
    except ArtifactError:
        raise
    except FileNotFoundError as err:
        if err.filename is None:  # already a message of ours
            raise
        raise FileNotFoundError(
            f"{artifact_dir}: the {kind} artifact is incomplete (missing {err.filename}); {remedy}"
        ) from err
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # whatever a damaged file makes torch, faiss, numpy or yaml raise: one line
        raise ArtifactError(
            f"{artifact_dir}: the {kind} artifact does not load ({type(err).__name__}: {err}); {remedy}"
        ) from err
