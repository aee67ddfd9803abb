"""Damaged artifacts (issue 10h): every corruption of an APR model or a relpose map gives ONE line naming
the file and what to do, from `visloc eval`, `visloc replay` and the node (configure fails with that
reason in /diagnostics); content checksums catch flipped bytes that would otherwise load silently.
Reference: the intact artifact loads and localizes; each damaged copy differs from it by one file."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import rclpy
from apr_tiny import make_tiny_dataset
from relpose_scene import write_dataset
from ros_helpers import Probe, trained_tiny_artifact, write_tiny_bag

from visloc_core.cli import main as visloc_main
from visloc_core.integrity import ArtifactError
from visloc_core.localizers import load_localizer
from visloc_core.localizers.relpose.mapping import build_map, load_config


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _flip(p: Path) -> None:
    """4 KB of flipped bits in the middle (the attack's), or the middle half of a smaller file."""
    data = bytearray(p.read_bytes())
    n = min(4096, len(data) // 2)
    mid = (len(data) - n) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    p.write_bytes(bytes(data))


def _json_edit(fn):
    def edit(p: Path) -> None:
        meta = json.loads(p.read_text())
        fn(meta)
        p.write_text(json.dumps(meta))

    return edit


def _nan_scale(meta):
    meta["scenes"][0]["position_mean"][0] = float("nan")


def _version_99(meta):
    meta["format_version"] = 99


def _no_keyframes(p: Path) -> None:
    p.write_text("[]")


# (kind, file, corruption, words the one line must contain)
CASES = [
    ("relpose", "index.faiss", _truncate, "damaged"),
    ("relpose", "index.faiss", _empty, "empty"),
    ("relpose", "index.faiss", _flip, "content differs"),
    ("relpose", "features/sift_descriptors.npy", _truncate, "damaged"),
    ("relpose", "features/sift_descriptors.npy", _flip, "content differs"),
    ("relpose", "points.npz", _flip, "content differs"),
    ("relpose", "keyframes.json", _no_keyframes, "damaged"),
    ("relpose", "artifact.json", _json_edit(_version_99), "format_version 99"),
    ("apr", "model.pt", _truncate, "damaged"),
    ("apr", "model.pt", _empty, "empty"),
    ("apr", "model.pt", _flip, "content differs"),
    ("apr", "artifact.json", _json_edit(_nan_scale), "non-finite or zero normalisation"),
    ("apr", "artifact.json", _json_edit(_version_99), "format_version 99"),
]
IDS = [f"{k}-{f}-{fn.__name__.strip('_')}" for k, f, fn, _ in CASES]
REMEDY = {"apr": "retrain it with `visloc train`", "relpose": "rebuild the map with `visloc map build`"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    room = write_dataset(root / "room", n_train=8, n_test=2, size=(96, 72))
    cfg = load_config("config/models/relpose_sift.yaml")
    cfg["image_size"] = None
    cfg["descriptor"] = {"name": "xfeat_vlad", "clusters": 8, "top_k": 256, "detection_threshold": 0.05}
    relpose = build_map(cfg, room, root / "map", progress=False)
    apr = root / "apr"
    shutil.copytree(trained_tiny_artifact(), apr)
    return {"relpose": (relpose, room), "apr": (apr, make_tiny_dataset(root / "tiny"))}


def _damaged(artifacts, tmp_path, kind, name, corrupt) -> Path:
    src, _ = artifacts[kind]
    dst = tmp_path / f"{kind}_damaged"
    shutil.copytree(src, dst)
    corrupt(dst / name)
    return dst


def test_the_intact_artifacts_load(artifacts):
    for art, _ in artifacts.values():
        assert json.loads((art / "artifact.json").read_text())["files"]  # checksums recorded
        load_localizer(art)


def test_datasets_bags_maps_and_artifacts_are_written_0755(artifacts, tmp_path):
    """(issue 10k) they came out drwx------ (tempfile.mkdtemp) except maps; umask 022 is set by conftest."""
    bag, _, _ = write_tiny_bag(tmp_path / "bag", np.linspace(0.1, 0.9, 3))
    for path in (artifacts["relpose"][0], artifacts["relpose"][1], artifacts["apr"][1], trained_tiny_artifact(), bag):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        files = [p for p in path.rglob("*") if p.is_file()]
        assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), path


@pytest.mark.parametrize("kind, name, corrupt, words", CASES, ids=IDS)
def test_eval_says_one_line_naming_the_file(artifacts, tmp_path, capsys, kind, name, corrupt, words):
    art = _damaged(artifacts, tmp_path, kind, name, corrupt)
    with pytest.raises(ArtifactError) as err:
        load_localizer(art)
    assert str(art / name) in str(err.value) and words in str(err.value) and REMEDY[kind] in str(err.value)
    data = artifacts[kind][1]
    assert visloc_main(["eval", str(art), "--data", str(data), "--out", str(tmp_path / "rep"), "--no-plots"]) == 2
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "Traceback" not in out
    assert out.startswith("visloc eval: error: ") and str(art / name) in out and REMEDY[kind] in out


@pytest.mark.parametrize("kind, name, corrupt, words", [c for c in CASES if c[0] == "apr"][:3] + CASES[:1])
def test_replay_refuses_before_starting_the_node(artifacts, tmp_path, capsys, kind, name, corrupt, words):
    art = _damaged(artifacts, tmp_path, kind, name, corrupt)
    bag, _, _ = write_tiny_bag(tmp_path / "bag", np.linspace(0.1, 0.9, 3))
    assert visloc_main(["replay", str(bag), str(art), "--out", str(tmp_path / "rep")]) == 2
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and out.startswith("visloc replay: error: ") and str(art / name) in out


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def test_the_node_fails_configure_with_the_reason(ros, artifacts, tmp_path):
    from visloc_ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=[rclpy.parameter.Parameter("diagnostics_period_s", value=0.1)])
    probe = Probe().start(node)
    try:
        for i, (kind, name, corrupt, words) in enumerate(CASES):
            art = _damaged(artifacts, tmp_path / str(i), kind, name, corrupt)
            node.set_parameters([rclpy.parameter.Parameter("model", value=str(art))])
            assert not node.autostart()
            err = node.counters()["last_error"]
            assert err.startswith("configure failed: ") and str(art / name) in err and words in err, err
            probe.wait_for(lambda p=str(art / name): p in probe.last_diagnostics().get("last_error", ""))
            assert probe.get("/diagnostics")[-1].status[0].level == b"\x02"  # ERROR: not configured
        node.set_parameters([rclpy.parameter.Parameter("model", value=str(artifacts["apr"][0]))])
        assert node.autostart()  # still alive, and a good artifact configures
    finally:
        node.stop()
        probe.stop()
        node.destroy_node()
