"""The `visloc` CLI on bad input: one line naming the problem (and the file), exit code 2, no
traceback. References: the exact file, line and column PyYAML reports for a known broken file; the
registered model names; the command name as typed."""

from __future__ import annotations

import pytest

from visloc_core.cli import main
from visloc_core.models.registry import APR_MODELS, build_apr_model

BROKEN = "a: [1, 2\nb: {\n"  # the flow sequence of line 1 is not closed: PyYAML stops at line 2, column 2


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{cfg}", "--data", "{tmp}", "--out", "{tmp}/a"],
        ["map", "build", "{cfg}", "--data", "{tmp}", "--out", "{tmp}/a"],
    ],
)
def test_broken_yaml_config_is_one_line_naming_file_and_place(tmp_path, capsys, argv):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(BROKEN)
    args = [a.format(cfg=cfg, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    command = "map build" if argv[0] == "map" else "train"
    assert err.startswith(f"visloc {command}: error: {cfg}: not valid YAML at line 2, column 2:")
    assert not (tmp_path / "a").exists()
    # a binary file (an image given by mistake) is named too
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cfg} is not a YAML text file" in err


def test_broken_yaml_value_on_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: relpose\n")
    argv = ["map", "build", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "a"), "--set", "x=[1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid YAML (line 1, column 3)" in err and "file" not in err


def test_broken_scene_yaml(tmp_path, capsys):
    scene = tmp_path / "scene.yaml"
    scene.write_text(BROKEN)
    assert main(["synth", str(scene), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{scene}: not valid YAML at line 2, column 2" in err


def test_nested_command_is_named_in_the_error(tmp_path, capsys):
    argv = ["dataset", "from-bag", str(tmp_path), "--image-topic", "/c", "--pose-topic", "/p"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("visloc dataset from-bag: error:")


def test_unknown_apr_model_lists_every_model_not_only_imported_ones():
    with pytest.raises(ValueError) as info:
        build_apr_model("resnet_posenet", {}, [])
    for name in APR_MODELS.names():
        assert name in str(info.value)


def test_unknown_apr_model_is_named_before_the_dataset_is_read(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model:\n  name: resnet_posenet\n")
    assert main(["train", str(cfg), "--data", str(tmp_path / "no_dataset"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown APR model 'resnet_posenet' (model.name); known: posenet" in err


def test_bad_torch_device_is_named_before_any_loading(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "artifact.json").write_text('{"kind": "relpose"}')  # the device is checked before the files
    from visloc_core.localizers.loading import check_device, load_localizer

    check_device("cpu")
    check_device("cuda:1")  # parses without a GPU: only the spelling is checked
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        load_localizer(art, device="gpu0")


def test_query_image_contract_is_one_check_for_every_localizer():
    """apr and relpose localizers both call localizers.base.check_query_image."""
    import numpy as np

    from visloc_core.geometry import PinholeCamera
    from visloc_core.localizers.base import check_query_image

    cam = PinholeCamera(8, 6, 10.0, 10.0, 4.0, 3.0)
    img = np.zeros((6, 8, 3), np.uint8)
    np.testing.assert_array_equal(check_query_image(img, None), img)
    for bad, message in [
        (img.astype(np.float32), "RGB uint8"),
        (img[..., 0], "RGB uint8"),
        (img[:1, :1], "too small"),
        (np.zeros((8, 6, 3), np.uint8), "image is 6x8 but the camera says 8x6"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_query_image(bad, cam)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "c.yaml", "--data", "d", "--out", "a", "--epochs", "0"],
        ["map", "build", "c.yaml", "--data", "d", "--out", "a", "--max-frames", "0"],
        ["replay", "bag", "art", "--out", "r", "--max-frames", "-3"],
    ],
)
def test_zero_counts_are_refused_not_read_as_unset(argv, capsys):
    """0 was falsy: `--epochs 0` trained the config's 30 epochs, `--max-frames 0` used every frame."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_top_level_help_names_the_nested_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dataset from-bag: make a dataset from a rosbag2 recording" in text
    assert "map build: build a retrieval map" in text
    assert "; info: what a relpose map holds" in text  # a group of several commands names each


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"kind": "slam"}', "unknown artifact kind 'slam'; known: apr, relpose"),
        ('{"kind": "relpose"}', "artifact.json has no format_version; the map is incomplete"),
        ('{"kind": "relpose", "format_version": 1}', "the relpose artifact is incomplete (missing "),
        ("{not json", "artifact.json is not valid JSON"),
        ("[1, 2]", "has no 'kind'"),
    ],
)
def test_damaged_artifacts_are_named(tmp_path, content, message):
    from visloc_core.localizers.loading import load_localizer

    (tmp_path / "artifact.json").write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        load_localizer(tmp_path)
    assert message in str(info.value)
