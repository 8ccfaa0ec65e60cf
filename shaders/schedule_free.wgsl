// schedule_free.wgsl: Schedule-Free AdamW and SGD (Defazio et al. 2024; schedulefree 1.4.1
// AdamWScheduleFree / SGDScheduleFree). Mirror of src/optim/schedule_free.rs
// (ScheduleFreeUniform, cpu_chunk) and src/cpu/reference/schedule_free.rs.
//
// Training mode, params = y (z is stored, x implicit):
//   z = p                                        on the first step (first_step = 1)
//   AdamW: v = beta2 * v + (1 - beta2) * g * g;  g = g / (sqrt(v * inv_bc2) + eps)
//   g = g + weight_decay * y                     (decay at y)
//   y = y + ckp1 * (z - y) + y_step * g          y_step = lr_t * (beta * (1 - ckp1) - 1)
//   z = z - lr_t * g
// Mode switch (pass_kind = 1): p = p + switch_weight * (z - p)
//   to evaluation: switch_weight = 1 - 1 / beta (y -> x);  to training: 1 - beta (x -> y).
//
// State: z (binding 4), exp_avg_sq (5, AdamW only), declared by the host with their
// load_/store_ accessors.

override ADAPTIVE: bool = true;

struct StepUniform {
    pass_kind: u32,
    first_step: u32,
    lr: f32,
    y_step: f32,
    ckp1: f32,
    weight_decay: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc2: f32,
    eps: f32,
    switch_weight: f32,
    _pad0: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    var z0 = load_z(i);
    if (hp.pass_kind != 0u) {
        store_param(i, select(p0, p0 + hp.switch_weight * (z0 - p0), live));
        return;
    }
    if (hp.first_step != 0u) {
        z0 = p0;
    }
    var d = load_grad(i);
    if (ADAPTIVE) {
        let v0 = load_exp_avg_sq(i);
        let v = hp.beta2 * v0 + hp.one_minus_beta2 * d * d;
        store_exp_avg_sq(i, select(v0, v, live));
        d = d / (sqrt(v * hp.inv_bc2) + hp.eps);
    }
    d = with_weight_decay(d, p0, hp.weight_decay);
    let y = p0 + hp.ckp1 * (z0 - p0) + hp.y_step * d;
    store_z(i, select(z0, z0 - hp.lr * d, live));
    store_param(i, select(p0, y, live));
}
