// mixed_clip.wgsl: the global gradient-norm clip of a mixed optimizer (src/mixed/clip.rs),
// torch.nn.utils.clip_grad_norm_ over every tensor of every group, in place:
//   reduce  per chunk of a segment: the sum of g^2 into its own slot (no float atomics)
//   finish  one workgroup: the slots summed in a fixed order, norm = sqrt(sum),
//           coef = min(1, max_norm / (norm + 1e-6)); work[chunks] = norm, work[chunks + 1] = coef
//   scale   per chunk: g = g * coef
// Only the segments' elements are read or written (the padding between them is not).

struct ClipUniform {
    max_norm: f32,
    chunks: u32,
    grid_x: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> hp: ClipUniform;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
// Per chunk: (first element, end).
@group(0) @binding(2) var<storage, read> chunks: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> work: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn tree(lid: u32) -> f32 {
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
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * hp.grid_x;
    if (c >= hp.chunks) {
        return;
    }
    let e = chunks[c];
    var acc = 0.0;
    for (var i = e.x + lid; i < e.y; i = i + WG) {
        acc = acc + grad[i] * grad[i];
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        work[c] = total;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var c = lid; c < hp.chunks; c = c + WG) {
        acc = acc + work[c];
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        let norm = sqrt(total);
        work[hp.chunks] = norm;
        work[hp.chunks + 1u] = min(1.0, hp.max_norm / (norm + 1e-6));
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * hp.grid_x;
    if (c >= hp.chunks) {
        return;
    }
    let e = chunks[c];
    let coef = work[hp.chunks + 1u];
    for (var i = e.x + lid; i < e.y; i = i + WG) {
        grad[i] = grad[i] * coef;
    }
}
