"""`visloc bench relpose` end to end on a tiny rendered dataset (measures; no timed assertions)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from relpose_scene import write_dataset

from visloc_core.evaluation.bench import BENCHMARKS, relpose


def test_bench_relpose_runs_and_reports_ratios(tmp_path, monkeypatch):
    assert BENCHMARKS["relpose"] == "relpose"
    data = write_dataset(tmp_path / "room", n_train=12, n_test=3, size=(160, 120))
    p = argparse.ArgumentParser()
    relpose.add_arguments(p)
    args = p.parse_args(["--data", str(data), "--work", str(tmp_path / "w"), "--solvers", "--solver-pairs", "3"])
    # small images for the test: the configs' processing size is 320x240
    from visloc_core.localizers.relpose import mapping

    orig = mapping.load_config

    def small(path):
        cfg = orig(path)
        cfg["image_size"] = None
        cfg["descriptor"]["clusters"] = 16
        return cfg

    monkeypatch.setattr(mapping, "load_config", small)
    res = relpose.run(args)
    for name in ("xfeat", "xfeat_fast", "sift"):
        r = res[name]
        assert r["n_frames"] == 3
        assert {"retrieval", "features", "matching", "geometry", "filtering", "total"} <= set(r["stage_ms"])
        assert r["latency_ms"]["median"] > 0
    # the reference: the same maps, localizing the same queries here, give the accuracy it reports
    from visloc_core.data.layout import Dataset
    from visloc_core.geometry import pose_errors
    from visloc_core.localizers.relpose import RelposeLocalizer

    ds = Dataset(data)
    for name in ("xfeat", "xfeat_fast", "sift"):
        # the SIFT baseline runs in the paper's behaviour (top-1 fallback published, no decision gate)
        loc = RelposeLocalizer(
            tmp_path / "w" / f"map_{name}", overrides=relpose.PAPER_BEHAVIOUR if name == "sift" else {}
        )
        errs = []
        for fr in ds.frames("test"):
            errs.append(pose_errors(loc.localize(ds.load_rgb(fr), fr.camera, fr.stamp_ns).T_world_cam, fr.T_world_cam))
        t_err, r_err = np.array(errs, dtype=np.float64).T
        assert res[name]["median_translation_m"] == pytest.approx(np.median(t_err))
        assert res[name]["median_rotation_deg"] == pytest.approx(np.median(r_err))
        assert res[name]["median_translation_m"] < 0.5  # localized in the room, not a fallback guess
    # the ratio fields are what they say
    assert np.isclose(res["speed_ratio"], res["sift"]["latency_ms"]["median"] / res["xfeat"]["latency_ms"]["median"])
    assert res["speed_ratio_per_query_median"] > 0
    # CPU time per query too (time.process_time of each localize call), and its ratio
    assert all(res[n]["cpu_ms"]["median"] > 0 for n in ("xfeat", "xfeat_fast", "sift"))
    assert np.isclose(res["speed_ratio_cpu"], res["sift"]["cpu_ms"]["median"] / res["xfeat"]["cpu_ms"]["median"])
    assert np.isclose(
        res["speed_ratio_fast"], res["sift"]["latency_ms"]["median"] / res["xfeat_fast"]["latency_ms"]["median"]
    )
    assert np.isclose(
        res["error_ratio_translation_fast"],
        res["xfeat_fast"]["median_translation_m"] / res["sift"]["median_translation_m"],
    )
    # the solver comparison recovers the synthetic poses (noise 0.5 px): poselib within a degree
    assert res["solvers"]["poselib"]["median_rotation_deg"] < 1.0
    assert res["solvers"]["poselib"]["failures"] == 0
