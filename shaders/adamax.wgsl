// adamax.wgsl: Adamax. Mirror of src/optim/adamax.rs (AdamaxHyper) and src/cpu/fast.rs.
//
//   g = sign * g + weight_decay * p
//   m = m + (1 - b1) * (g - m)
//   u = max(b2 * u, |g| + eps)
//   p = p - step_size * m / u            step_size = lr / (1 - b1^t), host f64
//
// Bindings: 4 exp_avg, 5 exp_inf.

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
@group(0) @binding(4) var<storage, read_write> exp_avg: array<Lane>;
@group(0) @binding(5) var<storage, read_write> exp_inf: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let m0 = unpack_lane(exp_avg[i]);
    let u0 = unpack_lane(exp_inf[i]);
    let m = m0 + hp.one_minus_beta1 * (g - m0);
    let u = max(hp.beta2 * u0, abs(g) + hp.eps);
    exp_avg[i] = pack_lane(select(m0, m, live));
    exp_inf[i] = pack_lane(select(u0, u, live));
    store_param(i, select(p0, p0 - hp.step_size * m / u, live));
}
