#!/usr/bin/env bash
# colcon build of the visloc_ros package (messages + Python + executables) into build/ and install/,
# against the ROS 2 wheels in .venv. --symlink-install keeps the installed Python sources pointing
# at the working tree, so edits need no rebuild (messages do).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV" AMENT_PREFIX_PATH="$VIRTUAL_ENV"
# CMake will not export an include path that lies inside the source tree (.venv is inside it):
# hand FindPython numpy's headers through the link that scripts/setup_env.sh made outside it.
np_link="${XDG_CACHE_HOME:-$HOME/.cache}/visloc/cmake-include/$(echo "$PWD" | md5sum | cut -c1-12)/numpy"
[ -d "$np_link" ] || { echo "[build] $np_link missing: run scripts/setup_env.sh (make env)" >&2; exit 1; }
colcon --log-base log build --symlink-install --packages-select visloc_ros \
  --cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF -DVISLOC_INSTALL_CORE=OFF -DPython3_NumPy_INCLUDE_DIR="$np_link" \
  --event-handlers console_cohesion- status- summary+ 2>&1 | tail -20
touch install/.stamp
