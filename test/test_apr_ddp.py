"""The distributed path of `visloc train`: Lightning's DDP on the CPU with 2 processes (gloo backend),
run through the real CLI as a user would (train.devices: 2, train.strategy: ddp).

References: DistributedSampler's split of the training set (each rank ceil(n / 2) samples per epoch),
and DDP's invariant that replicas hold identical weights after every optimizer step (the trainer
gathers each rank's float64 parameter checksum into the artifact's training record). Several steps
per rank: with parameters that get no gradient (MobileNetV2's unused ImageNet classifier), plain DDP
drifts silently on the first step and stops on the second; the trainer marks unused parameters.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import yaml
from apr_tiny import make_tiny_dataset


def test_ddp_on_cpu_two_ranks_train_in_sync(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", n_train=16)
    cfg = {
        "model": {
            "name": "posenet",
            "backbone": "mobilenet_v2",
            "pretrained": False,
            "feature_dim": 32,
            "dropout": 0.0,
        },
        "data": {"image_width": 64, "image_height": 48, "batch_size": 2, "val_fraction": 0.25, "val_block": 4},
        "train": {"epochs": 1, "lr": 1.0e-3, "progress_bar": False, "devices": 2, "strategy": "ddp", "device": "cpu"},
    }
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on two cores
    r = subprocess.run(
        [sys.executable, "-m", "visloc_core.cli", "train", str(tmp_path / "ddp.yaml"), "--data", str(data), "--out",
         str(tmp_path / "art")],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    training = json.loads((tmp_path / "art" / "artifact.json").read_text())["training"]
    dist = training["distributed"]
    assert dist["world_size"] == 2 and dist["strategy"] == "DDPStrategy", dist
    assert sorted(x["rank"] for x in dist["ranks"]) == [0, 1]
    n_train = training["n_train_frames"]
    per_rank = math.ceil(n_train / 2)  # DistributedSampler pads the shorter share with a repeated sample
    bs = cfg["data"]["batch_size"]
    for rank in dist["ranks"]:  # the training loader drops a last partial batch (no BatchNorm batches of 1)
        assert rank["batches"] == per_rank // bs >= 1, (rank, n_train)
        assert rank["samples"] == rank["batches"] * bs, rank
    # identical replicas after the optimizer steps (gradients all-reduced): bit-identical checksums
    assert dist["in_sync"], dist
    a, b = dist["ranks"]
    assert a["param_sum"] == b["param_sum"] and a["param_sum_sq"] == b["param_sum_sq"]
