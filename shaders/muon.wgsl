// muon.wgsl: Muon (Jordan et al. 2024; torch.optim.Muon, PyTorch 2.15) in the elementwise
// kernel shape: the last pass of the per-tensor step, with the orthogonalised update O in
// the gradient's binding and the segment's adjusted lr in the uniform.
// Mirror of src/optim/muon.rs (MuonUniform, cpu_chunk) and src/cpu/reference/muon.rs.
//
//   p = p * decay - adjusted_lr * O          decay = 1 - lr * wd (the unadjusted lr)
//
// The GPU steps Muon with muon_segmented.wgsl (momentum, Newton-Schulz through
// src/gpu/newton_schulz.rs, and this update, in one submission); this file is the
// registry's elementwise kernel of the algorithm (the shader tests validate it, the mirror
// check pins StepUniform), which the per-tensor GPU path does not dispatch.

struct StepUniform {
    lr: f32,
    decay: f32,
    momentum: f32,
    one_minus_momentum: f32,
    nesterov: f32,
    adjust: f32,
    adjusted_lr: f32,
    pad: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let o = load_grad(i);
    store_param(i, select(p0, p0 * hp.decay - hp.adjusted_lr * o, live));
}
