// norm.wgsl: the global gradient norm for clip_grad_norm_, on the device, in a fixed order
// (deterministic: the same inputs give the same bits on the same device).
//
// partial_sums: workgroup w of a window sums the squares of the unscaled, value-clipped
//               gradients of its 256 x 4 vec4 lanes (4 strided passes, then a tree) into
//               partials[first_partial + w].
// finish:       one workgroup sums all partials (strided, then a tree), and writes
//               norm = sqrt(sum), nonfinite (any raw element, or the sum, with all exponent
//               bits set: not a NaN comparison, which WGSL may optimise away) and
//               coef = min(1, max_norm / (norm + 1e-6)) into the control block.
// Mirror of src/gpu/gradients.rs and the CPU paths' `grad_norm`.

const WG: u32 = 256u;
// As in common.wgsl: 0 = f32 gradients, 1 = f16, 2 = bf16 (packed two per u32).
override LOW_PRECISION: u32 = 0u;
const LANES_PER_THREAD: u32 = 4u;

// GradControl: declared in grad_control.wgsl, prepended by the host.

struct Pass {
    n: u32,
    first_partial: u32,
    groups: u32,
    total_partials: u32,
    first_lane: u32,
    // partial_sums_external: where the dispatch's tensor entries start in the table, and
    // the lanes of one block (the optimizer kernel's WORKGROUP_SIZE * VEC4_PER_INVOCATION).
    table_base: u32,
    block_lanes: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> pass_info: Pass;
// Lane, unpack_lane: lane_f32.wgsl or lane_u64.wgsl, prepended by the host as for the
// optimizer kernels (the same transport; the bits pass through unchanged, so the
// exponent-bit check below sees the raw gradients).
@group(0) @binding(1) var<storage, read> grad: array<Lane>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> control: GradControl;
// Set when any raw gradient element is inf or NaN (exponent bits all ones), checked on the
// raw bits before unscaling or clipping could hide it; reset by `finish`.
@group(0) @binding(4) var<storage, read_write> found_nonfinite: atomic<u32>;
@group(0) @binding(5) var<storage, read> lp_grad: array<vec2<u32>>;

fn raw_grad(i: u32) -> vec4<f32> {
    if (LOW_PRECISION == 1u) {
        let w = lp_grad[pass_info.first_lane + i];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    if (LOW_PRECISION == 2u) {
        let w = lp_grad[pass_info.first_lane + i];
        return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
    }
    return unpack_lane(grad[i]);
}

var<workgroup> scratch: array<f32, 256>;

fn tree_sum(local: u32) {
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (local < stride) {
            scratch[local] = scratch[local] + scratch[local + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn partial_sums(
    @builtin(workgroup_id) group_id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let group = group_id.x + group_id.y * groups.x;
    if (group >= pass_info.groups) {
        return; // surplus of the 2-D grid: uniform for the whole workgroup
    }
    let lanes = (pass_info.n + 3u) / 4u;
    let limit = vec4<f32>(control.clip_value);
    var acc = 0.0;
    for (var k = 0u; k < LANES_PER_THREAD; k = k + 1u) {
        let i = (group * LANES_PER_THREAD + k) * WG + local;
        if (i < lanes) {
            let first = i * 4u;
            let live = (vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(pass_info.n);
            let raw = raw_grad(i);
            let exponent = bitcast<vec4<u32>>(raw) & vec4<u32>(0x7f800000u);
            if (any((exponent == vec4<u32>(0x7f800000u)) & live)) {
                atomicOr(&found_nonfinite, 1u);
            }
            let g = select(vec4<f32>(0.0), clamp(raw * control.inv_scale, -limit, limit), live);
            acc = acc + dot(g, g);
        }
    }
    scratch[local] = acc;
    tree_sum(local);
    if (local == 0u) {
        partials[pass_info.first_partial + group] = scratch[0];
    }
}

// Over ranges of caller buffers (src/gpu/tensors/): the same table as the optimizer kernel
// (tensors.wgsl: block -> entry, then 8 words per entry), workgroup `group` sums block
// `first_lane + group` of the table into partials[first_lane + group]. `grad` is the
// dispatch's gradient window. The block order is fixed by the plan, so the sum is
// deterministic for a given placement of the tensors.
@group(0) @binding(6) var<storage, read> tensor_table: array<u32>;

@compute @workgroup_size(256)
fn partial_sums_external(
    @builtin(workgroup_id) group_id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let group = group_id.x + group_id.y * groups.x;
    if (group >= pass_info.groups) {
        return;
    }
    let block = pass_info.first_lane + group;
    let e = pass_info.table_base + tensor_table[block] * 8u;
    let grad_lane = tensor_table[e + 1u];
    let n = tensor_table[e + 3u];
    let lanes = (n + 3u) / 4u;
    let start = (block - tensor_table[e + 4u]) * pass_info.block_lanes;
    let limit = vec4<f32>(control.clip_value);
    var acc = 0.0;
    for (var k = local; k < pass_info.block_lanes; k = k + WG) {
        let j = start + k;
        if (j < lanes) {
            let live = (vec4<u32>(j * 4u) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
            let raw = unpack_lane(grad[grad_lane + j]);
            let exponent = bitcast<vec4<u32>>(raw) & vec4<u32>(0x7f800000u);
            if (any((exponent == vec4<u32>(0x7f800000u)) & live)) {
                atomicOr(&found_nonfinite, 1u);
            }
            let g = select(vec4<f32>(0.0), clamp(raw * control.inv_scale, -limit, limit), live);
            acc = acc + dot(g, g);
        }
    }
    scratch[local] = acc;
    tree_sum(local);
    if (local == 0u) {
        partials[block] = scratch[0];
    }
}

@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_index) local: u32) {
    var acc = 0.0;
    for (var i = local; i < pass_info.total_partials; i = i + WG) {
        acc = acc + partials[i];
    }
    scratch[local] = acc;
    tree_sum(local);
    if (local == 0u) {
        let total = scratch[0];
        let norm = sqrt(total);
        // Exponent bits all ones: inf or NaN.
        let flagged = atomicExchange(&found_nonfinite, 0u) != 0u;
        let nonfinite = flagged || (bitcast<u32>(total) & 0x7f800000u) == 0x7f800000u;
        control.norm = norm;
        control.nonfinite = select(0u, 1u, nonfinite);
        control.coef = min(1.0, control.max_norm / (norm + 1e-6));
    }
}
