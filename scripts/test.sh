#!/usr/bin/env bash
# Set up .venv (CPU PyTorch first) and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  GRADIO_ANALYTICS_ENABLED=False
bash scripts/setup.sh
# The Space's browser test drives Debian's Chromium headless.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: install Debian's chromium package for the browser test" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
