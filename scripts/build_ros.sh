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
# tf2_msgs is not on PyPI: when no real one is importable (outside our own install/), also build
# ros/tf2_msgs, a TFMessage-only package from the official definition (same type name and hash),
# so the node can publish /tf. A full ROS 2 install keeps its real tf2_msgs.
packages=(visloc_ros)
base_paths=(.)
tf2_msgs_at=$(python -c "import tf2_msgs, os; print(os.path.realpath(tf2_msgs.__path__[0]))" 2>/dev/null || true)
if [ -z "$tf2_msgs_at" ] || [[ "$tf2_msgs_at" == "$PWD/install/"* ]]; then
  echo "[build] no system tf2_msgs: building the TFMessage fallback in ros/tf2_msgs"
  packages+=(tf2_msgs)
  base_paths+=(ros/tf2_msgs)
fi
colcon --log-base log build --symlink-install --base-paths "${base_paths[@]}" --packages-select "${packages[@]}" \
  --cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF -DVISLOC_INSTALL_CORE=OFF -DPython3_NumPy_INCLUDE_DIR="$np_link" \
  --event-handlers console_cohesion- status- summary+ 2>&1 | tail -20
touch install/.stamp
