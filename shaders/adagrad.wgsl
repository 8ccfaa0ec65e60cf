// adagrad.wgsl: Adagrad. Mirror of src/optim/adagrad.rs (AdagradUniform) and its cpu_chunk.
//
//   g = sign * g + weight_decay * p
//   sum = sum + g * g
//   p = p - clr * g / (sqrt(sum) + eps)        clr = lr / (1 + (t - 1) * lr_decay), host f64
//
// State slot (binding 4; accessors load_sum / store_sum declared by the host): 0 sum.

struct StepUniform {
    grad_sign: f32,
    weight_decay: f32,
    clr: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = with_weight_decay(signed(load_grad(i), hp.grad_sign), p0, hp.weight_decay);
    let s0 = load_sum(i);
    let s = s0 + g * g;
    store_sum(i, select(s0, s, live));
    store_param(i, select(p0, p0 - hp.clr * g / (sqrt(s) + hp.eps), live));
}
