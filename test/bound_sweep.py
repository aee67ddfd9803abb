"""Rerun the tests that check trained models over seeds x thread counts and tabulate what they record
(test/bounds.py explains why). Usage, from the repository root in the venv with the ROS overlay:

    python test/bound_sweep.py --seeds 0 1 2 3 4 --threads 1 2 --out runs/bound_sweep

Each run is a pytest subprocess with VISLOC_TEST_SEED, OMP_NUM_THREADS and its own cache of trained
test artifacts; the table gives, per recorded value, the best and worst over all runs and the worst
run. Assertion failures do not stop the sweep (values are recorded before the asserts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

TESTS = [
    "test/test_apr_training.py::test_loss_goes_down_and_beats_mean_pose",
    "test/test_apr_training.py::test_covariance_scale_on_held_out_frames",
    "test/test_apr_models.py::test_tiny_overfit_through_trainer_artifact_and_localizer",
    "test/test_relpose_net.py::test_tiny_overfit_drives_the_loss_down",
    "test/test_ros_node.py::test_localizes_sequence_with_input_stamps_and_frames",
    "test/test_ros_replay.py::test_replay_sqlite3_raw_lockstep",
    "test/test_ros_replay.py::test_replay_mcap_compressed",
]
ROS_TESTS = [t for t in TESTS if "test_ros_" in t]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="runs/bound_sweep", help="folder for the recorded values and logs")
    ap.add_argument("--cache", help="cache of trained test artifacts (default OUT/cache; share it between sweeps)")
    ap.add_argument("--ros-only", action="store_true", help="only the tests through the node")
    ap.add_argument("tests", nargs="*", default=None, help="pytest node ids (default: every recording test)")
    args = ap.parse_args()
    args.tests = args.tests or (ROS_TESTS if args.ros_only else TESTS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    values = out / "values.jsonl"
    for threads in args.threads:
        for seed in args.seeds:
            env = dict(os.environ, VISLOC_TEST_SEED=str(seed), OMP_NUM_THREADS=str(threads),
                       MKL_NUM_THREADS=str(threads), VISLOC_RECORD_METRICS=str(values.resolve()),
                       XDG_CACHE_HOME=str(Path(args.cache or out / "cache").resolve()))  # fmt: skip
            log = out / f"seed{seed}_threads{threads}.log"
            print(f"seed {seed}, {threads} thread(s) ...", flush=True)
            with open(log, "w") as f:
                rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.tests],
                                     env=env, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
            print(f"  pytest exit {rc} ({log})", flush=True)
    rows = defaultdict(list)
    for line in values.read_text().splitlines():
        r = json.loads(line)
        rows[r["name"]].append((r["value"], r["seed"], r["threads"]))
    print(f"\n{'value':45s} {'n':>3s} {'min':>9s} {'max':>9s}")
    for name in sorted(rows):
        vals = rows[name]
        lo, hi = min(v for v, *_ in vals), max(v for v, *_ in vals)
        print(f"{name:45s} {len(vals):3d} {lo:9.4f} {hi:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
