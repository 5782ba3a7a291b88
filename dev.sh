#!/usr/bin/env bash
# Set-up and entry point: `./dev.sh demo` runs the demo pipeline, `./dev.sh test` the test suite.
# On a fresh Debian 12 machine with Python 3.11, as root, each command installs what is missing
# (Debian packages, the virtualenv, CPU torch first, then hepstream) and then runs.
#
#   HEPSTREAM_VENV         virtualenv folder (default .venv)
#   HEPSTREAM_TORCH        torch requirement (default torch==2.13.0)
#   HEPSTREAM_TORCH_INDEX  pip index for torch, e.g. https://download.pytorch.org/whl/cu128 on a GPU node
set -euo pipefail
cd "$(dirname "$0")"

VENV=${HEPSTREAM_VENV:-.venv}
TORCH=${HEPSTREAM_TORCH:-torch==2.13.0}
TORCH_INDEX=${HEPSTREAM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
PYTHON=${PYTHON:-python3.11}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "dev.sh: need Debian packages $*; run as root or: sudo apt-get install -y $*" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

setup() {
  local missing=()
  command -v "$PYTHON" >/dev/null || missing+=(python3.11)
  command -v xrootd >/dev/null || missing+=(xrootd-server xrootd-client)
  # Headless browser of the /ui test (tests/serve/test_ui.py), which skips without it; ~300 MB.
  command -v chromium >/dev/null || missing+=(chromium)
  if command -v "$PYTHON" >/dev/null && ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
    missing+=(python3.11-venv)
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

  local stamp="$VENV/.hepstream-installed"
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt dev.sh ]; then
    return
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # CPU torch first, so that resolving the rest never pulls a multi-GB CUDA build. The torch index
  # is used when it answers within seconds; otherwise (a mirror-only site) plain pip decides.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
         "$TORCH_INDEX" 2>/dev/null; then
      "$VENV/bin/python" -m pip install -q "$TORCH" --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple
    else
      echo "dev.sh: $TORCH_INDEX does not answer; installing $TORCH from the configured package index" >&2
      "$VENV/bin/python" -m pip install -q "$TORCH"
    fi
  fi
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$stamp"
}

command=${1:-}
shift || true
case "$command" in
  demo) setup; exec "$VENV/bin/hepstream" demo "$@" ;;
  test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
  setup) setup ;;
  *) echo "usage: ./dev.sh demo|test|setup [arguments]" >&2; exit 2 ;;
esac
