//! State access and the [`Optimizer`] trait: lr, step count, host scalars, state tensors,
//! gradient options, checkpoints.

use std::path::Path;

use super::GpuOptimizer;
use crate::checkpoint::TensorValues;
use crate::error::{Error, Result};
use crate::gpu::buffer::{read_bytes, read_f32};
use crate::gpu::device_step::DeviceSteps;
use crate::gpu::gradients::{GradOptions, NormClipper};
use crate::gpu::kernel::Specialization;
use crate::gpu::low_precision::LowFormat;
use crate::optim::{HostState, OptimizerConfig};
use crate::optimizer::Optimizer;

impl GpuOptimizer {
    /// Read one state tensor back as the device keeps it: f32 (bf16 state widened to f32).
    /// Waits for the device. [`Optimizer::read_state`] gives the same values as f64.
    pub fn read_state_f32(&self, name: &str) -> Result<Vec<f32>> {
        let k = self.config.state_index(name)?;
        if self.bf16_state {
            let n = self.params.len();
            let bytes = read_bytes(&self.ctx, &self.states[k], 0, n.div_ceil(2) as u64 * 4)?;
            let bits: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes);
            return Ok(bits[..n]
                .iter()
                .map(|&b| LowFormat::Bf16.value(b))
                .collect());
        }
        read_f32(&self.ctx, &self.states[k], 0, self.params.len())
    }

    /// Overwrite one state tensor with f32 values (rounded to bf16, nearest even, when the
    /// state is bf16); takes effect at the next submission. On error nothing changes.
    pub fn load_state_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let k = self.config.state_index(name)?;
        if values.len() != self.params.len() {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.params.len(),
                got: values.len(),
            });
        }
        if name == "momentum_buffer" {
            let mut hosts = self.true_hosts()?;
            for h in &mut hosts {
                h.state_written = true;
            }
            if let Some(d) = &mut self.device {
                d.reset(&hosts)?;
            }
            self.set_group_hosts(&hosts);
        }
        self.write_state(k, values);
        Ok(())
    }
}

/// The GPU side of the shared control surface. State reads and the last step's findings
/// (`last_grad_norm`, `last_step_skipped`) read back from the device and wait; everything else
/// is host-side. `set_lr` sets every parameter group's lr ([`GpuOptimizer::set_group_lr`]
/// sets one). With `skip_nonfinite` the step counter moves to the device (see
/// [`GpuOptimizer::device_step_count`]); turning it off brings the count back (reads it).
impl Optimizer for GpuOptimizer {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn lr(&self) -> f64 {
        self.host.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.validate_lr(lr)?;
        self.host.lr = lr;
        for (_, host) in &mut self.others {
            host.lr = lr;
        }
        Ok(())
    }

    fn step_count(&self) -> u64 {
        match &self.device {
            Some(d) => d.step_upper_bound(),
            None => self.host.step,
        }
    }

    fn host_state(&self) -> HostState {
        match &self.device {
            Some(d) => d.hosts_at(&self.configs[..1], self.step_count(), &[self.host.lr])[0],
            None => self.host,
        }
    }

    fn state_names(&self) -> Vec<&'static str> {
        self.state_names.clone()
    }

    fn read_state(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self
            .read_state_f32(name)?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    fn load_state(&mut self, name: &str, values: &[f64]) -> Result<()> {
        let rounded: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        self.load_state_f32(name, &rounded)
    }

    fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        let scaler_on = self.device.as_ref().is_some_and(|d| d.scaler_on());
        if scaler_on && !options.skip_nonfinite {
            return Err(Error::InvalidCombination {
                optimizer: "gradient options",
                reason: "the device loss scaler needs skip_nonfinite: turn the scaler off \
                         first (set_device_loss_scaler(None))",
            });
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
                &self.configs,
                &self.group_hosts(),
            )?);
        } else if !options.skip_nonfinite && self.device.is_some() {
            hosts_back = Some(self.true_hosts()?);
        }
        let was_on = self.grad_options != GradOptions::default();
        self.runner
            .set_grad_pipeline(options != GradOptions::default())?;
        if options.needs_reduction() && self.clipper.is_none() {
            match NormClipper::new(
                &self.params,
                &self.control,
                self.low.as_ref().map(|l| (l.code, &l.grads)),
            ) {
                Ok(c) => self.clipper = Some(c),
                Err(e) => {
                    self.runner.set_grad_pipeline(was_on)?;
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
        self.grad_options = options;
        Ok(())
    }

    fn grad_options(&self) -> GradOptions {
        self.grad_options
    }

    fn last_grad_norm(&self) -> Result<Option<f64>> {
        if self.clipper.is_none() {
            return Ok(None);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        Ok(Some(f64::from(c[4])))
    }

    fn last_step_skipped(&self) -> Result<bool> {
        if self.device.is_none() || self.clipper.is_none() {
            return Ok(false);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        if let Some(device) = &self.device {
            let block = device.read()?;
            device.confirm(&self.configs, &block);
        }
        Ok(c[3].to_bits() != 0)
    }

    fn is_training(&self) -> bool {
        self.config.is_training(&self.host)
    }

    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let tensors = self
            .state_names
            .iter()
            .map(|name| {
                Ok((
                    name.to_string(),
                    TensorValues::F32(self.read_state_f32(name)?),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let hosts = self.true_hosts()?;
        crate::checkpoint::save(
            path,
            &crate::checkpoint::OptimizerState {
                config: self.config,
                host: hosts[0],
                n: self.params.len(),
                tensors,
                groups: self.group_states(&hosts),
            },
        )
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(path, &state, &self.config, self.params.len())?;
        let ours = self.group_states(&self.group_hosts());
        if self.device.is_some() {
            DeviceSteps::check_countable(state.host.step)?;
        }
        let fits = state.groups.len() == ours.len()
            && state.groups.iter().zip(&ours).all(|(a, b)| {
                a.segments == b.segments
                    && a.config.name() == b.config.name()
                    && a.config.overrides() == b.config.overrides()
            });
        if !fits {
            return Err(Error::Checkpoint {
                file: path.display().to_string(),
                reason: format!(
                    "its parameter groups ({} groups) differ from this optimizer's ({})",
                    state.groups.len(),
                    ours.len()
                ),
            });
        }
        // The last fallible part: the kernel for the checkpoint's options (weight decay,
        // maximize may differ from ours), compiled before anything changes.
        let configs: Vec<OptimizerConfig> = std::iter::once(state.config)
            .chain(state.groups.iter().skip(1).map(|g| g.config))
            .collect();
        self.runner
            .set_specialization(Specialization::of(&configs))?;
        for (k, (_, values)) in state.tensors.iter().enumerate() {
            self.write_state(k, &values.to_f32());
        }
        self.config = state.config;
        self.host = state.host;
        for ((config, host), group) in self.others.iter_mut().zip(state.groups.iter().skip(1)) {
            *config = group.config;
            *host = group.host;
        }
        self.configs = std::iter::once(self.config)
            .chain(self.others.iter().map(|(c, _)| *c))
            .collect();
        let hosts = self.group_hosts();
        if let Some(d) = &mut self.device {
            d.reset(&hosts)?; // cannot fail: checked above
        }
        Ok(())
    }
}
