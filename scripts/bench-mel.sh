#!/usr/bin/env bash
# Benchmark of the audio front end (not a test): `earshot bench mel` against transformers'
# WhisperFeatureExtractor (numpy path and torch path, one thread each), measured in the same run; prints
# ratios. Record results in docs/PERF.md with the CPU, the date and this command.
#
#   scripts/bench-mel.sh [FILE] [REPEATS]       FILE defaults to tests/data/audio/speech-30s-16k.flac
#
# Env: PYTHON (default: a venv under build/bench-venv made from tests/golden/requirements.txt),
#      BUILD (default build/bench, configured Release without CUDA), THREADS (default: nproc, for the
#      multi-threaded earshot line).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-tests/data/audio/speech-30s-16k.flac}
REPEATS=${2:-20}
BUILD=${BUILD:-build/bench}
THREADS=${THREADS:-$(nproc)}

if [ -z "${PYTHON:-}" ]; then
  if [ ! -x build/bench-venv/bin/python ]; then
    python3 -m venv build/bench-venv
    build/bench-venv/bin/pip install -q -r tests/golden/requirements.txt
  fi
  PYTHON=build/bench-venv/bin/python
fi

cmake -S . -B "$BUILD" -DEARSHOT_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target earshot >/dev/null

ours=$("$BUILD/cli/earshot" bench mel "$FILE" --repeats "$REPEATS" --threads "$THREADS" --json | tail -n 1)
ref=$("$PYTHON" scripts/bench_mel_ref.py "$FILE" "$REPEATS")

"$PYTHON" - "$ours" "$ref" <<'PY'
import json, platform, sys
o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"cpu: {cpu}")
print(f"file: {o['file']} ({o['seconds']:.2f} s), {o['repeats']} repeats, medians in ms")
print(f"reference (1 thread): transformers {r['transformers']} torch {r['torch']} numpy {r['numpy']}")
print(f"  WhisperFeatureExtractor, torch path   {r['torch_ms']:9.3f}")
print(f"  WhisperFeatureExtractor, numpy path   {r['numpy_ms']:9.3f}")
print(f"  ffmpeg CLI decode (subprocess)        {r['ffmpeg_cli_decode_ms']:9.3f}")
print("earshot:")
print(f"  decode (in-process)                   {o['decode_ms']:9.3f}")
print(f"  features, 1 thread                    {o['mel_ms_1t']:9.3f}")
print(f"  features, {o['threads']:2d} threads                  {o['mel_ms_nt']:9.3f}")
for label, ms in (("features, 1 thread", o["mel_ms_1t"]), (f"features, {o['threads']} threads", o["mel_ms_nt"])):
    print(f"ratio {label:22s}: {r['numpy_ms'] / ms:6.2f}x numpy path (target >= 10), "
          f"{r['torch_ms'] / ms:6.2f}x torch path (target >= 2)")
PY
