#!/usr/bin/env bash
# device-check.sh OUTDIR — build, test and benchmark earshot on a bare GPU machine, in one go (< 8 minutes).
#
# The machine has the CUDA toolkit, CMake, a C compiler, python3 with torch and transformers, and nothing
# else: no Debian packages, no network. So:
#   1. the small libraries earshot needs (cJSON, PCRE2, utf8proc) come from the .deb files committed under
#      scripts/device-debs/ (~1.2 MB), unpacked into a private prefix (dpkg-deb when present, else python3's
#      stdlib: the ar archive, then data.tar.*); CMake finds them through CMAKE_PREFIX_PATH=<prefix>/usr and
#      the script checks that it did;
#   2. configure with -DEARSHOT_DEVICE=ON (no FFmpeg, no libmicrohttpd, no OpenBLAS), CUDA for the card's own
#      architecture, Release; build with JOBS (16) jobs;
#   3. ctest -L cuda: every GPU test — the CUDA ops and the attention kernels against the CPU and the simple
#      kernel (both flash kernels on Hopper: mma.sync and wgmma), sampling, fp8, the decode-step fusions against
#      their plain kernels bit for bit (test_cuda_fusions), graphs (replay == op by op), the
#      deterministic mode's bit-identity, the golden cases on the GPU (float32, bfloat16 with the fast and the
#      simple attention, the default flash kernel (wgmma on Hopper) and EARSHOT_FLASH=mma, the fusions off, fp8,
#      fp8 with two weight rows per warp) and 32 concurrent
#      requests through the engine on the GPU (the CPU-only tests run in CI, not here: they cost device time);
#   4. scripts/bench_transformers.py on the card (bf16, sdpa, the 7B model built on the device, init skipped),
#      then `earshot bench attention --json` (encoder, prefill and decode attention against the copy bandwidth
#      and bf16 GEMM rate measured in the same run, encoder and prefill with each flash kernel; at most 75 s), then `earshot bench linear --json` (the
#      decoder's linears at M = 1 .. 64: bf16 GEMV with 4/8/16 loads in flight, cuBLASLt, the CUDA-core and the
#      tensor-core fp8 GEMVs, fp8 dequantise + cuBLASLt, two weight rows per warp, gate|up with SiLU·mul fused;
#      <= 90 s);
#   5. `earshot bench model --profile` at full size with the same shapes (--dummy-weights with
#      tests/data/configs/qwen2-audio-7b.json, 30 s clip, batch 1, bf16): time to first token, decode
#      ms/token (CUDA graphs on, and off in the same run, and each decode-step fusion off, and two weight rows per
#      warp in the GEMVs), the weight-streaming limit, and the op profile of
#      the first token and of a decode step; the engine at 1, 8, 32, 64 concurrent requests (one wave each,
#      128 output tokens: aggregate and steady-decode tokens/s), and 64 in flight for 3 waves of 256-token
#      answers (a decode batch near 64), and `bench model --batch 64 --profile` (the decode step of 64 sequences,
#      op by op; then once more over the fp8 KV cache, unprofiled); then the model bench with --quantization fp8
#      (profiled too) and with --deterministic, and last the engine at 64 in flight with fp8 weights and the fp8
#      KV cache (<= 75 s); the attention bench and the 64-in-flight engine also run with --kv-cache-dtype fp8;
#   6. when a GPU test failed: each failed test again under compute-sanitizer --tool memcheck (sanitizer.log);
#   7. short tables (the model, the engine, the linears, the attention kernels, the decode step's top ops),
#      printed last and written to OUTDIR/table.md.
# Every step runs under a timeout from what is left of the budget (BUDGET seconds, default 470), and a step
# that fails or times out leaves "n/a" in the table instead of stopping the script. Logs go to OUTDIR (17 files:
# summary.log, configure.log, build.log, ctest.log, bench-earshot.log, bench-transformers.log,
# bench-attention.log, bench-attention-kvfp8.log, bench-linear.log, bench-engine.log, bench-engine-kvfp8.log,
# bench-batch64.log, bench-batch64-kvfp8.log, bench-engine-fp8.log, bench-fp8.log,
# bench-deterministic.log, table.md;
# sanitizer.log
# when a test failed, sass-prewait.log when cuobjdump is there). The device tool brings back at most 8 files: pack the logs (tar) before handing them over.
#
# Environment: JOBS (16), BUDGET (470 s; the whole run took 352 s on an H100 on 2026-11-28 under BUDGET=400, the
#   device tool's call ~30 s more; a budget under ~250 s leaves the
#   later benchmarks out, the build and the tests still run), PYTHON (python3), BUILD_DIR (build/device),
#   DEVICE_CHECK_ONLY=kernels: the quick loop for kernel work (~1 minute): builds only earshot and the kernel
#   tests (test_cuda_ops, test_cuda_attention, test_cuda_fp8, test_cuda_fusions), runs those and `bench attention` / `bench linear`,
#   and skips transformers, the model, engine, fp8 and deterministic benchmarks (their rows are n/a);
#   DEVICE_CHECK_NO_GPU=1: build and test without a GPU (the GPU tests skip, the benchmarks are n/a) — how the
#   script is checked on a development machine; it also hides the system's copies of the three libraries by
#   requiring that CMake found the prefix's.
# Exit status: 0 when the build and the tests passed (benchmarks may be n/a), 1 otherwise.
set -uo pipefail

OUT=${1:?usage: scripts/device-check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
START=$(date +%s)
BUDGET=${BUDGET:-470}
JOBS=${JOBS:-16}
PY=${PYTHON:-python3}
NO_GPU=${DEVICE_CHECK_NO_GPU:-0}
ONLY=${DEVICE_CHECK_ONLY:-}
case "$ONLY" in "" | kernels) ;; *)
  echo "device-check: DEVICE_CHECK_ONLY=$ONLY: expected kernels (or unset)" >&2
  exit 2
  ;;
esac
KERNEL_TESTS=(test_cuda_ops test_cuda_attention test_cuda_fp8 test_cuda_fusions)
# the model-level benchmarks run unless DEVICE_CHECK_ONLY narrows the run to the kernels
MODEL_BENCH=1
[ -n "$ONLY" ] && MODEL_BENCH=0
BUILD=${BUILD_DIR:-$ROOT/build/device}
PREFIX=$BUILD/prefix
CONFIG7B=$ROOT/tests/data/configs/qwen2-audio-7b.json
: >"$OUT/summary.log"

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
# after RESERVE seconds are kept for the later steps, but at least MIN (never more than is left): the build and
# the tests still run under a small BUDGET, which then only cuts the benchmarks
time_for() { # RESERVE MIN
  local t=$(($(left) - $1)) l
  l=$(left)
  ((t < $2)) && t=$2
  ((t > l)) && t=$l
  echo "$t"
}
log() { echo "[device-check $(printf '%3d' "$(elapsed)")s] $*" | tee -a "$OUT/summary.log"; }
# run_limited SECONDS LOGFILE CMD...: the command under a timeout, output appended to LOGFILE; its status.
run_limited() {
  local secs=$1 logf=$2
  shift 2
  if ((secs < 5)); then
    echo "skipped: no time left in the budget" >>"$logf"
    return 124
  fi
  timeout --kill-after=10 "$secs" "$@" >>"$logf" 2>&1
}

STATUS=0
BUILD_OK=0
TESTS="n/a"
log "earshot device check: $ROOT -> $OUT (budget ${BUDGET}s, ${JOBS} jobs, no-GPU mode ${NO_GPU}, only ${ONLY:-all})"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)"
  uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -2
  cmake --version | head -1
  "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
    2>/dev/null || echo "python3: torch/transformers not importable"
  echo "dpkg-deb: $(command -v dpkg-deb || echo absent); ninja: $(command -v ninja || echo absent)"
} >>"$OUT/summary.log" 2>&1

# ---- 1. the libraries from scripts/device-debs into a private prefix ----------------------------------
unpack_deb() { # DEB DEST
  if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$1" "$2"
  else
    "$PY" - "$1" "$2" <<'EOF'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", deb + ": not an ar archive"
pos = 8
while pos + 60 <= len(data):
    hdr = data[pos:pos + 60]
    name, size = hdr[:16].decode().strip().rstrip("/"), int(hdr[48:58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body)) as t:  # gz / xz / bz2 by content
            kw = {"filter": "tar"} if hasattr(tarfile, "data_filter") else {}
            t.extractall(dest, **kw)
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit(deb + ": no data.tar member")
EOF
  fi
}
rm -rf "$PREFIX" && mkdir -p "$PREFIX"
DEPS_OK=1
for deb in "$ROOT"/scripts/device-debs/*.deb; do
  if ! unpack_deb "$deb" "$PREFIX" >>"$OUT/configure.log" 2>&1; then
    log "FAILED to unpack $(basename "$deb")"
    DEPS_OK=0
  fi
done
LIBDIR=$(dirname "$(find "$PREFIX/usr/lib" -name 'libcjson.so*' | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=${LIBDIR:-$PREFIX/usr/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log "libraries unpacked into $PREFIX ($(du -sh "$PREFIX" | cut -f1)); runtime path $LIBDIR"

# ---- 2. configure and build -------------------------------------------------------------------------------
ARCH=""
if [ "$NO_GPU" != 1 ] && command -v nvidia-smi >/dev/null; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
fi
ARCH=${ARCH:-"80;90"}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
rm -f "$BUILD/CMakeCache.txt" # a fresh configure: the prefix may have moved
if [ $DEPS_OK = 1 ] && run_limited "$(time_for 300 60)" "$OUT/configure.log" cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DEARSHOT_DEVICE=ON -DEARSHOT_CUDA=ON -DEARSHOT_BLAS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_PREFIX_PATH="$PREFIX/usr"; then
  # the three libraries must come from the prefix, not from anything the machine happens to have
  FOUND_OK=1
  for v in CJSON PCRE2 UTF8PROC; do
    for k in INCLUDE_DIR LIBRARY; do
      p=$(grep "^EARSHOT_${v}_${k}:" "$BUILD/CMakeCache.txt" | cut -d= -f2-)
      echo "found ${v} ${k}: $p" >>"$OUT/summary.log"
      case "$p" in "$PREFIX"/*) ;; *) FOUND_OK=0 ;; esac
    done
  done
  if [ $FOUND_OK = 1 ]; then
    log "configured (CUDA architectures $ARCH; cJSON, PCRE2, utf8proc from the prefix)"
    TARGETS=()
    [ -n "$ONLY" ] && TARGETS=(--target earshot "${KERNEL_TESTS[@]}")
    if run_limited "$(time_for 240 150)" "$OUT/build.log" cmake --build "$BUILD" -j "$JOBS" "${TARGETS[@]}"; then
      BUILD_OK=1
      log "built"
    else
      log "BUILD FAILED (see build.log)"
    fi
  else
    log "CONFIGURE used libraries outside the prefix (see summary.log)"
  fi
else
  log "CONFIGURE FAILED (see configure.log)"
fi
[ $BUILD_OK = 1 ] || STATUS=1

# the GEMVs' first weight loads must sit before griddepcontrol.wait (ACQBULK) in the SASS, or PDL overlaps
# nothing: ptxas moved ld.global.nc below it once (cuda_gemv.cu). Informational (sass-prewait.log).
if [ $BUILD_OK = 1 ] && command -v cuobjdump >/dev/null; then
  run_limited 40 "$OUT/sass-prewait.log" bash -c "cuobjdump -sass '$BUILD/cli/earshot' | awk '
    /Function :/ { name = \$3; n = 0; done = 0; want = name ~ /gemv_kernel|fp8_mma_kernel/ && name !~ /Lb0E/ }
    want && /LDG.E.128/ { if (!done) n++ }
    want && /ACQBULK/ { if (!done) { print n, name; done = 1 } }' | sort -n"
  log "SASS: 16-byte weight loads before the PDL wait, fewest over the GEMV kernels: $(head -1 "$OUT/sass-prewait.log")"
fi

# ---- 3. tests -------------------------------------------------------------------------------------------
if [ $BUILD_OK = 1 ]; then
  SELECT=(-L cuda)
  [ -n "$ONLY" ] && SELECT=(-R "^($(IFS='|'; echo "${KERNEL_TESTS[*]}"))\$")
  if run_limited "$(time_for 200 90)" "$OUT/ctest.log" ctest --test-dir "$BUILD" "${SELECT[@]}" -j 4 \
    --timeout 150 --output-on-failure; then
    TESTS="passed"
  else
    TESTS="FAILED"
    STATUS=1
  fi
  log "tests (ctest ${SELECT[*]}): $TESTS — $(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1)"
  grep -E '^\s*[0-9]+/[0-9]+ Test' "$OUT/ctest.log" >>"$OUT/summary.log"
fi

# a failed GPU test is run again under compute-sanitizer at the end (step 6): keep some of the budget for it
SANITIZER_RESERVE=0
[ "$TESTS" = FAILED ] && SANITIZER_RESERVE=60

# ---- 4./5. benchmarks --------------------------------------------------------------------------------------
SHAPE=(--audio-seconds 30 --prompt-tokens 32 --output-tokens 32 --batch 1 --warmup 1 --repeats 3 --json)
export PYTHONUNBUFFERED=1
# transformers first: it is quick and predictable; earshot's --dummy-weights load then gets what is left
if [ "$NO_GPU" != 1 ] && [ $MODEL_BENCH = 1 ]; then
  run_limited "$(($(left) - 150))" "$OUT/bench-transformers.log" "$PY" "$ROOT/scripts/bench_transformers.py" \
    --config "$CONFIG7B" --device cuda --dtype bfloat16 "${SHAPE[@]}"
  log "transformers bench: exit $? (see bench-transformers.log)"
else
  echo "skipped (no GPU, or DEVICE_CHECK_ONLY)" >>"$OUT/bench-transformers.log"
fi
if [ $BUILD_OK = 1 ] && [ "$NO_GPU" != 1 ]; then
  ATT_SECS=$(($(left) - 120))
  ((ATT_SECS > 75)) && ATT_SECS=75
  run_limited "$ATT_SECS" "$OUT/bench-attention.log" "$BUILD/cli/earshot" bench attention --json
  log "earshot bench attention: exit $? (see bench-attention.log)"
  # the same kernels over an fp8 KV cache (decode reads D + 4 bytes per row instead of 2D; the prefill converts)
  ATT8_SECS=$(($(left) - 150))
  ((ATT8_SECS > 45)) && ATT8_SECS=45
  run_limited "$ATT8_SECS" "$OUT/bench-attention-kvfp8.log" "$BUILD/cli/earshot" bench attention --json --repeats 10 \
    --kv-cache-dtype fp8
  log "earshot bench attention --kv-cache-dtype fp8: exit $? (see bench-attention-kvfp8.log)"
  LIN_SECS=$(($(left) - 130))
  ((LIN_SECS > 90)) && LIN_SECS=90
  run_limited "$LIN_SECS" "$OUT/bench-linear.log" "$BUILD/cli/earshot" bench linear --json
  log "earshot bench linear: exit $? (see bench-linear.log)"
else
  echo "skipped (no build or no GPU)" | tee -a "$OUT/bench-attention.log" >>"$OUT/bench-linear.log"
fi
if [ $BUILD_OK = 1 ] && [ "$NO_GPU" != 1 ] && [ $MODEL_BENCH = 1 ]; then
  # bf16 with step graphs; the same run measures the decode step with graphs off (decode_ms_per_step_no_graphs)
  run_limited "$(($(left) - 100))" "$OUT/bench-earshot.log" "$BUILD/cli/earshot" bench model --device cuda \
    --dtype bfloat16 --dummy-weights --config "$CONFIG7B" "${SHAPE[@]}" --profile
  log "earshot bench model: exit $? (see bench-earshot.log)"
else
  echo "skipped (no build, no GPU, or DEVICE_CHECK_ONLY)" >>"$OUT/bench-earshot.log"
fi
# the continuous-batching engine at 1, 8, 32, 64 concurrent 30 s-clip requests (the batching issue's figures)
if [ $BUILD_OK = 1 ] && [ "$NO_GPU" != 1 ] && [ $MODEL_BENCH = 1 ]; then
  run_limited "$(($(left) - 70))" "$OUT/bench-engine.log" "$BUILD/cli/earshot" bench engine --device cuda \
    --dtype bfloat16 --dummy-weights --config "$CONFIG7B" --concurrency 1,8,32,64 --waves 1 --audio-seconds 30 \
    --prompt-tokens 32 --output-tokens 128 --json
  log "earshot bench engine: exit $? (see bench-engine.log)"
  # 64 in flight for three waves with longer answers: the decode batch stays near 64 (the issue's target figure)
  run_limited "$(($(left) - 70))" "$OUT/bench-engine.log" "$BUILD/cli/earshot" bench engine --device cuda \
    --dtype bfloat16 --dummy-weights --config "$CONFIG7B" --concurrency 64 --waves 3 --audio-seconds 30 \
    --prompt-tokens 32 --output-tokens 256 --json
  log "earshot bench engine (64 in flight, 3 waves): exit $? (see bench-engine.log)"
  # the same with the fp8 KV cache: at 64 sequences of ~900 tokens the cache is ~2/3 of the bytes a decode step
  # reads in bf16 (30 GB of KV against 14 GB of weights); fp8 halves that part
  run_limited "$(($(left) - 70))" "$OUT/bench-engine-kvfp8.log" "$BUILD/cli/earshot" bench engine --device cuda \
    --dtype bfloat16 --kv-cache-dtype fp8 --dummy-weights --config "$CONFIG7B" --concurrency 64 --waves 3 \
    --audio-seconds 30 --prompt-tokens 32 --output-tokens 256 --json
  log "earshot bench engine --kv-cache-dtype fp8 (64 in flight, 3 waves): exit $? (see bench-engine-kvfp8.log)"
  # the engine's decode step at 64 in flight, op by op: 64 sequences of a 30 s clip decoding together (what the
  # batching issue's 4,000 tokens/s on an H100 is made of: weights, ~29 GB of KV cache, sampling)
  run_limited "$(($(left) - 60))" "$OUT/bench-batch64.log" "$BUILD/cli/earshot" bench model --device cuda \
    --dtype bfloat16 --dummy-weights --config "$CONFIG7B" --audio-seconds 30 --prompt-tokens 32 --output-tokens 32 \
    --batch 64 --warmup 1 --repeats 2 --json --profile
  log "earshot bench model --batch 64: exit $? (see bench-batch64.log)"
  # the same decode step over the fp8 KV cache: what 64 sequences decoding together reach when the cache reads halve
  run_limited "$(($(left) - 60))" "$OUT/bench-batch64-kvfp8.log" "$BUILD/cli/earshot" bench model --device cuda \
    --dtype bfloat16 --kv-cache-dtype fp8 --dummy-weights --config "$CONFIG7B" --audio-seconds 30 --prompt-tokens 32 \
    --output-tokens 32 --batch 64 --warmup 1 --repeats 2 --json
  log "earshot bench model --batch 64 --kv-cache-dtype fp8: exit $? (see bench-batch64-kvfp8.log)"
else
  echo "skipped (no build, no GPU, or DEVICE_CHECK_ONLY)" | tee -a "$OUT/bench-engine.log" "$OUT/bench-engine-kvfp8.log" \
    "$OUT/bench-batch64-kvfp8.log" >>"$OUT/bench-batch64.log"
fi
# part 3's options, same shapes: FP8 decoder weights (target >= 1.6x the bf16 decode), and the deterministic mode
# (what batch invariance costs)
if [ $BUILD_OK = 1 ] && [ "$NO_GPU" != 1 ] && [ $MODEL_BENCH = 1 ]; then
  run_limited "$(($(left) - 35))" "$OUT/bench-fp8.log" "$BUILD/cli/earshot" bench model --device cuda \
    --dtype bfloat16 --quantization fp8 --dummy-weights --config "$CONFIG7B" "${SHAPE[@]}" --profile
  log "earshot bench model --quantization fp8: exit $? (see bench-fp8.log)"
  run_limited "$(($(left) - 40 - SANITIZER_RESERVE))" "$OUT/bench-deterministic.log" "$BUILD/cli/earshot" bench model --device cuda \
    --dtype bfloat16 --deterministic --dummy-weights --config "$CONFIG7B" "${SHAPE[@]}"
  log "earshot bench model --deterministic: exit $? (see bench-deterministic.log)"
  # last, with what is left (at most 75 s): 64 in flight with fp8 decoder weights (the tensor-core fp8 GEMV takes
  # decode batches of 2 to 64 rows, in launches of at most 32 by default; EARSHOT_FP8_MMA=2: one launch)
  ENG8_SECS=$(($(left) - 3 - SANITIZER_RESERVE))
  ((ENG8_SECS > 75)) && ENG8_SECS=75
  run_limited "$ENG8_SECS" "$OUT/bench-engine-fp8.log" "$BUILD/cli/earshot" bench engine --device cuda \
    --dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8 --dummy-weights --config "$CONFIG7B" --concurrency 64 \
    --waves 3 --audio-seconds 30 --prompt-tokens 32 --output-tokens 256 --json
  log "earshot bench engine --quantization fp8 --kv-cache-dtype fp8 (64 in flight, 3 waves): exit $? (see bench-engine-fp8.log)"
else
  echo "skipped (no build, no GPU, or DEVICE_CHECK_ONLY)" | tee -a "$OUT/bench-fp8.log" "$OUT/bench-deterministic.log" \
    >>"$OUT/bench-engine-fp8.log"
fi

# ---- 6. failed GPU tests again under compute-sanitizer (memcheck): names the first bad access, if any ----
if [ "$TESTS" = FAILED ] && command -v compute-sanitizer >/dev/null; then
  for name in $(grep -oE '[0-9]+ - test_[a-z0-9_]+ \(Failed|[0-9]+ - test_[a-z0-9_]+ \(Timeout|[0-9]+ - test_[a-z0-9_]+ \(SEGFAULT' \
    "$OUT/ctest.log" | sed -E 's/^[0-9]+ - ([a-z0-9_]+) .*/\1/' | sort -u); do
    # the test's own command line, as ctest would run it
    cmdline=$(ctest --test-dir "$BUILD" -R "^${name}\$" -N -V 2>/dev/null | sed -n 's/^ *[0-9]*: Test command: //p' | head -1 | tr -d '"')
    [ -n "$cmdline" ] || continue
    echo "=== $name: $cmdline" >>"$OUT/sanitizer.log"
    # shellcheck disable=SC2086 # the command line is split on purpose
    (cd "$BUILD/tests" && run_limited "$(cap=$(($(left) - 5)); echo $((cap > 40 ? 40 : cap)))" "$OUT/sanitizer.log" compute-sanitizer --tool memcheck \
      --print-limit 20 $cmdline)
    log "compute-sanitizer $name: exit $? (see sanitizer.log)"
  done
fi

# ---- 7. the table -------------------------------------------------------------------------------------------
"$PY" - "$OUT" "$TESTS" <<'EOF' >"$OUT/table.md" 2>>"$OUT/summary.log" || echo "table: could not be made" >"$OUT/table.md"
import json, os, subprocess, sys
out, tests = sys.argv[1], sys.argv[2]
def last_json(name):
    try:
        lines = [l for l in open(os.path.join(out, name)) if l.startswith("{\"bench\"")]
        return json.loads(lines[-1]) if lines else {}
    except OSError:
        return {}
ours, ref = last_json("bench-earshot.log"), last_json("bench-transformers.log")
def card():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        return "no GPU"
def f(v, fmt="{:.2f}"):
    return fmt.format(v) if isinstance(v, (int, float)) and v == v and v > 0 else "n/a"
def ratio(a, b):
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else "n/a"
o_t, r_t = ours.get("ttft_ms"), ref.get("ttft_ms")
o_d, r_d, lim = ours.get("decode_ms_per_step"), ref.get("decode_ms_per_step"), ours.get("limit_ms_per_step")
bw = ours.get("copy_bytes_per_s")
print(f"earshot device check — {card()}, {os.popen('date -u +%Y-%m-%d').read().strip()}, tests: {tests}")
print(f"(30 s clip, 32 text tokens, batch 1, bf16; limit = {f(ours.get('decoder_weight_bytes', 0) / 1e9)} GB of "
      f"decoder weights / {f((bw or 0) / 1e9, '{:.0f}')} GB/s measured copy bandwidth; "
      f"transformers {ref.get('transformers', 'n/a')} sdpa)")
print()
print("| metric | earshot | transformers | limit | transformers / earshot | limit / earshot |")
print("|---|---|---|---|---|---|")
print(f"| time to first token (ms) | {f(o_t)} | {f(r_t)} | — | {ratio(r_t, o_t)} | — |")
o_tw = ours.get("ttft_ms_flash_alt")
print(f"| time to first token, the {ours.get('flash_kernel_alt') or 'other'} flash kernel instead of "
      f"{ours.get('flash_kernel', 'n/a')} (ms, median of 2 after a warm-up) | {f(o_tw)} | {f(r_t)} | — | {ratio(r_t, o_tw)} | — |")
print(f"| decode, batch 1 (ms/token) | {f(o_d, '{:.3f}')} | {f(r_d, '{:.3f}')} | {f(lim, '{:.3f}')} | "
      f"{ratio(r_d, o_d)} | {ratio(lim, o_d)} |")
def decode_row(label, v, limit):  # one decode row: ours, no transformers figure, against a weight limit
    print(f"| decode, batch 1{label} (ms/token) | {f(v, '{:.3f}')} | — | {f(limit, '{:.3f}')} | "
          f"{ratio(r_d, v)} | {ratio(limit, v)} |")
o_ng, o_nv, o_np = (ours.get(k) for k in ("decode_ms_per_step_no_graphs", "decode_ms_per_step_no_gemv",
                                          "decode_ms_per_step_no_pdl"))
decode_row(", CUDA graphs off", o_ng, lim)
decode_row(", cuBLASLt only (GEMV off)", o_nv, lim)
decode_row(", programmatic dependent launch off", o_np, lim)
fp8, det = last_json("bench-fp8.log"), last_json("bench-deterministic.log")
f_d, f_lim, d_d = fp8.get("decode_ms_per_step"), fp8.get("limit_ms_per_step"), det.get("decode_ms_per_step")
decode_row(", fp8 weights", f_d, f_lim)
decode_row(", GEMVs not pipelined", ours.get("decode_ms_per_step_no_gemv_pipe"), lim)
decode_row(", fp8 weights, GEMVs not pipelined", fp8.get("decode_ms_per_step_no_gemv_pipe"), f_lim)
decode_row(", GEMVs with 8 loads in flight", ours.get("decode_ms_per_step_gemv_loads8"), lim)
decode_row(", fp8 weights, GEMV with 8 loads in flight", fp8.get("decode_ms_per_step_gemv_loads8"), f_lim)
o_ug, o_uc = ours.get("decode_ms_per_step_no_glu_fusion"), ours.get("decode_ms_per_step_no_combine_fusion")
f_ug, f_uc = fp8.get("decode_ms_per_step_no_glu_fusion"), fp8.get("decode_ms_per_step_no_combine_fusion")
decode_row(", gate|up GEMV then a SiLU·mul kernel (fusion off)", o_ug, lim)
decode_row(", fp8 weights, gate|up GEMV then a SiLU·mul kernel", f_ug, f_lim)
decode_row(", attention splits merged by a second kernel (fusion off)", o_uc, lim)
decode_row(", fp8 weights, attention splits merged by a second kernel", f_uc, f_lim)
o_un, f_un = ours.get("decode_ms_per_step_no_norm_fusion"), fp8.get("decode_ms_per_step_no_norm_fusion")
decode_row(", GEMV then an RMSNorm kernel (fusion off)", o_un, lim)
decode_row(", fp8 weights, GEMV then an RMSNorm kernel", f_un, f_lim)
o_ur, f_ur = ours.get("decode_ms_per_step_no_rope_fusion"), fp8.get("decode_ms_per_step_no_rope_fusion")
decode_row(", q|k|v GEMV then a RoPE + KV store kernel (fusion off)", o_ur, lim)
decode_row(", fp8 weights, q|k|v GEMV then a RoPE + KV store kernel", f_ur, f_lim)
decode_row(", GEMVs with two weight rows per warp", ours.get("decode_ms_per_step_gemv_rows2"), lim)
decode_row(", fp8 weights, GEMVs with two weight rows per warp", fp8.get("decode_ms_per_step_gemv_rows2"), f_lim)
decode_row(", --deterministic", d_d, lim)
print(f"| time to first token, --deterministic (ms) | {f(det.get('ttft_ms'))} | {f(r_t)} | — | "
      f"{ratio(r_t, det.get('ttft_ms'))} | — |")
print()
print(f"targets: decode >= 0.80 of the limit (now {ratio(lim, o_d)}); time to first token <= 40 ms (now {f(o_t)}); "
      f"fp8 decode >= 1.6x bf16 (now {ratio(o_d, f_d)}); graphs save {ratio(o_ng, o_d)}; "
      f"the GEMV saves {ratio(o_nv, o_d)}; PDL saves {ratio(o_np, o_d)}; the fusions save {ratio(o_ug, o_d)} "
      f"(gate|up + SiLU·mul; fp8 {ratio(f_ug, f_d)}), {ratio(o_uc, o_d)} (attention combine; fp8 {ratio(f_uc, f_d)}), "
      f"{ratio(o_un, o_d)} (GEMV + RMSNorm; fp8 {ratio(f_un, f_d)}) and {ratio(o_ur, o_d)} (q|k|v GEMV + RoPE; fp8 "
      f"{ratio(f_ur, f_d)}); "
      f"--deterministic costs {ratio(d_d, o_d)} in decode")
def all_json(name, kind):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.startswith('{"bench":"' + kind)
                or l.startswith('{"bench": "' + kind)]
    except (OSError, ValueError):
        return []
print()
print("engine, N concurrent 30 s-clip requests with 32 text tokens each (steady decode = tokens / time of the steps "
      "that only decoded; target >= 4000 tokens/s at 64 on an H100):")
print()
print("| concurrent | requests | output tokens | aggregate tokens/s | steady decode tokens/s | mean decode batch | "
      "TTFT p50 (ms) | TTFT p99 (ms) | largest batch |")
print("|---|---|---|---|---|---|---|---|---|")
engines = [(e, "") for e in all_json("bench-engine.log", "engine")]
engines += [(e, " (fp8 KV cache)") for e in all_json("bench-engine-kvfp8.log", "engine")]
engines += [(e, " (fp8 weights and KV cache)") for e in all_json("bench-engine-fp8.log", "engine")]
for e, tag in engines or [({}, "")]:
    print(f"| {e.get('concurrency', 'n/a')}{tag} | {e.get('requests', 'n/a')} | {e.get('output_tokens', 'n/a')} | "
          f"{f(e.get('tokens_per_s'), '{:.0f}')} | "
          f"{f(e.get('decode_only_tokens_per_s'), '{:.0f}')} | {f(e.get('decode_only_mean_batch'), '{:.1f}')} | "
          f"{f(e.get('ttft_p50_ms'), '{:.0f}')} | {f(e.get('ttft_p99_ms'), '{:.0f}')} | {e.get('max_decode_batch', 'n/a')} |")
lin = last_json("bench-linear.log")
if lin.get("rows"):
    lbw = lin.get("copy_bytes_per_s") or 0
    print()
    print(f"linears at decode sizes (`earshot bench linear`; fraction of the {lbw / 1e9:.0f} GB/s copy bandwidth):")
    print()
    paths = []
    for r in lin["rows"]:
        if r["path"] not in paths:
            paths.append(r["path"])
    print("| shape | M | " + " | ".join(paths) + " |")
    print("|---|---|" + "---|" * len(paths))
    keys = []
    for r in lin["rows"]:
        if (r["shape"], r["M"]) not in keys:
            keys.append((r["shape"], r["M"]))
    for sh, m in keys:
        if m not in (1, 4, 16, 64):
            continue
        cells = []
        for p in paths:
            v = [r for r in lin["rows"] if r["shape"] == sh and r["M"] == m and r["path"] == p]
            cells.append(f"{v[0]['bytes_per_s'] / lbw:.2f}" if v and lbw else "")
        print(f"| {sh} | {m} | " + " | ".join(cells) + " |")
for name, tag in (("bench-batch64.log", ""), ("bench-batch64-kvfp8.log", ", fp8 KV cache")):
    b64 = last_json(name)
    if b64:
        s64 = b64.get("decode_ms_per_step")
        print()
        print(f"decode step at batch 64{tag} (`bench model --batch 64`, contexts ~800-830): {f(s64, '{:.3f}')} ms = "
              f"{f(64e3 / s64 if s64 else 0, '{:.0f}')} tokens/s; time to first token for 64 clips "
              f"{f(b64.get('ttft_ms'))} ms; the weights alone {f(b64.get('limit_ms_per_step'), '{:.3f}')} ms")
for name, title in (("bench-earshot.log", "bf16"), ("bench-batch64.log", "bf16, batch 64"), ("bench-fp8.log", "fp8")):
    try:
        lines = open(os.path.join(out, name)).read().splitlines()
    except OSError:
        continue
    for i, l in enumerate(lines):
        if l.startswith("profile: decode step"):
            print()
            print(f"{title} {l}")
            print("```")
            print("\n".join(lines[i + 1:i + 13]))
            print("```")
att = last_json("bench-attention.log")
att8 = last_json("bench-attention-kvfp8.log")
att8_cases = [c for c in att8.get("cases", []) if c.get("use") in ("prefill", "decode")]
for c in att8_cases:
    c["use"] += " (fp8 KV)"
att = dict(att, cases=(att.get("cases") or []) + att8_cases) if att8_cases else att
print()
print(f"attention kernels (`earshot bench attention`, bf16; floors measured in the same run: copy "
      f"{f((att.get('copy_bytes_per_s') or 0) / 1e9, '{:.0f}')} GB/s, bf16 GEMM "
      f"{f((att.get('gemm_flops_per_s') or 0) / 1e12, '{:.0f}')} TFLOP/s)")
print()
print("| use | shape | fast (ms) | simple (ms) | achieved | fraction of floor | target | flash mma / wgmma (ms) |")
print("|---|---|---|---|---|---|---|---|")
for c in att.get("cases", []) or [{"use": "n/a", "shape": "n/a"}]:
    tb = c.get("bytes_per_s")
    tf = c.get("flops_per_s")
    got = f"{tb / 1e9:.0f} GB/s" if tb else f"{tf / 1e12:.0f} TFLOP/s" if tf else "n/a"
    fast = f(c.get("fast_ms"), "{:.4f}")
    if c.get("use") == "encoder":
        fast += f" (32 layers {f(att.get('encoder_32_layers_ms'), '{:.3f}')})"
        tgt = "32 layers <= 1.5 ms"
    elif c.get("target"):
        tgt = f">= {c['target']:.2f} of the {c.get('floor', '')}"
    else:
        tgt = "—"
    met = " " + ("met" if c.get("met") else "NOT met") if tgt != "—" and "met" in c else ""
    flash = "—"
    if c.get("flash_kernel"):
        flash = f"{f(c.get('mma_ms'), '{:.4f}')} / {f(c.get('wgmma_ms'), '{:.4f}')} ({c['flash_kernel']})"
    print(f"| {c.get('use')} | {c.get('shape')} | {fast} | {f(c.get('simple_ms'), '{:.4f}')} | {got} | "
          f"{f(c.get('fraction_of_floor'), '{:.2f}')} | {tgt}{met} | {flash} |")
EOF
log "done in $(elapsed)s (status $STATUS)"
echo
cat "$OUT/table.md"
exit $STATUS
