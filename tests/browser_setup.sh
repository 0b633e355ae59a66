#!/usr/bin/env bash
# Install a headless browser for tests/neuron_core/test_viz_browser.py (idempotent; Debian/Ubuntu).
#   bash tests/browser_setup.sh
# Needs root (or sudo). Does nothing when chromium is already on PATH. Set CHROMIUM=/path/to/chrome to use
# another Chromium-based browser instead.
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "browser_setup: found $(command -v "$name") ($("$name" --version 2>/dev/null || echo 'version unknown'))"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser_setup: no apt-get here; install Chromium by hand and put it on PATH (or set CHROMIUM)" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian names the package "chromium"; Ubuntu's "chromium-browser" is a snap shim, try it last.
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; then
    $SUDO apt-get install -y -qq chromium-browser
fi
echo "browser_setup: installed $(command -v chromium || command -v chromium-browser)"
