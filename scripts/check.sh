#!/usr/bin/env bash
# The style checks CI runs, with the tools in .venv (bash scripts/install.sh installs them):
# every pre-commit hook (.pre-commit-config.yaml) on every tracked file (ruff, the import-linter contracts of
# pyproject.toml: layers and no import cycles, codespell, file hygiene), then mypy on src/fitv2.
# The first run installs the hooks' environments from PyPI into ~/.cache/pre-commit.
# Exit status 0 only when every check passes; both always run.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
.venv/bin/pre-commit run --all-files || status=1
.venv/bin/mypy src/fitv2 || status=1
exit $status
