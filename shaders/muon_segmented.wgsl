// muon_segmented.wgsl: the GPU step of Muon (torch.optim.Muon, PyTorch 2.15) per 2-D tensor,
// all passes in one submission (src/gpu/segmented.rs):
//   reduce  per chunk: buf = lerp(buf, g, 1 - mu); the Newton-Schulz input
//           u = lerp(g, buf, mu) (nesterov) or buf, written into the matrix of the segment in
//           the Newton-Schulz batch buffer `ns` (row-major, at the chunk's offset)
//   (src/gpu/newton_schulz.rs then orthogonalises every matrix of the batch in place)
//   finish  per segment: adjusted_lr = lr * ratio(rows, cols) into work[8k]
//   apply   per chunk: p = p * (1 - lr * wd) - adjusted_lr * O
// (Segment, WG, segment_count, chunk_count: segmented_common.wgsl.)
// Mirror of src/optim/muon.rs (MuonUniform, cpu_reduce_chunk, finish_segment, cpu_chunk).
//
// chunks: per segment (first chunk, chunk count, state shift, -); then per chunk (segment, start, end,
// offset of element `start` in `ns`). work: per segment 8 floats (adjusted lr, -, ..., -).

struct StepUniform {
    lr: f32,
    decay: f32,
    momentum: f32,
    one_minus_momentum: f32,
    nesterov: f32,
    adjust: f32,
    adjusted_lr: f32,
    pad: f32,
}

@group(0) @binding(0) var<uniform> hp: StepUniform;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> momentum_buffer: array<f32>;
@group(0) @binding(4) var<storage, read> segments: array<Segment>;
@group(0) @binding(5) var<storage, read> chunks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> work: array<f32>;
@group(0) @binding(7) var<storage, read_write> ns: array<f32>;

// torch's lerp: start + w (end - start) for w < 0.5, else end - (end - start)(1 - w).
fn lerp_torch(start: f32, end: f32, w: f32) -> f32 {
    if (w < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

// The lr ratio of a rows x cols matrix (MuonLrAdjust::ratio).
fn ratio(rows: f32, cols: f32) -> f32 {
    let adjust = u32(hp.adjust);
    if (adjust == 1u) {
        return 0.2 * sqrt(max(rows, cols));
    }
    if (adjust == 2u) {
        return sqrt(rows / cols);
    }
    return sqrt(max(1.0, rows / cols));
}

@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= chunk_count()) {
        return;
    }
    let e = chunks[segment_count() + c];
    let nesterov = hp.nesterov != 0.0;
    let shift = state_shift(e);
    for (var i = e.y + lid; i < e.z; i = i + WG) {
        let g = load_grad(i);
        let b = lerp_torch(momentum_buffer[i - shift], g, hp.one_minus_momentum);
        momentum_buffer[i - shift] = b;
        var u = b;
        if (nesterov) {
            u = lerp_torch(g, b, hp.momentum);
        }
        ns[e.w + (i - e.y)] = u;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let k = wid.x + wid.y * nwg.x;
    if (k >= segment_count() || lid != 0u) {
        return;
    }
    let s = segments[k];
    work[8u * k] = hp.lr * ratio(f32(s.rows), f32(s.cols));
}

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= chunk_count()) {
        return;
    }
    let e = chunks[segment_count() + c];
    let adjusted = work[8u * e.x];
    for (var i = e.y + lid; i < e.z; i = i + WG) {
        param[i] = param[i] * hp.decay - adjusted * ns[e.w + (i - e.y)];
    }
}
