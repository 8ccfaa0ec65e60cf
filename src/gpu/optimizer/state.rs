//! State tensors on the device (f32, or packed bf16), and the [`Optimizer`] trait: lr, step
//! count, host scalars, state by name, gradient options, checkpoints.

use std::path::Path;

use super::GpuOptimizer;
use crate::cpu::blockwise8::Blockwise8State;
use crate::error::{Error, Result};
use crate::gpu::buffer::{flat_bytes, read_bytes_async, read_f32_async};
use crate::gpu::low_precision::LowFormat;
use crate::grads::GradOptions;
use crate::optim::{HostState, OptimizerConfig, StateFormat};
use crate::optimizer::Optimizer;

impl GpuOptimizer {
    /// Read one state tensor back as the device keeps it: f32 (bf16 state widened to f32).
    /// Waits for the device (on the web [`Error::WouldBlock`]: use
    /// [`GpuOptimizer::read_state_f32_async`]). [`Optimizer::read_state`] gives the same
    /// values as f64.
    pub fn read_state_f32(&self, name: &str) -> Result<Vec<f32>> {
        crate::gpu::wait::block_on("read_state_f32", self.read_state_f32_async(name))?
    }

    /// [`GpuOptimizer::read_state_f32`] without blocking (the read-back to await on the web).
    pub async fn read_state_f32_async(&self, name: &str) -> Result<Vec<f32>> {
        let k = self.groups[0].config.state_index(name)?;
        if let Some(q8) = &self.q8 {
            // Dequantised (`qmap[code] * absmax`); 0 outside every segment.
            return q8.read_moments(k);
        }
        if self.bf16_state {
            let n = self.state_len;
            let bytes =
                read_bytes_async(&self.ctx, &self.states[k], 0, n.div_ceil(2) as u64 * 4).await?;
            let bits: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes);
            return Ok(bits[..n]
                .iter()
                .map(|&b| LowFormat::Bf16.value(b))
                .collect());
        }
        read_f32_async(&self.ctx, &self.states[k], 0, self.state_lens[k]).await
    }

    /// Overwrite one state tensor with f32 values (rounded to bf16, nearest even, when the
    /// state is bf16); takes effect at the next submission. On error nothing changes.
    pub fn load_state_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.ctx.check_alive("load_state")?;
        let k = self.groups[0].config.state_index(name)?;
        if values.len() != self.state_lens[k] {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.state_lens[k],
                got: values.len(),
            });
        }
        if let Some(q8) = &self.q8 {
            // Quantised per block as a step stores them (32-bit segments: as given).
            let mut state = q8.read()?;
            state.load_moments(k, &q8.gather(values))?;
            q8.write(&state);
            return Ok(());
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

    /// The device buffer of one state tensor.
    /// [`Error::Unsupported`] with 8-bit state (its codes, absmax and 32-bit state are not
    /// one buffer per tensor: see [`GpuOptimizer::blockwise8_state`]).
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        let k = self.groups[0].config.state_index(name)?;
        if self.q8.is_some() {
            return Err(Error::Unsupported {
                optimizer: self.groups[0].config.name(),
                feature: "state_buffer with 8-bit state (StateFormat::Blockwise8)",
            });
        }
        Ok(&self.states[k])
    }

    /// How the state is stored ([`StateFormat`]).
    pub fn state_format(&self) -> StateFormat {
        match &self.q8 {
            Some(q8) => StateFormat::Blockwise8 {
                min_size: q8.min_size(),
            },
            None if self.bf16_state => StateFormat::Bf16,
            None => StateFormat::F32,
        }
    }

    /// Device bytes of the optimizer state, exactly: f32 `4 * round_up(n, 4)` per state
    /// tensor; bf16 `2 * round_up(n, 4)` per state tensor; 8-bit per tensor of at least
    /// `min_size` elements 2 code bytes per element slot of its blocks (`512 * ceil(len /
    /// 256)`) and 8 bytes of absmax per block, per smaller tensor `2048 * ceil(len / 256)`
    /// (f32 m and v), plus 132 096 bytes of tables (two maps, two 65536-entry lookup
    /// tables) and 16 bytes of block table per block.
    pub fn state_bytes(&self) -> u64 {
        match &self.q8 {
            Some(q8) => q8.state_bytes(),
            None => self.states.iter().map(|b| b.size()).sum(),
        }
    }

    /// With 8-bit state: the whole state read back in bitsandbytes' layout (codes,
    /// absmax, 32-bit state per segment; waits). `None` for other formats.
    pub fn blockwise8_state(&self) -> Result<Option<Blockwise8State>> {
        self.q8.as_ref().map(|q| q.read()).transpose()
    }

    /// With 8-bit state: install `state` (codes, absmax and 32-bit state per segment, e.g.
    /// from a CPU optimizer's [`CpuOptimizer::blockwise8_state`](crate::CpuOptimizer::blockwise8_state)); takes effect at the next
    /// submission. Checked before anything changes: [`Error::Unsupported`] without 8-bit
    /// state, [`Error::LengthMismatch`] for other segment lengths, `min_size`, code or absmax
    /// lengths, [`Error::InvalidState`] for an absmax that is NaN, infinite or negative or a
    /// non-finite 32-bit value.
    pub fn load_blockwise8_state(&mut self, state: &Blockwise8State) -> Result<()> {
        self.ctx.check_alive("load_blockwise8_state")?;
        let Some(q8) = &self.q8 else {
            return Err(Error::Unsupported {
                optimizer: self.groups[0].config.name(),
                feature: "load_blockwise8_state without StateFormat::Blockwise8",
            });
        };
        crate::gpu::blockwise8::check_like(state, &q8.host_template()?)?;
        q8.write(state);
        let mut hosts = self.group_hosts();
        for h in &mut hosts {
            h.state_written = true;
        }
        self.set_group_hosts(&hosts);
        Ok(())
    }

    /// Write state tensor `k` (rounded to bf16, nearest even, when the state is bf16).
    pub(super) fn write_state(&self, k: usize, values: &[f32]) {
        if values.is_empty() {
            // (An empty state tensor: Adafactor's factors when every tensor is 1-D.)
        } else if self.bf16_state {
            let mut bits: Vec<u16> = values.iter().map(|&v| LowFormat::Bf16.round(v)).collect();
            bits.resize(values.len().next_multiple_of(2), 0);
            self.ctx
                .queue()
                .write_buffer(&self.states[k], 0, bytemuck::cast_slice(&bits));
        } else {
            debug_assert!(self.states[k].size() >= flat_bytes(values.len()));
            self.ctx
                .queue()
                .write_buffer(&self.states[k], 0, bytemuck::cast_slice(values));
        }
    }
}

/// The GPU side of the shared control surface. State reads and the last step's findings
/// (`last_grad_norm`, `last_step_skipped`) read back from the device and wait; everything else
/// is host-side. `set_lr` sets every parameter group's lr ([`GpuOptimizer::set_group_lr`]
/// sets one); `config` and `host_state` are group 0's. With `skip_nonfinite` the step counter
/// moves to the device (see [`GpuOptimizer::device_step_count`]); turning it off brings the
/// count back (reads it). Norm clipping adds a two-pass reduction to every step's
/// submission; its pipelines are built by `set_grad_options`, once.
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, GradOptions, Optimizer};
/// let ctx = GpuContext::new()?;
/// let params = FlatParams::from_slice(&ctx, &[0.5; 1000])?;
/// let mut opt = GpuOptimizer::new(&params, AdamConfig::default())?;
/// // clip_grad_norm_(max_norm=1.0), computed on the device inside each step.
/// opt.set_grad_options(GradOptions { max_norm: Some(1.0), ..Default::default() })?;
/// params.write_grads(&[3.0; 1000])?;
/// opt.step()?;
/// let norm = opt.last_grad_norm()?; // Some(94.87), read back only because we asked
/// opt.check_finite_gradients()?;    // error_if_nonfinite, when wanted
/// # Ok(()) }
/// ```
impl Optimizer for GpuOptimizer {
    fn config(&self) -> &OptimizerConfig {
        &self.groups[0].config
    }

    fn lr(&self) -> f64 {
        self.groups[0].host.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.groups[0].config.validate_lr(lr)?;
        for g in &mut self.groups {
            g.host.lr = lr;
        }
        Ok(())
    }

    fn step_count(&self) -> u64 {
        match &self.device {
            Some(d) => d.step_upper_bound(),
            None => self.groups[0].host.step,
        }
    }

    fn host_state(&self) -> HostState {
        match &self.device {
            Some(d) => d.hosts_at(&self.groups[..1], self.step_count())[0],
            None => self.groups[0].host,
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
        self.apply_grad_options(options)
    }

    fn grad_options(&self) -> GradOptions {
        self.grad_options
    }

    fn last_grad_norm(&self) -> Result<Option<f64>> {
        self.read_grad_norm()
    }

    fn last_step_skipped(&self) -> Result<bool> {
        self.read_step_skipped()
    }

    fn is_training(&self) -> bool {
        self.groups[0].config.is_training(&self.groups[0].host)
    }

    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        self.save(path)
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.load(path)
    }
}
