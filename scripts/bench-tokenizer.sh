#!/usr/bin/env bash
# Benchmark of the tokenizer (not a test): encode throughput of earshot against Hugging Face `tokenizers`
# (Tokenizer.encode, one thread), measured in the same run on >= 1 MB of mixed text, with a check that both
# produce the same ids for the whole text. Record results in docs/PERF.md with the CPU, the date and this command.
#
#   scripts/bench-tokenizer.sh [RUNS]        RUNS (default 10): timed encodes per side; medians are reported
#
# Env: PYTHON (default: a venv under build/bench-venv made from tests/golden/requirements.txt),
#      BUILD (default build/bench, configured Release without CUDA), MODEL (a directory with tokenizer.json;
#      default tests/data/qwen2-audio-tokenizer), MB (size of the text, default 1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
BUILD=${BUILD:-build/bench}
MODEL=${MODEL:-tests/data/qwen2-audio-tokenizer}
MB=${MB:-1.5}

if [ -z "${PYTHON:-}" ]; then
  if [ ! -x build/bench-venv/bin/python ]; then
    python3 -m venv build/bench-venv
    build/bench-venv/bin/pip install -q -r tests/golden/requirements.txt
  fi
  PYTHON=build/bench-venv/bin/python
fi

cmake -S . -B "$BUILD" -DEARSHOT_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target earshot >/dev/null

out=build/bench-tokenizer
mkdir -p "$out"
"$PYTHON" scripts/bench_tokenizer.py make-text "$out/mixed.txt" --mb "$MB"
"$BUILD/cli/earshot" tokenize --model "$MODEL" - <"$out/mixed.txt" >"$out/earshot-ids.json"
ours=$("$BUILD/cli/earshot" tokenize --model "$MODEL" --bench "$RUNS" - <"$out/mixed.txt")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "cpu: $cpu"
RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PYTHON" scripts/bench_tokenizer.py hf "$MODEL/tokenizer.json" \
  "$out/mixed.txt" --runs "$RUNS" --ours-ids "$out/earshot-ids.json" --ours-bench "$ours"
