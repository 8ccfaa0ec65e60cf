// f16_native.wgsl: f16 params and gradients with native f16 (`shader-f16`; the host puts
// `enable f16;` at the top of the module and uses this file only for LOW_PRECISION = 1).
// The buffers are the same bytes as the packed layout (a vec4<f16> is two u32 of two f16,
// first element in the low half), loaded and stored as f16 and converted by value
// (f32 -> f16 rounds to nearest even).

@group(0) @binding(9) var<storage, read> lp_grad: array<vec4<f16>>;
@group(0) @binding(10) var<storage, read_write> lp_param: array<vec4<f16>>;

fn load_low_grad(j: u32) -> vec4<f32> {
    return vec4<f32>(lp_grad[j]);
}

fn raw_grad(i: u32) -> vec4<f32> {
    return load_low_grad(window.first_lane + i);
}

fn store_low_param(j: u32, p: vec4<f32>, lane: u32) {
    lp_param[j] = vec4<f16>(p);
}
