"""End to end: `visloc map build` on a tiny rendered dataset, load_localizer, localize against truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from relpose_scene import build_map_cli, write_dataset

from visloc_core.config import deep_merge
from visloc_core.data.layout import Dataset
from visloc_core.geometry import pose_errors
from visloc_core.localizers import Status, load_localizer
from visloc_core.localizers.relpose import RelposeLocalizer
from visloc_core.localizers.relpose.mapping import build_map, load_config
from visloc_core.localizers.relpose.store import FeatureStore

CFG = "config/models/relpose_xfeat.yaml"


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "room", n_train=16, n_test=4, size=(160, 120))


@pytest.fixture(scope="module")
def xfeat_map(room, tmp_path_factory):
    return build_map_cli(room, tmp_path_factory.mktemp("maps") / "xfeat", cfg=CFG)


def _evaluate(loc, room, **kw):
    ds = Dataset(room)
    out = []
    for fr in ds.frames("test"):
        res = loc.localize(ds.load_rgb(fr), fr.camera, fr.stamp_ns, **kw)
        out.append((fr, res, *pose_errors(res.T_world_cam, fr.T_world_cam)))
    return out


def test_artifact_is_self_contained(xfeat_map, room):
    meta = json.loads((xfeat_map / "artifact.json").read_text())
    assert meta["kind"] == "relpose" and meta["n_keyframes"] == 16 and meta["has_depth"]
    assert meta["estimator"] == "xfeat" and meta["descriptor"] == "xfeat_vlad" and meta["descriptor_dim"] == 64 * 64
    for name in (
        "config.yaml",
        "index.faiss",
        "features/xfeat_keypoints.npy",
        "keyframes.json",
        "descriptor/centroids.npy",
    ):
        assert (xfeat_map / name).is_file(), name
    assert len(list((xfeat_map / "images").glob("*.png"))) == 16
    assert not list(xfeat_map.parent.glob(".xfeat.partial-*"))  # the temporary folder was renamed
    store = FeatureStore(xfeat_map)  # format 3: one memory-mapped array per cache key
    assert store.get(0, "xfeat_descriptors").dtype == np.float16
    n_kp = len(store.get(0, "xfeat_keypoints"))
    with np.load(xfeat_map / "points.npz") as z:  # one world point per keypoint with depth
        assert str(z["source"]) == "depth" and z["kf_offsets"][1] == n_kp and (z["track_length"] == 1).all()


def test_localizes_queries_with_metric_accuracy(xfeat_map, room):
    loc = load_localizer(xfeat_map)
    assert isinstance(loc, RelposeLocalizer) and loc.method == "relpose/xfeat"
    results = _evaluate(loc, room)
    for _, res, t, r in results:
        assert len(res.reference_ids) == 5 and all(k.startswith("room/map/") for k in res.reference_ids)
        assert {"retrieval", "features", "matching", "geometry", "filtering", "total"} <= set(res.stage_seconds)
        # a fallback (too few agreeing references) never leaves as LOCALIZED by default
        assert not (res.extras["fallback"] and res.status == Status.LOCALIZED)
        if res.status == Status.LOCALIZED:
            assert res.extras["metric"] and res.num_inliers > 50 and 0 < res.confidence <= 1
            assert np.all(np.linalg.eigvalsh(res.covariance_66) > 0)
            # a published pose is within the precision class (25 cm / 2 deg); at 160x120 (f = 96 px)
            # measured 0.035-0.10 m, 0.4-1.2 deg
            assert t < 0.25 and r < 2.0, (t, r)
        else:
            assert res.status == Status.NOT_LOCALIZED and res.status_reason and np.all(np.isnan(res.T_world_cam))
    assert sum(res.status == Status.LOCALIZED for _, res, _, _ in results) >= 2
    # paper 003's behaviour stays selectable: every query gets a pose, fallbacks flagged (top-1 pose)
    paper = RelposeLocalizer(xfeat_map, overrides={"filtering": {"fallback": "top1"}, "decision": {"enabled": False}})
    for _, res, t, _ in _evaluate(paper, room):
        assert res.status == Status.LOCALIZED
        if res.extras["fallback"]:
            assert res.confidence == 0 and "fallback" in res.status_reason
            assert t < 1.5  # top-1 retrieved keyframe: on the same side of the room


def test_direction_only_triangulation_and_ablation(xfeat_map, room):
    # Without depth (PnP off) the centre comes from the multi-reference triangulation of the
    # hypothesis filter; without filtering, from the top-2 pair only.
    # (accuracy of this path is measured at 320x240 by `visloc bench relpose`; at 160x120 the
    # translation directions are noisy, so queries may fall back: here we check the plumbing and the
    # fallback contract.)
    paper = {"filtering": {"fallback": "top1"}, "decision": {"enabled": False}}
    loc = RelposeLocalizer(xfeat_map, overrides={"estimator": {"pnp": False}, **paper})
    for _, res, t, _ in _evaluate(loc, room):
        assert res.status == Status.LOCALIZED and not res.extras["metric"]
        if res.extras["fallback"]:
            top = loc.keyframes[[kf.key for kf in loc.keyframes].index(res.reference_ids[0])]
            np.testing.assert_array_equal(res.T_world_cam, top.T_world_cam)
        else:
            assert len(res.extras["inlier_references"]) >= 2 and t < 1.0
    plain = RelposeLocalizer(
        xfeat_map,
        overrides={"estimator": {"pnp": False}, "filtering": {"enabled": False}, "decision": {"enabled": False}},
    )
    for _, res, _, _ in _evaluate(plain, room):
        assert res.extras["hypotheses"] <= 1


def test_prior_restricts_retrieval(xfeat_map, room):
    loc = RelposeLocalizer(xfeat_map, overrides={"retrieval": {"prior_radius_m": 0.8}})
    ds = Dataset(room)
    fr = ds.frames("test")[0]
    far = np.eye(4)
    far[:3, 3] = loc.centers_N3[8]  # a prior on the other side of the circle
    res = loc.localize(ds.load_rgb(fr), fr.camera, fr.stamp_ns, prior=far)
    near = np.linalg.norm(loc.centers_N3 - loc.centers_N3[8], axis=1) <= 0.8
    keys = {loc.keyframes[i].key for i in np.flatnonzero(near)}
    assert res.reference_ids and set(res.reference_ids) <= keys  # (an empty set would pass trivially)
    # the reference: without the prior, retrieval picks keyframes outside that disc
    free = loc.localize(ds.load_rgb(fr), fr.camera, fr.stamp_ns)
    assert not set(free.reference_ids) <= keys


def test_bad_input_is_reported(xfeat_map, room, tmp_path):
    loc = load_localizer(xfeat_map)
    ds = Dataset(room)
    fr = ds.frames("test")[0]
    with pytest.raises(ValueError, match="camera"):
        loc.localize(ds.load_rgb(fr)[:100], fr.camera, 0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_map(load_config(CFG), room, xfeat_map)
    with pytest.raises(ValueError, match="no split"):
        build_map(load_config(CFG), room, tmp_path / "m", split="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: apr\n")
    with pytest.raises(ValueError, match="relpose"):
        load_config(bad)
    # a misspelt key, or an APR training config, is refused before any work (not silently defaulted)
    with pytest.raises(ValueError, match=r"unknown relpose config key\(s\) \['num_reference'\]"):
        build_map({**load_config(CFG), "num_reference": 3}, room, tmp_path / "m")
    with pytest.raises(ValueError, match=r"estimator 'sfit'.*known: xfeat, sift, learned"):
        build_map(deep_merge(load_config(CFG), {"estimator": {"name": "sfit"}}), room, tmp_path / "m")
    with pytest.raises(ValueError, match="visloc train"):
        build_map(load_config("config/models/posenet.yaml"), room, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_sift_baseline_map(room, tmp_path):
    cfg = load_config("config/models/relpose_sift.yaml")
    cfg["image_size"] = None
    cfg["calibration"] = {"enabled": False}
    out = build_map(cfg, room, tmp_path / "sift", progress=False)
    assert not (out / "calibration.json").exists()
    loc = RelposeLocalizer(out, overrides={"filtering": {"fallback": "top1"}, "decision": {"enabled": False}})
    assert loc.method == "relpose/sift"
    results = _evaluate(loc, room)
    assert all(r[1].status == Status.LOCALIZED for r in results)  # paper behaviour: a fallback is a pose
    assert all(np.isfinite(r[2]) for r in results)


def test_vlad_retrieval_shares_query_features(room, tmp_path):
    # xfeat_vlad aggregates the same XFeat features the estimator matches: they are extracted once,
    # and the result is identical to extracting them twice.
    cfg = load_config(CFG)
    cfg["image_size"] = None
    cfg["descriptor"] = {"name": "xfeat_vlad", "clusters": 16, "top_k": 512, "detection_threshold": 0.05}
    loc = load_localizer(build_map(cfg, room, tmp_path / "vlad", progress=False))
    assert loc.shared_features
    ds = Dataset(room)
    fr = ds.frames("test")[1]
    img = ds.load_rgb(fr)
    shared = loc.localize(img, fr.camera, fr.stamp_ns)
    loc.shared_features = False
    twice = loc.localize(img, fr.camera, fr.stamp_ns)
    assert shared.reference_ids == twice.reference_ids
    np.testing.assert_allclose(shared.T_world_cam, twice.T_world_cam, atol=1e-9)
    assert shared.stage_seconds["features"] > 0
