"""visloc_core/config.py: one merge, strict unknown-key errors naming the key and the valid ones,
``--set key.sub=value`` with YAML values, on `visloc map build` and `visloc train` alike.
References: hand-written expected dicts and messages."""

from __future__ import annotations

import logging

import pytest
import yaml

from visloc_core.cli import main
from visloc_core.config import UnknownConfigKeyError, apply_overrides, deep_merge, log_config


def test_deep_merge_merges_sections_and_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    over = {"a": {"b": 2}, "d": {"e": 3}}
    assert deep_merge(base, over) == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": 3}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": None} and over == {"a": {"b": 2}, "d": {"e": 3}}
    assert deep_merge(base, None) == base and deep_merge(base, None) is not base


def test_strict_merge_names_the_dotted_key_and_the_valid_ones():
    base = {"train": {"lr": 1.0, "epochs": 3}, "model": {"name": "posenet"}}
    with pytest.raises(UnknownConfigKeyError, match=r"^unknown config key 'train\.lrr'; known here: epochs, lr$"):
        deep_merge(base, {"train": {"lrr": 2}}, strict=True)
    with pytest.raises(ValueError, match=r"unknown config key 'trian'; known here: model, train"):
        deep_merge(base, {"trian": {}}, strict=True)
    # an open section's keys are its owner's to check
    got = deep_merge(base, {"model": {"dropout": 0.1}}, strict=True, open_sections=("model",))
    assert got["model"] == {"name": "posenet", "dropout": 0.1}


def test_set_parses_yaml_values_and_creates_sections():
    cfg = {"retrieval": {}, "finetune": None, "scene": "a"}
    apply_overrides(
        cfg, ["retrieval.spacing_m=[0.3, 5]", "finetune.epochs=1", "scene=null", "estimator.matcher=lighterglue"]
    )
    assert cfg == {
        "retrieval": {"spacing_m": [0.3, 5]},
        "finetune": {"epochs": 1},
        "scene": None,
        "estimator": {"matcher": "lighterglue"},
    }
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        apply_overrides({}, ["retrieval.num_references"])
    with pytest.raises(ValueError, match=r"--set scene\.x: scene is not a section"):
        apply_overrides({"scene": "a"}, ["scene.x=1"])
    with pytest.raises(yaml.YAMLError):
        apply_overrides({}, ["a=[1"])


def test_log_config_logs_the_merged_config_as_yaml(caplog):
    with caplog.at_level(logging.INFO):
        log_config(logging.getLogger("visloc_core.test"), "map build", {"image_size": (320, 240), "x": {"y": 1}})
    text = caplog.records[-1].getMessage()
    assert text.startswith("map build config")
    assert yaml.safe_load(text.split("\n", 1)[1]) == {"image_size": [320, 240], "x": {"y": 1}}


def _posenet_yaml(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model:\n  name: posenet\ntrain:\n  lr: 1.0e-4\n  epochs: 2\n")
    return cfg


def test_train_set_changes_the_merged_config(tmp_path, monkeypatch):
    """`visloc train --set` reaches the trainer, and the strict merge keeps the values set."""
    from visloc_core.training import apr
    from visloc_core.training.config import apr_config

    seen = {}

    def fake_train(cfg, data, out, args):
        seen["cfg"] = apr_config(cfg)
        return tmp_path / "artifact"

    monkeypatch.setattr(apr, "train", fake_train)
    argv = ["train", str(_posenet_yaml(tmp_path)), "--data", str(tmp_path), "--out", str(tmp_path / "a")]
    assert main([*argv, "--set", "train.lr=4.5e-4", "--set", "data.augment.hue=0", "--set", "model.dropout=0.2"]) == 0
    cfg = seen["cfg"]
    assert cfg["train"]["lr"] == pytest.approx(4.5e-4) and cfg["train"]["epochs"] == 2
    assert cfg["data"]["augment"]["hue"] == 0 and cfg["data"]["augment"]["brightness"] == 0.3  # default kept
    assert cfg["model"] == {"name": "posenet", "dropout": 0.2}


def test_train_set_with_an_unknown_key_is_named_before_the_dataset_is_read(tmp_path, capsys):
    argv = ["train", str(_posenet_yaml(tmp_path)), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "a")]
    assert main([*argv, "--set", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.lrr'; known here: " in err and "lr, " in err


def test_map_build_set_with_an_unknown_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("kind: relpose\n")
    argv = ["map", "build", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    assert main([*argv, "--set", "retrieval.num_referencs=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown retrieval keys ['num_referencs']" in err and "num_references" in err
