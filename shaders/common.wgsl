// common.wgsl: launch geometry shared by every optimizer kernel. Each kernel file is appended
// to this one and defines `struct StepUniform` (its per-step scalars), the uniform `hps` (binding 0)
// and `fn update(i: u32, live: vec4<bool>)`, which updates vec4 lane `i` of every flat buffer
// (with the scalars of `hyper_of(i)`) and keeps the old value wherever `live` is false (the
// padding of the last lane, beyond the window's `n` elements).
//
// The host assembles one module per kernel *variant* (src/gpu/shaders.rs `Variant`), and a
// variant declares only the bindings it uses, so that its bind group layout stays within
// WebGPU's limits (8 storage buffers per stage by default). The bindings, and which variants
// have them:
//   0  uniform  array<StepUniform, MAX_GROUPS>  per-step scalars of each parameter group, computed
//                                         on the host in f64 (dynamic offset)       always
//   1  uniform  Window  n = logical elements in this binding window, first_lane = its start
//                                                                                   always
//   2  storage  param   read_write  array<Lane> (f32 master weights)               always
//   3  storage  grad    read        array<Lane> (grad_f32.wgsl)     without low precision
//   4+ storage  state   read_write  array<Lane>, one per state tensor in use (at most 3;
//                                   declared by the host with load_/store_ accessors)
//   7  storage  control read        GradControl: unscale, clip by value, norm-clip
//                                   coefficient (read only by the gradient pipeline, which
//                                   is switched on and off without rebuilding the layout)
//                                                                                   always
//   8  storage  lane_groups read    array<u32>: parameter group of every vec4 lane
//                                   (groups.wgsl)                                  GROUPED
//   9  storage  lp_grad  read       f16/bf16 gradients, 4 per lane: packed array<vec2<u32>>,
//                                   or array<vec4<f16>> with shader-f16  LOW_PRECISION != 0
//  10  storage  lp_param read_write f16/bf16 copy of the params, written from the f32 master
//                                   weights every step, same two layouts LOW_PRECISION != 0
//  11  uniform  StepInfo            per-step seed for stochastic rounding (dynamic offset;
//                                   bf16_round.wgsl)          bf16 params or bf16 state
//  12+ storage  packed state read_write array<vec2<u32>>, bf16 state tensors (BF16_STATE),
//                                   instead of 4+
//  15  storage  tensor_table read   array<u32>: the tensor table of a kernel over ranges of
//                                   caller buffers (tensors.wgsl)                  EXTERNAL
//
// Written by the host at the top of the module (source-level choices of the variant):
//   const GROUPED: bool          parameter groups: each vec4 lane reads its group's scalars;
//                                off, every lane uses group 0.
//   const LOW_PRECISION: u32     0 = off (f32 grads), 1 = f16, 2 = bf16 gradients in and
//                                params out, with f32 master weights (`param`) and f32 state.
//   const BF16_STATE: bool       the state tensors live packed two per u32 at bindings 12+
//                                instead of f32 at 4+, halving their traffic and memory.
//   const EXTERNAL: bool         params and gradients are ranges of caller buffers (many
//                                tensors per buffer) and the state is fused-optim's flat
//                                buffers: each workgroup finds its tensor in a table
//                                (tensors.wgsl, src/gpu/tensors/). Off: one flat buffer each.
//   const GRAD_IN_PARAM: bool    (EXTERNAL) the gradients live in the params' buffer, read
//                                through the read_write `param` binding (binding 3 absent).
// Every binding-dependent function (raw_grad, store_low_param, hyper_of, the state accessors)
// comes from the file of the variant that binds it, or is a stub that touches nothing.

override WORKGROUP_SIZE: u32 = 64u;
// Off: load_grad is a plain load (the control block is bound but never read). On: the
// gradient pipeline below. A separate pipeline, built once when gradient options are set.
override GRAD_PIPELINE: bool = false;
const MAX_GROUPS: u32 = 8u;
// Stochastic rounding of bf16 stores (bf16_round.wgsl); a no-op in variants without bf16.
override STOCHASTIC_ROUNDING: bool = false;
override VEC4_PER_INVOCATION: u32 = 4u;
// Per-lane options, false when no parameter group uses them (src/gpu/kernel.rs
// Specialization): the kernel then leaves their arithmetic out.
override MAXIMIZE: bool = true;
override L2_DECAY: bool = true;
override DECOUPLED_DECAY: bool = true;

struct Window {
    // Flat: elements of the window. EXTERNAL: workgroup blocks of this dispatch.
    n: u32,
    // Flat: the window's first lane in the buffer. EXTERNAL: its first block in the table.
    first_lane: u32,
    // EXTERNAL: where this dispatch's tensor entries start in the table (in u32 words).
    table_base: u32,
    // Not GROUPED: the parameter group of every lane (a tensor optimizer's dispatch over one
    // whole tensor, src/gpu/tensors/layout.rs `Unit::direct`); 0 everywhere else.
    group: u32,
}

// GradControl (binding 7): declared in grad_control.wgsl, prepended by the host.

@group(0) @binding(1) var<uniform> window: Window;
@group(0) @binding(7) var<storage, read> control: GradControl;

// 4 bf16 values (2 per u32, first element in the low half) to f32, exactly.
fn unpack_bf16(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}

// raw_grad(i), the gradients of lane i as f32, is defined by grad_f32.wgsl (binding 3) or by
// the low-precision file of the variant (bindings 9, 10), with store_low_param.

// Write the updated master weights, and their low-precision copy when on.
fn store_param(i: u32, p: vec4<f32>) {
    if (EXTERNAL) {
        // Only the tensor's own elements: the rest of its last lane is the caller's.
        store_param_external(i, p);
        return;
    }
    param[i] = pack_lane(p);
    if (LOW_PRECISION != 0u) {
        store_low_param(window.first_lane + i, p, i);
    }
}

// Group 0's scalars, read once per invocation when every lane uses group 0 (not GROUPED)
// instead of once per lane: llvmpipe reloads a uniform inside the lane loop (it cannot prove
// that the storage writes between two loads leave the uniform buffer alone).
var<private> group0: StepUniform;

// hyper_of(i), the scalars of the group that lane i belongs to, is defined by groups.wgsl
// (GROUPED: `hps[lane_groups[lane]]`) or groups_none.wgsl (`group0`).

// The gradient pipeline's scalars (inv_scale, clip_value, coef), read once per invocation
// for the same reason.
var<private> grad_scalars: vec3<f32>;

fn load_grad(i: u32) -> vec4<f32> {
    let raw = raw_grad(i);
    if (GRAD_PIPELINE) {
        let limit = vec4<f32>(grad_scalars.y);
        return clamp(raw * grad_scalars.x, -limit, limit) * grad_scalars.z;
    }
    return raw;
}

// EXTERNAL: the current lane's offsets from its param lane to its gradient lane and to its
// state lane (u32, wrapping), which elements are the tensor's, and the tensor's group. Set
// by `main` before each `update`, read by the accessors of tensors.wgsl.
var<private> ext_grad_delta: u32;
var<private> ext_state_delta: u32;
var<private> ext_live: vec4<bool>;
var<private> ext_group: u32;

// EXTERNAL: workgroup `group` of the dispatch is block `window.first_lane + group` of the
// table; the block's tensor entry (8 words at `window.table_base + 8 * entry`: param lane,
// gradient lane, state lane, elements, first block, group) says where its lanes are. Same
// lane order inside a block as the flat path below.
fn main_external(group: u32, local: u32) {
    if (group >= window.n) {
        return;
    }
    let block = window.first_lane + group;
    let e = window.table_base + tensor_word(block) * 8u;
    let param_lane = tensor_word(e);
    ext_grad_delta = tensor_word(e + 1u) - param_lane;
    ext_state_delta = tensor_word(e + 2u) - param_lane;
    let n = tensor_word(e + 3u);
    ext_group = tensor_word(e + 5u);
    let lanes = (n + 3u) / 4u;
    var j = (block - tensor_word(e + 4u)) * WORKGROUP_SIZE * VEC4_PER_INVOCATION + local;
    for (var k = 0u; k < VEC4_PER_INVOCATION; k = k + 1u) {
        if (j >= lanes) {
            return;
        }
        let live = (vec4<u32>(j * 4u) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(n);
        ext_live = live;
        update(param_lane + j, live);
        j = j + WORKGROUP_SIZE;
    }
}

// The gradient times grad_sign (-1 when maximizing, else 1).
fn signed(g: vec4<f32>, grad_sign: f32) -> vec4<f32> {
    if (MAXIMIZE) {
        return g * grad_sign;
    }
    return g;
}

// L2 weight decay, `g + weight_decay * p`, added only when weight_decay != 0 as PyTorch does
// (an infinite param then stays infinite instead of turning NaN through 0 * inf).
fn with_weight_decay(g: vec4<f32>, p: vec4<f32>, weight_decay: f32) -> vec4<f32> {
    if (L2_DECAY && weight_decay != 0.0) {
        return g + weight_decay * p;
    }
    return g;
}

// Decoupled weight decay (AdamW, NAdamW, RAdamW): `p * decay_factor`, 1 - lr * weight_decay.
fn decayed(p: vec4<f32>, decay_factor: f32) -> vec4<f32> {
    if (DECOUPLED_DECAY) {
        return p * decay_factor;
    }
    return p;
}

// Which of the 4 elements of lane i are real elements (index < n).
fn live_lanes(i: u32) -> vec4<bool> {
    let first = i * 4u;
    return (vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(window.n);
}

// A 2-D grid of workgroups (x * y may exceed the work: the bounds check below ends the rest).
// Workgroup `group` owns VEC4_PER_INVOCATION consecutive blocks of WORKGROUP_SIZE lanes, so at
// every iteration the invocations of a workgroup touch consecutive lanes.
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) group_id: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Mixed precision: a step whose gradients hold inf or NaN (found by norm.wgsl) is skipped
    // whole, so params and state keep their bits.
    if (GRAD_PIPELINE) {
        if (control.nonfinite != 0u && control.skip_nonfinite != 0u) {
            return;
        }
        grad_scalars = vec3<f32>(control.inv_scale, control.clip_value, control.coef);
    }
    if (!GROUPED) {
        group0 = hps[window.group];
    }
    let group = group_id.x + group_id.y * groups.x;
    if (EXTERNAL) {
        main_external(group, local);
        return;
    }
    let lanes = (window.n + 3u) / 4u;
    var i = group * WORKGROUP_SIZE * VEC4_PER_INVOCATION + local;
    for (var k = 0u; k < VEC4_PER_INVOCATION; k = k + 1u) {
        if (i >= lanes) {
            return;
        }
        update(i, live_lanes(i));
        i = i + WORKGROUP_SIZE;
    }
}
