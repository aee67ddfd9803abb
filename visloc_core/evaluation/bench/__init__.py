"""Benchmarks run by ``visloc bench NAME``: speed and memory, side by side with a baseline, as ratios.

Each benchmark is a module here defining ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict``; the returned dict (JSON-serialisable) is written to ``<out>/<name>.json``
by the command, which also prints it as a table. Benchmarks never assert on time: they measure.
"""

# name -> module in this package, or a dotted absolute module (ROS benchmarks live in visloc_ros,
# since visloc_core imports no ROS)
BENCHMARKS: dict[str, str] = {
    "render": "render",  # synthetic rendering frames/s at 320x240 and 640x480 (target >= 100 fps at 320x240)
    "bag": "bag",  # from-bag throughput vs a plain rosbags read of the same bag (target >= 0.5x)
    "node": "visloc_ros.bench_node",  # node end-to-end latency vs the model's own inference (target <= 1.10x); memory over 10k frames
    "relpose": "relpose",  # relpose localizer vs OpenCV SIFT + essential RANSAC on the same queries (target >= 10x)
    "models": "models",  # parameter count and CPU inference time of every APR model
    "robustness": "visloc_ros.bench_robustness",  # fuzz + soak of the node, kill -9 of every writer, artifact corruption
}
