#!/usr/bin/env bash
# Create .venv and install hf-lcrypt with its test extras (which include [medical]: DICOM and NIfTI), CPU PyTorch first.
# torch==2.13.0 is installed before anything else so that no dependency pulls a multi-GB CUDA build;
# GPU users: set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e ".[test]"
if .venv/bin/python -m pip show torchvision >/dev/null 2>&1; then
  echo "torchvision is installed in .venv: it breaks transformers' image processors here; uninstalling it." >&2
  .venv/bin/python -m pip uninstall -y -q torchvision
fi
.venv/bin/python -c "import torch, transformers, hf_lcrypt; print('hf-lcrypt', hf_lcrypt.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
