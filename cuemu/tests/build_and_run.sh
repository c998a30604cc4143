#!/bin/sh
# Builds the kernel emulator with its test kernels and runs the tests:
#   1. -O2 (the flags the project's build uses), with timings;
#   2. -fsanitize=address,undefined;
#   3. the ucontext fallback (what non-x86-64 machines get), -O2.
# Usage: cuemu/tests/build_and_run.sh   (from anywhere; outputs go to $CUEMU_BUILD or /tmp)
set -eu
cd "$(dirname "$0")/../.."
OUT=${CUEMU_BUILD:-${TMPDIR:-/tmp}/cuemu-tests}
mkdir -p "$OUT"
CXX=${CXX:-g++}
FLAGS="-std=c++20 -O2 -mfma -mf16c -DCUEMU -include cuemu/cuemu.h -Icuemu -Icuemu/shim_include -Icuemu/tests -pthread -Wall -Wextra"
SRCS="cuemu/scheduler.cpp cuemu/harness.cpp cuemu/tests/run_shim_tests.cpp"

echo "== build: -O2"
$CXX $FLAGS $SRCS -o "$OUT/run_shim_tests"
"$OUT/run_shim_tests"

echo "== build: -O1 -fsanitize=address,undefined"
$CXX $FLAGS -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
  $SRCS -o "$OUT/run_shim_tests_asan"
ASAN_OPTIONS=detect_leaks=0 "$OUT/run_shim_tests_asan" --no-bench

echo "== build: ucontext fallback (-DCUEMU_FORCE_UCONTEXT)"
$CXX $FLAGS -DCUEMU_FORCE_UCONTEXT $SRCS -o "$OUT/run_shim_tests_uctx"
"$OUT/run_shim_tests_uctx" --no-bench

echo "== all cuemu test builds passed"
