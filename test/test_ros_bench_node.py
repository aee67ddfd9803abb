"""`visloc bench node` runs end to end against the real node (a few frames): every frame is answered
and the numbers it reports are consistent with each other. It measures; nothing here is timed."""

from __future__ import annotations

import argparse

from visloc_ros import bench_node


def test_bench_node_small_run(tmp_path):
    parser = argparse.ArgumentParser()
    bench_node.add_arguments(parser)
    args = parser.parse_args(["--latency-frames", "5", "--memory-frames", "40", "--sample-every", "10"])
    out = bench_node.run(args)
    lat, mem = out["latency"], out["memory"]
    assert lat["node_e2e_ms"]["n"] == 5 and lat["localize_own_ms"]["n"] == 5
    # the node's internal latency contains its localizer stages, and e2e contains both
    assert lat["node_internal_ms"]["median"] >= lat["localize_in_node_ms"]["median"]
    assert lat["node_e2e_ms"]["median"] >= lat["node_internal_ms"]["median"]
    assert mem["frames_answered"] == 40 and len(mem["rss_samples_mb"]) == 5
    assert mem["rss_mb_first"] > 50 and mem["rss_slope_mb_per_1k_frames"] is not None
