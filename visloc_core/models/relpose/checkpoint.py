"""The relative-pose network's checkpoint folder: one folder, written atomically, loadable alone.

    CHECKPOINT/
      relpose_net.json   format, version, the full model config (merged defaults), semantic classes,
                         input size, pair-sampling and training settings, validation metrics
      config.yaml        the training config as given (for reproduction)
      weights.pt         the model's state dict (torch.save)

:func:`load_relpose_net` rebuilds the network from this folder only. The pretrained-backbone
variants do not need the ImageNet weight packages at load time beyond their architecture code:
the trained weights overwrite everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ...atomic import atomic_folder
from ...integrity import file_digests, verify_files
from ...interrupt import signals_deferred
from .net import RelPoseNet, merge_conf

FORMAT = "visloc-relpose-net"
VERSION = 1
META_FILE = "relpose_net.json"


def save_relpose_net(model: RelPoseNet, meta: dict, train_cfg: dict, out: str | Path, overwrite: bool = False) -> Path:
    """Write the checkpoint folder ``out`` atomically (temporary folder next to it, then rename)."""
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as tmp:
        with signals_deferred():  # torch.save turns a signal mid-write into a RuntimeError
            torch.save(model.state_dict(), tmp / "weights.pt")
        full = {"format": FORMAT, "version": VERSION, "model": model.conf, **meta}
        (tmp / "config.yaml").write_text(yaml.safe_dump(train_cfg, sort_keys=False))
        full["files"] = file_digests(tmp, exclude=(META_FILE,))  # checked at load (visloc_core.integrity)
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, default=_jsonable))
    return out


def _jsonable(x):
    try:
        return x.tolist()
    except AttributeError:
        return str(x)


def read_relpose_meta(path: str | Path) -> dict:
    path = Path(path)
    mf = path / META_FILE
    if not mf.is_file():
        raise FileNotFoundError(
            f"{path} is not a relative-pose network checkpoint (no {META_FILE}); "
            "train one with `visloc train config/models/relpose_net.yaml --data DATASET --out CHECKPOINT`"
        )
    meta = json.loads(mf.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{mf}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(f"{mf}: version {meta['version']} is newer than this visloc reads ({VERSION}); upgrade visloc")
    return meta


def load_relpose_net(path: str | Path, device: str = "cpu") -> tuple[RelPoseNet, dict]:
    """(model in eval mode on ``device``, metadata) from a checkpoint folder."""
    meta = read_relpose_meta(path)
    verify_files(path, meta, "retrain it with `visloc train ... task: relpose_net`", META_FILE)
    conf = merge_conf(meta["model"])
    # The trained weights replace the backbone's; skip reading ImageNet files and weight paths.
    conf["pretrained"] = False
    conf["resnet_weights"] = ""
    model = RelPoseNet(conf)
    state = torch.load(Path(path) / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta
