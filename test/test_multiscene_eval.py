"""A multi-scene artifact through the real trainer and `visloc eval` (issue 15): the trainer logs the
scene accuracy every epoch, the artifact records it, and the eval report gives it per condition,
per scene and as a confusion table. The artifact: a small MVL-Loc trained on apr_tiny's two scenes
(test/ros_helpers.py, cached). References: the scene each frame was rendered from, and the same
artifact's localizer run frame by frame."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from apr_tiny import make_two_scene_dataset
from ros_helpers import trained_two_scene_artifact

from visloc_core.cli import main as visloc_main
from visloc_core.data.layout import Dataset
from visloc_core.localizers import load_localizer


@pytest.fixture(scope="module")
def artifact():
    return trained_two_scene_artifact()


def test_training_logs_scene_accuracy_every_epoch(artifact) -> None:
    meta = json.loads((artifact / "artifact.json").read_text())
    assert [s["name"] for s in meta["scenes"]] == ["astro", "coffee"]
    with open(artifact / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/scene_acc"]) for r in rows if r.get("val/scene_acc")]
    train = [float(r["train/scene_acc"]) for r in rows if r.get("train/scene_acc")]
    epochs = meta["training"]["epochs"]
    assert len(val) == len(train) == epochs, (len(val), len(train), epochs)
    assert all(0.0 <= a <= 1.0 for a in val + train)
    # two photographs: the classifier separates them (the validation frames are held out)
    assert val[-1] == 1.0 and meta["training"]["val_scene_accuracy"] == 1.0


def test_eval_reports_scene_accuracy_per_condition(artifact, tmp_path, capsys) -> None:
    data = make_two_scene_dataset(tmp_path / "ds", n_train=20, with_test=True)
    mf = data / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest["sequences"]["coffee/seq-test"]["condition"] = "night"  # a label: the report groups by it
    mf.write_text(json.dumps(manifest))
    out = tmp_path / "rep"
    assert visloc_main(["eval", str(artifact), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    assert "scene accuracy" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    ds = Dataset(data)
    loc = load_localizer(artifact)
    frames = ds.frames("test")
    picked = np.array([loc.localize(ds.load_rgb(f), f.camera, f.stamp_ns).scene for f in frames])
    truth = np.array([f.scene for f in frames])
    cls = rep["scene_classification"]
    assert cls["n_frames"] == len(frames) and np.isclose(cls["accuracy"], np.mean(picked == truth))
    for cond, scene in (("normal", "astro"), ("night", "coffee")):
        sel = truth == scene
        assert cls["per_condition"][cond]["n_frames"] == sel.sum()
        assert np.isclose(cls["per_condition"][cond]["accuracy"], np.mean(picked[sel] == scene))
        assert np.isclose(cls["per_scene"][scene]["accuracy"], np.mean(picked[sel] == scene))
        assert sum(cls["confusion"][scene].values()) == sel.sum()
    assert cls["accuracy"] == 1.0  # held-out views of two photographs
