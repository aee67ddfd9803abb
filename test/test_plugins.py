"""The CLI finds the ROS layer's commands and benchmarks through entry points (visloc_core/plugins.py),
and says what to install and source when one is missing. References: the entry points declared in
pyproject.toml, and a distribution written here on sys.path."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from visloc_core import plugins
from visloc_core.cli import main
from visloc_core.commands import bench as bench_cmd
from visloc_core.evaluation.bench import BENCHMARKS as CORE_BENCHMARKS


def test_the_ros_layer_is_declared_as_plugins() -> None:
    runners = plugins.declared(plugins.RUNNERS)
    assert runners["replay"].value == "visloc_ros.replay:replay"
    assert plugins.declared(plugins.BENCHMARKS)["node"].value == "visloc_ros.bench_node"
    # the core's own table names no ROS module; the command's table adds the plugin's
    assert "node" not in CORE_BENCHMARKS and bench_cmd.BENCHMARKS["node"] == "visloc_ros.bench_node"
    assert list(bench_cmd.BENCHMARKS)[: len(CORE_BENCHMARKS)] == list(CORE_BENCHMARKS)


def test_a_declared_plugin_loads_and_a_broken_one_names_the_fix(tmp_path, monkeypatch) -> None:
    dist = tmp_path / "visloc_fake_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: visloc-fake-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[visloc.runners]\nfake = visloc_fake_plugin_mod:run\nbroken = visloc_no_such_module_xyz:run\n"
    )
    (tmp_path / "visloc_fake_plugin_mod.py").write_text("def run(o):\n    return {'ran': o}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "visloc_fake_plugin_mod", raising=False)
    assert plugins.load(plugins.RUNNERS, "fake", "visloc fake")(3) == {"ran": 3}
    with pytest.raises(plugins.PluginUnavailableError) as err:
        plugins.load(plugins.RUNNERS, "broken", "visloc broken")
    text = str(err.value)
    assert "visloc broken is not available" in text and "visloc_no_such_module_xyz" in text
    assert "source install/local_setup.bash" in text and "make env build" in text
    with pytest.raises(plugins.PluginUnavailableError, match=r"no visloc\.runners plugin 'nope' is installed"):
        plugins.load(plugins.RUNNERS, "nope", "visloc nope")


def test_same_plugin_declared_twice_counts_once(monkeypatch) -> None:
    eps = [
        EntryPoint("replay", "visloc_ros.replay:replay", plugins.RUNNERS),
        EntryPoint("replay", "visloc_ros.replay:replay", plugins.RUNNERS),  # e.g. an installed copy of the metadata
        EntryPoint("other", "somewhere:else", plugins.RUNNERS),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [e for e in eps if e.group == group])
    assert {k: v.value for k, v in plugins.declared(plugins.RUNNERS).items()} == {
        "replay": "visloc_ros.replay:replay",
        "other": "somewhere:else",
    }


def test_plugin_benchmarks_join_but_never_replace_core_ones(monkeypatch) -> None:
    eps = [
        EntryPoint("render", "elsewhere.render", plugins.BENCHMARKS),
        EntryPoint("extra", "elsewhere.extra", plugins.BENCHMARKS),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [e for e in eps if e.group == group])
    table = bench_cmd._all_benchmarks()
    assert table["render"] == CORE_BENCHMARKS["render"] and table["extra"] == "elsewhere.extra"
    assert bench_cmd.module_path("render") == "visloc_core.evaluation.bench.render"


def test_replay_without_the_ros_plugin_says_what_to_do(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert main(["replay", str(tmp_path / "bag"), str(tmp_path / "art"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "visloc replay is not available" in err and "visloc_ros" in err
    assert "source install/local_setup.bash" in err
    assert not (tmp_path / "r").exists()
