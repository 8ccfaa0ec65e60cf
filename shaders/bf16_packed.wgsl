// bf16_packed.wgsl: bf16 params and gradients (LOW_PRECISION = 2), two per u32 (first
// element in the low half), converted by bit manipulation (common.wgsl, bf16_round.wgsl).

@group(0) @binding(9) var<storage, read> lp_grad: array<vec2<u32>>;
@group(0) @binding(10) var<storage, read_write> lp_param: array<vec2<u32>>;

// The 4 gradients of lane j (j counted from the start of the buffer) as f32, exactly.
fn load_low_grad(j: u32) -> vec4<f32> {
    return unpack_bf16(lp_grad[j]);
}

fn raw_grad(i: u32) -> vec4<f32> {
    return load_low_grad(window.first_lane + i);
}

// Round the 4 params of lane j to bf16 and store them (`lane`: the window-relative lane, for
// stochastic rounding).
fn store_low_param(j: u32, p: vec4<f32>, lane: u32) {
    lp_param[j] = pack_bf16(p, lane, 0u);
}
