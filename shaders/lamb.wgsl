// lamb.wgsl: LAMB (You et al. 2019; pytorch_optimizer.Lamb 4.1.0) in the elementwise kernel
// shape: the second pass of the per-tensor step with the trust ratio taken from the uniform.
// Mirror of src/optim/lamb.rs (LambUniform, cpu_chunk) and src/cpu/reference/lamb.rs.
//
//   decoupled (flags & 1): pd = p * decay, r = m / (sqrt(v) + eps)
//   else:                  pd = p,         r = m / (sqrt(v) + eps) + decay * p
//   p = pd - step_size * trust * r
//
// The GPU steps LAMB with lamb_segmented.wgsl (both passes, the trust ratio per segment
// from the device's reduction); this file is the registry's elementwise kernel of the
// algorithm (the shader tests validate it, the mirror check pins StepUniform), which the
// per-tensor GPU path does not dispatch.

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

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let m = load_exp_avg(i);
    let v = load_exp_avg_sq(i);
    var pd = p0;
    var r = m / (sqrt(v) + hp.eps);
    if ((u32(hp.flags) & 1u) != 0u) {
        pd = p0 * hp.decay;
    } else {
        r = r + hp.decay * p0;
    }
    store_param(i, select(p0, pd - hp.step_size * hp.trust * r, live));
}
