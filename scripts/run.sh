#!/usr/bin/env bash
# The README's first command: installs what is missing, builds (CPU, release), and serves the bundled tiny
# checkpoint on 127.0.0.1:8080 with an example request printed. Ctrl-C stops the server.
#
#   scripts/run.sh                       tiny checkpoint on 127.0.0.1:8080
#   MODEL=DIR PORT=9000 scripts/run.sh   another model or port; extra arguments go to `earshot serve`
#
# The tiny checkpoint (tests/golden/checkpoints/tiny-a) has random weights: its answers are noise. It shows
# the server working end to end (upload, decoding, prompt, engine, streaming) on any machine in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODEL=${MODEL:-tests/golden/checkpoints/tiny-a}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8080}
BUILD=${BUILD:-build/run}

scripts/install-deps.sh
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then CUDA=AUTO; else CUDA=OFF; fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEARSHOT_CUDA="$CUDA" >/dev/null
fi
cmake --build "$BUILD" -j "$(nproc)" --target earshot >/dev/null
EARSHOT="$BUILD/cli/earshot"

NAME=$(basename "$MODEL")
AUDIO="$ROOT/tests/data/audio/alarm-clock-48k-stereo.oga"
cat <<MSG

earshot serve: $MODEL on http://$HOST:$PORT  (Ctrl-C stops it)
$( [ "$MODEL" = tests/golden/checkpoints/tiny-a ] && echo "NOTE: this tiny checkpoint has random weights, so its answers are noise. It shows the
server working; for real answers pass MODEL=<a Qwen2-Audio-7B-Instruct directory or HF cache name>." )

Try it from another terminal:

  curl http://$HOST:$PORT/v1/audio/analyze -F file=@$AUDIO -F "prompt=What's that sound?" -F max_tokens=32

  curl -N http://$HOST:$PORT/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "model": "$NAME", "stream": true, "max_tokens": 32,
    "messages": [{"role": "user", "content": [
      {"type": "input_audio", "input_audio": {"data": "'\$(base64 -w0 $AUDIO)'", "format": "ogg"}},
      {"type": "text", "text": "What is that sound?"}]}]}'

MSG
exec "$EARSHOT" serve --model "$MODEL" --served-model-name "$NAME" --host "$HOST" --port "$PORT" "$@"
