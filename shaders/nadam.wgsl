// nadam.wgsl: NAdam. Mirror of src/optim/nadam.rs (NadamUniform) and its cpu_chunk.
//
//   g = sign * g + weight_decay * p;  p = p * decay_factor   (one of the two is the identity)
//   m = m + (1 - b1) * (g - m);  v = b2 * v + (1 - b2) * g * g
//   inv = 1 / (sqrt(v) * inv_sqrt_bc2 + eps)       inv_sqrt_bc2 = 1 / sqrt(1 - b2^t), host f64
//   p = p - grad_coef * g * inv        grad_coef = lr (1 - mu) / (1 - mu_product), host f64
//   p = p - avg_coef * m * inv         avg_coef = lr mu_next / (1 - mu_product mu_next)
// (one division per element instead of PyTorch's three: on lavapipe the divisions were what
// kept this kernel below its roof; the result differs by rounding only.)
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
    inv_sqrt_bc2: f32,
    eps: f32,
    grad_coef: f32,
    avg_coef: f32,
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
    let inv = 1.0 / (sqrt(v) * hp.inv_sqrt_bc2 + hp.eps);
    var p = decayed(p0, hp.decay_factor);
    p = p - hp.grad_coef * g * inv;
    p = p - hp.avg_coef * m * inv;
    store_param(i, select(p0, p, live));
}
