"""`visloc eval` end to end: a real APR artifact (PoseNet trained by the real trainer on the tiny
pose-dependent dataset of test/apr_tiny.py, cached by test/ros_helpers.py), scored on its test split. The reference is an independent recomputation:
the same artifact loaded again, each test image localized, and the errors computed with
visloc_core.geometry against the poses read back from the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from apr_tiny import make_tiny_dataset
from ros_helpers import TINY_N_TRAIN, trained_tiny_artifact

from visloc_core.cli import main as visloc_main
from visloc_core.commands import evaluate as evaluate_cmd
from visloc_core.data.layout import Dataset
from visloc_core.evaluation.calibration import nees, pose_residuals
from visloc_core.evaluation.report import read_frames_csv
from visloc_core.geometry import T_from_position_quat_wxyz, pose_errors
from visloc_core.localizers import Status, load_localizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    data = make_tiny_dataset(root / "ds", n_train=TINY_N_TRAIN)
    # A split with both sequences, the test one under a shifted appearance condition.
    mf = data / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest["splits"]["both"] = ["line/seq-train", "line/seq-test"]
    manifest["sequences"]["line/seq-test"]["condition"] = "dusk"
    mf.write_text(json.dumps(manifest))
    # A PoseNet trained by the real trainer on this dataset (cached across runs; see ros_helpers.py).
    art = trained_tiny_artifact()
    return {"root": root, "data": data, "art": art}


def _reference(art: Path, data: Path, split: str):
    """Localize every frame of the split with a freshly loaded localizer; (frames, results)."""
    ds = Dataset(data)
    loc = load_localizer(art)
    frames = ds.frames(split)
    return frames, [loc.localize(ds.load_rgb(f), f.camera, f.stamp_ns) for f in frames]


def test_eval_report_matches_independent_recomputation(setup, capsys) -> None:
    out = setup["root"] / "rep"
    assert visloc_main(["eval", str(setup["art"]), "--data", str(setup["data"]), "--out", str(out)]) == 0
    assert "med m" in capsys.readouterr().out  # the summary table was printed
    frames, results = _reference(setup["art"], setup["data"], "test")
    rows = read_frames_csv(out / "frames.csv")
    assert [r["name"] for r in rows] == [f.key for f in frames]
    t_ref, r_ref = [], []
    for row, f, res in zip(rows, frames, results):
        assert row["status"] == Status(res.status).name
        assert int(row["stamp_ns"]) == f.stamp_ns
        assert (row["scene"], row["condition"]) == ("line", "dusk")  # the manifest's condition of seq-test
        gt = T_from_position_quat_wxyz(
            np.array([float(row[f"gt_{c}"]) for c in ("tx", "ty", "tz")]),
            np.array([float(row[f"gt_{c}"]) for c in ("qw", "qx", "qy", "qz")]),
        )
        np.testing.assert_allclose(gt, f.T_world_cam, atol=1e-12)
        if res.status == Status.LOCALIZED:
            est = T_from_position_quat_wxyz(
                np.array([float(row[f"est_{c}"]) for c in ("tx", "ty", "tz")]),
                np.array([float(row[f"est_{c}"]) for c in ("qw", "qx", "qy", "qz")]),
            )
            np.testing.assert_allclose(est, res.T_world_cam, atol=1e-5)
            t, r = pose_errors(res.T_world_cam, f.T_world_cam)
        else:
            t, r = np.inf, np.inf
        t_ref.append(float(t))
        r_ref.append(float(r))
        assert float(row["t_err_m"]) == pytest.approx(t, abs=1e-5)
        assert float(row["r_err_deg"]) == pytest.approx(r, abs=1e-3)
        assert float(row["latency_ms"]) > 0
    t_ref, r_ref = np.array(t_ref), np.array(r_ref)
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_frames"] == len(frames) == TINY_N_TRAIN - 1 and rep["partial"] is False
    assert rep["n_localized"] == int(np.isfinite(t_ref).sum())
    if np.isfinite(np.median(t_ref)):
        assert rep["median_translation_m"] == pytest.approx(np.median(t_ref), abs=1e-5)
        assert rep["median_rotation_deg"] == pytest.approx(np.median(r_ref), abs=1e-3)
    for key, (m, deg) in {"0.5m_5deg": (0.5, 5.0), "5m_10deg": (5.0, 10.0)}.items():
        expect = np.mean((t_ref <= m) & (r_ref <= deg))
        assert rep["recall"][key] == pytest.approx(expect, abs=1.5 / len(frames))  # one frame at a boundary
    assert set(rep["per_scene"]) == {"line"} and set(rep["per_condition"]) == {"dusk"}
    assert rep["meta"]["split"] == "test" and rep["meta"]["method"] == "apr/posenet"
    assert rep["meta"]["artifact_kind"] == "apr"
    # A single-scene APR model always names its one scene.
    n = len(frames)
    assert rep["scene_classification"] == {
        "n_frames": n,
        "accuracy": 1.0,
        "per_condition": {"dusk": {"n_frames": n, "accuracy": 1.0}},
        "per_scene": {"line": {"n_frames": n, "accuracy": 1.0}},
        "confusion": {"line": {"line": n}},
    }
    assert {r["predicted_scene"] for r in rows} == {"line"}
    # APR results carry the artifact's calibrated covariance: NEES recomputed by hand.
    loc_idx = [i for i, r in enumerate(results) if r.status == Status.LOCALIZED]
    e = pose_residuals(
        np.stack([results[i].T_world_cam for i in loc_idx]), np.stack([frames[i].T_world_cam for i in loc_idx])
    )
    cov = np.stack([results[i].covariance_66 for i in loc_idx])
    assert rep["calibration"]["n_frames"] == len(loc_idx)
    assert rep["calibration"]["translation"]["mean_nees"] == pytest.approx(
        float(np.mean(nees(e[:, :3], cov[:, :3, :3]))), rel=1e-4
    )
    for png in ("trajectory.png", "error_cdf.png"):
        assert (out / png).stat().st_size > 10_000
    # An existing report is not replaced without --overwrite.
    assert visloc_main(["eval", str(setup["art"]), "--data", str(setup["data"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_eval_conditions_limit_and_selection(setup) -> None:
    art, data, root = str(setup["art"]), str(setup["data"]), setup["root"]
    out = root / "both"
    assert visloc_main(["eval", art, "--data", data, "--split", "both", "--out", str(out), "--no-plots"]) == 0
    rep = json.loads((out / "report.json").read_text())
    n_test = TINY_N_TRAIN - 1
    assert rep["n_frames"] == TINY_N_TRAIN + n_test
    assert rep["per_condition"]["normal"]["n_frames"] == TINY_N_TRAIN
    assert rep["per_condition"]["dusk"]["n_frames"] == n_test
    assert not (out / "trajectory.png").exists()
    rows = read_frames_csv(out / "frames.csv")
    assert {r["condition"] for r in rows if "/seq-test/" in r["name"]} == {"dusk"}
    # --condition keeps only those sequences.
    out = root / "dusk"
    assert visloc_main(["eval", art, "--data", data, "--split", "both", "--condition", "dusk", "--out", str(out)]) == 0
    rows = read_frames_csv(out / "frames.csv")
    assert len(rows) == n_test and all("/seq-test/" in r["name"] for r in rows)
    # --limit N: N frames evenly spaced over the selection, in order.
    out = root / "limit"
    assert visloc_main(["eval", art, "--data", data, "--limit", "5", "--out", str(out), "--no-plots"]) == 0
    all_keys = [f.key for f in Dataset(data).frames("test")]
    expect = [all_keys[i] for i in np.linspace(0, n_test - 1, 5).round().astype(int)]
    assert expect[0] == all_keys[0] and expect[-1] == all_keys[-1] and len(set(expect)) == 5
    assert [r["name"] for r in read_frames_csv(out / "frames.csv")] == expect


def test_eval_bad_input_is_a_clear_error(setup, capsys) -> None:
    art, data, root = str(setup["art"]), str(setup["data"]), setup["root"]
    cases = [
        (["--scenes", "nowhere"], "nowhere"),
        (["--condition", "night"], "conditions there"),
        (["--split", "val"], "no split 'val'"),
        (["--limit", "0"], "--limit"),
    ]
    for extra, message in cases:
        assert visloc_main(["eval", art, "--data", data, "--out", str(root / "bad"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert visloc_main(["eval", str(root), "--data", data, "--out", str(root / "bad")]) == 2
    assert "not a visloc artifact" in capsys.readouterr().err
    assert not (root / "bad" / "report.json").exists()
    (root / "a_file").write_text("x")
    assert visloc_main(["eval", art, "--data", data, "--out", str(root / "a_file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_eval_interrupted_keeps_a_partial_report(setup, monkeypatch) -> None:
    """Ctrl-C during the 4th frame: the 3 frames done are written, marked partial."""
    real_load = evaluate_cmd.load_localizer

    def load_then_interrupt(path, device="cpu"):
        loc = real_load(path, device=device)
        real_localize = loc.localize
        calls = {"n": 0}

        def localize(*args, **kw):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return real_localize(*args, **kw)

        loc.localize = localize
        return loc

    monkeypatch.setattr(evaluate_cmd, "load_localizer", load_then_interrupt)
    out = setup["root"] / "partial"
    assert visloc_main(["eval", str(setup["art"]), "--data", str(setup["data"]), "--out", str(out)]) == 130
    rep = json.loads((out / "report.json").read_text())
    assert rep["partial"] is True and rep["n_frames"] == 3 and rep["meta"]["n_frames_selected"] == TINY_N_TRAIN - 1
    assert len(read_frames_csv(out / "frames.csv")) == 3


def test_eval_error_mid_run_keeps_a_partial_report(setup, monkeypatch, capsys) -> None:
    """An unreadable image at the 3rd frame: the 2 frames done are written (partial, with the error),
    and the command fails with a clear message."""
    import visloc_core.data.layout as layout

    real_load_rgb = layout.Dataset.load_rgb
    calls = {"n": 0}

    def load_rgb(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise layout.DatasetError(f"cannot read image {frame.key}")
        return real_load_rgb(self, frame)

    monkeypatch.setattr(layout.Dataset, "load_rgb", load_rgb)
    out = setup["root"] / "err"
    assert visloc_main(["eval", str(setup["art"]), "--data", str(setup["data"]), "--out", str(out), "--no-plots"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["partial"] is True and rep["n_frames"] == 2 and "cannot read image" in rep["meta"]["error"]


def test_eval_passes_the_dataset_class_maps_to_localizers_that_use_them(setup, monkeypatch, tmp_path) -> None:
    """A localizer with uses_semantics gets each frame's semantic/ image (bit-exact), and none with
    --semantics none; frames without a class map are counted in the report."""
    import cv2
    import skimage.data
    from apr_tiny import image_at, pose_at

    from visloc_core.data.layout import DatasetWriter

    data = tmp_path / "sem"
    cam = Dataset(setup["data"]).frames("test")[0].camera
    texture = cv2.resize(skimage.data.astronaut(), (384, 192), interpolation=cv2.INTER_AREA)  # as make_tiny_dataset
    with DatasetWriter(data, source={"type": "test-semantic"}) as w:
        w.set_scene("line", description="a photograph seen through a sliding window")
        for i, s in enumerate([0.2, 0.5, 0.8]):
            sem = np.full((cam.height, cam.width), i + 1, np.uint8) if i < 2 else None
            img = image_at(s, texture)
            w.add_frame("line", "q", f"{i:04d}", i * 100_000_000, pose_at(s), cam, img, semantic_HW=sem)
        w.set_split("test", ["line/q"])
    real_load = evaluate_cmd.load_localizer
    seen = []

    def load_spy(path, device="cpu"):
        loc = real_load(path, device=device)
        real_localize = loc.localize
        loc.uses_semantics = True

        def localize(image, camera, stamp_ns, prior=None, query_semantic_HW=None):
            seen.append(None if query_semantic_HW is None else np.unique(query_semantic_HW).tolist())
            return real_localize(image, camera, stamp_ns, prior)

        loc.localize = localize
        return loc

    monkeypatch.setattr(evaluate_cmd, "load_localizer", load_spy)
    out = tmp_path / "rep"
    assert visloc_main(["eval", str(setup["art"]), "--data", str(data), "--out", str(out), "--no-plots"]) == 0
    assert seen == [[1], [2], None]
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["query_semantics"] == "dataset" and meta["frames_without_semantics"] == 1
    seen.clear()
    args = ["eval", str(setup["art"]), "--data", str(data), "--out", str(out), "--no-plots", "--overwrite"]
    assert visloc_main([*args, "--semantics", "none"]) == 0
    assert seen == [None, None, None]
