#!/usr/bin/env bash
# The browser test: build the wasm, serve the page on 127.0.0.1, run headless Chromium on
# WebGPU (SwiftShader) on it, screenshot the playground with its paths, replay every golden
# case through WebGPU, run the Adam 2^20 benchmark, and check it all. The last line is
# `N passed, M failed`; exits 0 only when nothing failed.
#   scripts/browser_test.sh            (BROWSER_TEST_TIMEOUT=seconds, default 1200;
#                                       CHROMIUM=path; output in target-browser-test/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build_web.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
exec python3 scripts/browser_test.py --out "${BROWSER_TEST_OUT:-target-browser-test}"
