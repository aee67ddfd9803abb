"""`visloc bench` plumbing with a real benchmark module (evaluation/bench/relpose.py, its cheap
`--solvers` part), and the shared timing helper (evaluation/bench/timing.py) against a fake clock
and numpy: no timed assertions."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from visloc_core.cli import main as visloc_main
from visloc_core.commands import bench as bench_cmd
from visloc_core.commands.bench import BENCHMARKS  # the core table and the plugins (visloc_core/plugins.py)
from visloc_core.evaluation.bench.timing import (
    Stopwatch,
    cpu_model,
    machine_info,
    ratio,
    set_threads,
    summarize_ms,
    time_call,
)

SOLVER_ARGS = ["--solvers", "--solver-pairs", "2"]


class ScriptedClock:
    """A clock whose every call returns the next of the given times (seconds)."""

    def __init__(self, times: list[float]) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def _strict_json(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# ------------------------------------------------------------------------------------ timing helper
class FakeTime:
    """A clock that only moves when the timed function says so: fn() advances it by its next duration."""

    def __init__(self, durations_s: list[float]) -> None:
        self.t = 1000.0
        self.durations = list(durations_s)
        self.calls = 0

    def clock(self) -> float:
        return self.t

    def fn(self) -> None:
        self.calls += 1
        self.t += self.durations.pop(0)


def test_time_call_warmup_and_statistics_with_a_fake_clock() -> None:
    # Two warm-up calls of 5 s (must not count), then calls of 1, 2, 3, 4, 10 ms.
    ft = FakeTime([5.0, 5.0, 0.001, 0.002, 0.003, 0.004, 0.010])
    res = time_call(ft.fn, warmup=2, repeats=5, clock=ft.clock)
    assert ft.calls == 2 + 5
    np.testing.assert_allclose(res["samples_ms"], [1, 2, 3, 4, 10], atol=1e-6)
    assert res["median_ms"] == pytest.approx(3.0)
    assert res["p95_ms"] == pytest.approx(8.8)  # linear: 4 + 0.8 * (10 - 4)
    assert res["p95_ms"] == pytest.approx(np.percentile(res["samples_ms"], 95))
    assert res["mean_ms"] == pytest.approx(4.0)
    assert res["min_ms"] == pytest.approx(1.0) and res["max_ms"] == pytest.approx(10.0)
    assert (res["warmup"], res["repeats"], res["n"]) == (2, 5, 5)
    assert res["torch_threads"] == torch.get_num_threads()
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_call(lambda: None, repeats=0)


def test_time_call_min_time_extends_repeats() -> None:
    # Calls of 1 s each; at least 3.5 s of timed calls needs 4 calls although 2 repeats were asked.
    ft = FakeTime([1.0] * 10)
    res = time_call(ft.fn, warmup=0, repeats=2, min_time_s=3.5, clock=ft.clock)
    assert res["repeats"] == 4 and ft.calls == 4
    assert res["median_ms"] == pytest.approx(1000.0)
    # sync runs inside the timed region, after each call.
    ft = FakeTime([0.001] * 3)
    res = time_call(ft.fn, warmup=0, repeats=3, sync=lambda: setattr(ft, "t", ft.t + 0.002), clock=ft.clock)
    assert res["median_ms"] == pytest.approx(3.0)


def test_summarize_stopwatch_and_ratio() -> None:
    x = np.random.default_rng(0).gamma(2.0, 5.0, size=101)
    s = summarize_ms(x)
    assert s["n"] == 101
    assert s["median_ms"] == np.median(x) and s["p95_ms"] == np.percentile(x, 95) and s["std_ms"] == np.std(x)
    assert np.isnan(summarize_ms([])["median_ms"])
    sw = Stopwatch(clock=ScriptedClock([0.0, 0.002, 1.0, 1.004, 2.0, 2.001]))
    with sw("decode"):
        pass
    with sw("infer"):
        pass
    with sw("decode"):
        pass
    summ = sw.summary()
    assert summ["decode"]["n"] == 2 and summ["decode"]["median_ms"] == pytest.approx(1.5)
    assert summ["infer"]["median_ms"] == pytest.approx(4.0)
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None and ratio(float("inf"), 1.0) is None


def test_machine_info_and_threads(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    try:
        set_threads(1)
        info = machine_info()
        assert info["torch_threads"] == 1 == torch.get_num_threads()
        assert info["opencv_threads"] == cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv)
    assert info["logical_cores"] == os.cpu_count()
    assert info["usable_cores"] == len(os.sched_getaffinity(0))
    assert info["thread_env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert info["thread_env"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")
    assert info["torch"] == torch.__version__ and info["numpy"] == np.__version__
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        if names:
            assert cpu_model() == names[0]
    assert info["peak_rss_mb"] > 10  # this process holds torch
    with pytest.raises(ValueError, match=">= 1"):
        set_threads(0)


# ------------------------------------------------------------------------------------ the command
def test_bench_list_matches_the_modules_in_the_tree(capsys) -> None:
    assert visloc_main(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(BENCHMARKS)
    for name, line in zip(BENCHMARKS, lines):
        exists = importlib.util.find_spec(bench_cmd.module_path(name)) is not None
        assert line.split()[:2] == [name, "available" if exists else "unavailable"]
    assert "relpose" in BENCHMARKS and "relpose" in "".join(ln for ln in lines if "available " in ln)


def test_bench_relpose_solvers_writes_json_and_table(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert visloc_main(["bench", "relpose", *SOLVER_ARGS, "--threads", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["relpose.json"]  # nothing but the atomic result
    res = _strict_json(out / "relpose.json")
    from visloc_core.localizers.relpose.solvers import ESSENTIAL_SOLVERS

    assert res["solvers"]["setup"]["pairs"] == 2
    for solver in ESSENTIAL_SOLVERS:
        assert res["solvers"][solver]["median_ms"] > 0
    meta = res["bench_meta"]
    assert meta["name"] == "relpose" and meta["duration_s"] > 0
    assert meta["options"]["solvers"] is True and meta["options"]["threads"] == 1
    assert meta["machine"]["usable_cores"] == len(os.sched_getaffinity(0))
    assert meta["machine"]["torch_threads"] == 1  # the benchmark pinned it
    printed = capsys.readouterr().out
    first = ESSENTIAL_SOLVERS[0]
    assert f"solvers.{first}.median_ms" in printed
    assert f"{res['solvers'][first]['median_ms']:.4g}" in printed


def test_bench_errors_are_clear(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "b"
    # The real module refuses to run without inputs: a clear one-line error, no file written.
    assert visloc_main(["bench", "relpose", "--out", str(out)]) == 2
    assert "give --data" in capsys.readouterr().err
    assert not (out / "relpose.json").exists()
    assert visloc_main(["bench"]) == 2
    assert "--list" in capsys.readouterr().err
    # Inputs of the wrong kind are named before any work: --out a file, a folder that is not a bag,
    # a missing config folder.
    (tmp_path / "file").write_text("x")
    assert visloc_main(["bench", "relpose", "--solvers", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert visloc_main(["bench", "bag", "--bag", str(tmp_path), "--out", str(out)]) == 2
    assert "not a rosbag2 folder (no metadata.yaml and 0 .db3/.mcap files)" in capsys.readouterr().err
    assert visloc_main(["bench", "models", "--config-dir", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "--config-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        visloc_main(["bench", "no-such-bench", "--out", str(out)])
    assert "invalid choice" in capsys.readouterr().err
    # A benchmark listed in the table whose module is not written yet.
    monkeypatch.setattr(bench_cmd, "BENCHMARKS", {"relpose": "relpose", "ghost": "ghost_module"})
    assert visloc_main(["bench", "ghost", "--out", str(out)]) == 2
    assert "does not exist yet" in capsys.readouterr().err


def test_bench_all_runs_available_modules_and_records_status(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(bench_cmd, "BENCHMARKS", {"relpose": "relpose", "ghost": "ghost_module"})
    out = tmp_path / "all"
    # Forwarded options: relpose knows --solvers/--solver-pairs; --unknown-opt is ignored.
    assert visloc_main(["bench", "all", "--out", str(out), "--", *SOLVER_ARGS, "--unknown-opt"]) == 0
    status = _strict_json(out / "all.json")
    assert status["partial"] is False
    assert status["benchmarks"]["relpose"]["status"] == "ok"
    assert status["benchmarks"]["ghost"]["status"] == "unavailable"
    assert _strict_json(out / "relpose.json")["solvers"]["setup"]["pairs"] == 2
    capsys.readouterr()
    # Without the forwarded options the real module fails; `all` records it, goes on, exits 1.
    out2 = tmp_path / "all2"
    assert visloc_main(["bench", "all", "--out", str(out2)]) == 1
    status = _strict_json(out2 / "all.json")
    assert status["benchmarks"]["relpose"]["status"] == "failed"
    assert "give --data" in status["benchmarks"]["relpose"]["error"]
    assert not (out2 / "relpose.json").exists()
    # --skip
    out3 = tmp_path / "all3"
    assert visloc_main(["bench", "all", "--out", str(out3), "--skip", "relpose"]) == 0
    assert _strict_json(out3 / "all.json")["benchmarks"]["relpose"]["status"] == "skipped"
    assert visloc_main(["bench", "all", "--out", str(out3), "--skip", "nope"]) == 2


def test_parser_imports_benchmark_modules_only_when_used(capsys) -> None:
    """Building the `visloc` parser must not import benchmark modules (some import torch at the top)."""
    import subprocess
    import sys

    code = (
        "import sys, visloc_core.cli as c; c._build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('visloc_core.evaluation.bench.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # The benchmark's own options appear in its --help (loaded on demand).
    with pytest.raises(SystemExit) as exc:
        visloc_main(["bench", "relpose", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--solvers" in text and "--out" in text
    # every option with a default says it: the parser's own default, stated once
    from visloc_core.evaluation.bench import relpose as relpose_bench

    own = argparse.ArgumentParser()
    relpose_bench.add_arguments(own)
    threads = next(a for a in own._actions if "--threads" in a.option_strings)
    assert f"(default {threads.default})" in " ".join(text.split())
    assert " ".join(text.split()).count("(default") >= 5
    assert "(default 1) (default" not in text


def test_table_rows_of_nested_results() -> None:
    rows = dict(
        bench_cmd.flatten(
            {"a": {"b": 1.23456, "c": [1.0, 2.0]}, "cases": [{"x": 1}, {"x": 2}], "long": list(range(10)), "s": "ok"}
        )
    )
    assert rows == {
        "a.b": "1.235",
        "a.c": "[1, 2]",
        "cases": "[2 records: see the JSON file]",
        "long": "[10 values]",
        "s": "ok",
    }
