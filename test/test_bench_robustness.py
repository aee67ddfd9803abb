"""The short version of `visloc bench robustness` (the long one is a documented command, figures in
docs/STATUS.md): malformed messages to the real node in its own process over DDS, a short soak, kill -9
of a writing command, the artifact corruption matrix. References: the node's own per-topic counters
(every message received is counted), the exit status of the node process, the atomic helper's
naming of temporaries (none may survive a rerun), the checksums of the artifact."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ros_helpers import TINY_CAMERA, tiny_frames, trained_tiny_artifact, write_tiny_bag

from visloc_ros import bench_robustness as rb


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("robustness")
    frames = [(img, TINY_CAMERA) for img, _ in tiny_frames([0.3, 0.6])]
    return work, trained_tiny_artifact(), frames


def test_fuzz_every_message_is_counted_and_valid_frames_still_localize(setup):
    work, art, frames = setup
    r = rb.fuzz(work, art, frames, n_messages=240, seed=1)
    assert r["messages_sent"] == 240  # 120 malformed to each node (besides the valid camera_info of each)
    # every message the node received is counted; only best-effort camera_info may be lost in transport
    # (the image, odometry and initialpose topics are reliable): a loaded machine dropped 3 of 240 once
    assert (r["unaccounted"], r["crashes"], r["errors"]) == (0, 0, 0), r
    assert r["received"] == r["counted"] == r["messages_sent"] - r["lost_in_transport"]
    for mode in ("raw", "compressed"):
        row = r["by_mode"][mode]
        assert set(row["lost_by_topic"]) <= {"camera_info"}, (mode, row)
        # every non-image message that arrived was refused (each one is malformed), and named by topic
        for topic in ("camera_info", "odom", "initialpose"):
            got = row["received_by_topic"].get(topic, 0)
            expected = got - (row["valid_camera_info_received"] if topic == "camera_info" else 0)
            assert row["bad_input_by_topic"].get(topic, 0) == expected, (mode, topic, row)
        assert row["frames_processed"] == 0  # no malformed image was localized
    assert (
        r["valid_frames_localized"] == r["valid_frames_localized_by_a_fresh_localizer"] == r["valid_frames_sent"] == 4
    )


def test_soak_keeps_the_node_up(setup):
    work, art, frames = setup
    r = rb.soak(work, art, frames, seconds=3.0, rate_hz=10.0)
    assert not r["crashed"] and r["errors"] == 0 and r["frames_localized"] > 0 and r["samples"] >= 4


def test_kill_minus_9_of_a_writer_leaves_the_old_output_and_no_leftovers_after_a_rerun(setup, tmp_path):
    bag, _, _ = write_tiny_bag(tmp_path / "bag", np.linspace(0.1, 0.9, 40))
    out = tmp_path / "out" / "ds"
    cmd = rb._visloc("dataset", "from-bag", str(bag), "--image-topic", "/camera/image_raw",
                     "--pose-topic", "/ground_truth/pose", "--out", str(out), "--overwrite", "--no-progress")  # fmt: skip
    r = rb.kill({"from-bag": (cmd, out, "dataset")}, kills=3, seed=2)
    assert r["kills"] + r["by_command"]["from-bag"]["finished_before_the_kill"] == 3
    assert (r["out_incomplete_after_kill"], r["rerun_failures"], r["leftovers_after_rerun"]) == (0, 0, 0), r


def test_corruption_matrix_gives_clear_errors(setup):
    work, art, _ = setup
    r = rb.corruption(work, [art], n_random=1, seed=3)
    assert r["corruptions"] >= 3 * 6 + 3  # each of the 3 files 6 ways, and 3 edits of artifact.json
    assert r["clear_errors"] == r["corruptions"] and r["loaded_anyway"] == r["unclear_errors"] == 0, r["examples"]


def test_the_command_has_help():
    out = subprocess.run(
        [sys.executable, "-m", "visloc_core.cli", "bench", "robustness", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--fuzz-messages" in out.stdout and "--soak-s" in out.stdout
