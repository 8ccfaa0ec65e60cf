// sgd.wgsl: SGD with momentum, dampening, Nesterov, L2 weight decay, maximize.
// Mirror of src/optim/sgd.rs (SgdUniform) and its cpu_chunk (sgd).
//
//   d = sign * g + weight_decay * p
//   if momentum: buf = buffer_keep * buf + grad_into_buffer * d   (first step: 0 * buf + 1 * d)
//                d = d + momentum * buf  if nesterov  else  buf
//   p = p - lr * d
//
// State slot (binding 4, bound only when momentum != 0; accessors load_momentum_buffer /
// store_momentum_buffer declared by the host, stubs otherwise): 0 momentum_buffer.

override HAS_MOMENTUM: bool = false;
override NESTEROV: bool = false;

struct StepUniform {
    lr: f32,
    grad_sign: f32,
    weight_decay: f32,
    buffer_keep: f32,
    grad_into_buffer: f32,
    momentum: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    var d = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    if (HAS_MOMENTUM) {
        let b0 = load_momentum_buffer(i);
        let b = hp.buffer_keep * b0 + hp.grad_into_buffer * d;
        store_momentum_buffer(i, select(b0, b, live));
        if (NESTEROV) {
            d = d + hp.momentum * b;
        } else {
            d = b;
        }
    }
    store_param(i, select(p0, p0 - hp.lr * d, live));
}
