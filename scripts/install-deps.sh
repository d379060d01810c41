#!/usr/bin/env bash
# Installs every Debian 12 package that earshot's build, tests and tools need.
# Idempotent: packages already present are skipped, and `apt-get update` runs at most once.
# Python tooling for tests is not installed here: scripts/test.sh puts it in a virtual
# environment under the build folder, never into the system.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ccache git
  # audio_decode: FFmpeg 5.1 libraries; the ffmpeg CLI regenerates golden samples (tests/golden/generate.py)
  libavformat-dev libavcodec-dev libavutil-dev libswresample-dev ffmpeg
  # model: config/JSON, pre-tokenisation regex, Unicode normalisation
  libcjson-dev libpcre2-dev libutf8proc-dev
  # kernels/cpu: BLAS (optional at build time; a blocked C GEMM is the fallback)
  libopenblas-dev
  # server: HTTP, WebSocket framing, SHA-1/base64 for the WebSocket handshake
  libmicrohttpd-dev libwslay-dev nettle-dev
  # tests and tools: fuzzing and sanitizers (clang + compiler-rt), HTTP client, Python venv
  clang libclang-rt-14-dev curl python3 python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
