"""Retrieval: the paper's spacing rule, the faiss index, and the global descriptors."""

from __future__ import annotations

import numpy as np
import pytest
from relpose_scene import render, small_camera, trajectory

from visloc_core.localizers.relpose.retrieval import DescriptorIndex, RetrievalConfig, select_references
from visloc_core.models.descriptors import (
    GLOBAL_DESCRIPTORS,
    XFeatVLAD,
    build_descriptor,
    load_descriptor,
    pose_pairs,
)


def test_spacing_rule_follows_the_paper():
    # Keyframes on a line, x = 0, 1, 2, ... m; ranked list given explicitly.
    centers = np.c_[np.arange(10.0), np.zeros(10), np.zeros(10)]
    ranked = np.array([5, 6, 4, 8, 2, 9, 0, 1, 3, 7])
    # [a, b] = [2, 6]: 5 first; 6 too close (1 m); 4 too close; 8 (3 m) ok; 2 (3 m from 5, 6 from 8) ok;
    # 9 (4 from 5, 1 from 8): no; 0 (5, 8 from 8): no; 1 (4, 7 from 8): no; 3 (2, 5, 1): no; 7 no.
    assert select_references(ranked, centers, 5, (2.0, 6.0), fill=False) == [5, 8, 2]
    # fill tops up with the best remaining in rank order
    assert select_references(ranked, centers, 5, (2.0, 6.0), fill=True) == [5, 8, 2, 6, 4]
    # [0, inf] is plain top-N
    assert select_references(ranked, centers, 4, (0.0, np.inf)) == [5, 6, 4, 8]
    # the top-1 is always kept, even alone
    assert select_references(ranked[:1], centers, 5, (2.0, 6.0)) == [5]
    assert select_references(np.array([], int), centers, 5, (2.0, 6.0)) == []


def test_spacing_rule_pairwise_property_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        centers = rng.uniform(0, 20, (60, 3))
        ranked = rng.permutation(60)
        sel = select_references(ranked, centers, 5, (3.0, 12.0), fill=False)
        assert sel[0] == ranked[0]
        d = np.linalg.norm(centers[sel][:, None] - centers[sel][None], axis=-1)
        off = d[~np.eye(len(sel), dtype=bool)]
        assert np.all((off >= 3.0) & (off <= 12.0))
        # greedy: every skipped candidate ranked before the last selected one violates the rule
        last = list(ranked).index(sel[-1])
        for i in ranked[:last]:
            if i in sel:
                continue
            prior = [s for s in sel if list(ranked).index(s) < list(ranked).index(i)]
            dd = np.linalg.norm(centers[prior] - centers[i], axis=1)
            assert not np.all((dd >= 3.0) & (dd <= 12.0))


def test_retrieval_config_validation():
    assert RetrievalConfig.from_dict({"spacing_m": [0.3, 5]}).spacing_m == (0.3, 5.0)
    with pytest.raises(ValueError, match="spacing_m"):
        RetrievalConfig.from_dict({"spacing_m": [5, 1]})
    with pytest.raises(ValueError, match="topn"):
        RetrievalConfig.from_dict({"topn": 3})


def test_faiss_index_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[7] + 0.1 * rng.normal(size=32).astype(np.float32)
    q /= np.linalg.norm(q)
    index = DescriptorIndex(x)
    idx, sims = index.search(q, 10)
    ref = np.argsort(-(x @ q))[:10]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sims, (x @ q)[ref], rtol=1e-5)
    allowed = np.zeros(100, bool)
    allowed[50:] = True
    idx2, _ = index.search(q, 5, allowed)
    np.testing.assert_array_equal(idx2, [i for i in np.argsort(-(x @ q)) if i >= 50][:5])
    index.save(tmp_path / "i.faiss")
    idx3, _ = DescriptorIndex.load(tmp_path / "i.faiss").search(q, 10)
    np.testing.assert_array_equal(idx3, ref)


def test_registry_names():
    assert {"gem", "netvlad", "xfeat_vlad"} <= set(GLOBAL_DESCRIPTORS.names())
    with pytest.raises(ValueError, match="name"):
        build_descriptor({})
    with pytest.raises(
        ValueError,
        match=r"unknown config key 'descriptor\.pp'; known here: backbone, image_size, level, name, out_dim, p$",
    ):
        build_descriptor({"name": "gem", "pp": 3.0})


def test_vlad_aggregation_matches_reference_implementation():
    rng = np.random.default_rng(2)
    d = XFeatVLAD.__new__(XFeatVLAD)
    d.cfg = {"clusters": 4}
    d.centroids_KD = rng.normal(size=(4, 8)).astype(np.float32)
    x = rng.normal(size=(30, 8))
    v = d.aggregate(x)
    # reference: loop over descriptors
    ref = np.zeros((4, 8))
    for xi in x:
        k = np.argmin(np.linalg.norm(d.centroids_KD - xi, axis=1))
        ref[k] += xi - d.centroids_KD[k]
    ref /= np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    ref = np.sign(ref) * np.sqrt(np.abs(ref))
    ref = ref.ravel() / np.linalg.norm(ref)
    np.testing.assert_allclose(v, ref, atol=1e-6)


@pytest.fixture(scope="module")
def room_images():
    cam = small_camera(160, 120)
    poses = trajectory(12, 0, jitter=0.05)
    return [render(T, cam)[0] for T in poses], np.stack(poses)


@pytest.mark.parametrize("name", ["gem", "xfeat_vlad"])
def test_descriptor_retrieves_neighbouring_views_and_roundtrips(name, room_images, tmp_path):
    images, _ = room_images
    desc = build_descriptor({"name": name, **({"clusters": 16, "top_k": 256} if name == "xfeat_vlad" else {})})
    if desc.needs_fit():
        desc.fit(images)
    D = np.stack([desc.describe(im) for im in images])
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, atol=1e-5)
    assert D.shape[1] == desc.dim
    # Views are on a circle looking outwards: the best match of each view (excluding itself) should be
    # a circle neighbour (index +-1) for most views; chance level is 2/11.
    sim = D @ D.T
    np.fill_diagonal(sim, -np.inf)
    best = sim.argmax(1)
    n = len(images)
    neighbour = [(b - i) % n in (1, n - 1) for i, b in enumerate(best)]
    assert np.mean(neighbour) >= 0.75, (name, best)
    desc.save(tmp_path / "d")
    again = load_descriptor(tmp_path / "d")
    np.testing.assert_allclose(again.describe(images[3]), D[3], atol=1e-5)


def test_pose_pairs_masks():
    from visloc_core.geometry import R_from_rotvec, T_from_R_t

    T = np.stack(
        [
            T_from_R_t(np.eye(3), np.zeros(3)),
            T_from_R_t(np.eye(3), np.array([0.5, 0, 0])),  # close, same direction: positive of 0
            T_from_R_t(R_from_rotvec(np.array([0, np.pi, 0])), np.array([0.2, 0, 0])),  # close but opposite: negative
            T_from_R_t(np.eye(3), np.array([10.0, 0, 0])),  # far: negative
        ]
    )
    pos, neg = pose_pairs(T, pos_m=1.0, pos_deg=30, neg_m=3.0)
    assert pos[0].tolist() == [False, True, False, False]
    assert neg[0].tolist() == [False, False, True, True]
    assert not (pos & neg).any() and not pos.diagonal().any()


def test_finetune_gem_reduces_triplet_loss(room_images):
    from visloc_core.models.descriptors import finetune_gem

    images, poses = room_images
    desc = build_descriptor({"name": "gem", "image_size": [64, 48]})
    pos, neg = pose_pairs(poses, pos_m=1.0, pos_deg=50, neg_m=1.5)

    def mean_violation() -> float:
        D = np.stack([desc.describe(im) for im in images])
        sim = D @ D.T
        v = [
            max(0.0, 0.1 + sim[a, neg[a]].max() - sim[a, pos[a]].min())
            for a in range(len(images))
            if pos[a].any() and neg[a].any()
        ]
        return float(np.mean(v))

    before = mean_violation()
    stats = finetune_gem(desc, images, poses, epochs=2, lr=1e-4, pos_m=1.0, pos_deg=50, neg_m=1.5, batch_size=12)
    after = mean_violation()
    assert stats["triplets"] > 0 and desc.modified
    assert after < before, (before, after)


def test_netvlad_fit_describe_roundtrip(room_images, tmp_path):
    images, _ = room_images
    desc = build_descriptor({"name": "netvlad", "clusters": 8, "image_size": [96, 64]})
    assert desc.needs_fit()
    desc.fit(images[:6])
    assert not desc.needs_fit() and desc.dim == 8 * desc.net.backbone.channels[16]
    v = desc.describe(images[0])
    assert v.shape == (desc.dim,) and abs(np.linalg.norm(v) - 1) < 1e-5
    desc.save(tmp_path / "nv")
    assert (tmp_path / "nv" / "weights.pt").is_file()  # fitted clusters differ from the package weights
    np.testing.assert_allclose(load_descriptor(tmp_path / "nv").describe(images[0]), v, atol=1e-5)
