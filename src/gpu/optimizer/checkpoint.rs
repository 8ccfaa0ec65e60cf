//! Checkpoints of a `GpuOptimizer` (the format is `crate::checkpoint`'s).

use std::path::Path;

use super::GpuOptimizer;
use crate::checkpoint::TensorValues;
use crate::error::{Error, Result};
use crate::gpu::device_step::DeviceSteps;
use crate::gpu::kernel::Specialization;
use crate::optim::OptimizerConfig;

impl GpuOptimizer {
    /// [`Optimizer::save_checkpoint`](crate::Optimizer::save_checkpoint): F32 tensors read
    /// back from the device, the host state at the true step count, the groups.
    pub(super) fn save(&self, path: &Path) -> Result<()> {
        self.ctx.check_alive("save_checkpoint")?;
        if let Some(q8) = &self.q8 {
            // The 8-bit layout of `cpu::q8_checkpoint` (bitsandbytes' names), the same file
            // a CpuOptimizer with 8-bit state writes.
            self.one_group_for_8bit_checkpoints(path)?;
            let state = q8.read()?;
            return crate::cpu::q8_checkpoint::save(
                path,
                &self.groups[0].config,
                &self.groups[0].host,
                &state,
            );
        }
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
                config: self.groups[0].config,
                host: hosts[0],
                n: self.state_len,
                tensors,
                groups: self.group_states(&hosts),
                shapes: self.member_shapes(),
            },
        )
    }

    /// [`Optimizer::load_checkpoint`](crate::Optimizer::load_checkpoint): validated completely
    /// (file, kind, groups, the kernel for its options) before anything changes.
    pub(super) fn load(&mut self, path: &Path) -> Result<()> {
        self.ctx.check_alive("load_checkpoint")?;
        if let Some(q8) = &self.q8 {
            self.one_group_for_8bit_checkpoints(path)?;
            // Validated completely (format, checksums, maps, blocksize, segment lengths,
            // min_8bit_size, absmax) before anything changes.
            let (config, host, state) = crate::cpu::q8_checkpoint::load(
                path,
                &self.groups[0].config,
                &q8.host_template()?,
            )?;
            crate::gpu::blockwise8::check_like(&state, &q8.host_template()?)?;
            q8.write(&state);
            self.groups[0].config = config;
            self.groups[0].host = host;
            return Ok(());
        }
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(
            path,
            &state,
            &self.groups[0].config,
            self.state_len,
            &self.member_shapes(),
        )?;
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
        self.groups[0].config = state.config;
        self.groups[0].host = state.host;
        for (ours, group) in self.groups.iter_mut().zip(&state.groups).skip(1) {
            ours.config = group.config;
            ours.host = group.host;
        }
        let hosts = self.group_hosts();
        if let Some(d) = &mut self.device {
            d.reset(&hosts)?; // cannot fail: checked above
        }
        Ok(())
    }

    /// 8-bit checkpoints hold one configuration (bitsandbytes' `param_groups` are not
    /// written): refused with several parameter groups.
    fn one_group_for_8bit_checkpoints(&self, path: &Path) -> Result<()> {
        if self.groups.len() > 1 {
            return Err(Error::Checkpoint {
                file: path.display().to_string(),
                reason: "8-bit state checkpoints (fused-optim-blockwise8/1) of an optimizer \
                         with several parameter groups are not implemented"
                    .into(),
            });
        }
        Ok(())
    }
}
