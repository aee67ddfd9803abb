"""visloc_core.atomic, the one helper every writer (dataset, bag, APR artifact, relpose map,
checkpoints, reports) goes through. References: folder contents and modes before and after, real
processes killed with SIGKILL at the worst moments, a second process holding the lock."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from visloc_core import atomic
from visloc_core.atomic import OutputLockedError, atomic_file, atomic_folder, clean_stale, replace_folder

PY = sys.executable


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _dead_pid() -> int:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------ replace_folder
def test_new_folder_is_renamed_into_place(tmp_path):
    built = tmp_path / ".out.partial"
    (built / "sub").mkdir(parents=True)
    (built / "sub" / "a.txt").write_text("new")
    assert replace_folder(built, tmp_path / "out") == tmp_path / "out"
    assert _tree(tmp_path / "out") == {"sub/a.txt": "new"}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing left beside it


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_existing_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2", None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old_only.txt").write_text("old")
    (out / "both.txt").write_text("old")
    built = tmp_path / ".out.partial"
    built.mkdir()
    (built / "both.txt").write_text("new")
    replace_folder(built, out)
    assert _tree(out) == {"both.txt": "new"}  # no file of the old folder survives
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the old one was removed after the swap


def test_missing_built_folder_leaves_out_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_renameat2", None)  # the fallback's restore path
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "never_built", out)
    assert _tree(out) == {"keep.txt": "old"}  # put back under its name
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ------------------------------------------------------------------------------- atomic_folder
def test_folder_and_files_get_the_modes_mkdir_and_open_give(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "ds") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.txt").write_text("x")
        with atomic_file(tmp_path / "report.json") as f:
            f.write(b"{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ds") == 0o755  # tempfile.mkdtemp would give 0700
    assert _mode(tmp_path / "ds" / "sub") == 0o755 and _mode(tmp_path / "ds" / "sub" / "x.txt") == 0o644
    assert _mode(tmp_path / "report.json") == 0o644
    assert sorted(os.listdir(tmp_path)) == ["ds", "report.json"]  # no lock or temporary left


def test_error_removes_the_temporary_folder_and_keeps_the_old_result(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(out, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("failed half-way")
    assert _tree(out) == {"v": "1"}
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(FileExistsError, match="pass --overwrite"), atomic_folder(out):
        pass


def test_ctrl_c_keeps_the_partial_result_only_where_promised(tmp_path):
    for keep in (True, False):
        out = tmp_path / f"out_{keep}"
        with pytest.raises(KeyboardInterrupt), atomic_folder(out, keep_partial_on_interrupt=keep) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
        kept = tmp_path / f".out_{keep}.interrupted-{os.getpid()}"
        assert kept.is_dir() == keep and not out.exists()
    assert sorted(os.listdir(tmp_path)) == [f".out_True.interrupted-{os.getpid()}"]


def test_stale_leftovers_of_dead_processes_are_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    for name in (f".out.partial-{dead}-0badc0de", f".out.partial-{dead}-1badc0de"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / f".report.json.partial-{dead}-2badc0de").write_text("half")
    alive = tmp_path / f".out.partial-{os.getpid()}-3badc0de"  # a live process's: untouched
    alive.mkdir()
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text("1")
    with atomic_file(tmp_path / "report.json") as f:
        f.write(b"{}")
    assert sorted(os.listdir(tmp_path)) == [alive.name, "out", "report.json"]


def test_kill_between_the_two_renames_is_repaired_on_the_next_run(tmp_path):
    """The fallback swap (no renameat2) killed after parking the old folder: --out is missing for a
    moment; the next run puts the old folder back before doing anything."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "v").write_text("old")
    r = _run(
        f"""
        import os, signal
        from visloc_core import atomic
        atomic._renameat2 = None
        atomic._between_renames = lambda: os.kill(os.getpid(), signal.SIGKILL)
        with atomic.atomic_folder({str(out)!r}, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
        """,
        tmp_path,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and any(n.startswith(".out.old-") for n in os.listdir(tmp_path))
    done = clean_stale(out)
    assert any("restored" in line for line in done)
    assert _tree(out) == {"v": "old"}
    assert [n for n in os.listdir(tmp_path) if n != ".out.lock"] == ["out"]


def test_exchange_never_leaves_out_missing(tmp_path):
    """With renameat2(RENAME_EXCHANGE) there is no moment without --out: a kill right after the
    exchange leaves the new folder in place and the old one in a temporary the next run removes."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "v").write_text("old")
    r = _run(
        f"""
        import os, signal, shutil
        from visloc_core import atomic
        shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # die right after the exchange
        with atomic.atomic_folder({str(out)!r}, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
        """,
        tmp_path,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    if atomic._renameat2 is None:
        pytest.skip("no renameat2 on this system: the two-rename fallback is tested above")
    assert _tree(out) == {"v": "new"}
    with atomic_folder(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "v").write_text("newer")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path):
    out = tmp_path / "map"
    holder = subprocess.Popen(
        [PY, "-c", f"from visloc_core import atomic\nwith atomic.atomic_folder({str(out)!r}):\n input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not atomic.lock_path_for(out).exists() or not atomic.lock_path_for(out).read_text().strip():
            assert time.monotonic() < deadline and holder.poll() is None, "the holder did not start"
            time.sleep(0.05)
        with pytest.raises(OutputLockedError, match=rf"{out} is being written by another process \(pid {holder.pid}"):
            atomic_folder(out).open()
        with pytest.raises(OutputLockedError):
            atomic_folder(out, overwrite=True).open()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and out.is_dir()
    with atomic_folder(out, overwrite=True) as tmp:  # released: the next writer goes ahead
        (tmp / "v").write_text("2")
    assert sorted(os.listdir(tmp_path)) == ["map"]


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    out = tmp_path / "out"
    r = _run(
        f"""
        import os, signal
        from visloc_core import atomic
        with atomic.atomic_folder({str(out)!r}) as tmp:
            (tmp / "half").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        tmp_path,
    )
    assert r.returncode == -signal.SIGKILL
    assert not out.exists() and len(os.listdir(tmp_path)) == 2  # the lock file and the partial folder
    with atomic_folder(out) as tmp:  # kill -9 left no lock that blocks, and its partial folder goes
        (tmp / "v").write_text("1")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_folder_its_writer_creates_keeps_its_name(tmp_path):
    """rosbags' Writer creates its folder and names the storage file after it: the temporary path it
    gets must end in the final name (bag/bag.mcap, not bag/.bag.partial-....mcap)."""
    out = tmp_path / "bag"
    with atomic_folder(out, create=False) as p:
        assert p.name == "bag" and not p.exists()
        p.mkdir()
        (p / "bag.mcap").write_text("x")
    assert sorted(os.listdir(out)) == ["bag.mcap"] and sorted(os.listdir(tmp_path)) == ["bag"]


def _hold_lock(path) -> subprocess.Popen:
    """Another process writing ``path`` (it holds its lock until stdin closes)."""
    holder = subprocess.Popen(
        [PY, "-c", f"from visloc_core import atomic\nwith atomic.output_lock({str(path)!r}):\n input()"],
        stdin=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not atomic.lock_path_for(path).exists() or not atomic.lock_path_for(path).read_text().strip():
        assert time.monotonic() < deadline and holder.poll() is None, "the holder did not start"
        time.sleep(0.05)
    return holder


def test_two_map_builds_and_two_trainings_into_one_output_fail_fast(tmp_path, capsys):
    """The attack: two `visloc map build` into one --out both exited 0 (the later replaced the earlier);
    two `visloc train` shared OUT.train/checkpoints. Now the second one stops at once, naming the first
    (map build, APR, radiance-field and PoseFormer_sem training)."""
    from apr_tiny import make_tiny_dataset

    from visloc_core.cli import main

    data = make_tiny_dataset(tmp_path / "ds", n_train=4)
    cfg = tmp_path / "posenet.yaml"
    cfg.write_text("model: {name: posenet, backbone: mobilenet_v2, pretrained: false}\ntrain: {epochs: 1}\n")
    nerf_cfg, sem_cfg = tmp_path / "nerf.yaml", tmp_path / "sem.yaml"
    nerf_cfg.write_text("task: nerf\n")  # the radiance-field and PoseFormer_sem trainers lock the same way
    sem_cfg.write_text("task: poseformer_sem\n")
    runs = [
        (["map", "build", "config/models/relpose_sift.yaml", "--data", str(data), "--out", str(tmp_path / "map")],
         tmp_path / "map"),
        (["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "apr")], tmp_path / "apr"),
        (["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "apr2"), "--work-dir", str(tmp_path / "w")],
         tmp_path / "w"),
        (["train", str(nerf_cfg), "--data", str(data), "--out", str(tmp_path / "field")], tmp_path / "field.train"),
        (["train", str(sem_cfg), "--data", str(data), "--out", str(tmp_path / "sem")], tmp_path / "sem"),
    ]  # fmt: skip
    for argv, locked in runs:
        holder = _hold_lock(locked)
        try:
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{locked} is being written by another process (pid {holder.pid}" in err
        finally:
            holder.communicate("\n", timeout=60)
        assert not any(p.name.startswith((".map.partial", ".apr.partial")) for p in tmp_path.iterdir())
