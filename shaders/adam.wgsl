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
// Bindings: 4 exp_avg, 5 exp_avg_sq, 6 max_exp_avg_sq (a dummy without amsgrad); with
// BF16_STATE the same tensors packed as bf16 at 12, 13, 14 (and 4-6 are dummies).

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
@group(0) @binding(4) var<storage, read_write> exp_avg: array<Lane>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<Lane>;
@group(0) @binding(6) var<storage, read_write> max_exp_avg_sq: array<Lane>;
@group(0) @binding(12) var<storage, read_write> exp_avg_bf16: array<vec2<u32>>;
@group(0) @binding(13) var<storage, read_write> exp_avg_sq_bf16: array<vec2<u32>>;
@group(0) @binding(14) var<storage, read_write> max_exp_avg_sq_bf16: array<vec2<u32>>;

// State access in either format: k = 0 exp_avg, 1 exp_avg_sq, 2 max_exp_avg_sq.
fn load_state(k: u32, i: u32) -> vec4<f32> {
    if (BF16_STATE) {
        let j = window.first_lane + i;
        if (k == 0u) {
            return unpack_bf16(exp_avg_bf16[j]);
        } else if (k == 1u) {
            return unpack_bf16(exp_avg_sq_bf16[j]);
        }
        return unpack_bf16(max_exp_avg_sq_bf16[j]);
    }
    if (k == 0u) {
        return unpack_lane(exp_avg[i]);
    } else if (k == 1u) {
        return unpack_lane(exp_avg_sq[i]);
    }
    return unpack_lane(max_exp_avg_sq[i]);
}

fn store_state(k: u32, i: u32, x: vec4<f32>) {
    if (BF16_STATE) {
        let j = window.first_lane + i;
        let packed = pack_bf16(x, i, k + 1u);
        if (k == 0u) {
            exp_avg_bf16[j] = packed;
        } else if (k == 1u) {
            exp_avg_sq_bf16[j] = packed;
        } else {
            max_exp_avg_sq_bf16[j] = packed;
        }
        return;
    }
    if (k == 0u) {
        exp_avg[i] = pack_lane(x);
    } else if (k == 1u) {
        exp_avg_sq[i] = pack_lane(x);
    } else {
        max_exp_avg_sq[i] = pack_lane(x);
    }
}

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let m0 = load_state(0u, i);
    let v0 = load_state(1u, i);
    let m = m0 + hp.one_minus_beta1 * (g - m0);
    let v = hp.beta2 * v0 + hp.one_minus_beta2 * g * g;
    store_state(0u, i, select(m0, m, live));
    store_state(1u, i, select(v0, v, live));
    var vv = v;
    if (AMSGRAD) {
        let vmax0 = load_state(2u, i);
        vv = max(vmax0, v);
        store_state(2u, i, select(vmax0, vv, live));
    }
    let denom = sqrt(vv) * hp.inv_sqrt_bc2 + hp.eps;
    store_param(i, select(p0, decayed(p0, hp.decay_factor) - hp.step_size * m / denom, live));
}
