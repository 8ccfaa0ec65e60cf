// segmented_grad.wgsl: the gradient pipeline of the per-tensor kernels (lamb_segmented,
// muon_segmented, adafactor_segmented), prepended by the host (src/gpu/segmented.rs,
// src/gpu/factored.rs) after grad_control.wgsl. As common.wgsl's load_grad:
//   g = clamp(grad * inv_scale, -clip_value, clip_value) * coef
// with coef written by norm.wgsl earlier in the same submission (1 without norm clipping).
// Off (GRAD_PIPELINE false): a plain load; the control block is bound but never read.
// Every read of `grad` in those kernels goes through load_grad.

override GRAD_PIPELINE: bool = false;

@group(0) @binding(8) var<storage, read> control: GradControl;

fn load_grad(i: u32) -> f32 {
    let g = grad[i];
    if (GRAD_PIPELINE) {
        return clamp(g * control.inv_scale, -control.clip_value, control.clip_value)
            * control.coef;
    }
    return g;
}
