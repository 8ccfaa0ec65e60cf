// lamb_segmented.wgsl: the GPU step of LAMB (pytorch_optimizer.Lamb 4.1.0) per tensor, in
// Apex FusedLAMB's shape, all passes in one submission (src/gpu/segmented.rs):
//   gnorm   (pre_norm only) per chunk: sum g^2 into the chunk's slot
//   gfinish (pre_norm only) one workgroup: s = min(1, max_grad_norm / (sqrt(sum) + eps))
//   reduce  per chunk: m, v updated; sum ||pd||^2 and ||r||^2 into the chunk's fixed slots
//   finish  per segment: the norms from its chunks' slots (a fixed tree: deterministic, no
//           atomics), the trust ratio; a non-finite sum flags the segment
//   apply   per chunk: p = pd - step_size * trust[segment] * r, r recomputed from m, v
// (Segment, WG, segment_count, chunk_count: segmented_common.wgsl.)
// Mirror of src/optim/lamb.rs (LambUniform, cpu_reduce_chunk, finish_segment, cpu_chunk).
//
// A chunk lies inside one segment (the chunk table is built with the params' segment table).
// work: per segment 8 floats (applied trust, weight_norm, adam_norm, computed trust,
// -, -, -, non-finite flag); then 4 globals (gradient scale, -, -, -); then 4 per chunk
// (sum pd^2, sum r^2, sum g^2, -).
// chunks: per segment (first chunk, chunk count, state shift, -); then per chunk (segment, start, end, -).

struct StepUniform {
    grad_sign: f32,
    decay: f32,
    flags: f32,
    beta1: f32,
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    step_size: f32,
    trust: f32,
    clamp: f32,
    max_grad_norm: f32,
}

@group(0) @binding(0) var<uniform> hp: StepUniform;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> segments: array<Segment>;
@group(0) @binding(6) var<storage, read> chunks: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> work: array<f32>;

var<workgroup> red: array<vec2<f32>, WG>;

fn globals() -> u32 {
    return 8u * segment_count();
}

fn slot(c: u32) -> u32 {
    return globals() + 4u + 4u * c;
}

fn decoupled() -> bool {
    return (u32(hp.flags) & 1u) != 0u;
}

fn pre_norm() -> bool {
    return (u32(hp.flags) & 4u) != 0u;
}

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The decayed param and the update r of element i, its state at j (m, v already updated).
fn pd_r(i: u32, j: u32) -> vec2<f32> {
    let p = param[i];
    var r = exp_avg[j] / (sqrt(exp_avg_sq[j]) + hp.eps);
    var pd = p;
    if (decoupled()) {
        pd = p * hp.decay;
    } else {
        r = r + hp.decay * p;
    }
    return vec2<f32>(pd, r);
}

// Tree sum of red[0..WG) (called by every invocation of the workgroup).
fn tree(lid: u32) -> vec2<f32> {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(WG)
fn gnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= chunk_count()) {
        return;
    }
    let e = chunks[segment_count() + c];
    var acc = 0.0;
    for (var i = e.y + lid; i < e.z; i = i + WG) {
        let g = load_grad(i);
        acc = acc + g * g;
    }
    red[lid] = vec2<f32>(acc, 0.0);
    let total = tree(lid);
    if (lid == 0u) {
        work[slot(c) + 2u] = total.x;
    }
}

@compute @workgroup_size(WG)
fn gfinish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var c = lid; c < chunk_count(); c = c + WG) {
        acc = acc + work[slot(c) + 2u];
    }
    red[lid] = vec2<f32>(acc, 0.0);
    let total = tree(lid);
    if (lid == 0u) {
        work[globals()] = min(1.0, hp.max_grad_norm / (sqrt(total.x) + hp.eps));
    }
}

@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= chunk_count()) {
        return;
    }
    let e = chunks[segment_count() + c];
    var sign = hp.grad_sign;
    if (pre_norm()) {
        sign = sign * work[globals()];
    }
    let shift = state_shift(e);
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = e.y + lid; i < e.z; i = i + WG) {
        let g = load_grad(i) * sign;
        let j = i - shift;
        exp_avg[j] = hp.beta1 * exp_avg[j] + hp.beta3 * g;
        exp_avg_sq[j] = hp.beta2 * exp_avg_sq[j] + hp.one_minus_beta2 * g * g;
        let x = pd_r(i, j);
        acc = acc + x * x;
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        work[slot(c)] = total.x;
        work[slot(c) + 1u] = total.y;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let k = wid.x + wid.y * nwg.x;
    if (k >= segment_count()) {
        return;
    }
    let head = chunks[k];
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < head.y; j = j + WG) {
        let s = slot(head.x + j);
        acc = acc + vec2<f32>(work[s], work[s + 1u]);
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        let weight_norm = min(sqrt(total.x), hp.clamp);
        let adam_norm = sqrt(total.y);
        var trust = 1.0;
        if (weight_norm != 0.0 && adam_norm != 0.0) {
            trust = weight_norm / (adam_norm + hp.eps);
        }
        var applied = trust;
        if ((u32(hp.flags) & 2u) != 0u) {
            applied = 1.0;
        }
        let o = 8u * k;
        work[o] = applied;
        work[o + 1u] = weight_norm;
        work[o + 2u] = adam_norm;
        work[o + 3u] = trust;
        work[o + 7u] = select(1.0, 0.0, finite(total.x) && finite(total.y));
    }
}

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= chunk_count()) {
        return;
    }
    let e = chunks[segment_count() + c];
    let scale = hp.step_size * work[8u * e.x];
    let shift = state_shift(e);
    for (var i = e.y + lid; i < e.z; i = i + WG) {
        let x = pd_r(i, i - shift);
        param[i] = x.x - scale * x.y;
    }
}
