#!/bin/sh
# Soak test of vmoeclassify (issue #17): four live 30 frames/s streams with
# post-messages, model swaps while PLAYING and state changes, in one process
# (tests/soak.c says what it checks).  Ends with one summary line; exits 1 on
# any failed check.
#
#   tests/soak.sh [SECONDS]      default: $VMOE_SOAK_SECONDS, else 60 (CI)
#
# For hours, on a plain build (meson setup build && meson compile -C build):
#   nice tests/soak.sh 14400 2>&1 | tee soak.log     # 4 h; progress every 60 s
# VMOE_BUILD_DIR names another build folder (default: build/ in the source).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${VMOE_BUILD_DIR:-$src/build}
seconds=${1:-${VMOE_SOAK_SECONDS:-60}}
soak=$build/tests/vmoe-soak
[ -x "$soak" ] || { echo "soak.sh: $soak is missing; build first (meson compile -C $build)" >&2; exit 1; }
export GST_PLUGIN_PATH="$build/gst"
# A private registry, so that the system's holds no stale copy of the plugin.
export GST_REGISTRY="${GST_REGISTRY:-$build/tests/registry-soak.bin}"
export OPENBLAS_NUM_THREADS=1
exec "$soak" "$seconds" "$src/models/fashion-vmoe.safetensors" \
  "$src/models/fashion-dense.safetensors"
