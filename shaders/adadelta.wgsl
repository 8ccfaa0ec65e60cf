// adadelta.wgsl: Adadelta. Mirror of src/optim/adadelta.rs (AdadeltaUniform) and its cpu_chunk.
//
//   g = sign * g + weight_decay * p
//   v = rho * v + (1 - rho) * g * g
//   delta = sqrt((u + eps) / (v + eps)) * g     (PyTorch: sqrt(u + eps) / sqrt(v + eps) * g;
//                                               one square root fewer, equal up to rounding)
//   u = rho * u + (1 - rho) * delta * delta
//   p = p - lr * delta
//
// State slots (bindings 4, 5; accessors load_<name> / store_<name> declared by the host):
// 0 square_avg (v), 1 acc_delta (u).

struct StepUniform {
    lr: f32,
    grad_sign: f32,
    weight_decay: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let v0 = load_square_avg(i);
    let u0 = load_acc_delta(i);
    let v = hp.rho * v0 + hp.one_minus_rho * g * g;
    store_square_avg(i, select(v0, v, live));
    let delta = sqrt((u0 + hp.eps) / (v + hp.eps)) * g;
    let u = hp.rho * u0 + hp.one_minus_rho * delta * delta;
    store_acc_delta(i, select(u0, u, live));
    store_param(i, select(p0, p0 - hp.lr * delta, live));
}
