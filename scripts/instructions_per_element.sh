#!/usr/bin/env bash
# Instructions per element executed by each optimizer kernel and by its roof on a CPU
# implementation of WebGPU (lavapipe), counted by valgrind's callgrind: a fraction of roof
# that does not depend on timing noise. For each kernel the step counts 2 and 12 are run and
# the difference of the two totals divided by 10 steps and n elements, so setup (device,
# pipeline compilation) cancels out. Each count is preceded by an uncounted run under
# valgrind so that the shader cache holds the kernels compiled for valgrind's CPU features.
#
#   scripts/instructions_per_element.sh [--cpu] [optimizer ...]      (default: all of them)
#
# --cpu counts the fast CPU path (`CpuOptimizer::step`) and its roof (`cpu_roof`) instead,
# with RAYON_NUM_THREADS=1 (idle rayon workers' spinning would make the counts vary), at
# n = 2^20 + 3 (the vectorised loops execute 1-4 instructions per element, so the per-step
# costs need a larger n to stay out of the figure), with three decimals; no device is created.
# KERNEL_ONLY=1 skips the roofs (e.g. for an older build of the kernels).
#
# WGPU_BACKEND=vulkan (u64 lanes on lavapipe) or gl (vec4<f32> lanes on llvmpipe) picks the
# lane path. KERNEL_STEPS_BIN=path measures that binary instead of building one (e.g. a copy
# of an older build, to compare two versions). The binary is copied first, so that a build
# sharing CARGO_TARGET_DIR cannot replace it during the measurement.
#
# Needs valgrind and a CPU adapter; about a minute per optimizer.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KERNEL_STEPS_BIN:-}" ]; then
    cargo build --release --example kernel_steps >&2
    KERNEL_STEPS_BIN=${CARGO_TARGET_DIR:-target}/release/examples/kernel_steps
fi
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
cp "$KERNEL_STEPS_BIN" "$bin"
chmod +x "$bin"
n=65539
scale=2
mode=()
if [ "${1:-}" = --cpu ]; then
    mode=(--cpu)
    export RAYON_NUM_THREADS=1
    n=1048579
    scale=3
    shift
fi
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "${mode[@]}" "$1" "$2" "$3" \
        "$n" 2>&1 | awk '/Collected/ { print $4 }'
}
per_element() {
    if [ ${#mode[@]} -eq 0 ]; then
        valgrind --tool=none "$bin" "$1" "$2" 0 "$n" >/dev/null 2>&1
    fi
    local a b
    a=$(count "$1" "$2" 2)
    b=$(count "$1" "$2" 12)
    echo "scale=$scale; ($b - $a) / 10 / $n" | bc
}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    names=(sgd sgd_momentum adagrad rmsprop rmsprop_centered_momentum adam adamw amsgrad
        adadelta nadam adamax radam lion sf_adamw sf_sgd)
fi
printf '%-26s %14s %14s %14s\n' optimizer kernel_instr/el roof_instr/el roof/kernel
for name in "${names[@]}"; do
    k=$(per_element "$name" kernel)
    if [ "${KERNEL_ONLY:-0}" = 1 ]; then
        printf '%-26s %14s %14s %14s\n' "$name" "$k" - -
        continue
    fi
    r=$(per_element "$name" roof)
    printf '%-26s %14s %14s %14s\n' "$name" "$k" "$r" "$(echo "scale=3; $r / $k" | bc)"
done
