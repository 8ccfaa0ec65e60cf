//! Gradient pre-processing options shared by every implementation (the GPU kernels, the fast
//! CPU path, the reference): unscaling, clipping by value and by global norm, skipping
//! non-finite steps; and the control block the kernels read.
//!
//! ```text
//! g = clamp(g * grad_scale, -clip_value, clip_value)
//! norm = sqrt(sum g^2);  coef = min(1, max_norm / (norm + 1e-6))      (clip by norm)
//! g = g * coef
//! ```

use crate::error::{Error, Result};

/// Gradient pre-processing options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradOptions {
    /// Multiplier applied to the raw gradients first (1 / loss scale with mixed precision).
    pub grad_scale: f64,
    /// Clip every element to `[-clip_value, clip_value]` (`clip_grad_value_`).
    pub clip_value: Option<f64>,
    /// Rescale so the global L2 norm is at most `max_norm` (`clip_grad_norm_`, norm over all
    /// parameters of this optimizer, after unscaling and value clipping).
    pub max_norm: Option<f64>,
    /// Mixed precision: check the raw gradients for inf/NaN on the device and skip the whole
    /// step (params and state untouched) when any is found.
    pub skip_nonfinite: bool,
}

impl Default for GradOptions {
    fn default() -> Self {
        Self {
            grad_scale: 1.0,
            clip_value: None,
            max_norm: None,
            skip_nonfinite: false,
        }
    }
}

impl GradOptions {
    /// Check the options.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: f64, requirement| Error::InvalidHyperParameter {
            optimizer: "gradient options",
            name,
            value,
            requirement,
        };
        if !(self.grad_scale.is_finite() && self.grad_scale > 0.0) {
            return Err(bad("grad_scale", self.grad_scale, "must be finite and > 0"));
        }
        if let Some(v) = self.clip_value {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("clip_value", v, "must be finite and > 0"));
            }
        }
        if let Some(v) = self.max_norm {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("max_norm", v, "must be finite and > 0"));
            }
        }
        Ok(())
    }

    /// True when the device reduction pass is needed (norm clipping or the finiteness check).
    pub fn needs_reduction(&self) -> bool {
        self.max_norm.is_some() || self.skip_nonfinite
    }

    /// The control block the kernels read (coefficient 1 until a norm pass writes it).
    pub fn control(&self) -> GradControl {
        GradControl {
            inv_scale: self.grad_scale as f32,
            clip_value: self.clip_value.map_or(f32::MAX, |v| v as f32),
            coef: 1.0,
            nonfinite: 0,
            norm: 0.0,
            max_norm: self.max_norm.map_or(f32::MAX, |v| v as f32),
            skip_nonfinite: u32::from(self.skip_nonfinite),
            _pad: 0.0,
        }
    }
}

/// Mirror of `struct GradControl` in `shaders/grad_control.wgsl`, which the host prepends to
/// every kernel, `norm.wgsl` and `device_step.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GradControl {
    /// Gradient multiplier (1 / loss scale).
    pub inv_scale: f32,
    /// Clip-by-value bound (f32::MAX when off).
    pub clip_value: f32,
    /// Norm-clip coefficient (written by the norm pass; 1 when off).
    pub coef: f32,
    /// 1 when the last norm was not finite (written by the norm pass).
    pub nonfinite: u32,
    /// The last global norm (written by the norm pass).
    pub norm: f32,
    /// clip_grad_norm_'s max_norm (f32::MAX when only the finiteness check runs).
    pub max_norm: f32,
    /// 1: skip the whole step when the gradients are not finite.
    pub skip_nonfinite: u32,
    /// Padding.
    pub _pad: f32,
}
