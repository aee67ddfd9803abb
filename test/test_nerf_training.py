"""Training a radiance field (task: nerf) on a tiny analytic room, its artifact, resume, and
`visloc nerf render` from a dataset and from a pose file."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from visloc_core.cli import main as visloc
from visloc_core.models.nerf.artifact import load_radiance_field
from visloc_core.models.nerf.views import render_and_score

sys.path.insert(0, str(Path(__file__).parent))
from nerf_scene import make_room_dataset

TINY_NERF = {
    "task": "nerf",
    "field": {
        "hash_grid": {"n_levels": 4, "log2_table_size": 12, "max_resolution": 64},
        "trunk_width": 32,
        "head_width": 32,
        "background": "auto",
    },
    "sampling": {
        "n_coarse": 48,
        "n_importance": 16,
        "n_uniform": 6,
        "n_depth": 6,
        "grid_resolution": 24,
        "grid_update_every": 5,
    },
    "data": {"image_width": 32, "image_height": 24, "val_fraction": 0.2, "val_block": 2},
    "train": {
        "epochs": 2,
        "steps_per_epoch": 60,
        "rays_per_batch": 256,
        "lr": 1.0e-2,
        "val_views": 1,
        "progress_bar": False,
    },
    "loss": {"depth": 1.0},
    "eval": {"image_width": 16, "image_height": 12, "every": 1, "max_views": 4, "sheet_views": 2, "test_max_views": 3},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nerf")
    data = make_room_dataset(root / "room")
    cfg = root / "nerf.yaml"
    cfg.write_text(yaml.safe_dump(TINY_NERF))
    assert visloc(["train", str(cfg), "--data", str(data), "--out", str(root / "field"), "--epochs", "1"]) == 0
    return root, data, cfg


def test_artifact_report_and_contact_sheet(trained):
    root, data, _ = trained
    art = root / "field"
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["kind"] == "nerf" and meta["scene"] == "room" and meta["n_classes"] == 4
    box = np.asarray(meta["aabb"])
    # the box holds the room (4 x 3 x 2.5 m; the camera sees floor and walls) with a small margin
    assert np.all(box[0] <= [-2.0, -1.5, 0.0]) and np.all(box[1] >= [2.0, 1.5, 1.0]) and np.all(box[1] - box[0] < 6.0)
    report = json.loads((art / "report.json").read_text())
    held = report["held_out"]
    for k in ("psnr_db", "depth_median_abs_m", "class_accuracy", "class_miou"):
        assert np.isfinite(held[k]), k
    assert held["n_views"] >= 2 and report["test_day"]["n_views"] == 3
    assert (art / "contact_sheet.png").stat().st_size > 1000
    model, meta = load_radiance_field(art)
    assert model.n_classes == 4 and int(model.grid.n_updates) == 11  # every 5 steps after step 0
    assert meta["field"]["background"] is False  # every training pixel has a measured depth: no sky
    # reference: the same field untrained (its initial weights), scored on the same held-out views.
    # 60 steps are far from converged, but every measure must have improved clearly.
    from visloc_core.models.nerf.scene import RadianceField
    from visloc_core.training.nerf import SceneViews, _at, _pick, nerf_config

    cfg = nerf_config(yaml.safe_load((art / "config.yaml").read_text()))
    scene = SceneViews(cfg, data)
    views = [_at(v, cfg) for v in _pick(scene.held_out, 1, 4)]
    fresh = RadianceField(meta["field"], meta["sampling"], meta["aabb"], 4).eval()
    _, before = render_and_score(fresh, views, progress=False)
    _, after = render_and_score(model, views, progress=False)
    assert after["psnr_db"] == pytest.approx(held["psnr_db"])  # the report scored these views
    assert after["psnr_db"] > before["psnr_db"] + 0.5, (before, after)
    assert after["depth_mean_rel"] < 0.6 * before["depth_mean_rel"], (before, after)
    assert after["class_accuracy"] > before["class_accuracy"] + 0.1, (before, after)


def test_resume_continues_to_more_epochs(trained, tmp_path):
    root, data, cfg = trained
    out = tmp_path / "field2"
    # continue the first run's checkpoints (1 epoch) to 2 epochs, into a new artifact
    args = [
        "train",
        str(cfg),
        "--data",
        str(data),
        "--out",
        str(out),
        "--resume",
        "--work-dir",
        str(root / "field.train"),
    ]
    assert visloc(args) == 0
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["training"]["steps"] == 2 * 60 and meta["training"]["epochs"] == 2


def test_render_from_dataset_and_pose_file(trained, tmp_path):
    root, data, _ = trained
    out = tmp_path / "render"
    assert (
        visloc(["nerf", "render", str(root / "field"), "--data", str(data), "--split", "test", "--out", str(out)]) == 0
    )
    assert len(list((out / "rgb").glob("*.png"))) == 6 and (out / "contact_sheet.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_views"] == 6 and "psnr_db" in metrics
    # the poses.csv it wrote is a valid pose file: rendering it again gives the same images
    out2 = tmp_path / "render2"
    assert visloc(["nerf", "render", str(root / "field"), "--poses", str(out / "poses.csv"), "--out", str(out2)]) == 0
    import cv2

    for f in sorted((out / "rgb").glob("*.png")):
        np.testing.assert_array_equal(cv2.imread(str(f)), cv2.imread(str(out2 / "rgb" / f.name)))
    with open(out2 / "poses.csv") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_render_rejects_bad_pose_file(trained, tmp_path, capsys):
    root, _, _ = trained
    bad = tmp_path / "bad.csv"
    bad.write_text("name,tx,ty,tz,qw,qx,qy\na,0,0,0,1,0,0\n")
    assert visloc(["nerf", "render", str(root / "field"), "--poses", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "missing columns ['qz']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_load_localizer_refuses_a_field_with_a_clear_error(trained):
    from visloc_core.localizers import load_localizer

    root, _, _ = trained
    with pytest.raises(ValueError, match=r"scene radiance field .* not a localizer"):
        load_localizer(root / "field")


def test_damaged_field_is_refused_naming_the_file(trained, tmp_path, capsys):
    """Checksums recorded at write (visloc_core.integrity): a flipped byte of model.pt, or a format_version
    this visloc does not know, is one clear line from `visloc nerf render`, not a torch error or a field
    that renders garbage."""
    import shutil

    root, data, _ = trained
    field = tmp_path / "field"
    shutil.copytree(root / "field", field)
    weights = field / "model.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert visloc(["nerf", "render", str(field), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{weights} is damaged" in err and "visloc train" in err, err

    shutil.rmtree(field)
    shutil.copytree(root / "field", field)
    meta = json.loads((field / "artifact.json").read_text())
    meta["format_version"] = 99
    (field / "artifact.json").write_text(json.dumps(meta))
    assert visloc(["nerf", "render", str(field), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "format_version 99 is not one this visloc reads" in err, err
    assert not (tmp_path / "r").exists()
