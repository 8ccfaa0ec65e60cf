// lamb.wgsl: LAMB (You et al. 2019; pytorch_optimizer.Lamb 4.1.0), the second pass of the
// per-tensor step. Mirror of src/optim/lamb.rs (LambUniform, cpu_chunk) and
// src/cpu/reference/lamb.rs.
//
//   pd = p * decay_factor                      (1 - lr * wd with decoupled decay, else 1)
//   r  = m / (sqrt(v) + eps) + l2_weight_decay * pd
//   p  = pd - step_size * trust * r            trust: the segment's applied trust ratio
//
// m and v (slots 0 exp_avg, 1 exp_avg_sq at bindings 4, 5) were updated by the first pass,
// which also summed ||pd||^2 and ||r||^2 per tensor. Status: the GPU has no per-tensor
// dispatch yet (GpuOptimizer refuses ELEMENTWISE = false algorithms with a typed error);
// this pass is validated by the shader tests and mirrors the CPU's second pass.

struct StepUniform {
    grad_sign: f32,
    decay_factor: f32,
    l2_weight_decay: f32,
    beta1: f32,
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    step_size: f32,
    trust: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let m = load_exp_avg(i);
    let v = load_exp_avg_sq(i);
    let pd = p0 * hp.decay_factor;
    let r = m / (sqrt(v) + hp.eps) + hp.l2_weight_decay * pd;
    store_param(i, select(p0, pd - hp.step_size * hp.trust * r, live));
}
