#!/usr/bin/env bash
# The whole test suite: lint, then pytest (core and ROS tests, real rclpy over DDS).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
# A private DDS domain per run, so parallel runs on one machine do not hear each other.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 101 ))}
export ROS_LOCALHOST_ONLY=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Tests use few threads: our machines have 2 cores and torch would otherwise oversubscribe them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MPLBACKEND=Agg
python -m pytest -q "$@"
