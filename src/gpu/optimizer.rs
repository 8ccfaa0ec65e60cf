//! `GpuOptimizer`: pipeline, bind groups and state buffers built once; `step` writes one
//! small uniform and dispatches one kernel per binding window, in one submission.

use super::buffer::{create_flat, fill, flat_bytes, read_bytes, read_f32, FlatParams, FLAT_USAGE};
use super::context::GpuContext;
use super::gradients::{control_buffer, GradOptions, NormClipper};
use super::kernel::{KernelRunner, KernelSpec, LowBinding};
use super::low_precision::{LowFormat, LowPrecisionParams};
use super::shaders::kernel_for;
use crate::dispatch::padded_len;
use crate::error::{Error, Result};
use crate::optim::AdamConfig;
use crate::optim::{validate_lr, HostState, OptimizerConfig};

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
    /// Host state before the last step, to undo it if the device skipped that step.
    before_last_step: Option<HostState>,
    /// Parameter groups 1.. (group 0 is `config` / `host`), each with its own
    /// hyper-parameters and host scalars.
    others: Vec<(OptimizerConfig, HostState)>,
    others_before: Vec<HostState>,
    /// The step's uniform bytes (one Hyper per group), reused every step.
    hyper_bytes: Vec<u8>,
    _lane_groups: Option<wgpu::Buffer>,
    low: Option<LowSetup>,
    /// Segment names of each group (empty without groups).
    group_segments: Vec<Vec<String>>,
    /// State tensors stored as packed bf16.
    bf16_state: bool,
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
            return Err(Error::LengthMismatch {
                what: "parameter groups (1 to MAX_GROUPS)",
                expected: MAX_GROUPS,
                got: groups.len(),
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
                    fill(&ctx, &b, n, config.initial_state_value(name));
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

        let (file, source, slots) = kernel_for(&config);
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

        Ok(Self {
            host: HostState::new(config.lr()),
            ctx,
            config,
            params: params.clone(),
            state_names,
            states,
            runner,
            control,
            grad_options: GradOptions::default(),
            clipper: None,
            before_last_step: None,
            others_before: Vec::with_capacity(other_configs.len()),
            others: other_configs
                .into_iter()
                .map(|c| (c, HostState::new(c.lr())))
                .collect(),
            hyper_bytes: Vec::with_capacity(MAX_GROUPS * 48),
            _lane_groups: lane_groups,
            low,
            group_segments: Vec::new(),
            bf16_state: bf16_state.is_some(),
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
        self.encode_step(&mut encoder);
        self.ctx.queue().submit([encoder.finish()]);
        Ok(())
    }

    /// Record one step into the caller's encoder (the caller submits). Up to
    /// [`UNIFORM_RING`] steps may be recorded before one submission.
    pub fn encode_step(&mut self, encoder: &mut wgpu::CommandEncoder) {
        if let Some(clipper) = &self.clipper {
            clipper.encode(encoder);
        }
        self.before_last_step = Some(self.host);
        self.others_before.clear();
        self.others_before
            .extend(self.others.iter().map(|(_, h)| *h));
        self.hyper_bytes.clear();
        let hyper = self.config.begin_step(&mut self.host);
        self.hyper_bytes.extend_from_slice(hyper.as_bytes());
        for (config, host) in &mut self.others {
            let hyper = config.begin_step(host);
            self.hyper_bytes.extend_from_slice(hyper.as_bytes());
            config.end_step(host);
        }
        self.runner
            .encode(encoder, self.host.step - 1, &self.hyper_bytes);
        self.config.end_step(&mut self.host);
    }

    /// Set how gradients are pre-processed inside the step: unscaling (`grad_scale`), clipping
    /// by value and by global norm (see [`GradOptions`]). Norm clipping adds a two-pass
    /// reduction to every step's submission; its pipelines are built here, once.
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, GradOptions};
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
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        // Fallible parts first; on error nothing changes (the previous variant is built, so
        // switching back cannot fail).
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
        self.ctx
            .queue()
            .write_buffer(&self.control, 0, bytemuck::bytes_of(&options.control()));
        self.grad_options = options;
        Ok(())
    }

    /// The gradient options in force.
    pub fn grad_options(&self) -> GradOptions {
        self.grad_options
    }

    /// The global gradient norm of the last step (after unscaling and value clipping), read
    /// back from the device (waits). `None` without norm clipping.
    pub fn last_grad_norm(&self) -> Result<Option<f32>> {
        if self.clipper.is_none() {
            return Ok(None);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        Ok(Some(c[4]))
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

    /// Mixed precision: whether the device skipped the last step because its gradients held
    /// inf or NaN (with `GradOptions::skip_nonfinite`). Reads back 32 bytes. When it did, the
    /// host-side step counter (and NAdam's mu_product) is rolled back too, so call this before
    /// the next step, as PyTorch's `GradScaler.update` does; [`crate::LossScaler::step`]
    /// does it for you.
    pub fn last_step_skipped(&mut self) -> Result<bool> {
        if !self.grad_options.skip_nonfinite || self.clipper.is_none() {
            return Ok(false);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        let skipped = c[3].to_bits() != 0;
        if skipped {
            if let Some(before) = self.before_last_step.take() {
                self.host = HostState {
                    lr: self.host.lr,
                    ..before
                };
                for ((_, host), before) in self.others.iter_mut().zip(&self.others_before) {
                    *host = HostState {
                        lr: host.lr,
                        ..*before
                    };
                }
            }
        }
        Ok(skipped)
    }

    /// Set the learning rate used from the next step on (never rebuilds anything).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        validate_lr(self.config.name(), lr)?;
        self.host.lr = lr;
        for (_, host) in &mut self.others {
            host.lr = lr;
        }
        Ok(())
    }

    /// Set the learning rate of one parameter group (0 = the first) from the next step on.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        validate_lr(self.config.name(), lr)?;
        match group {
            0 => self.host.lr = lr,
            k => {
                let groups = self.others.len() + 1;
                self.others
                    .get_mut(k - 1)
                    .ok_or(Error::LengthMismatch {
                        what: "parameter group index (groups)",
                        expected: groups,
                        got: k,
                    })?
                    .1
                    .lr = lr;
            }
        }
        Ok(())
    }

    /// Number of parameter groups.
    pub fn groups(&self) -> usize {
        self.others.len() + 1
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.host.lr
    }

    /// Steps taken (PyTorch's `step`).
    pub fn step_count(&self) -> u64 {
        self.host.step
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The host-side scalar state (step, lr, NAdam's mu_product).
    pub fn host_state(&self) -> HostState {
        self.host
    }

    /// Replace the host-side scalar state (e.g. from a checkpoint).
    pub fn set_host_state(&mut self, host: HostState) -> Result<()> {
        validate_lr(self.config.name(), host.lr)?;
        self.host = host;
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

    /// Names of the per-element state tensors (PyTorch's names).
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    /// The device buffer of one state tensor.
    pub fn state_buffer(&self, name: &str) -> Result<&wgpu::Buffer> {
        Ok(&self.states[self.config.state_index(name)?])
    }

    /// Read one state tensor back (waits for the device).
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
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

    /// Overwrite one state tensor (takes effect at the next submission). On error nothing
    /// changes.
    pub fn load_state(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let k = self.config.state_index(name)?;
        if values.len() != self.params.len() {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.params.len(),
                got: values.len(),
            });
        }
        self.write_state(k, values);
        if name == "momentum_buffer" {
            self.host.momentum_buffer_ready = true;
            for (_, host) in &mut self.others {
                host.momentum_buffer_ready = true;
            }
        }
        Ok(())
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

    /// Save the optimizer state (state tensors, step, lr, hyper-parameters) as a safetensors
    /// checkpoint, atomically. Reads the state back from the device.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let tensors = self
            .state_names
            .iter()
            .map(|name| Ok((name.to_string(), self.read_state(name)?)))
            .collect::<Result<Vec<_>>>()?;
        crate::checkpoint::save(
            path.as_ref(),
            &crate::checkpoint::OptimizerState {
                config: self.config,
                host: self.host,
                n: self.params.len(),
                tensors,
                groups: self.group_states(),
            },
        )
    }

    fn group_states(&self) -> Vec<crate::checkpoint::GroupState> {
        if self.others.is_empty() {
            return Vec::new();
        }
        std::iter::once((self.config, self.host))
            .chain(self.others.iter().copied())
            .zip(&self.group_segments)
            .map(|((config, host), segments)| crate::checkpoint::GroupState {
                segments: segments.clone(),
                config,
                host,
            })
            .collect()
    }

    /// Load a checkpoint written by [`Self::save_checkpoint`] (or `CpuOptimizer`'s). The file
    /// is validated completely first; on any error nothing changes.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(path, &state, &self.config, self.params.len())?;
        let ours = self.group_states();
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
        for (k, (_, values)) in state.tensors.iter().enumerate() {
            self.write_state(k, values);
        }
        self.config = state.config;
        self.host = state.host;
        for ((config, host), group) in self.others.iter_mut().zip(state.groups.iter().skip(1)) {
            *config = group.config;
            *host = group.host;
        }
        Ok(())
    }
}
