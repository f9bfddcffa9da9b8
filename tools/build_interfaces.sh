#!/usr/bin/env bash
# Build the tsa_msgs interface package (msg/*.msg) with rosidl and install it into the venv,
# so that `<venv>/bin/python -c "import tsa_msgs.msg"` works with no `source` of any setup file.
# Usage: tools/build_interfaces.sh <venv> <build-dir>
set -euo pipefail
venv=$(cd "$1" && pwd)
build=$2
mkdir -p "$build"
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python3"

py_inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_inc=$("$py" -c 'import numpy; print(numpy.get_include())')

# ament_index_get_resources() reads only this environment variable, never a CMake variable.
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

cmake -S "$repo/interfaces/tsa_msgs" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" \
  -DBUILD_TESTING=OFF \
  -DCMAKE_PROJECT_INCLUDE="$repo/cmake/fix_wheel_include_dirs.cmake" \
  -DTSA_PYTHON_INCLUDE_DIR="$py_inc" \
  -DTSA_NUMPY_INCLUDE_DIR="$np_inc" \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
cmake --install "$build" >/dev/null
"$py" -c 'import tsa_msgs.msg as m; m.Segmentation(); print("tsa_msgs built and installed into", __import__("sys").prefix)'
