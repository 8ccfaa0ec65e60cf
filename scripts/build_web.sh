#!/usr/bin/env bash
# Build the web page's module: fused-optim-web for wasm32-unknown-unknown (release), then
# wasm-bindgen (--target web: a plain ES module, no bundler) into web/www/pkg.
# Needs the wasm32-unknown-unknown rustup target and wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock (`cargo install wasm-bindgen-cli --version X`).
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "wasm-bindgen-cli $want is needed (Cargo.lock's wasm-bindgen), found '${have:-none}':" >&2
    echo "  cargo install wasm-bindgen-cli --version $want" >&2
    exit 2
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "the wasm32-unknown-unknown target is missing: rustup target add wasm32-unknown-unknown" >&2
    exit 2
fi
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --target wasm32-unknown-unknown -p fused-optim-web
wasm-bindgen --target web --no-typescript --out-dir web/www/pkg \
    "$target_dir/wasm32-unknown-unknown/release/fused_optim_web.wasm"
echo "built web/www/pkg ($(du -h web/www/pkg/fused_optim_web_bg.wasm | cut -f1) of wasm)"
