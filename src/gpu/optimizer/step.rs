//! Stepping: one uniform write and one compute pass per step, one submission; the
//! Schedule-Free train/eval switch (one kernel pass over the params).

use super::GpuOptimizer;
use crate::cpu::blockwise8::{Blockwise8Scalars, OneStateScalars};
use crate::error::{Error, Result};
use crate::gpu::blockwise8::Q8Uniform;
use crate::grads::GradOptions;
use crate::optim::OptimizerConfig;

impl GpuOptimizer {
    /// One optimizer step on the gradients currently in the grads buffer: one uniform write,
    /// one compute pass, one submission. Nothing is read back and nothing is waited for.
    pub fn step(&mut self) -> Result<()> {
        // Error scopes: a device destroyed by another thread after the check is a typed
        // error, not a panic.
        let ctx = self.ctx.clone();
        ctx.submit_step("step", "fused-optim step", |e| self.encode(e))
    }

    /// Record one step into the caller's encoder (the caller submits). Up to
    /// [`UNIFORM_RING`](super::UNIFORM_RING) steps may be recorded before one submission.
    /// Fails if the device is lost ([`Error::DeviceLost`]), or if the device step counter
    /// (with `skip_nonfinite`) had to be read and the read failed.
    pub fn encode_step(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.ctx.check_alive("encode_step")?;
        self.encode(encoder)
    }

    /// Whether a step may be taken now: the algorithm's own refusal (Schedule-Free in
    /// evaluation mode), [`Error::WrongMode`]; what a step checks
    /// before it records anything.
    pub fn check_step(&self) -> Result<()> {
        let first = &self.groups[0];
        first.config.check_step(&first.host)
    }

    fn encode(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.check_step()?;
        if let Some(device) = &mut self.device {
            device.prepare(&self.groups)?;
        }
        if let Some(clipper) = &self.clipper {
            clipper.encode(encoder);
        }
        let slot = self.groups[0].host.step;
        self.hyper_bytes.clear();
        if let Some(q8) = &self.q8 {
            // 8-bit state: bitsandbytes' scalars of each group's next step (f64 -> f32 once,
            // as the CPU step computes them); `device` is None (skip_nonfinite is refused).
            for group in &mut self.groups {
                let _ = group.config.begin_step(&mut group.host);
                let u = match &group.config {
                    OptimizerConfig::Adam(c) => {
                        Q8Uniform::new(&Blockwise8Scalars::new(c, group.host.step, group.host.lr))
                    }
                    other => Q8Uniform::one_state(&OneStateScalars::new(
                        other,
                        group.host.step,
                        group.host.lr,
                    )),
                };
                self.hyper_bytes.extend_from_slice(bytemuck::bytes_of(&u));
            }
            q8.encode(encoder, slot, &self.hyper_bytes);
            for group in &mut self.groups {
                group.config.end_step(&mut group.host);
                group.host.state_written = true;
            }
            return Ok(());
        }
        for group in &mut self.groups {
            let hyper = group.config.begin_step(&mut group.host);
            match &self.device {
                Some(d) => d.host_words(&hyper, group.host.lr, &mut self.hyper_bytes),
                None => self.hyper_bytes.extend_from_slice(hyper.as_bytes()),
            }
        }
        if let Some(device) = &self.device {
            device.encode_resolve(encoder, self.runner.slot_offset(slot));
        }
        match (&self.segmented, &self.factored) {
            (Some(kernel), _) => kernel.encode(
                encoder,
                slot,
                &self.hyper_bytes,
                self.groups[0].config.has_global_grad_clip(),
            ),
            (None, Some(kernel)) => kernel.encode(encoder, slot, &self.hyper_bytes),
            (None, None) => self.runner.encode(encoder, slot, &self.hyper_bytes),
        }
        if let Some(device) = &self.device {
            device.encode_update_scale(encoder);
        }
        for group in &mut self.groups {
            group.config.end_step(&mut group.host);
        }
        Ok(())
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`: the
    /// params hold y) or evaluation mode (`false`: the params hold x): one kernel pass over
    /// the params, submitted now, when a switch is needed. [`Error::Unsupported`] for
    /// algorithms without modes; nothing changes then. (Inherent, not in
    /// [`Optimizer`](crate::Optimizer), as on the CPU paths, where it takes the params.)
    pub fn set_train_mode(&mut self, train: bool) -> Result<()> {
        self.ctx.check_alive("set_train_mode")?;
        let mut hosts = self.group_hosts();
        let mut bytes = Vec::new();
        let mut passes = 0;
        for (group, host) in self.groups.iter().zip(&mut hosts) {
            if let Some(u) = group.config.mode_switch(host, train)? {
                bytes.extend_from_slice(u.as_bytes());
                passes += 1;
            }
        }
        if passes != 0 && passes != self.groups.len() {
            return Err(Error::WrongMode {
                optimizer: self.groups[0].config.name(),
                reason: "the parameter groups are in different modes",
            });
        }
        if passes > 0 {
            // The switch reads no gradient: the plain pipeline, whatever the gradient
            // options (a skipped step's flag must not skip the switch).
            let grad_pipeline = self.grad_options != GradOptions::default();
            self.runner.set_grad_pipeline(false)?;
            self.runner.submit(self.groups[0].host.step, &bytes);
            self.runner.set_grad_pipeline(grad_pipeline)?;
        }
        self.set_group_hosts(&hosts);
        Ok(())
    }
}
