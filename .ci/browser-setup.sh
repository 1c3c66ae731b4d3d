#!/usr/bin/env bash
# Make the browser test runnable: Debian's Chromium and the Python playwright client.
# Never `playwright install` (no browser downloads): the test drives /usr/bin/chromium.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
python -c "import playwright.sync_api" 2>/dev/null || python -m pip install -q "playwright>=1.40"
/usr/bin/chromium --version
