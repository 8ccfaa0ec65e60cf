// adam.wgsl: Adam, AdamW and AMSGrad. Mirror of src/optim/adam.rs (AdamHyper) and
// src/cpu/fast.rs.
//
//   g = sign * g + weight_decay * p            (weight_decay = 0 for AdamW)
//   p = p * decay_factor                       (1 - lr * wd for AdamW, 1 for Adam)
//   m = m + (1 - b1) * (g - m)
//   v = b2 * v + (1 - b2) * g * g
//   vv = max(vmax, v), stored as vmax  if AMSGRAD  else v
//   p = p - step_size * m / (sqrt(vv) * inv_sqrt_bc2 + eps)   step_size = lr / bc1, host f64
//
// Bindings: 4 exp_avg, 5 exp_avg_sq, 6 max_exp_avg_sq (a dummy without amsgrad).

override AMSGRAD: bool = false;

struct Hyper {
    grad_sign: f32,
    weight_decay: f32,
    decay_factor: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hps: array<Hyper, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hps[group_of(i)];
    let p0 = param[i];
    let g = load_grad(i) * hp.grad_sign + hp.weight_decay * p0;
    let m0 = exp_avg[i];
    let v0 = exp_avg_sq[i];
    let m = m0 + hp.one_minus_beta1 * (g - m0);
    let v = hp.beta2 * v0 + hp.one_minus_beta2 * g * g;
    exp_avg[i] = select(m0, m, live);
    exp_avg_sq[i] = select(v0, v, live);
    var vv = v;
    if (AMSGRAD) {
        let vmax0 = max_exp_avg_sq[i];
        vv = max(vmax0, v);
        max_exp_avg_sq[i] = select(vmax0, vv, live);
    }
    let denom = sqrt(vv) * hp.inv_sqrt_bc2 + hp.eps;
    store_param(i, select(p0, p0 * hp.decay_factor - hp.step_size * m / denom, live));
}
