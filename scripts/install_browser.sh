#!/usr/bin/env bash
# The browser the web-page test drives: Debian's chromium (Playwright launches it by path, so
# nothing is downloaded from Playwright's servers). Needs root and apt-get; without them it says
# so and the browser test is skipped. Re-running is cheap.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "no chromium, and no root apt-get to install it: the browser test of 'fitv2 serve' will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
echo "installed $(chromium --version)"
