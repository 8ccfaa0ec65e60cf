// rmsprop.wgsl: RMSprop (plain, centered, momentum). Mirror of src/optim/rmsprop.rs and
// src/cpu/fast.rs.
//
//   g = sign * g + weight_decay * p
//   v = alpha * v + (1 - alpha) * g * g
//   centered: ga = ga + (1 - alpha) * (g - ga);  avg = sqrt(v - ga * ga) + eps
//   else:     avg = sqrt(v) + eps
//   momentum: buf = momentum * buf + g / avg;  p = p - lr * buf
//   else:     p = p - lr * g / avg
//
// State slots (bindings 4, 5, 6; accessors load_<name> / store_<name> declared by the host,
// stubs in a variant where the option is off and the slot is not bound): 0 square_avg,
// 1 momentum_buffer, 2 grad_avg.

override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;

struct StepUniform {
    lr: f32,
    grad_sign: f32,
    weight_decay: f32,
    alpha: f32,
    one_minus_alpha: f32,
    eps: f32,
    momentum: f32,
    _pad0: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let v0 = load_square_avg(i);
    let v = hp.alpha * v0 + hp.one_minus_alpha * g * g;
    store_square_avg(i, select(v0, v, live));
    var avg: vec4<f32>;
    if (CENTERED) {
        let a0 = load_grad_avg(i);
        let a = a0 + hp.one_minus_alpha * (g - a0);
        store_grad_avg(i, select(a0, a, live));
        avg = sqrt(v - a * a) + hp.eps;
    } else {
        avg = sqrt(v) + hp.eps;
    }
    var p: vec4<f32>;
    if (HAS_MOMENTUM) {
        let b0 = load_momentum_buffer(i);
        let b = hp.momentum * b0 + g / avg;
        store_momentum_buffer(i, select(b0, b, live));
        p = p0 - hp.lr * b;
    } else {
        p = p0 - hp.lr * g / avg;
    }
    store_param(i, select(p0, p, live));
}
