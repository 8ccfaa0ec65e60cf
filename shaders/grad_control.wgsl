// grad_control.wgsl: the gradient control block, shared by common.wgsl (read by every kernel),
// norm.wgsl (written by the reduction) and device_step.wgsl (flag read, loss scale written).
// The host prepends this file to each of them (src/gpu/shaders.rs). Mirror of
// src/gpu/gradients.rs `GradControl`.
//
// The gradient pipeline: g = clamp(grad * inv_scale, -clip_value, clip_value) * coef.
// inv_scale = 1 / loss scale (mixed precision), clip_value = clip_grad_value_ (f32 max when
// off), coef = min(1, max_norm / (norm + 1e-6)) from clip_grad_norm_, written on the device by
// norm.wgsl (1 when off). norm and nonfinite are that pass's outputs, read only by the host.
// skip_nonfinite: skip the whole step when nonfinite is set (mixed precision).
struct GradControl {
    inv_scale: f32,
    clip_value: f32,
    coef: f32,
    nonfinite: u32,
    norm: f32,
    max_norm: f32,
    skip_nonfinite: u32,
    _pad1: f32,
}
