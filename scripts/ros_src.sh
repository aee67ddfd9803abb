# Sourced by scripts/build_ros.sh (bash). The official ROS 2 sources of what PyPI lacks.
#
# ROS_SRC_DIR: the folder of the source archives (launch, launch_ros, ros2cli, composition_interfaces,
# geometry2; PROVENANCE.md there names each repository and release). Found as $VISLOC_ROS_SRC when
# set (an error if it is not a folder), else the first `shared/ros-src` in the repository's parent
# folder or any folder above it (a clone next to ../shared, or deeper in a worktree tree); empty
# when there is none.
# ros_provides MOD...: true when every module is importable from OUTSIDE this repository (a real
# ROS 2 install, which must keep its own packages), false when one is missing or ours.

REPO_DIR=$(pwd -P)
ROS_SRC_BUILD="build/ros-src"
ROS_SRC_ARCHIVES=("launch-*.tar.gz" "launch_ros-*.tar.gz" "ros2cli-*.tar.gz" "composition_interfaces-*.tar.gz"
  "geometry2-*.tar.gz")  # globs, expanded inside ROS_SRC_DIR
# Optional: rosidl_runtime_py (ros2/rosidl_runtime_py; not on PyPI), which `ros2 lifecycle`, `ros2 service`
# and `ros2 topic` import; installed when ros-src has an archive of it.
ROS_SRC_OPTIONAL=("rosidl_runtime_py-*.tar.gz")
# The pure-Python packages pip installs (folder inside $ROS_SRC_BUILD), dependencies first.
ROS_SRC_PY=(launch/launch launch/launch_xml launch/launch_yaml launch_ros/launch_ros launch_ros/ros2launch
  ros2cli/ros2cli ros2cli/ros2pkg ros2cli/ros2run ros2cli/ros2node ros2cli/ros2topic ros2cli/ros2lifecycle
  ros2cli/ros2param ros2cli/ros2service)

ROS_SRC_DIR=""
if [ -n "${VISLOC_ROS_SRC:-}" ]; then
  [ -d "$VISLOC_ROS_SRC" ] || { echo "[build] VISLOC_ROS_SRC=$VISLOC_ROS_SRC is not a folder" >&2; exit 1; }
  ROS_SRC_DIR=$(cd "$VISLOC_ROS_SRC" && pwd -P)
else
  d=$(dirname "$REPO_DIR")
  while :; do
    if [ -d "$d/shared/ros-src" ]; then ROS_SRC_DIR="$d/shared/ros-src"; break; fi
    [ "$d" = / ] && break
    d=$(dirname "$d")
  done
fi
if [ -n "$ROS_SRC_DIR" ]; then
  for pattern in "${ROS_SRC_ARCHIVES[@]}"; do
    compgen -G "$ROS_SRC_DIR/$pattern" >/dev/null || {
      echo "[build] $ROS_SRC_DIR has no $pattern (see its PROVENANCE.md); set VISLOC_ROS_SRC to a complete copy" >&2
      exit 1
    }
  done
fi

ros_provides() {
  python - "$REPO_DIR" "$@" <<'EOF'
import importlib.util, os, sys
repo = sys.argv[1]
for name in sys.argv[2:]:
    spec = importlib.util.find_spec(name)
    where = os.path.realpath(spec.submodule_search_locations[0] if spec and spec.submodule_search_locations
                             else (spec.origin if spec else ""))
    if not spec or where.startswith(repo + os.sep):
        sys.exit(1)
EOF
}

ros_src_digest() {  # short hash of the archives' contents
  (cd "$ROS_SRC_DIR" && sha256sum ${ROS_SRC_ARCHIVES[@]} $(compgen -G "${ROS_SRC_OPTIONAL[0]}" || true)) | sha256sum | cut -c1-12
}

ros_src_extract() {  # unpack each archive into $ROS_SRC_BUILD once per archive content
  mkdir -p "$ROS_SRC_BUILD"
  local a sum stamp
  for a in $(cd "$ROS_SRC_DIR" && ls ${ROS_SRC_ARCHIVES[@]} $(compgen -G "${ROS_SRC_OPTIONAL[0]}" || true)); do
    sum=$(sha256sum "$ROS_SRC_DIR/$a" | cut -c1-16)
    stamp="$ROS_SRC_BUILD/.$a.$sum"
    [ -f "$stamp" ] && continue
    tar -xzf "$ROS_SRC_DIR/$a" -C "$ROS_SRC_BUILD"
    rm -f "$ROS_SRC_BUILD/.$a".*
    touch "$stamp"
  done
}

ros_src_pip_install() {  # pip --no-deps into .venv, once per archive set
  local stamp=".venv/.ros-src-pip-$(ros_src_digest)"
  [ -f "$stamp" ] && return 0
  echo "[build] pip install (no deps) from $ROS_SRC_DIR: ${ROS_SRC_PY[*]##*/}"
  local t0=$SECONDS dirs=()
  for p in "${ROS_SRC_PY[@]}"; do dirs+=("$ROS_SRC_BUILD/$p"); done
  [ -f "$ROS_SRC_BUILD/rosidl_runtime_py/setup.py" ] && dirs+=("$ROS_SRC_BUILD/rosidl_runtime_py")
  python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation "${dirs[@]}" 2>&1 \
    | grep -v -e "is ignored" -e "^ *warnings.warn" -e "UserWarning" || true
  python -c "import launch, ros2cli, ros2lifecycle, ros2launch" 2>/dev/null \
    || { echo "[build] the launch/ros2cli install from $ROS_SRC_DIR failed (see above)" >&2; exit 1; }
  rm -f .venv/.ros-src-pip-*
  touch "$stamp"
  echo "[build] launch, launch_ros, ros2cli installed in $((SECONDS - t0)) s"
}
