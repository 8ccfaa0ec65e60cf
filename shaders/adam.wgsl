// adam.wgsl: Adam, AdamW and AMSGrad. Mirror of src/optim/adam.rs (AdamUniform) and
// src/cpu/fast.rs.
//
//   g = sign * g + weight_decay * p            (weight_decay = 0 for AdamW)
//   p = p * decay_factor                       (1 - lr * wd for AdamW, 1 for Adam)
//   m = m + (1 - b1) * (g - m)
//   v = b2 * v + (1 - b2) * g * g
//   vv = max(vmax, v), stored as vmax  if AMSGRAD  else v
//   p = p - step_size * m / (sqrt(vv) * inv_sqrt_bc2 + eps)   step_size = lr / bc1, host f64
//
// State slots: 0 exp_avg, 1 exp_avg_sq, 2 max_exp_avg_sq (bound with amsgrad only), at
// bindings 4, 5, 6, or packed as bf16 at 12, 13, 14 with BF16_STATE: the host declares the
// ones the variant binds with their accessors load_<name>(i) / store_<name>(i, x) (a stub
// for a slot not bound), in either format (src/gpu/shaders.rs).

override AMSGRAD: bool = false;

struct StepUniform {
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
    var vv = v;
    if (AMSGRAD) {
        let vmax0 = load_max_exp_avg_sq(i);
        vv = max(vmax0, v);
        store_max_exp_avg_sq(i, select(vmax0, vv, live));
    }
    let denom = sqrt(vv) * hp.inv_sqrt_bc2 + hp.eps;
    store_param(i, select(p0, decayed(p0, hp.decay_factor) - hp.step_size * m / denom, live));
}
