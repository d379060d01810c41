#!/usr/bin/env bash
# The test command (README): installs dependencies, builds every configuration and runs the tests.
#
#   scripts/test.sh            all stages
#   STAGES="cpu asan" scripts/test.sh     a subset (deps venv cpu cuda asan fuzz)
#
# Stages: deps (Debian packages), cpu (CUDA off, warnings are errors, ctest), cuda (CUDA on; must compile
# with no GPU present; GPU tests skip), asan (AddressSanitizer + UBSan, CUDA off, ctest), fuzz (libFuzzer
# targets, FUZZ_SECONDS each). Build folders: build/<stage>. ccache keeps rebuilds cheap.
# The cuda stage is required when CI=true or EARSHOT_REQUIRE_CUDA=1; elsewhere it is skipped, with a
# message, when no nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

STAGES=${STAGES:-"deps venv cpu cuda asan fuzz"}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-$(nproc)}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/earshot-ccache}
export CTEST_OUTPUT_ON_FAILURE=1

declare -a SUMMARY=()
stage_start=0
begin() { stage_start=$(date +%s); echo; echo "==== stage $1 ===="; }
end() { local t=$(( $(date +%s) - stage_start )); SUMMARY+=("$(printf '%-6s %-8s %4ds' "$1" "$2" "$t")"); echo "==== stage $1: $2 (${t}s) ===="; }
finish() {
  echo
  echo "==== summary ===="
  for line in "${SUMMARY[@]}"; do echo "$line"; done
  echo "tests: ${TOTAL_PASSED} passed, ${TOTAL_FAILED} failed, ${TOTAL_SKIPPED} skipped"
}
trap finish EXIT

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [ -x "$c" ]; then echo "$c"; return; fi
  done
}

TOTAL_PASSED=0 TOTAL_FAILED=0 TOTAL_SKIPPED=0
configure_build_test() { # name, cmake args...
  local name=$1; shift
  cmake -S "$ROOT" -B "build/$name" -DEARSHOT_WERROR=ON "$@"
  cmake --build "build/$name" -j "$JOBS"
  local log="build/$name/ctest-output.log" rc=0
  ctest --test-dir "build/$name" -j "$JOBS" 2>&1 | tee "$log" || rc=$?
  # count for the closing line: ctest reports skipped tests as passed and lists them as "(Skipped)"
  local line total failed skipped
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [ -n "$line" ]; then
    failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/')
    total=$(echo "$line" | sed -E 's/.* failed out of ([0-9]+).*/\1/')
    skipped=$(grep -c '(Skipped)' "$log" || true)
    TOTAL_FAILED=$((TOTAL_FAILED + failed))
    TOTAL_SKIPPED=$((TOTAL_SKIPPED + skipped))
    TOTAL_PASSED=$((TOTAL_PASSED + total - failed - skipped))
  fi
  return $rc
}

for stage in $STAGES; do
  case $stage in
  deps)
    begin deps
    scripts/install-deps.sh
    end deps ok
    ;;
  venv)
    # build/test-venv with the pinned openai client (scripts/test-venv.sh); test_server needs it
    begin venv
    scripts/test-venv.sh
    end venv ok
    ;;
  cpu)
    begin cpu
    configure_build_test cpu -DEARSHOT_CUDA=OFF
    end cpu ok
    ;;
  cuda)
    begin cuda
    nvcc_path=$(find_nvcc || true)
    if [ -z "$nvcc_path" ]; then
      if [ "${CI:-}" = "true" ] || [ "${EARSHOT_REQUIRE_CUDA:-0}" = "1" ]; then
        echo "test.sh: nvcc not found, and the CUDA build is required here" >&2
        exit 1
      fi
      echo "test.sh: nvcc not found: the CUDA build is skipped (install the CUDA toolkit to build it)"
      end cuda skipped
      continue
    fi
    configure_build_test cuda -DEARSHOT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path"
    end cuda ok
    ;;
  asan)
    begin asan
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      configure_build_test asan -DEARSHOT_CUDA=OFF -DEARSHOT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    end asan ok
    ;;
  fuzz)
    begin fuzz
    CC=clang cmake -S "$ROOT" -B build/fuzz -DEARSHOT_WERROR=ON -DEARSHOT_CUDA=OFF -DEARSHOT_FUZZ=ON \
      -DBUILD_TESTING=ON
    cmake --build build/fuzz -j "$JOBS" --target all
    for fuzzer in build/fuzz/tests/fuzz/fuzz_*; do
      [ -x "$fuzzer" ] || continue
      name=$(basename "$fuzzer")
      corpus=build/fuzz/corpus/$name
      mkdir -p "$corpus"
      echo "fuzzing $name for ${FUZZ_SECONDS}s"
      "$fuzzer" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 "$corpus" "tests/fuzz/seeds/$name" 2>&1 |
        tail -n 12
    done
    end fuzz ok
    ;;
  *)
    echo "test.sh: unknown stage '$stage'" >&2
    exit 2
    ;;
  esac
done
