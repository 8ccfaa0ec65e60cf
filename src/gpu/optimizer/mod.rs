//! `GpuOptimizer`: pipeline, bind groups and state buffers built once; `step` writes one
//! small uniform and dispatches one kernel per binding window, in one submission.

use super::buffer::{create_flat, fill, flat_bytes, read_f32, FlatParams, FLAT_USAGE};
use super::context::GpuContext;
use super::device_step::{DeviceSteps, SCALE_OFFSET};
use super::gradients::{control_buffer, GradOptions, NormClipper};
use super::kernel::{KernelRunner, KernelSpec, LowBinding, Specialization};
use super::low_precision::{LowFormat, LowPrecisionParams};
use super::shaders::kernel_source_for;
use crate::dispatch::padded_len;
use crate::error::{Error, Result};
use crate::optim::AdamConfig;
use crate::optim::{HostState, OptimizerConfig};
use crate::optimizer::Optimizer;
use crate::scaler::LossScaler;

mod control;

pub use super::kernel::{MAX_GROUPS, UNIFORM_RING};
/// One optimizer running on the device over a [`FlatParams`].
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer};
/// let ctx = GpuContext::new()?;
/// let params = FlatParams::from_slice(&ctx, &[1.0, -2.0, 3.0])?;
/// let mut adam = GpuOptimizer::new(&params, AdamConfig::default())?;
/// params.write_grads(&[0.1, 0.2, -0.3])?;
/// adam.step()?; // one uniform write + one dispatch, no read-back
/// let p = params.read_params()?;
/// # Ok(()) }
/// ```
pub struct GpuOptimizer {
    ctx: GpuContext,
    config: OptimizerConfig,
    host: HostState,
    params: FlatParams,
    state_names: Vec<&'static str>,
    states: Vec<wgpu::Buffer>,
    runner: KernelRunner,
    control: wgpu::Buffer,
    grad_options: GradOptions,
    clipper: Option<NormClipper>,
    /// With `skip_nonfinite`: the step counter (and loss scaler) on the device. `host.step`
    /// then counts the steps issued, and the true count is the device's.
    device: Option<DeviceSteps>,
    /// Parameter groups 1.. (group 0 is `config` / `host`), each with its own
    /// hyper-parameters and host scalars.
    others: Vec<(OptimizerConfig, HostState)>,
    /// Every group's config (group 0 first), for the device step counter.
    configs: Vec<OptimizerConfig>,
    /// The step's uniform bytes (one StepUniform per group), reused every step.
    hyper_bytes: Vec<u8>,
    _lane_groups: Option<wgpu::Buffer>,
    low: Option<LowSetup>,
    /// Segment names of each group (empty without groups).
    group_segments: Vec<Vec<String>>,
    /// State tensors stored as packed bf16.
    bf16_state: bool,
    /// f16 params converted with native f16 (`shader-f16`).
    native_f16: bool,
}

/// The 16-bit buffers of a low-precision optimizer.
struct LowSetup {
    code: u32,
    stochastic: bool,
    grads: wgpu::Buffer,
    params: wgpu::Buffer,
}

/// A parameter group: named segments of the [`FlatParams`] sharing hyper-parameters (e.g. no
/// weight decay on biases and norms). All groups are updated by the same dispatch: the kernel
/// looks up each vec4 lane's group in a table on the device.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// Segment names.
    pub segments: Vec<String>,
    /// The group's hyper-parameters (same optimizer and structural options as every other
    /// group: the state tensors are shared buffers).
    pub config: OptimizerConfig,
}

impl std::fmt::Debug for GpuOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuOptimizer")
            .field("config", &self.config)
            .field("host", &self.host)
            .field("len", &self.params.len())
            .field("windows", &self.runner.windows())
            .finish()
    }
}

impl GpuOptimizer {
    /// Validate `config`, allocate and initialise the state buffers, build the pipeline and
    /// one bind group per binding window.
    pub fn new(params: &FlatParams, config: impl Into<OptimizerConfig>) -> Result<Self> {
        Self::build(params, config.into(), Vec::new(), None, None, None)
    }

    /// Adam or AdamW with its state tensors (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) kept
    /// in bf16: half the state memory and traffic; the arithmetic stays f32 and each state
    /// value is rounded to bf16 when stored (to nearest even, or stochastically). `low`: the
    /// 16-bit params and gradients as well (see [`Self::new_low_precision`]), or f32 ones.
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer};
    /// let ctx = GpuContext::new()?;
    /// let params = FlatParams::from_slice(&ctx, &[0.5; 4096])?;
    /// let mut opt = GpuOptimizer::with_bf16_state(&params, None, AdamConfig::adamw(), true)?;
    /// params.write_grads(&[0.01; 4096])?;
    /// opt.step()?;
    /// let m = opt.read_state("exp_avg")?; // bf16 values, widened to f32
    /// # Ok(()) }
    /// ```
    pub fn with_bf16_state(
        params: &FlatParams,
        low: Option<(&LowPrecisionParams, bool)>,
        config: AdamConfig,
        stochastic_rounding: bool,
    ) -> Result<Self> {
        let low = match low {
            None => None,
            Some((lp, lp_stochastic)) => {
                if lp_stochastic && lp.format() == LowFormat::F16 {
                    return Err(Error::InvalidCombination {
                        optimizer: "low precision",
                        reason: "stochastic rounding is implemented for bf16 params only",
                    });
                }
                if lp.master().params_buffer() != params.params_buffer() {
                    return Err(Error::InvalidCombination {
                        optimizer: "low precision",
                        reason: "`params` must be the master weights of the low-precision params",
                    });
                }
                Some(LowSetup {
                    code: lp.format().code(),
                    stochastic: lp_stochastic,
                    grads: lp.grads_buffer().clone(),
                    params: lp.params_buffer().clone(),
                })
            }
        };
        Self::build(
            params,
            config.into(),
            Vec::new(),
            None,
            low,
            Some(stochastic_rounding),
        )
    }

    /// An optimizer over 16-bit params and gradients with f32 master weights and f32 state:
    /// each step reads the f16/bf16 gradients, updates the masters and the state, and writes
    /// the rounded 16-bit params (`stochastic_rounding`: bf16 only). The gradient pipeline
    /// (unscaling, clipping, skipping non-finite steps) works on the 16-bit gradients too.
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, GpuContext, GpuOptimizer, LowFormat, LowPrecisionParams};
    /// let ctx = GpuContext::new()?;
    /// let lp = LowPrecisionParams::new(&ctx, &[0.5; 4096], LowFormat::Bf16)?;
    /// let mut opt = GpuOptimizer::new_low_precision(&lp, AdamConfig::default(), true)?;
    /// lp.write_grads_bf16(&[half::bf16::from_f32(0.01); 4096])?;
    /// opt.step()?;
    /// let bits = lp.read_param_bits()?; // the bf16 params the model uses next
    /// # Ok(()) }
    /// ```
    pub fn new_low_precision(
        params: &LowPrecisionParams,
        config: impl Into<OptimizerConfig>,
        stochastic_rounding: bool,
    ) -> Result<Self> {
        if stochastic_rounding && params.format() == LowFormat::F16 {
            return Err(Error::InvalidCombination {
                optimizer: "low precision",
                reason: "stochastic rounding is implemented for bf16 params only",
            });
        }
        let low = LowSetup {
            code: params.format().code(),
            stochastic: stochastic_rounding,
            grads: params.grads_buffer().clone(),
            params: params.params_buffer().clone(),
        };
        Self::build(
            params.master(),
            config.into(),
            Vec::new(),
            None,
            Some(low),
            None,
        )
    }

    /// An optimizer whose parameters are split into groups with their own hyper-parameters,
    /// updated by one dispatch per step. Every segment must belong to exactly one group, every
    /// group must use the same optimizer with the same structural options, at most
    /// [`MAX_GROUPS`] groups, and each segment must start on a multiple of 4 elements (build
    /// the params with [`FlatParamsBuilder::lane_aligned`](crate::FlatParamsBuilder::lane_aligned)).
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, ParamGroup};
    /// let ctx = GpuContext::new()?;
    /// let params = FlatParams::builder().lane_aligned()
    ///     .slice("w", &[0.5; 1000]).slice("b", &[0.0; 10]).build(&ctx)?;
    /// let decayed = AdamConfig { weight_decay: 0.1, ..AdamConfig::adamw() };
    /// let mut opt = GpuOptimizer::with_groups(&params, &[
    ///     ParamGroup { segments: vec!["w".into()], config: decayed.into() },
    ///     ParamGroup { segments: vec!["b".into()], config: AdamConfig { weight_decay: 0.0, ..decayed }.into() },
    /// ])?;
    /// # Ok(()) }
    /// ```
    pub fn with_groups(params: &FlatParams, groups: &[ParamGroup]) -> Result<Self> {
        if groups.is_empty() || groups.len() > MAX_GROUPS {
            return Err(Error::GroupCount {
                got: groups.len(),
                max: MAX_GROUPS,
            });
        }
        let first = groups[0].config;
        for g in groups {
            g.config.validate()?;
            if g.config.name() != first.name()
                || g.config.state_names() != first.state_names()
                || g.config.overrides() != first.overrides()
            {
                return Err(Error::InvalidCombination {
                    optimizer: first.name(),
                    reason: "every parameter group must use the same optimizer with the same \
                             structural options (state tensors, amsgrad, nesterov, centered)",
                });
            }
        }
        let lanes = crate::dispatch::padded_len(params.len() as u64) as usize / 4;
        let mut lane_group = vec![u32::MAX; lanes];
        for (k, g) in groups.iter().enumerate() {
            for name in &g.segments {
                let seg = params.segment(name)?;
                if seg.offset % 4 != 0 {
                    return Err(Error::Segment {
                        name: name.clone(),
                        reason: "does not start on a multiple of 4 elements: build the params \
                                 with FlatParamsBuilder::lane_aligned() to use groups",
                    });
                }
                let lanes_of_segment = seg.offset / 4..(seg.offset + seg.len()).div_ceil(4);
                for slot in &mut lane_group[lanes_of_segment] {
                    if *slot != u32::MAX {
                        return Err(Error::Segment {
                            name: name.clone(),
                            reason: "belongs to two parameter groups",
                        });
                    }
                    *slot = k as u32;
                }
            }
        }
        if let Some(s) = params
            .segments()
            .iter()
            .find(|s| lane_group[s.offset / 4] == u32::MAX)
        {
            return Err(Error::Segment {
                name: s.name.clone(),
                reason: "belongs to no parameter group",
            });
        }
        // Padding lanes between aligned segments follow the segment before them.
        for lane in 1..lanes {
            if lane_group[lane] == u32::MAX {
                lane_group[lane] = lane_group[lane - 1];
            }
        }
        let ctx = params.context();
        let table = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim lane groups"),
            size: (lanes as u64 * 4).max(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&table, 0, bytemuck::cast_slice(&lane_group));
        let others = groups[1..].iter().map(|g| g.config).collect();
        let mut opt = Self::build(params, first, others, Some(table), None, None)?;
        opt.group_segments = groups.iter().map(|g| g.segments.clone()).collect();
        Ok(opt)
    }

    fn build(
        params: &FlatParams,
        config: OptimizerConfig,
        other_configs: Vec<OptimizerConfig>,
        lane_groups: Option<wgpu::Buffer>,
        low: Option<LowSetup>,
        bf16_state: Option<bool>,
    ) -> Result<Self> {
        config.validate()?;
        let ctx = params.context().clone();
        let n = params.len();

        let state_names = config.state_names();
        let mut states = Vec::with_capacity(state_names.len());
        for name in &state_names {
            let buffer = match bf16_state {
                None => {
                    let b = create_flat(&ctx, "fused-optim state", n)?;
                    fill(&ctx, &b, n, config.initial_state_value(name) as f32);
                    b
                }
                // Adam's states start at 0: a zeroed buffer is bf16 zeros too.
                Some(_) => ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused-optim bf16 state"),
                    size: padded_len(n as u64) * 2,
                    usage: FLAT_USAGE,
                    mapped_at_creation: false,
                }),
            };
            states.push(buffer);
        }

        // The kernel variant (lanes, native f16 where used and available, which bindings)
        // follows from the device and the buffers given (KernelRunner::new).
        let (file, source, slots) = kernel_source_for(&config);
        let control = control_buffer(&ctx, &GradOptions::default());
        let runner = KernelRunner::new(
            params,
            KernelSpec {
                file,
                source,
                slots,
                active: if bf16_state.is_some() {
                    Vec::new()
                } else {
                    state_names.iter().copied().zip(states.iter()).collect()
                },
                constants: config.overrides(),
                specialization: Specialization::of(
                    &std::iter::once(config)
                        .chain(other_configs.iter().copied())
                        .collect::<Vec<_>>(),
                ),
                trusted: true,
                control: &control,
                lane_groups: lane_groups.as_ref(),
                low: low.as_ref().map(|l| LowBinding {
                    format_code: l.code,
                    stochastic: l.stochastic,
                    grads: &l.grads,
                    params: &l.params,
                }),
                packed_states: bf16_state.map(|stochastic| {
                    (
                        state_names.iter().copied().zip(states.iter()).collect(),
                        stochastic,
                    )
                }),
            },
        )?;

        let native_f16 = runner.variant().uses_native_f16();
        Ok(Self {
            host: config.initial_host_state(),
            ctx,
            config,
            params: params.clone(),
            state_names,
            states,
            runner,
            control,
            grad_options: GradOptions::default(),
            clipper: None,
            device: None,
            configs: std::iter::once(config)
                .chain(other_configs.iter().copied())
                .collect(),
            others: other_configs
                .into_iter()
                .map(|c| (c, c.initial_host_state()))
                .collect(),
            hyper_bytes: Vec::with_capacity(MAX_GROUPS * 48),
            _lane_groups: lane_groups,
            low,
            group_segments: Vec::new(),
            bf16_state: bf16_state.is_some(),
            native_f16,
        })
    }

    /// One optimizer step on the gradients currently in the grads buffer: one uniform write,
    /// one compute pass, one submission. Nothing is read back and nothing is waited for.
    pub fn step(&mut self) -> Result<()> {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fused-optim step"),
                });
        self.encode_step(&mut encoder)?;
        self.ctx.queue().submit([encoder.finish()]);
        Ok(())
    }

    /// Record one step into the caller's encoder (the caller submits). Up to
    /// [`UNIFORM_RING`] steps may be recorded before one submission. Fails only if the
    /// device step counter (with `skip_nonfinite`) had to be read and the read failed.
    pub fn encode_step(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.config.check_step(&self.host)?;
        if let Some(device) = &mut self.device {
            device.prepare(&self.configs)?;
        }
        if let Some(clipper) = &self.clipper {
            clipper.encode(encoder);
        }
        self.hyper_bytes.clear();
        let slot = self.host.step;
        let hyper = self.config.begin_step(&mut self.host);
        match &self.device {
            Some(d) => d.host_words(&hyper, self.host.lr, &mut self.hyper_bytes),
            None => self.hyper_bytes.extend_from_slice(hyper.as_bytes()),
        }
        for (config, host) in &mut self.others {
            let hyper = config.begin_step(host);
            match &self.device {
                Some(d) => d.host_words(&hyper, host.lr, &mut self.hyper_bytes),
                None => self.hyper_bytes.extend_from_slice(hyper.as_bytes()),
            }
            config.end_step(host);
        }
        if let Some(device) = &self.device {
            device.encode_resolve(encoder, self.runner.slot_offset(slot));
        }
        self.runner.encode(encoder, slot, &self.hyper_bytes);
        if let Some(device) = &self.device {
            device.encode_update_scale(encoder);
        }
        self.config.end_step(&mut self.host);
        Ok(())
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`: the
    /// params hold y) or evaluation mode (`false`: the params hold x): one kernel pass over
    /// the params, submitted now, when a switch is needed. [`Error::Unsupported`] for
    /// algorithms without modes; nothing changes then.
    pub fn set_train_mode(&mut self, train: bool) -> Result<()> {
        let mut hosts = self.group_hosts();
        let configs = self.configs.clone();
        let mut bytes = Vec::new();
        let mut passes = 0;
        for (config, host) in configs.iter().zip(&mut hosts) {
            if let Some(u) = config.mode_switch(host, train)? {
                bytes.extend_from_slice(u.as_bytes());
                passes += 1;
            }
        }
        if passes != 0 && passes != configs.len() {
            return Err(Error::WrongMode {
                optimizer: self.config.name(),
                reason: "the parameter groups are in different modes",
            });
        }
        if passes > 0 {
            // The switch reads no gradient: the plain pipeline, whatever the gradient
            // options (a skipped step's flag must not skip the switch).
            let grad_pipeline = self.grad_options != GradOptions::default();
            self.runner.set_grad_pipeline(false)?;
            self.runner.submit(self.host.step, &bytes);
            self.runner.set_grad_pipeline(grad_pipeline)?;
        }
        self.set_group_hosts(&hosts);
        Ok(())
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
                self.set_grad_options(options)?;
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
        match &self.device {
            Some(d) => Ok(d.steps_from(&d.read()?)),
            None => Ok(self.host.step),
        }
    }

    /// Every group's host state (group 0 first), as the host sees it.
    fn group_hosts(&self) -> Vec<HostState> {
        std::iter::once(self.host)
            .chain(self.others.iter().map(|(_, h)| *h))
            .collect()
    }

    fn set_group_hosts(&mut self, hosts: &[HostState]) {
        self.host = hosts[0];
        for ((_, host), h) in self.others.iter_mut().zip(&hosts[1..]) {
            *host = *h;
        }
    }

    /// Every group's host state at the true step count: read from the device when it keeps
    /// the count (waits), else the host's.
    fn true_hosts(&self) -> Result<Vec<HostState>> {
        match &self.device {
            None => Ok(self.group_hosts()),
            Some(d) => {
                let t = d.steps_from(&d.read()?);
                Ok(d.hosts_at(&self.configs, t, &self.lrs()))
            }
        }
    }

    fn lrs(&self) -> Vec<f64> {
        self.group_hosts().iter().map(|h| h.lr).collect()
    }

    /// `clip_grad_norm_(error_if_nonfinite=True)`, checked when the caller wants: an error
    /// if the last step's gradient norm was NaN or infinite (detected on the device from the
    /// exponent bits). Reads back 32 bytes.
    pub fn check_finite_gradients(&self) -> Result<()> {
        if self.clipper.is_none() {
            return Ok(());
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        if c[3].to_bits() != 0 {
            return Err(Error::NonFiniteGradients {
                norm: f64::from(c[4]),
            });
        }
        Ok(())
    }

    /// Set the learning rate of one parameter group (0 = the first) from the next step on.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.config.validate_lr(lr)?;
        match group {
            0 => self.host.lr = lr,
            k => {
                let groups = self.others.len() + 1;
                self.others
                    .get_mut(k - 1)
                    .ok_or(Error::GroupIndex { index: k, groups })?
                    .1
                    .lr = lr;
            }
        }
        Ok(())
    }

    /// Whether this optimizer's kernel converts f16 params with native f16 (the device's
    /// `shader-f16`) rather than `pack2x16float` (f16 low precision only).
    pub fn uses_shader_f16(&self) -> bool {
        self.native_f16
    }

    /// Number of parameter groups.
    pub fn groups(&self) -> usize {
        self.others.len() + 1
    }

    /// Replace the host-side scalar state of group 0 (e.g. from a checkpoint; the device
    /// step count too when the device keeps it).
    pub fn set_host_state(&mut self, host: HostState) -> Result<()> {
        self.config.validate_lr(host.lr)?;
        let mut hosts = self.true_hosts()?;
        hosts[0] = host;
        if let Some(d) = &mut self.device {
            d.reset(&hosts)?;
        }
        self.set_group_hosts(&hosts);
        Ok(())
    }

    /// The parameters this optimizer updates.
    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    /// Number of binding windows (dispatches per step).
    pub fn windows(&self) -> usize {
        self.runner.windows()
    }

    /// The device buffer of one state tensor.
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        Ok(&self.states[self.config.state_index(name)?])
    }

    /// Write state tensor `k` (rounded to bf16, nearest even, when the state is bf16).
    fn write_state(&self, k: usize, values: &[f32]) {
        if self.bf16_state {
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

    fn group_states(&self, hosts: &[HostState]) -> Vec<crate::checkpoint::GroupState> {
        if self.others.is_empty() {
            return Vec::new();
        }
        self.configs
            .iter()
            .copied()
            .zip(hosts.iter().copied())
            .zip(&self.group_segments)
            .map(|((config, host), segments)| crate::checkpoint::GroupState {
                segments: segments.clone(),
                config,
                host,
            })
            .collect()
    }
}
