"""The paper APR models (PoseFormer, HyperPose, MS-HyperPose, MVL-Loc): shapes, gradients, the
cross-scale fusion equation, the text encoder, configs, and a tiny overfit through the real trainer
module, artifact and localizer."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from visloc_core.models.apr.paper_layers import HyperLayerGenerator, hyper_mlp, sinusoidal_pe_2d
from visloc_core.models.apr.poseformer import CrossScaleAttention
from visloc_core.models.registry import SceneSpec, build_apr_model
from visloc_core.training.config import apr_config, load_yaml

sys.path.insert(0, str(Path(__file__).parent))
from apr_tiny import SCENE_DESCRIPTIONS, H, W, make_two_scene_dataset
from bounds import record, seed

ROOT = Path(__file__).resolve().parents[1]
PAPER_MODELS = ("poseformer", "hyperpose", "ms_hyperpose", "mvl_loc")
MULTI_SCENE = ("ms_hyperpose", "mvl_loc")
SCENES = [SceneSpec(name, text) for name, text in SCENE_DESCRIPTIONS.items()]
# Small widths so the tests run in seconds on one thread; the architecture is the paper's.
SMALL = {
    "poseformer": {"d_model": 64, "heads": 4, "head_dim": 128, "head_hidden": [64, 32]},
    "hyperpose": {"feature_dim": 128, "hyper_dim_t": 32, "hyper_dim_rot": 64},
    "ms_hyperpose": {
        "d_model": 64,
        "layers": 2,
        "mlp_dim": 64,
        "head_dim": 128,
        "hyper_dim_t": 16,
        "hyper_dim_rot": 32,
    },
    "mvl_loc": {"d_model": 64, "heads": 4, "ff_dim": 128, "head_hidden": [64]},
}
LOSS = {"mvl_loc": {"name": "log_quat_l1"}}  # the others: learned_weight (eq. 11 / eq. 5)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def small_model(name: str, pretrained: bool = False, **extra):
    return build_apr_model(name, {**SMALL[name], "pretrained": pretrained, **extra}, SCENES)


def trainable_names(model: torch.nn.Module) -> list[str]:
    # The backbones keep their ImageNet classifier for weight checks; pose models never use it.
    return [n for n, _ in model.named_parameters() if not n.startswith(("backbone.classifier", "backbone._fc"))]


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_forward_contract(name: str) -> None:
    model = small_model(name).eval()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        out = model(x)
    assert out["position_B3"].shape == (2, 3)
    assert out["quat_B4"].shape == (2, 4)
    assert torch.isfinite(out["position_B3"]).all() and torch.isfinite(out["quat_B4"]).all()
    if name in MULTI_SCENE:
        assert out["scene_logits_BS"].shape == (2, len(SCENES))
    else:
        assert "scene_logits_BS" not in out
    # Freshly built heads start at the mean pose: normalised position ~0, quaternion ~identity.
    q = out["quat_B4"] / out["quat_B4"].norm(dim=1, keepdim=True)
    assert torch.allclose(q[:, 0].abs(), torch.ones(2), atol=0.05)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_unknown_option_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown model options"):
        build_apr_model(name, {"pretrained": False, "d_modle": 3}, SCENES)


# ---------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_gradients_reach_every_parameter(name: str) -> None:
    from visloc_core.training.losses import build_loss

    model = small_model(name).train()
    loss_fn = build_loss(LOSS.get(name))
    x = torch.rand(4, 3, 48, 64)
    sid = torch.tensor([0, 1, 0, 1])
    out = model(x, sid)
    gt_q = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    total, _ = loss_fn(out["position_B3"], out["quat_B4"], torch.randn(4, 3), gt_q)
    if hasattr(model, "extra_losses"):
        total = total + sum(model.extra_losses(out, {"scene_id": sid}).values())
    total.backward()
    params = dict(model.named_parameters())
    dead = [n for n in trainable_names(model) if params[n].grad is None or not params[n].grad.abs().sum() > 0]
    assert not dead, f"{name}: no gradient reaches {dead[:8]}"
    for n, p in loss_fn.named_parameters():  # s_x, s_q or alpha, beta
        assert p.grad is not None and p.grad.abs() > 0, n
    # The parameters the papers name explicitly:
    if name == "poseformer":
        named = [n for n in params if n.endswith("attn.fusion_w") or n.endswith(".alpha")]
        assert len(named) == 2 + 3  # w for levels 2 and 3, alpha for all three
    elif name in ("hyperpose", "ms_hyperpose"):
        named = [n for n in params if ".gens." in n or n.startswith("gen_")]
        assert named
    else:
        named = ["text_proj.weight", "cls_text.weight", "cls_vision.weight", "logit_scale"]
    for n in named:
        assert params[n].grad.abs().sum() > 0, n


# ------------------------------------------------------------------------ cross-scale fusion
def _parent(i: int, n_out: int, n_in: int) -> int:
    # nearest-neighbour source index (F.interpolate 'nearest': floor(i * in / out))
    return (i * n_in) // n_out


@pytest.mark.parametrize(("hw", "prev_hw"), [((4, 6), (2, 3)), ((5, 5), (3, 3)), ((8, 10), (4, 5))])
def test_cross_scale_fusion_matches_hand_computation(hw, prev_hw) -> None:
    torch.manual_seed(1)
    att = CrossScaleAttention(d=8, heads=2, dropout=0.0, fusion_init=(0.7, -0.4), first=False).eval()
    (h, w), (hp, wp) = hw, prev_hw
    n, m = h * w, hp * wp
    x = torch.randn(1, n, 8)
    a_prev = torch.randn(1, 2, m, m)
    y, a_fused = att(x, hw, (a_prev, prev_hw))

    # Eq. (1)-(3) written out element by element.
    qkv = x[0] @ att.qkv.weight.T + att.qkv.bias
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    expect = torch.zeros(2, n, n)
    for head in range(2):
        sl = slice(4 * head, 4 * head + 4)
        a_l = q[:, sl] @ k[:, sl].T / 2.0  # sqrt(d_k) = sqrt(4)
        for i in range(n):
            pi = _parent(i // w, h, hp) * wp + _parent(i % w, w, wp)
            for j in range(n):
                pj = _parent(j // w, h, hp) * wp + _parent(j % w, w, wp)
                expect[head, i, j] = 0.7 * a_l[i, j] - 0.4 * a_prev[0, head, pi, pj]
    torch.testing.assert_close(a_fused[0], expect, rtol=1e-5, atol=1e-5)
    heads_out = [expect[hd].softmax(-1) @ v[:, 4 * hd : 4 * hd + 4] for hd in range(2)]
    y_expect = torch.cat(heads_out, dim=1) @ att.proj.weight.T + att.proj.bias
    torch.testing.assert_close(y[0], y_expect, rtol=1e-5, atol=1e-5)


def test_sinusoidal_code_follows_eq4() -> None:
    d, h, w = 16, 3, 5
    pe = sinusoidal_pe_2d(d, h, w)
    half = d // 2
    for c in range(half):
        i = c // 2
        f = 1.0 / 10000 ** (2 * i / half)
        fn = np.sin if c % 2 == 0 else np.cos
        np.testing.assert_allclose(pe[c, :, 0].numpy(), fn(np.arange(h) * f), atol=1e-6)  # rows
        np.testing.assert_allclose(pe[half + c, 0, :].numpy(), fn(np.arange(w) * f), atol=1e-6)  # columns


def test_hypernetwork_weights_depend_on_the_image() -> None:
    gen = HyperLayerGenerator(in_dim=6, hidden_dim=8, layer_in=5, layer_out=3, init_std=0.1)
    z = torch.randn(2, 6)
    W_, b_ = gen(z)
    assert W_.shape == (2, 3, 5) and b_.shape == (2, 3)
    assert not torch.allclose(W_[0], W_[1])  # per-image weights
    x = torch.randn(2, 5)
    y = hyper_mlp(x, [(W_, b_)])
    torch.testing.assert_close(y, torch.stack([W_[k] @ x[k] + b_[k] for k in range(2)]))


# ---------------------------------------------------------------------------- text encoder
def test_minilm_embeds_similar_descriptions_closer() -> None:
    from visloc_core.models.apr.text_encoders import encode_minilm

    e = encode_minilm(
        [
            "a kitchen with a fridge next to the stove",
            "a kitchen where the refrigerator stands beside the cooker",
            "a snowy mountain ridge under a blue sky",
        ]
    )
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3


def test_mvl_loc_caches_text_embeddings_in_the_state_dict() -> None:
    from visloc_core.models.apr.text_encoders import _minilm, encode_minilm

    model = small_model("mvl_loc").eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 48, 64))
    state = model.state_dict()
    sent = encode_minilm([s.description for s in SCENES])
    torch.testing.assert_close(state["text_sent_SE"], sent)
    # Per-word tokens: as many as the tokenizer makes ([CLS] ... [SEP]); their mean, normalised, is
    # the sentence embedding (MiniLM's mean pooling): the tokens are the ones the sentence is made of.
    tokenizer = _minilm().tokenizer
    for k, scene in enumerate(SCENES):
        n = int(state["text_len_S"][k])
        assert n == len(tokenizer(scene.description)["input_ids"])
        assert torch.all(state["text_tok_STE"][k, n:] == 0)
        mean = state["text_tok_STE"][k, :n].mean(dim=0)
        torch.testing.assert_close(mean / mean.norm(), sent[k], atol=1e-5, rtol=0)
    # A model rebuilt from the state dict (as the localizer does) never calls the text encoder.
    fresh = small_model("mvl_loc").eval()
    fresh.load_state_dict(state)
    no_encoder = mock.patch(
        "visloc_core.models.apr.mvl_loc.encode_text_tokens", side_effect=AssertionError("encoder called")
    )
    with no_encoder, torch.no_grad():
        a = fresh(torch.ones(1, 3, 48, 64))
    with torch.no_grad():
        b = model(torch.ones(1, 3, 48, 64))
    torch.testing.assert_close(a["position_B3"], b["position_B3"])


def test_ms_hyperpose_hypernetwork_reads_the_backbone_image_descriptor() -> None:
    """As the authors' release: the hypernetwork's image input is the average of the backbone's last
    (1280-d) feature map, projected to the latent width, not a branch's own tokens."""
    model = small_model("ms_hyperpose").eval()
    x = torch.rand(2, 3, 48, 64)
    seen = {}
    model.hyper_t.map_fc.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))  # returns None
    with torch.no_grad():
        model(x)
        expect = model.backbone(x)[32].mean(dim=(2, 3))
    assert model.hyper_t.map_fc.in_features == model.hyper_rot.map_fc.in_features == 1280
    torch.testing.assert_close(seen["x"], expect)


def test_mvl_loc_fusion_attends_each_image_to_its_scene_words() -> None:
    """Eq. (3)-(4): the per-scene grouped attention equals attending image by image to the unpadded words."""
    from visloc_core.models.apr.mvl_loc import FusionLayer

    torch.manual_seed(3)
    layer = FusionLayer(d=16, heads=2, dropout=0.0).eval()
    t = torch.randn(5, 6, 16)
    scene = torch.tensor([1, 0, 1, 1, 0])
    words = torch.randn(2, 7, 16)
    n_words = [7, 4]
    pad = torch.arange(7)[None, :] >= torch.tensor(n_words)[:, None]
    words[1, 4:] = 1e3  # padding content must not matter
    with torch.no_grad():
        out = layer(t, scene, words, pad)
        for b in range(5):
            x = t[b : b + 1]
            h = layer.ln1(x)
            x = x + layer.self_attn(h, h, h)[0]
            h = layer.ln2(x)
            s = int(scene[b])
            w = words[s : s + 1, : n_words[s]]
            x = x + layer.cross_attn(h, w, w)[0]
            torch.testing.assert_close(out[b], x[0], rtol=1e-5, atol=1e-5)


def test_mvl_loc_scene_logits_are_scaled_cosines() -> None:
    """Eq. (7) logits: exp(tau) x cosine of the projected pooled visual tokens and descriptions."""
    model = small_model("mvl_loc").eval()
    tok = torch.randn(3, 6, model.cls_vision.in_features)
    with torch.no_grad():
        logits = model.scene_logits(tok).numpy()
        img = model.cls_vision(tok.mean(dim=1)).numpy().astype(np.float64)
        txt = model.cls_text(model.text_sent_SE).numpy().astype(np.float64)
    cos = (img @ txt.T) / np.linalg.norm(img, axis=1)[:, None] / np.linalg.norm(txt, axis=1)[None, :]
    np.testing.assert_allclose(logits, np.exp(np.log(1 / 0.07)) * cos, rtol=1e-4, atol=1e-4)


def test_mvl_loc_rejects_identical_descriptions() -> None:
    same = [SceneSpec("a", "a room"), SceneSpec("b", "a room")]
    with pytest.raises(ValueError, match="same description"):
        build_apr_model("mvl_loc", {**SMALL["mvl_loc"], "pretrained": False}, same)


def test_mvl_loc_clip_vision_path(tmp_path: Path) -> None:
    """The CLIP image-encoder path with a randomly initialised tiny CLIP (no real weights here)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    model = build_apr_model(
        "mvl_loc", {**SMALL["mvl_loc"], "visual_encoder": "clip", "clip_path": str(tmp_path / "clip")}, SCENES
    ).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 48, 64))  # 3 x 4 patches, position codes interpolated
    assert out["position_B3"].shape == (2, 3) and out["scene_logits_BS"].shape == (2, 2)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face CLIP folder"):
        build_apr_model("mvl_loc", {"visual_encoder": "clip", "clip_path": str(tmp_path)}, SCENES)


# --------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_config_builds_and_is_valid(name: str) -> None:
    cfg = apr_config(load_yaml(ROOT / "config" / "models" / f"{name}.yaml"))
    assert cfg["model"]["name"] == name
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model_cfg["pretrained"] = False
    if name in ("ms_hyperpose",):
        model_cfg.update(hyper_dim_t=8, hyper_dim_rot=8)  # keep the test light; sizes checked by the bench
    build_apr_model(name, model_cfg, SCENES)
    if name == "mvl_loc":
        assert cfg["loss"] == {"name": "log_quat_l1", "alpha": -4.0, "beta": -2.0}
        aug = cfg["data"]["augment"]
        assert (aug["brightness"], aug["contrast"], aug["saturation"], aug["hue"]) == (0.6, 0.7, 0.7, 0.5)


def test_ms_hyperpose_stages_train_one_head_at_a_time() -> None:
    from visloc_core.training.apr_module import APRModule

    cfg = apr_config(load_yaml(ROOT / "config" / "models" / "ms_hyperpose.yaml"))
    cfg["model"].update(SMALL["ms_hyperpose"], pretrained=False)
    scenes = [
        {"name": s.name, "description": s.description, "position_mean": [0, 0, 0], "position_scale": 1.0,
         "region_min": [-1, -1, -1], "region_max": [1, 1, 1]}
        for s in SCENES
    ]  # fmt: skip
    module = APRModule(cfg, scenes)
    names = [s["name"] for s in module.stages]
    assert names == ["joint", "position_head", "orientation_head"]
    expect_prefix = {1: ("head_t.", "hyper_t."), 2: ("head_rot.", "hyper_rot.")}
    for i in range(3):
        module.apply_stage(i)
        on = {n for n, p in module.named_trainables().items() if p.requires_grad}
        if i == 0:
            assert on == set(module.named_trainables())
        else:
            assert on and all(n.startswith(expect_prefix[i]) for n in on)
            assert {n for n in module.named_trainables() if n.startswith(expect_prefix[i])} == on
    assert module.stages[1]["extra_loss_weights"] == {"scene_nll": 0.0}


# ---------------------------------------------------------------------------------- overfit
@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory) -> Path:
    return make_two_scene_dataset(tmp_path_factory.mktemp("two_scenes") / "ds", n_train=4)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_tiny_overfit_through_trainer_artifact_and_localizer(name: str, two_scenes: Path, tmp_path: Path) -> None:
    """Each model drives its training loss down on 8 frames; the artifact then localizes them and
    multi-scene models report the right scene in LocalizationResult.scene."""
    from torch.utils.data import DataLoader

    from visloc_core.data.layout import Dataset
    from visloc_core.data.torch_dataset import ImageTransform, PoseDataset
    from visloc_core.localizers.loading import load_localizer
    from visloc_core.models.apr.artifact import write_apr_artifact
    from visloc_core.training.apr_data import scene_stats
    from visloc_core.training.apr_module import APRModule

    torch.manual_seed(seed())
    ds = Dataset(two_scenes)
    scene_names = [s.name for s in SCENES] if name in MULTI_SCENE else ["astro"]
    data = PoseDataset(ds, "train", ImageTransform(W, H), scene_names)
    stats = [
        scene_stats(s, ds.scene_info(s).get("description", ""), [f for f in data.frames if f.scene == s], 1.0, 0.1)
        for s in scene_names
    ]
    cfg = apr_config(
        {
            # MobileNetV2 for all: its BatchNorm momentum (0.1) lets the running statistics follow 60
            # steps on 4 images; EfficientNet-Lite0's TF momentum (0.01) would need hundreds of steps
            # before eval-mode outputs match the trained train-mode ones.
            "model": {"name": name, **SMALL[name], "pretrained": True, "backbone": "mobilenet_v2"},
            # MVL-Loc's paper initial weights (alpha -4, beta -2) weight the pose 55x / 7x over the
            # scene NLL; in 60 steps alpha, beta barely move, so the test starts them balanced (0, 0).
            "loss": {**LOSS[name], "alpha": 0.0, "beta": 0.0} if name in LOSS else {"name": "learned_weight"},
            "data": {"image_width": W, "image_height": H},
            # no precision class: this test checks the regression through the artifact, not the
            # publish rule (test/test_apr_decision.py); a tiny overfit model would be NOT_LOCALIZED
            "decision": {"accuracy_m": None, "accuracy_deg": None},
        }
    )
    module = APRModule(cfg, [s.to_json() for s in stats])
    module.apply_stage(0)
    batch = next(iter(DataLoader(data, batch_size=len(data))))

    def pose_error_terms() -> float:
        module.eval()
        with torch.no_grad():
            out = module.model(batch["image"])
            gt = module.normalise_position(batch["position"], batch["scene_id"])
            _, terms = module.loss(out["position_B3"], out["quat_B4"], gt, batch["quat_wxyz"])
        module.train()
        return float(terms["L_x"] + terms["L_q"])

    before = pose_error_terms()
    opt = torch.optim.Adam(list(module.named_trainables().values()), lr=1e-3)
    module.log = lambda *a, **k: None  # no Lightning trainer attached: training_step's logging is a no-op
    for step in range(60):
        opt.zero_grad()
        module.training_step(batch, step).backward()
        opt.step()
    after = pose_error_terms()
    ratio = record(f"apr_models.overfit_ratio.{name}", after / before)
    # bound: the worst ratio over the seed x thread sweep (test/bound_sweep.py, docs/CONTRIBUTING.md: mvl_loc
    # 0.269) x 1.5
    assert ratio < 0.4, f"{name}: pose error terms {before:.3f} -> {after:.3f}"

    art = write_apr_artifact(
        tmp_path / "art",
        module.model,
        cfg,
        stats,
        {"translation_var_m2": [0.01] * 3, "rotation_var_rad2": [0.001] * 3},
        {},
    )
    loc = load_localizer(art)
    errs = []
    for f in data.frames:
        r = loc.localize(ds.load_rgb(f), f.camera, f.stamp_ns)
        assert r.scene == f.scene
        errs.append(np.linalg.norm(r.T_world_cam[:3, 3] - f.T_world_cam[:3, 3]))
    # Scene 2 is 5 m away: a wrong scene or a collapsed regressor gives metres of error.
    assert record(f"apr_models.median_t_m.{name}", np.median(errs)) < 0.5, errs
