// adafactor.wgsl: Adafactor (Shazeer & Stern 2018; torch.optim.Adafactor, PyTorch 2.15) in
// the elementwise kernel shape: the last pass of an unfactored (rank <= 1) tensor's step,
// with its updated variance in the state and the segment's alpha / denom in the uniform.
// Mirror of src/optim/adafactor.rs (AdafactorUniform, cpu_chunk) and
// src/cpu/reference/adafactor.rs.
//
//   U = g / sqrt(max(variance, eps1^2))
//   p = p * decay - coef * U                 decay = 1 - lr * wd, coef = alpha / denom
//
// The GPU steps Adafactor with adafactor_segmented.wgsl (the factored moments, the
// reductions for alpha and denom, and this update, in one submission); this file is the
// registry's elementwise kernel of the algorithm (the shader tests validate it, the mirror
// check pins StepUniform), which the per-tensor GPU path does not dispatch.

struct StepUniform {
    grad_sign: f32,
    decay: f32,
    weight: f32,
    eps1: f32,
    eps1_sq: f32,
    coef: f32,
    rho: f32,
    eps2: f32,
    d: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = load_grad(i) * hp.grad_sign;
    let v = load_variance(i);
    let u = (1.0 / sqrt(max(v, vec4<f32>(hp.eps1_sq)))) * g;
    store_param(i, select(p0, p0 * hp.decay - hp.coef * u, live));
}
