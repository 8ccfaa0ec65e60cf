//! The gradient pipeline: options (unscaling, clipping, skipping non-finite steps), the norm
//! clipper, what the last step found, the device-side step counter and loss scaler.

use super::GpuOptimizer;
use crate::error::{Error, Result};
use crate::gpu::buffer::{read_f32, read_f32_async};
use crate::gpu::device_step::{DeviceSteps, SCALE_OFFSET};
use crate::gpu::gradients::{GradOptions, NormClipper};
use crate::scaler::LossScaler;

impl GpuOptimizer {
    /// [`Optimizer::set_grad_options`](crate::Optimizer::set_grad_options): the pipeline variant for `options` (built once), the
    /// norm clipper, the device step counter for `skip_nonfinite`.
    pub(super) fn apply_grad_options(&mut self, options: GradOptions) -> Result<()> {
        self.ctx.check_alive("set_grad_options")?;
        let per_tensor = self.segmented.is_some() || self.factored.is_some();
        if per_tensor && options != GradOptions::default() {
            // The norm pass covers the whole grads buffer: a group of a mixed optimizer (some
            // of the segments) would clip by another norm.
            if self.members.len() != self.params.segment_table().segments().len() {
                return Err(crate::Error::Unsupported {
                    optimizer: self.groups[0].config.name(),
                    feature: "gradient options of its own for a per-tensor group of a mixed \
                              GPU optimizer (set_max_grad_norm clips every group together)",
                });
            }
            // The norm pass sums every element of the buffer: with padding between the
            // tensors (a lane-aligned layout) it would count elements no tensor holds.
            let segs = self.params.segment_table().segments();
            let gaps = segs.first().is_some_and(|s| s.start != 0)
                || segs.windows(2).any(|w| w[0].end() != w[1].start)
                || segs.last().is_some_and(|s| s.end() != self.params.len());
            if options.max_norm.is_some() && gaps {
                return Err(crate::Error::Unsupported {
                    optimizer: self.groups[0].config.name(),
                    feature: "norm clipping with a per-tensor algorithm on the GPU over \
                              tensors with padding between them (a lane-aligned layout): \
                              build the params back to back",
                });
            }
            // The per-tensor kernels take the step count from the host.
            if options.skip_nonfinite {
                return Err(crate::Error::Unsupported {
                    optimizer: self.groups[0].config.name(),
                    feature: "skip_nonfinite (and the device loss scaler) with a per-tensor \
                              algorithm on the GPU (unscaling and clipping are supported; the \
                              CPU paths skip too)",
                });
            }
        }
        options.validate()?;
        let scaler_on = self.device.as_ref().is_some_and(|d| d.scaler_on());
        if scaler_on && !options.skip_nonfinite {
            return Err(Error::InvalidCombination {
                optimizer: "gradient options",
                reason: "the device loss scaler needs skip_nonfinite: turn the scaler off \
                         first (set_device_loss_scaler(None))",
            });
        }
        if self.q8.is_some() && options.skip_nonfinite {
            return Err(Error::InvalidCombination {
                optimizer: "gradient options",
                reason: "skip_nonfinite (and the device loss scaler) with 8-bit state \
                         (StateFormat::Blockwise8) is not implemented: the 8-bit kernel takes \
                         its step count from the host",
            });
        }
        if let Some(q8) = &mut self.q8 {
            q8.prepare(options != GradOptions::default())?;
        }
        // Fallible parts first; on error nothing changes (the previous variant is built, so
        // switching back cannot fail).
        let mut new_device = None;
        let mut hosts_back = None;
        if options.skip_nonfinite && self.device.is_none() {
            new_device = Some(DeviceSteps::new(
                &self.ctx,
                self.runner.hyper_ring(),
                &self.control,
                &self.groups,
            )?);
        } else if !options.skip_nonfinite && self.device.is_some() {
            hosts_back = Some(self.true_hosts()?);
        }
        let was_on = self.grad_options != GradOptions::default();
        let on = options != GradOptions::default();
        if let Err(e) = self.set_grad_pipelines(on) {
            // Back to the variants in use (built: cannot fail).
            self.set_grad_pipelines(was_on)?;
            return Err(e);
        }
        if options.needs_reduction() && self.clipper.is_none() {
            match NormClipper::new(
                &self.params,
                &self.control,
                self.low.as_ref().map(|l| (l.code, &l.grads)),
            ) {
                Ok(c) => self.clipper = Some(c),
                Err(e) => {
                    self.set_grad_pipelines(was_on)?;
                    return Err(e);
                }
            }
        }
        if !options.needs_reduction() {
            self.clipper = None;
        }
        if let Some(device) = new_device {
            self.device = Some(device);
        }
        if let Some(hosts) = hosts_back {
            self.device = None;
            self.set_group_hosts(&hosts);
        }
        // With the device loss scaler on, inv_scale (the first word) is the device's.
        let skip = if scaler_on { 4 } else { 0 };
        self.ctx.queue().write_buffer(
            &self.control,
            skip as u64,
            &bytemuck::bytes_of(&options.control())[skip..],
        );
        if let Some(q8) = &mut self.q8 {
            // Compiled above: cannot fail.
            q8.set_grad_pipeline(options != GradOptions::default())?;
        }
        self.grad_options = options;
        Ok(())
    }

    /// The pipeline variant with (`on`) or without the gradient pipeline in every kernel:
    /// the elementwise runner and the per-tensor kernel.
    fn set_grad_pipelines(&mut self, on: bool) -> Result<()> {
        if let Some(kernel) = &mut self.segmented {
            kernel.set_grad_pipeline(on)?;
        }
        if let Some(kernel) = &mut self.factored {
            kernel.set_grad_pipeline(on)?;
        }
        self.runner.set_grad_pipeline(on)
    }

    /// Mixed precision with no read-back at all: PyTorch GradScaler's dynamic loss scale kept
    /// and updated on the device. Each step unscales the gradients by the device's scale,
    /// skips the step on inf/NaN (the device counts only the steps taken) and then applies
    /// the growth / back-off rule to the scale, all in the step's one submission. Turns on
    /// `skip_nonfinite`; while the scaler is on, `GradOptions::grad_scale` is ignored. The
    /// caller's backward pass multiplies its loss by the scale, which it reads
    /// ([`Self::device_loss_scaler`]) or binds ([`Self::loss_scale_buffer`]). `None` turns
    /// the scaler off (unscaling by `GradOptions::grad_scale` again).
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, LossScaler};
    /// let ctx = GpuContext::new()?;
    /// let params = FlatParams::from_slice(&ctx, &[0.5; 1024])?;
    /// let mut opt = GpuOptimizer::new(&params, AdamConfig::default())?;
    /// opt.set_device_loss_scaler(Some(LossScaler::default()))?;
    /// for _ in 0..10 {
    ///     // backward with loss * scale (scale bound from opt.loss_scale_buffer()) ...
    ///     opt.step()?; // no read-back, even when a step is skipped
    /// }
    /// let scaler = opt.device_loss_scaler()?.expect("on"); // reads back, when wanted
    /// let steps = opt.device_step_count()?;
    /// # Ok(()) }
    /// ```
    pub fn set_device_loss_scaler(&mut self, scaler: Option<LossScaler>) -> Result<()> {
        match scaler {
            Some(s) => {
                s.validate()?;
                let options = GradOptions {
                    skip_nonfinite: true,
                    grad_scale: 1.0 / s.scale(),
                    ..self.grad_options
                };
                // Fallible first: on error nothing changes (not even a scaler already on).
                self.apply_grad_options(options)?;
                if let Some(d) = &mut self.device {
                    d.write_scaler(Some(&s));
                }
                // The new scale's inverse, which set_grad_options leaves to a scaler already on.
                self.ctx.queue().write_buffer(
                    &self.control,
                    0,
                    bytemuck::bytes_of(&((1.0 / s.scale()) as f32)),
                );
            }
            None => {
                if let Some(d) = &mut self.device {
                    d.write_scaler(None);
                    self.ctx.queue().write_buffer(
                        &self.control,
                        0,
                        bytemuck::bytes_of(&self.grad_options.control()),
                    );
                }
            }
        }
        Ok(())
    }

    /// The device loss scaler's current state (reads it back; waits), `None` when off.
    pub fn device_loss_scaler(&self) -> Result<Option<LossScaler>> {
        let Some(device) = self.device.as_ref().filter(|d| d.scaler_on()) else {
            return Ok(None);
        };
        let b = device.read()?;
        Ok(Some(LossScaler::from_parts(
            f64::from(b.scale),
            b.growth_tracker,
            f64::from(b.growth_factor),
            f64::from(b.backoff_factor),
            b.growth_interval,
        )))
    }

    /// Where the device loss scale lives: the buffer and the byte offset of its f32 (for a
    /// backward pass that multiplies the loss by it on the device). `None` when off.
    pub fn loss_scale_buffer(&self) -> Option<(&wgpu::Buffer, u64)> {
        self.device
            .as_ref()
            .filter(|d| d.scaler_on())
            .map(|d| (d.counter_buffer(), SCALE_OFFSET))
    }

    /// Steps taken (PyTorch's `step`), read from the device when it keeps the count (with
    /// `skip_nonfinite`; waits for the submitted steps), else the host's count.
    pub fn device_step_count(&self) -> Result<u64> {
        crate::gpu::wait::block_on("device_step_count", self.device_step_count_async())?
    }

    /// [`GpuOptimizer::device_step_count`] without blocking (the one to await on the web).
    pub async fn device_step_count_async(&self) -> Result<u64> {
        match &self.device {
            Some(d) => Ok(d.steps_from(&d.read_async().await?)),
            None => Ok(self.groups[0].host.step),
        }
    }

    /// `clip_grad_norm_(error_if_nonfinite=True)`, checked when the caller wants: an error
    /// if the last step's gradient norm was NaN or infinite (detected on the device from the
    /// exponent bits). Reads back 32 bytes.
    pub fn check_finite_gradients(&self) -> Result<()> {
        crate::gpu::wait::block_on(
            "check_finite_gradients",
            self.check_finite_gradients_async(),
        )?
    }

    /// [`GpuOptimizer::check_finite_gradients`] without blocking.
    pub async fn check_finite_gradients_async(&self) -> Result<()> {
        if self.clipper.is_none() {
            return Ok(());
        }
        let c = read_f32_async(&self.ctx, &self.control, 0, 8).await?;
        if c[3].to_bits() != 0 {
            return Err(Error::NonFiniteGradients {
                norm: f64::from(c[4]),
            });
        }
        Ok(())
    }

    /// [`Optimizer::last_grad_norm`](crate::Optimizer::last_grad_norm): read back (waits).
    pub(super) fn read_grad_norm(&self) -> Result<Option<f64>> {
        if self.clipper.is_none() {
            return Ok(None);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        Ok(Some(f64::from(c[4])))
    }

    /// [`Optimizer::last_step_skipped`](crate::Optimizer::last_step_skipped): reads back 32 bytes and the device's step count
    /// (waits), after which the step count is exact again. Nothing needs it: the device
    /// counts the steps it takes.
    pub(super) fn read_step_skipped(&self) -> Result<bool> {
        if self.device.is_none() || self.clipper.is_none() {
            return Ok(false);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        if let Some(device) = &self.device {
            let block = device.read()?;
            device.confirm(&self.groups, &block);
        }
        Ok(c[3].to_bits() != 0)
    }
}
