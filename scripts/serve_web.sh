#!/usr/bin/env bash
# Build the playground page and serve it on http://127.0.0.1:${PORT:-8000}/web/www/index.html
# (Ctrl-C stops). Open it in a browser with WebGPU (Chrome/Edge; on Linux Chrome needs
# --enable-unsafe-webgpu, or chrome://flags/#enable-unsafe-webgpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build_web.sh
exec python3 scripts/web_server.py --port "${PORT:-8000}"
