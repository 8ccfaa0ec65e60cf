#!/usr/bin/env bash
# Re-copy the golden trajectories into golden/v1 and golden/v2 from the shared folders they
# were generated in (../shared/golden: optim-golden/1, ../shared/golden2: optim-golden/2).
# Case files are stored gzip-compressed (`gzip -9n`: no name, no timestamp, so a re-run gives
# the same bytes); README.md, SUMMARY.md and index.json are copied as they are.
#
#   scripts/refresh_golden.sh           # refresh from ../shared (or $GOLDEN_SHARED)
#   scripts/refresh_golden.sh --check   # only verify that golden/ matches ../shared, write nothing
set -euo pipefail
cd "$(dirname "$0")/.."

shared="${GOLDEN_SHARED:-../shared}"
check=0
if [ "${1:-}" = "--check" ]; then
    check=1
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--check]" >&2
    exit 2
fi

status=0
sync_dir() {
    local src="$1" dst="$2"
    if [ ! -d "$src" ]; then
        echo "missing source folder $src" >&2
        exit 1
    fi
    mkdir -p "$dst"
    local f base
    for f in "$src"/*.json; do
        base="$(basename "$f")"
        if [ "$base" = index.json ]; then
            continue
        fi
        if [ "$check" = 1 ]; then
            if ! gzip -dc "$dst/$base.gz" 2>/dev/null | cmp -s - "$f"; then
                echo "differs: $dst/$base.gz vs $f"
                status=1
            fi
        else
            gzip -9n -c "$f" >"$dst/$base.gz.tmp"
            mv "$dst/$base.gz.tmp" "$dst/$base.gz"
        fi
    done
    for base in README.md SUMMARY.md index.json; do
        if [ "$check" = 1 ]; then
            cmp -s "$src/$base" "$dst/$base" || { echo "differs: $dst/$base vs $src/$base"; status=1; }
        else
            cp "$src/$base" "$dst/$base"
            chmod 644 "$dst/$base"
        fi
    done
    # Cases that disappeared from the source.
    for f in "$dst"/*.json.gz; do
        [ -e "$f" ] || continue
        base="$(basename "$f" .gz)"
        if [ ! -e "$src/$base" ]; then
            if [ "$check" = 1 ]; then
                echo "not in $src: $f"
                status=1
            else
                rm "$f"
            fi
        fi
    done
}

sync_dir "$shared/golden" golden/v1
sync_dir "$shared/golden2" golden/v2
if [ "$check" = 1 ] && [ "$status" = 0 ]; then
    echo "golden/v1 and golden/v2 match $shared/golden and $shared/golden2"
fi
exit "$status"
