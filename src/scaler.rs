//! `LossScaler`: dynamic loss scaling with PyTorch `torch.amp.GradScaler`'s rules.
//!
//! The caller multiplies its loss by [`LossScaler::scale`] before the backward pass; the
//! optimizer unscales the gradients inside its kernel (`GradOptions::grad_scale = 1 / scale`),
//! checks them for inf/NaN on the device and skips the whole step if any is found. Then:
//!
//! ```text
//! found inf/NaN:  scale = scale * backoff_factor;  growth_tracker = 0      (step skipped)
//! otherwise:      growth_tracker += 1;
//!                 if growth_tracker == growth_interval: scale *= growth_factor; growth_tracker = 0
//! ```
//! Defaults as PyTorch: init_scale 2^16, growth_factor 2, backoff_factor 0.5,
//! growth_interval 2000.
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, LossScaler};
//! let ctx = GpuContext::new()?;
//! let params = FlatParams::from_slice(&ctx, &[0.5; 1024])?;
//! let mut opt = GpuOptimizer::new(&params, AdamConfig::default())?;
//! let mut scaler = LossScaler::default();
//! // backward with loss * scaler.scale() ... then:
//! params.write_grads(&[1e3; 1024])?;
//! let skipped = scaler.step(&mut opt)?;
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::gpu::gradients::GradOptions;
use crate::gpu::optimizer::GpuOptimizer;

/// Dynamic loss scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    /// Multiplier after `growth_interval` clean steps (default 2).
    pub growth_factor: f64,
    /// Multiplier after a step with inf/NaN gradients (default 0.5).
    pub backoff_factor: f64,
    /// Clean steps between growths (default 2000).
    pub growth_interval: u32,
    growth_tracker: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// A scaler starting at `init_scale` with the other settings as PyTorch's defaults.
    pub fn new(init_scale: f64) -> Result<Self> {
        if !(init_scale.is_finite() && init_scale > 0.0) {
            return Err(Error::InvalidHyperParameter {
                optimizer: "LossScaler",
                name: "init_scale",
                value: init_scale,
                requirement: "must be finite and > 0",
            });
        }
        Ok(Self {
            scale: init_scale,
            ..Self::default()
        })
    }

    /// The current loss scale (multiply the loss by it).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Clean steps since the last growth or back-off.
    pub fn growth_tracker(&self) -> u32 {
        self.growth_tracker
    }

    /// `base` with unscaling by the current scale and the skip check on.
    pub fn grad_options(&self, base: GradOptions) -> GradOptions {
        GradOptions {
            grad_scale: 1.0 / self.scale,
            skip_nonfinite: true,
            ..base
        }
    }

    /// Apply the growth / back-off rule after a step.
    pub fn update(&mut self, found_nonfinite: bool) {
        if found_nonfinite {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }

    /// One scaled step: unscale inside the kernel (keeping `opt`'s clipping options), skip on
    /// inf/NaN, update the scale. Returns whether the step was skipped. Reads back the
    /// 32-byte flag, as `GradScaler.step` + `update` do with `found_inf`.
    pub fn step(&mut self, opt: &mut GpuOptimizer) -> Result<bool> {
        let options = self.grad_options(opt.grad_options());
        if options != opt.grad_options() {
            opt.set_grad_options(options)?;
        }
        opt.step()?;
        let skipped = opt.last_step_skipped()?;
        self.update(skipped);
        Ok(skipped)
    }
}
