// grad_f32.wgsl: the f32 gradients of a variant without low precision (LOW_PRECISION = 0).
// Variants with 16-bit gradients read those instead (f16_packed.wgsl, bf16_packed.wgsl,
// f16_native.wgsl) and do not bind this buffer.

@group(0) @binding(3) var<storage, read> grad: array<Lane>;

fn raw_grad(i: u32) -> vec4<f32> {
    return unpack_lane(grad[i]);
}

// Never called (LOW_PRECISION is 0): there is no 16-bit copy of the params to write.
fn store_low_param(j: u32, p: vec4<f32>, lane: u32) {}
