#!/usr/bin/env bash
# colcon build of the visloc_ros package (messages + Python + executables) into build/ and install/,
# against the ROS 2 wheels in .venv. --symlink-install keeps the installed Python sources pointing
# at the working tree, so edits need no rebuild (messages do).
#
# What the PyPI wheels lack (launch, launch_ros, ros2cli, tf2) comes, when ROS 2 itself does not
# provide it, from the official sources in ros-src (scripts/ros_src.sh: found via VISLOC_ROS_SRC or
# a `shared/ros-src` folder next to the repository or above it; see docs/ros_node.md):
#   - pip --no-deps: launch, launch_xml, launch_yaml, launch_ros, ros2launch, ros2cli and the verbs
#     pkg, run, node, topic, lifecycle, param, service (pure Python; into .venv);
#   - colcon: composition_interfaces (launch_ros needs it), tf2_msgs, tf2 (C++), tf2_py, tf2_ros_py.
# Without ros-src and without a ROS 2 install, only visloc_ros and a TFMessage-only tf2_msgs
# (ros/tf2_msgs) are built; the tests that need `ros2 launch` or tf2 then skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV" AMENT_PREFIX_PATH="$VIRTUAL_ENV"
# CMake will not export an include path that lies inside the source tree (.venv is inside it):
# hand FindPython numpy's headers through the link that scripts/setup_env.sh made outside it.
np_link="${XDG_CACHE_HOME:-$HOME/.cache}/visloc/cmake-include/$(echo "$PWD" | md5sum | cut -c1-12)/numpy"
[ -d "$np_link" ] || { echo "[build] $np_link missing: run scripts/setup_env.sh (make env)" >&2; exit 1; }
cmake_args=(--cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF -DPython3_NumPy_INCLUDE_DIR="$np_link")

# A package whose source folder changed (e.g. the TFMessage fallback replaced by the official
# tf2_msgs) cannot reuse its CMake cache: start that package over.
fresh_if_moved() {  # name source_dir
  local cache="build/$1/CMakeCache.txt"
  if [ -f "$cache" ] && ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$(realpath "$2")\$" "$cache"; then
    echo "[build] $1: source moved to $2, rebuilding it from scratch"
    rm -rf "build/$1" "install/$1"
  fi
}

colcon_build() {  # colcon build with our CMake arguments (+ any given after --cmake-args); arguments pass through
  colcon --log-base log build "$@" "${cmake_args[@]}" \
    --event-handlers console_cohesion- status- summary+ 2>&1 | tail -20
  [ "${PIPESTATUS[0]}" = 0 ]
}

# 1. ROS 2 packages from the official sources, where ROS 2 itself does not provide them.
. scripts/ros_src.sh
ros_src_pkgs=()
ros_src_paths=()
if [ -n "$ROS_SRC_DIR" ]; then
  ros_src_extract
  if ! ros_provides launch launch_ros ros2cli ros2launch; then
    ros_src_pip_install
    ros_src_pkgs+=(composition_interfaces)
    ros_src_paths+=("$ROS_SRC_BUILD/rcl_interfaces/composition_interfaces")
  fi
  if ! ros_provides tf2_ros tf2_py tf2_msgs; then
    ros_src_pkgs+=(tf2_msgs tf2 tf2_py tf2_ros_py)
    for p in tf2_msgs tf2 tf2_py tf2_ros_py; do ros_src_paths+=("$ROS_SRC_BUILD/geometry2/$p"); done
  fi
fi
if [ ${#ros_src_pkgs[@]} -gt 0 ]; then
  stamp="install/.ros-src-$(ros_src_digest)"
  if [ ! -f "$stamp" ]; then
    for i in "${!ros_src_pkgs[@]}"; do fresh_if_moved "${ros_src_pkgs[$i]}" "${ros_src_paths[$i]}"; done
    echo "[build] colcon build from $ROS_SRC_DIR: ${ros_src_pkgs[*]}"
    t0=$SECONDS
    colcon_build --base-paths "${ros_src_paths[@]}" --packages-select "${ros_src_pkgs[@]}"
    rm -f install/.ros-src-*
    touch "$stamp"
    echo "[build] ros-src packages built in $((SECONDS - t0)) s"
  fi
fi

# 2. visloc_ros, and the TFMessage-only tf2_msgs when no real tf2_msgs exists anywhere.
packages=(visloc_ros)
base_paths=(.)
if [[ " ${ros_src_pkgs[*]} " != *" tf2_msgs "* ]] && ! ros_provides tf2_msgs; then
  echo "[build] no tf2_msgs from ROS 2 or ros-src: building the TFMessage fallback in ros/tf2_msgs"
  fresh_if_moved tf2_msgs ros/tf2_msgs
  packages+=(tf2_msgs)
  base_paths+=(ros/tf2_msgs)
fi
cmake_args+=(-DVISLOC_INSTALL_CORE=OFF)
colcon_build --symlink-install --base-paths "${base_paths[@]}" --packages-select "${packages[@]}"
touch install/.stamp
