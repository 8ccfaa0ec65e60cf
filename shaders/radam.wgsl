// radam.wgsl: RAdam. Mirror of src/optim/radam.rs (RadamUniform) and its cpu_chunk.
//
//   g = sign * g + weight_decay * p;  p = p * decay_factor   (one of the two is the identity)
//   m = m + (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g
//   rectified (rho_t > 5, decided on the host from t):
//       p = p - adaptive_step_size * m / (sqrt(v) + eps)   lr * r * sqrt(bc2) / bc1
//   else:
//       p = p - plain_step_size * m                         lr / bc1
//
// State slots (bindings 4, 5; accessors load_<name> / store_<name> declared by the host):
// 0 exp_avg, 1 exp_avg_sq.

struct StepUniform {
    grad_sign: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    rectified: u32,
    plain_step_size: f32,
    adaptive_step_size: f32,
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
    let v0 = load_exp_avg_sq(i);
    let m = m0 + hp.one_minus_beta1 * (g - m0);
    let v = hp.beta2 * v0 + hp.one_minus_beta2 * g * g;
    store_exp_avg(i, select(m0, m, live));
    store_exp_avg_sq(i, select(v0, v, live));
    var p = decayed(p0, hp.decay_factor);
    if (hp.rectified != 0u) {
        p = p - hp.adaptive_step_size * m / (sqrt(v) + hp.eps);
    } else {
        p = p - hp.plain_step_size * m;
    }
    store_param(i, select(p0, p, live));
}
