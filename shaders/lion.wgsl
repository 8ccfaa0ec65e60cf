// lion.wgsl: Lion (Chen et al. 2023; lion-pytorch 0.2.5). Mirror of src/optim/lion.rs
// (LionUniform, cpu_chunk) and src/cpu/reference/lion.rs.
//
//   p = p * decay_factor                       (1 - lr * wd; decoupled: 1 - lr / lr0 * wd)
//   c = beta1 * m + (1 - beta1) * g
//   p = p - lr * sign(c)                       sign(0) = 0
//   m = beta2 * m + (1 - beta2) * g
//
// State: exp_avg (binding 4), declared by the host with load_exp_avg / store_exp_avg.

struct StepUniform {
    lr: f32,
    decay_factor: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = load_grad(i);
    let m0 = load_exp_avg(i);
    let c = hp.beta1 * m0 + hp.one_minus_beta1 * g;
    let m = hp.beta2 * m0 + hp.one_minus_beta2 * g;
    store_exp_avg(i, select(m0, m, live));
    store_param(i, select(p0, decayed(p0, hp.decay_factor) - hp.lr * sign(c), live));
}
