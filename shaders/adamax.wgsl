// adamax.wgsl: Adamax. Mirror of src/optim/adamax.rs (AdamaxUniform) and its cpu_chunk.
//
//   g = sign * g + weight_decay * p
//   m = m + (1 - b1) * (g - m)
//   u = max(b2 * u, |g| + eps)
//   p = p - step_size * m / u            step_size = lr / (1 - b1^t), host f64
//
// State slots (bindings 4, 5; accessors load_<name> / store_<name> declared by the host):
// 0 exp_avg, 1 exp_inf.

struct StepUniform {
    grad_sign: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let m0 = load_exp_avg(i);
    let u0 = load_exp_inf(i);
    let m = m0 + hp.one_minus_beta1 * (g - m0);
    let u = max(hp.beta2 * u0, abs(g) + hp.eps);
    store_exp_avg(i, select(m0, m, live));
    store_exp_inf(i, select(u0, u, live));
    store_param(i, select(p0, p0 - hp.step_size * m / u, live));
}
