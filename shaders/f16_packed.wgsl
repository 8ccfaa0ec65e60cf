// f16_packed.wgsl: f16 params and gradients (LOW_PRECISION = 1) without the `shader-f16`
// feature: two values per u32 (first element in the low half), converted with the WGSL
// pack/unpack builtins (round to nearest even when packing on every implementation here;
// the tests check the bits).

@group(0) @binding(9) var<storage, read> lp_grad: array<vec2<u32>>;
@group(0) @binding(10) var<storage, read_write> lp_param: array<vec2<u32>>;

// The 4 gradients of lane j (j counted from the start of the buffer) as f32, exactly.
fn load_low_grad(j: u32) -> vec4<f32> {
    let w = lp_grad[j];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn raw_grad(i: u32) -> vec4<f32> {
    return load_low_grad(window.first_lane + i);
}

// Round the 4 params of lane j to f16 and store them.
fn store_low_param(j: u32, p: vec4<f32>, lane: u32) {
    lp_param[j] = vec2<u32>(pack2x16float(p.xy), pack2x16float(p.zw));
}
