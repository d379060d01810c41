#!/usr/bin/env bash
# Creates (or checks) the Python virtual environment the tests use: build/test-venv with the official
# `openai` client and `websockets` (its Realtime API), pinned. Idempotent: an environment that already has the pinned version is left alone.
# PYTHON=... picks the interpreter (default: python3 from PATH, which needs the venv module: Debian's
# python3-venv, installed by scripts/install-deps.sh). VENV=... overrides the location.
# Exits non-zero when the environment cannot be made: the tests that need it then fail, they do not skip.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.51.0
WEBSOCKETS_VERSION=15.0.1 # the openai client's Realtime API (its "realtime" extra: websockets >= 13, < 16)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-build/test-venv}

if [ -x "$VENV/bin/python" ] &&
  "$VENV/bin/python" -c "import openai, websockets, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION' or websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
  echo "test-venv: $VENV has openai $OPENAI_VERSION, websockets $WEBSOCKETS_VERSION"
  exit 0
fi
echo "test-venv: creating $VENV (openai==$OPENAI_VERSION, websockets==$WEBSOCKETS_VERSION)"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" \
  "websockets==$WEBSOCKETS_VERSION"
"$VENV/bin/python" -c "import openai; print('test-venv: openai', openai.__version__)"
