"""SIGTERM and SIGINT against the real `visloc` processes (subprocess, a real signal, the real handlers).

The report: `visloc train` stopped by SIGTERM exited 0 without an artifact (Lightning turns SIGTERM into
a SystemExit without a code). Required of every writing command: a non-zero exit status (128 + the
signal: 130 SIGINT, 143 SIGTERM, as a shell reports a death by that signal), one line naming the
signal and what was kept, no --out (not even half of one), no temporaries, the partial results its
--help promises: training keeps the last finished epoch's checkpoint and resumes from it; `map build`
keeps its partial folder as .OUT.interrupted-PID; `dataset from-bag` leaves nothing.

Training is signalled for real mid-run (after its first checkpoint, of 500 epochs), by SIGTERM and by
SIGINT (Lightning handles each its own way); the other commands by SIGTERM (SIGINT takes the same
handler, visloc_core.interrupt). The map build and
the bag conversion are short on these inputs: they are held mid-run by a wrapper that blocks inside
the command (a test double of TIMING only; the process, its handlers and the clean-up are real) and
tells the test where it is, so the signal always lands in the middle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from apr_tiny import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}

TRAIN_CFG = {
    "model": {"name": "posenet", "backbone": "mobilenet_v2", "pretrained": False, "feature_dim": 32, "dropout": 0.0},
    "data": {"image_width": 64, "image_height": 48, "batch_size": 8},
    "train": {"epochs": 500, "lr": 1.0e-3, "progress_bar": False, "seed": 0},
}

# Runs a visloc command with one function replaced by one that, at its CALL-th call, touches MARK and
# sleeps until a signal arrives: argv = MARK MODULE FUNCTION CALL visloc-args...
HOLD = """
import importlib, pathlib, sys, time
mark, module, name, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mod = importlib.import_module(module)
real, calls = getattr(mod, name), [0]
def held(*args, **kw):
    calls[0] += 1
    if calls[0] == at:
        pathlib.Path(mark).touch()
        while True:
            time.sleep(0.1)
    return real(*args, **kw)
setattr(mod, name, held)
from visloc_core.cli import main
sys.exit(main(sys.argv[5:]))
"""


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the command ended ({proc.returncode}) before {path}: {proc.stderr.read()}"
        assert time.monotonic() < t_end, f"no {path} after {timeout_s} s"
        time.sleep(0.2)


def _signal(proc: subprocess.Popen, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and not p.name.endswith(".lock"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_train_interrupted_keeps_checkpoint_writes_no_artifact_and_resumes(tmp_path, signum) -> None:
    data = make_tiny_dataset(tmp_path / "ds", n_train=12)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN_CFG))
    out, work = tmp_path / "art", tmp_path / "art.train"
    last = work / "checkpoints" / "last.ckpt"
    argv = [sys.executable, "-m", "visloc_core.cli", "train", str(cfg), "--data", str(data), "--out", str(out)]
    proc = _start(argv, tmp_path / "train.log")
    _wait_for(last, proc)  # an epoch finished: now mid-training (500 epochs)
    rc, err = _signal(proc, signum)

    name = signal.Signals(signum).name
    assert rc == EXIT[signum], err
    line = _last_line(err)
    assert line.startswith(f"visloc train: interrupted by {name}; no artifact written;"), err
    assert str(last) in line and "--resume" in line
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, "art") == []
    ckpt = torch.load(last, map_location="cpu", weights_only=False)  # complete, loadable
    assert 0 <= ckpt["epoch"] < TRAIN_CFG["train"]["epochs"] - 1

    if signum == signal.SIGTERM:  # the hint works: --resume continues from that epoch to an artifact
        more = ["--resume", "--epochs", str(ckpt["epoch"] + 2)]
        done = subprocess.run(argv + more, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        meta = yaml.safe_load((out / "artifact.json").read_text())
        assert meta["training"]["epochs"] == ckpt["epoch"] + 2


def test_map_build_interrupted_keeps_its_partial_folder(tmp_path) -> None:
    signum = signal.SIGTERM  # SIGINT takes the same handler (the training test sends both)
    data = make_tiny_dataset(tmp_path / "ds", n_train=8)
    out, mark = tmp_path / "map", tmp_path / "held"
    hold = [sys.executable, "-c", HOLD, str(mark), "visloc_core.localizers.relpose.mapping", "_imwrite", "3"]
    argv = ["map", "build", "config/models/relpose_sift.yaml", "--data", str(data), "--out", str(out), "--no-progress"]
    proc = _start(hold + argv, tmp_path / "map.log")
    _wait_for(mark, proc)  # two keyframe images written, the third being written
    rc, err = _signal(proc, signum)

    assert rc == EXIT[signum], err
    assert _last_line(err).startswith(f"visloc map build: interrupted by {signal.Signals(signum).name}; "), err
    assert "Traceback" not in err
    assert not out.exists()
    kept = tmp_path / f".map.interrupted-{proc.pid}"
    assert _leftovers(tmp_path, "map") == [kept.name]  # the partial folder, no other temporary
    assert sorted(p.name for p in (kept / "images").iterdir()) == ["000000.png", "000001.png"]
    # and a rerun builds the map
    done = subprocess.run([sys.executable, "-m", "visloc_core.cli", *argv], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "keyframes.json").is_file()


def test_from_bag_interrupted_leaves_nothing(tmp_path) -> None:
    signum = signal.SIGTERM
    from test_from_bag import write_robot_bag

    write_robot_bag(tmp_path / "bag", "sqlite3")
    out, mark = tmp_path / "ds", tmp_path / "held"
    hold = [sys.executable, "-c", HOLD, str(mark), "visloc_core.data.bags.read", "_image_frame", "4"]
    argv = ["dataset", "from-bag", str(tmp_path / "bag"), "--image-topic", "/camera/image_raw",
            "--pose-tf", "map:base_link", "--out", str(out), "--no-progress"]  # fmt: skip
    proc = _start(hold + argv, tmp_path / "from_bag.log")
    _wait_for(mark, proc)  # three frames converted, the fourth being read
    rc, err = _signal(proc, signum)

    assert rc == EXIT[signum], err
    assert _last_line(err).startswith(f"visloc dataset from-bag: interrupted by {signal.Signals(signum).name}; "), err
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, "ds") == []


def test_synth_interrupted_keeps_the_finished_bags_and_no_dataset(tmp_path) -> None:
    """SIGTERM while the second sequence starts: no dataset (it appears only when complete), the first
    sequence's bag kept whole and readable, nothing of the second, no temporaries (as its --help says)."""
    from visloc_core.evaluation.replay_plan import open_bag

    signum = signal.SIGTERM
    out, bags, mark = tmp_path / "ds", tmp_path / "bags", tmp_path / "held"
    hold = [sys.executable, "-c", HOLD, str(mark), "visloc_core.data.synth.generate", "plan_sequence", "2"]
    argv = ["synth", "indoor_room", "--out", str(out), "--bag", str(bags), "--max-frames", "3", "--size", "64x48",
            "--no-progress"]  # fmt: skip
    proc = _start(hold + argv, tmp_path / "synth.log")
    _wait_for(mark, proc)  # the first sequence rendered, the second being planned
    rc, err = _signal(proc, signum)

    assert rc == EXIT[signum], err
    assert _last_line(err).startswith("visloc synth: interrupted by SIGTERM; "), err
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, "ds") == []
    kept = sorted(p.name for p in bags.iterdir() if not p.name.endswith(".lock"))
    assert kept == ["indoor_room_map_outer"], kept  # the first sequence of config/scenes/indoor_room.yaml
    with open_bag(bags / "indoor_room_map_outer") as reader:
        images = [c for c in reader.connections if c.topic == "/camera/image_raw"]
        assert sum(1 for _ in reader.messages(connections=images)) == 3


# The node's diagnostics timer, held just before its graph query (get_publishers_info_by_topic) until the
# signal has shut the context down: the query then fails with "rcl node's context is invalid" (seen at the
# end of a `visloc bench robustness` soak, a traceback and exit 1 instead of a clean stop).
HOLD_NODE = """
import pathlib, sys, time
from visloc_ros import localizer_node as m
real = m.LocalizerNode._conditions
def held(self, now):
    if self._active:
        pathlib.Path(sys.argv[1]).touch()
        t_end = time.monotonic() + 60.0
        while self.context.ok() and time.monotonic() < t_end:
            time.sleep(0.05)
    return real(self, now)
m.LocalizerNode._conditions = held
sys.exit(m.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_node_stopped_during_a_graph_query_exits_cleanly(ros, tiny_artifact, tmp_path, signum) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"visloc_localizer": {"ros__parameters": {
        "model": str(tiny_artifact), "autostart": True, "warmup": False, "diagnostics_period_s": 0.1}}}))  # fmt: skip
    mark = tmp_path / "held"
    argv = [sys.executable, "-c", HOLD_NODE, str(mark), "--ros-args", "--params-file", str(params)]
    proc = _start(argv, tmp_path / "node.log")
    _wait_for(mark, proc)  # active, the diagnostics timer inside its callback
    rc, err = _signal(proc, signum)
    out = (tmp_path / "node.log").read_text() + err
    assert rc == 0, out
    assert "Traceback" not in out and "context is invalid" not in out, out


# `visloc replay` held inside its lock-step wait for the node's answer to its CALL-th image (main thread):
# argv = MARK CALL visloc-args...
HOLD_REPLAY = """
import pathlib, sys, time
from visloc_ros import replay as m
real, calls = m._Player.wait_result, [0]
def held(self, stamp_ns, timeout_s):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        pathlib.Path(sys.argv[1]).touch()
        while True:
            time.sleep(0.1)
    return real(self, stamp_ns, timeout_s)
m._Player.wait_result = held
from visloc_core.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _processes_naming(text: str) -> list[int]:
    """PIDs of the live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(proc.name))
    return pids


def test_replay_interrupted_stops_its_node_and_writes_the_partial_report(ros, tiny_artifact, tmp_path) -> None:
    """SIGTERM in the middle of a lock-step replay: the node it started is stopped (no orphan holding the
    camera topic), the report of the frames so far is written with partial: true, exit 143, one line."""
    import json

    from ros_helpers import write_tiny_bag

    signum = signal.SIGTERM
    bag, _, _ = write_tiny_bag(tmp_path / "query", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], storage="sqlite3")
    out, mark = tmp_path / "report", tmp_path / "held"
    argv = ["replay", str(bag), str(tiny_artifact), "--out", str(out), "--wait", "--param", "max_jump_m=0.0"]
    proc = _start([sys.executable, "-c", HOLD_REPLAY, str(mark), "3", *argv], tmp_path / "replay.log")
    _wait_for(mark, proc)  # two images answered, the third published and waited for
    node = str(out / ".replay-node-")  # the node's command line names its parameter file, made there
    assert _processes_naming(node), "the node of the replay is not running while it is held"
    rc, err = _signal(proc, signum)

    assert rc == EXIT[signum], err
    assert _last_line(err).startswith("visloc replay: interrupted by SIGTERM; the partial report of the 3 frames"), err
    assert "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["partial"] is True and report["n_frames"] == 3
    t_end = time.monotonic() + 30.0  # the node got SIGINT from replay's clean-up; it may still be exiting
    while _processes_naming(node) and time.monotonic() < t_end:
        time.sleep(0.2)
    assert _processes_naming(node) == [], "the replay's node outlived it"
    assert not list(out.glob(".replay-node-*")), "the node's parameter file was left behind"
