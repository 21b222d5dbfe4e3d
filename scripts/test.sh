#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine: installs what is
# missing, builds with warnings as errors, runs every test, runs the engine's
# suites again on the other GEMM path (OpenBLAS instead of oneDNN,
# docs/cpu.md), then runs every test again in a build with AddressSanitizer
# and UndefinedBehaviorSanitizer (which also reports leaks), and finally runs
# each libFuzzer harness for ${VMOE_FUZZ_SECONDS:-60} seconds
# (tests/fuzz/README.md).
set -eu
cd "$(dirname "$0")/.."
. scripts/deps.sh
vmoe_install_deps

meson setup build --wipe -Dwerror=true -Donednn=enabled >/dev/null 2>&1 \
  || meson setup build -Dwerror=true -Donednn=enabled
meson compile -C build
meson test -C build --print-errorlogs

meson setup build-openblas --wipe -Dwerror=true -Donednn=disabled >/dev/null 2>&1 \
  || meson setup build-openblas -Dwerror=true -Donednn=disabled
meson compile -C build-openblas
meson test -C build-openblas --print-errorlogs ops model parity tool

meson setup build-sanitize --wipe -Dwerror=true -Dbuildtype=debug \
  -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 \
  || meson setup build-sanitize -Dwerror=true -Dbuildtype=debug \
       -Db_sanitize=address,undefined -Db_lundef=false
meson compile -C build-sanitize
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
ASAN_OPTIONS=detect_leaks=1 \
  meson test -C build-sanitize --print-errorlogs --timeout-multiplier 4

VMOE_FUZZ_SECONDS=${VMOE_FUZZ_SECONDS:-60} tests/fuzz/run.sh
echo "all tests passed"
