#!/bin/sh
# Builds the libFuzzer harnesses with clang in their own build directory and
# runs each for a bounded time: tests/fuzz/README.md.
#
#   tests/fuzz/run.sh [HARNESS...]          # all five by default
#
# VMOE_FUZZ_SECONDS   seconds per harness (default 60)
# VMOE_FUZZ_JOBS      parallel fuzzing processes per harness (default 1;
#                     more uses libFuzzer's -fork mode)
# VMOE_FUZZ_BUILD     build directory (default build-fuzz)
#
# Every committed reproducer (tests/fuzz/crashes/HARNESS/) runs first, then
# the seed corpus (tests/fuzz/corpus/HARNESS/) and what earlier runs found
# (BUILD/fuzz-corpus/HARNESS/).  Any crash, sanitizer report, leak, timeout
# or out-of-memory is a finding: its input lands in
# BUILD/fuzz-findings/HARNESS/, the run goes on with the other harnesses,
# and the script exits 1.
set -eu
cd "$(dirname "$0")/../.."
seconds=${VMOE_FUZZ_SECONDS:-60}
jobs=${VMOE_FUZZ_JOBS:-1}
build=${VMOE_FUZZ_BUILD:-build-fuzz}
harnesses=${*:-config model npy preprocess inference}

if [ ! -f "$build/build.ninja" ]; then
  CC=clang-14 meson setup "$build" -Dfuzz=enabled -Dvulkan=disabled -Dgst=disabled \
    -Dtests=disabled -Dbuildtype=debugoptimized -Db_ndebug=false -Dwerror=true
fi
targets=""
for h in $harnesses; do
  targets="$targets tests/fuzz/fuzz_$h"
done
# shellcheck disable=SC2086
ninja -C "$build" $targets

# The harnesses run the CPU backend on one thread; OpenBLAS must not start
# its own.
export OPENBLAS_NUM_THREADS=1
found=""
for h in $harnesses; do
  corpus="$build/fuzz-corpus/$h" findings="$build/fuzz-findings/$h"
  crashes="tests/fuzz/crashes/$h"
  mkdir -p "$corpus" "$findings" "$crashes"
  log="$build/fuzz-$h.log"
  fork=""
  [ "$jobs" -gt 1 ] && fork="-fork=$jobs"
  echo "fuzz_$h: $seconds s (log $log)"
  # -timeout: one input taking 10 s is a hang.  -rss_limit_mb and
  # -malloc_limit_mb: an input costing this much memory is a finding (the
  # largest seed needs well under 100 MB).
  if "$build/tests/fuzz/fuzz_$h" $fork -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=1024 -malloc_limit_mb=512 -print_final_stats=1 \
      -artifact_prefix="$findings/" "$corpus" "tests/fuzz/corpus/$h" "$crashes" \
      >"$log" 2>&1; then
    status=ok
  else
    status=FINDING
    found="$found $h"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  # -fork mode prints no final stats; its progress lines start with the count.
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\):* *cov:.*/\1/p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  echo "fuzz_$h: $status, ${execs:-?} executions, $cov"
  if [ $status = FINDING ]; then
    grep -E 'ERROR:|runtime error|SUMMARY|CRITICAL|WARNING \*\*|fuzz_[a-z]*\.c:[0-9]+: |Test unit written' "$log" \
      | head -n 8 | sed 's/^/    /'
  fi
done
if [ -n "$found" ]; then
  echo "fuzzing found defects in:$found (inputs under $build/fuzz-findings/)"
  exit 1
fi
echo "fuzzing found nothing"
