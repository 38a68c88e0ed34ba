#!/usr/bin/env bash
# Create .venv and install fitv2 with its test tools (and the browser the web-page test drives).
# Re-running is cheap.
#   FITV2_TORCH  the torch requirement installed first (default torch==2.13.0, a CPU wheel
#                here); set it to e.g. "torch==2.11.0" for a CUDA machine. Installing torch
#                before the project keeps pip from pulling a different build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${FITV2_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[dev,text,web]"
bash scripts/install_browser.sh
.venv/bin/python -c "import fitv2, torch; print(f'fitv2 {fitv2.__version__} with torch {torch.__version__} installed in .venv')"
