//! `LossScaler`: dynamic loss scaling with PyTorch `torch.amp.GradScaler`'s rules.
//!
//! The caller multiplies its loss by [`LossScaler::scale`] before the backward pass; the
//! optimizer unscales the gradients inside its kernel (`GradOptions::grad_scale = 1 / scale`),
//! checks them for inf/NaN on the device and skips the whole step if any is found. Then:
//!
//! ```text
//! found inf/NaN:  scale = scale * backoff_factor;  growth_tracker = 0      (step skipped)
//! otherwise:      growth_tracker += 1;
//!                 if growth_tracker == growth_interval:
//!                     scale *= growth_factor (unless that overflows f32); growth_tracker = 0
//! ```
//! Defaults as PyTorch: init_scale 2^16, growth_factor 2, backoff_factor 0.5,
//! growth_interval 2000.
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::{AdamConfig, CpuOptimizer, FlatParams, GpuContext, GpuOptimizer, LossScaler};
//! let ctx = GpuContext::new()?;
//! let params = FlatParams::from_slice(&ctx, &[0.5; 1024])?;
//! let mut opt = GpuOptimizer::new(&params, AdamConfig::default())?;
//! let mut scaler = LossScaler::default();
//! // backward with loss * scaler.scale() ... then:
//! params.write_grads(&[1e3; 1024])?;
//! let skipped = scaler.step(&mut opt, GpuOptimizer::step)?;
//!
//! // Any optimizer: the CPU path, stepping over the caller's slices.
//! let (mut p, g) = (vec![0.5f32; 1024], vec![1e3f32; 1024]);
//! let mut cpu = CpuOptimizer::new(AdamConfig::default(), 1024)?;
//! let skipped = scaler.step(&mut cpu, |o| o.step(&mut p, &g))?;
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::grads::GradOptions;
use crate::optimizer::Optimizer;

/// Dynamic loss scale.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`): a plain `Copy` value.
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

    /// Check the settings as PyTorch's GradScaler does (scale finite and > 0, growth_factor
    /// > 1, backoff_factor in (0, 1), growth_interval >= 1).
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: f64, requirement| {
            Err(Error::InvalidHyperParameter {
                optimizer: "LossScaler",
                name,
                value,
                requirement,
            })
        };
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return bad("scale", self.scale, "must be finite and > 0");
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return bad(
                "growth_factor",
                self.growth_factor,
                "must be finite and > 1",
            );
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return bad("backoff_factor", self.backoff_factor, "must be in (0, 1)");
        }
        if self.growth_interval == 0 {
            return bad("growth_interval", 0.0, "must be at least 1");
        }
        Ok(())
    }

    /// The current loss scale (multiply the loss by it).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// A scaler in the given state, as read back from the device (not validated: the
    /// device's scale may have backed off to 0).
    pub(crate) fn from_parts(
        scale: f64,
        growth_tracker: u32,
        growth_factor: f64,
        backoff_factor: f64,
        growth_interval: u32,
    ) -> Self {
        Self {
            scale,
            growth_factor,
            backoff_factor,
            growth_interval,
            growth_tracker,
        }
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
                // Grow only to a scale that is finite in f32 (PyTorch keeps it in f32).
                if ((self.scale * self.growth_factor) as f32).is_finite() {
                    self.scale *= self.growth_factor;
                }
                self.growth_tracker = 0;
            }
        }
    }

    /// One scaled step of any [`Optimizer`]: sets `opt`'s gradient options to unscale by
    /// the current scale and skip on inf/NaN (keeping its clipping options), runs `step`
    /// (`GpuOptimizer::step`, or `|o| o.step(&mut params, &grads)` for the CPU paths), asks
    /// the optimizer whether it skipped ([`Optimizer::last_step_skipped`]) and updates the
    /// scale. Returns whether the step was skipped; on an error from `step` the scale is
    /// left as it was. On the GPU this reads back the 32-byte flag, as `GradScaler.step` +
    /// `update` do with `found_inf`; to keep the scale on the device with no read-back, give
    /// the scaler to [`GpuOptimizer::set_device_loss_scaler`] instead.
    ///
    /// [`GpuOptimizer::set_device_loss_scaler`]: crate::GpuOptimizer::set_device_loss_scaler
    pub fn step<O: Optimizer + ?Sized>(
        &mut self,
        opt: &mut O,
        step: impl FnOnce(&mut O) -> Result<()>,
    ) -> Result<bool> {
        self.validate()?;
        let options = self.grad_options(opt.grad_options());
        if options != opt.grad_options() {
            opt.set_grad_options(options)?;
        }
        step(opt)?;
        let skipped = opt.last_step_skipped()?;
        self.update(skipped);
        Ok(skipped)
    }
}
