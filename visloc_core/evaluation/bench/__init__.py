"""Benchmarks run by ``visloc bench NAME``: speed and memory, side by side with a baseline, as ratios.

Each benchmark is a module here defining ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> dict``; the returned dict (JSON-serialisable) is written to ``<out>/<name>.json``
by the command, which also prints it as a table. Benchmarks never assert on time: they measure.
"""

# name -> module in this package. Benchmarks that need ROS live in visloc_ros (visloc_core imports
# no ROS) and are declared as ``visloc.benchmarks`` entry points in pyproject.toml (visloc_core/plugins.py).
BENCHMARKS: dict[str, str] = {
    "render": "render",  # synthetic rendering frames/s at 320x240 and 640x480 (target >= 100 fps at 320x240)
    "bag": "bag",  # from-bag throughput vs a plain rosbags read of the same bag (target >= 0.5x)
    "relpose": "relpose",  # relpose localizer vs OpenCV SIFT + essential RANSAC on the same queries (target >= 10x)
    "models": "models",
    "map": "mapscale",  # relpose map scaling 1e3..1e5 keyframes: retrieval per faiss index, query, RSS, disk  # parameter count and CPU inference time of every APR model
}
