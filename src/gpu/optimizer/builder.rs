//! Construction: [`GpuOptimizerBuilder`] checks that its options go together, allocates and
//! initialises the state buffers and builds the kernel variant they need. The older
//! constructors ([`GpuOptimizer::new`], [`GpuOptimizer::with_groups`],
//! [`GpuOptimizer::new_low_precision`], [`GpuOptimizer::with_bf16_state`]) are thin wrappers
//! over it.

use super::groups;
use super::{GpuOptimizer, LowSetup, MAX_GROUPS};
use crate::dispatch::padded_len;
use crate::error::{Error, Result};
use crate::gpu::blockwise8::Blockwise8Device;
use crate::gpu::buffer::{create_flat, fill, FlatParams, FLAT_USAGE};
use crate::gpu::gradients::{control_buffer, GradOptions};
use crate::gpu::groups::{Group, ParamGroup};
use crate::gpu::kernel::{KernelRunner, KernelSpec, LowBinding, Specialization};
use crate::gpu::low_precision::{LowFormat, LowPrecisionParams};
use crate::gpu::shaders::kernel_source_for;
use crate::optim::{AdamConfig, OptimizerConfig};

pub use crate::optim::StateFormat;

/// How f32 values are rounded when stored as bf16 (bf16 params, bf16 state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// To nearest, ties to even (the default).
    #[default]
    NearestEven,
    /// Stochastically (unbiased in expectation; bf16 stores only).
    Stochastic,
}

/// What the optimizer updates with which hyper-parameters.
#[derive(Clone, Debug)]
enum Source {
    Config(OptimizerConfig),
    Groups(Vec<ParamGroup>),
}

/// Builds a [`GpuOptimizer`] from freely combined options: one configuration or parameter
/// groups, 16-bit params and gradients, bf16 state, the rounding of bf16 stores. A
/// combination the kernels cannot run is refused by [`Self::build`] as
/// [`Error::InvalidCombination`] naming it, before anything is allocated.
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, LowFormat,
///     LowPrecisionParams, ParamGroup, Rounding, StateFormat};
/// let ctx = GpuContext::new()?;
/// let master = FlatParams::builder().lane_aligned()
///     .slice("w", &[0.5; 1000]).slice("b", &[0.0; 10]).build(&ctx)?;
/// let lp = LowPrecisionParams::from_master(&master, LowFormat::Bf16)?;
/// let decayed = AdamConfig { weight_decay: 0.1, ..AdamConfig::adamw() };
/// let mut opt = GpuOptimizer::builder(&master)
///     .groups(&[
///         ParamGroup { segments: vec!["w".into()], config: decayed.into() },
///         ParamGroup { segments: vec!["b".into()], config: AdamConfig::adamw().into() },
///     ])
///     .low_precision(&lp)
///     .state_format(StateFormat::Bf16)
///     .rounding(Rounding::Stochastic)
///     .build()?;
/// lp.write_grads_bf16(&vec![half::bf16::from_f32(0.01); lp.len()])?;
/// opt.step()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct GpuOptimizerBuilder<'a> {
    params: &'a FlatParams,
    source: Option<Source>,
    low: Option<&'a LowPrecisionParams>,
    state_format: StateFormat,
    param_rounding: Rounding,
    state_rounding: Rounding,
    members: Option<Vec<usize>>,
}

impl GpuOptimizer {
    /// A builder over `params` (the f32 params, or the master weights of low-precision
    /// params). Give it [`GpuOptimizerBuilder::config`] or [`GpuOptimizerBuilder::groups`].
    pub fn builder(params: &FlatParams) -> GpuOptimizerBuilder<'_> {
        GpuOptimizerBuilder {
            params,
            source: None,
            low: None,
            state_format: StateFormat::F32,
            param_rounding: Rounding::NearestEven,
            state_rounding: Rounding::NearestEven,
            members: None,
        }
    }

    /// One configuration over all of `params`, f32 state: validates `config`, allocates and
    /// initialises the state buffers, builds the pipeline and one bind group per binding
    /// window. Shorthand for `GpuOptimizer::builder(params).config(config).build()`.
    pub fn new(params: &FlatParams, config: impl Into<OptimizerConfig>) -> Result<Self> {
        Self::builder(params).config(config).build()
    }

    /// An optimizer whose parameters are split into groups with their own hyper-parameters,
    /// updated by one dispatch per step (see [`GpuOptimizerBuilder::groups`] for the rules).
    /// Shorthand for `GpuOptimizer::builder(params).groups(groups).build()`.
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
        Self::builder(params).groups(groups).build()
    }

    /// An optimizer over 16-bit params and gradients with f32 master weights and f32 state:
    /// each step reads the f16/bf16 gradients, updates the masters and the state, and writes
    /// the rounded 16-bit params (`stochastic_rounding`: bf16 only). The gradient pipeline
    /// (unscaling, clipping, skipping non-finite steps) works on the 16-bit gradients too.
    /// Shorthand for `GpuOptimizer::builder(params.master()).config(config)
    /// .low_precision(params).rounding(..).build()`.
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
        Self::builder(params.master())
            .config(config)
            .low_precision(params)
            .rounding(rounding(stochastic_rounding))
            .build()
    }

    /// Adam or AdamW with its state tensors (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) kept
    /// in bf16: half the state memory and traffic; the arithmetic stays f32 and each state
    /// value is rounded to bf16 when stored (to nearest even, or stochastically). `low`: the
    /// 16-bit params and gradients as well, with their own rounding (see
    /// [`Self::new_low_precision`]), or f32 ones. Shorthand for the builder with
    /// [`StateFormat::Bf16`] and [`GpuOptimizerBuilder::state_rounding`] /
    /// [`GpuOptimizerBuilder::param_rounding`].
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer};
    /// let ctx = GpuContext::new()?;
    /// let params = FlatParams::from_slice(&ctx, &[0.5; 4096])?;
    /// let mut opt = GpuOptimizer::with_bf16_state(&params, None, AdamConfig::adamw(), true)?;
    /// params.write_grads(&[0.01; 4096])?;
    /// opt.step()?;
    /// let m = opt.read_state_f32("exp_avg")?; // bf16 values, widened to f32
    /// # Ok(()) }
    /// ```
    pub fn with_bf16_state(
        params: &FlatParams,
        low: Option<(&LowPrecisionParams, bool)>,
        config: AdamConfig,
        stochastic_rounding: bool,
    ) -> Result<Self> {
        let mut b = Self::builder(params)
            .config(config)
            .state_format(StateFormat::Bf16)
            .state_rounding(rounding(stochastic_rounding));
        if let Some((lp, lp_stochastic)) = low {
            b = b.low_precision(lp).param_rounding(rounding(lp_stochastic));
        }
        b.build()
    }
}

fn rounding(stochastic: bool) -> Rounding {
    if stochastic {
        Rounding::Stochastic
    } else {
        Rounding::NearestEven
    }
}

fn refuse(optimizer: &'static str, reason: &'static str) -> Error {
    Error::InvalidCombination { optimizer, reason }
}

impl<'a> GpuOptimizerBuilder<'a> {
    /// One configuration for every parameter (replaces groups given before).
    pub fn config(mut self, config: impl Into<OptimizerConfig>) -> Self {
        self.source = Some(Source::Config(config.into()));
        self
    }

    /// Parameter groups (replaces a configuration given before): every segment must belong
    /// to exactly one group, every group must use the same optimizer with the same structural
    /// options, at most [`MAX_GROUPS`] groups, and each segment must start on a multiple of 4
    /// elements (build the params with
    /// [`FlatParamsBuilder::lane_aligned`](crate::FlatParamsBuilder::lane_aligned)). All
    /// groups are updated by the same dispatch.
    pub fn groups(mut self, groups: &[ParamGroup]) -> Self {
        self.source = Some(Source::Groups(groups.to_vec()));
        self
    }

    /// 16-bit params and gradients with the builder's params as their f32 master weights
    /// (`low.master()` must be the builder's params): each step reads the 16-bit gradients
    /// and writes the rounded 16-bit params.
    pub fn low_precision(mut self, low: &'a LowPrecisionParams) -> Self {
        self.low = Some(low);
        self
    }

    /// How the state tensors are stored (default [`StateFormat::F32`]).
    pub fn state_format(mut self, format: StateFormat) -> Self {
        self.state_format = format;
        self
    }

    /// The rounding of every bf16 store: bf16 params and bf16 state (default
    /// [`Rounding::NearestEven`]). [`Rounding::Stochastic`] needs something stored in bf16.
    pub fn rounding(mut self, rounding: Rounding) -> Self {
        self.param_rounding = rounding;
        self.state_rounding = rounding;
        self
    }

    /// The rounding of the 16-bit params only ([`Rounding::Stochastic`]: bf16 params only).
    pub fn param_rounding(mut self, rounding: Rounding) -> Self {
        self.param_rounding = rounding;
        self
    }

    /// The rounding of the bf16 state only ([`Rounding::Stochastic`]: bf16 state only).
    pub fn state_rounding(mut self, rounding: Rounding) -> Self {
        self.state_rounding = rounding;
        self
    }

    /// Step only the segments `members` (increasing indices into the params' segment table),
    /// with their state back to back (also when they are every segment: no padding): a per-tensor algorithm's group inside a
    /// [`MixedGpuOptimizer`](crate::mixed::MixedGpuOptimizer). Per-tensor algorithms only.
    pub(crate) fn members(mut self, members: Vec<usize>) -> Self {
        self.members = Some(members);
        self
    }

    /// Check the combination, allocate and initialise the state, build the kernel. Every
    /// refusal happens before anything is allocated: [`Error::InvalidCombination`] for options
    /// that do not go together, the groups' own errors ([`Error::GroupCount`],
    /// [`Error::Segment`]), and the kernel's ([`Error::KernelDoesNotFit`], ...).
    pub fn build(self) -> Result<GpuOptimizer> {
        let params = self.params;
        let source = self.source.as_ref().ok_or_else(|| {
            refuse(
                "GpuOptimizer builder",
                "neither a config nor parameter groups were given",
            )
        })?;
        let groups: Vec<ParamGroup> = match source {
            Source::Config(c) => {
                c.validate()?;
                vec![ParamGroup {
                    segments: Vec::new(),
                    config: *c,
                }]
            }
            Source::Groups(g) => {
                groups::validate(g)?;
                g.clone()
            }
        };
        let config = groups[0].config;
        let per_tensor = !config.is_elementwise();
        if per_tensor {
            if groups.len() > 1 || matches!(source, Source::Groups(_)) {
                return Err(Error::Unsupported {
                    optimizer: config.name(),
                    feature: "parameter groups with a per-tensor algorithm in one GpuOptimizer \
                              (a MixedGpuOptimizer with one group per hyper-parameter set \
                              runs them: fused_optim::mixed)",
                });
            }
            if config.segmented_kernel().is_none() {
                return Err(Error::Unsupported {
                    optimizer: config.name(),
                    feature: "this per-tensor algorithm on the GPU (no segmented kernel)",
                });
            }
            if self.low.is_some() || self.state_format != StateFormat::F32 {
                return Err(Error::Unsupported {
                    optimizer: config.name(),
                    feature: "low-precision params or compact state with a per-tensor \
                              algorithm on the GPU",
                });
            }
        }
        let all_segments = params.segment_table().segments().len();
        let members = match self.members.clone() {
            None => (0..all_segments).collect::<Vec<usize>>(),
            Some(m) => {
                if !per_tensor {
                    return Err(refuse(
                        config.name(),
                        "a subset of the segments is for per-tensor algorithms (elementwise \
                         groups of a mixed optimizer run on the tensors path)",
                    ));
                }
                if m.is_empty()
                    || m.windows(2).any(|w| w[0] >= w[1])
                    || m[m.len() - 1] >= all_segments
                {
                    return Err(refuse(
                        config.name(),
                        "members must be increasing segment indices, at least one",
                    ));
                }
                m
            }
        };
        if per_tensor {
            let segs = params.segment_table().segments();
            let shapes: Vec<Vec<usize>> = members.iter().map(|&k| segs[k].shape.clone()).collect();
            config.check_segments(&crate::segments::SegmentTable::contiguous(&shapes)?)?;
        }
        let q8_min_size = match self.state_format {
            StateFormat::Blockwise8 { min_size } => Some(min_size),
            _ => None,
        };
        if q8_min_size.is_some() {
            for g in &groups {
                match g.config {
                    OptimizerConfig::Adam(c) => crate::cpu::blockwise8::check_config(&c)?,
                    // bitsandbytes' Lion8bit / SGD8bit (one state).
                    other => crate::cpu::blockwise8::check_config_1state(&other)?,
                }
            }
            if self.low.is_some() {
                return Err(refuse(
                    config.name(),
                    "8-bit state (StateFormat::Blockwise8) with 16-bit params is not implemented",
                ));
            }
            if self.param_rounding == Rounding::Stochastic
                || self.state_rounding == Rounding::Stochastic
            {
                return Err(refuse(
                    config.name(),
                    "stochastic rounding with 8-bit state: nothing is stored in bf16",
                ));
            }
        }
        let bf16_state = self.state_format == StateFormat::Bf16;
        if bf16_state && !matches!(config, OptimizerConfig::Adam(_)) {
            return Err(refuse(
                config.name(),
                "bf16 state (StateFormat::Bf16) is implemented for Adam/AdamW only",
            ));
        }
        let bf16_params = self.low.is_some_and(|l| l.format() == LowFormat::Bf16);
        if self.param_rounding == Rounding::Stochastic && !bf16_params {
            if self.low.is_some() {
                return Err(refuse(
                    "low precision",
                    "stochastic rounding is implemented for bf16 params only",
                ));
            }
            if !bf16_state {
                return Err(refuse(
                    "GpuOptimizer builder",
                    "stochastic rounding with nothing stored in bf16 (f32 params, f32 state)",
                ));
            }
        }
        if self.state_rounding == Rounding::Stochastic && !bf16_state && !bf16_params {
            return Err(refuse(
                "GpuOptimizer builder",
                "stochastic rounding of the state needs StateFormat::Bf16",
            ));
        }
        if let Some(lp) = self.low {
            if lp.master().params_buffer() != params.params_buffer() {
                return Err(refuse(
                    "low precision",
                    "`params` must be the master weights of the low-precision params",
                ));
            }
        }
        let explicit_groups = matches!(source, Source::Groups(_));
        let q8_tensors = match q8_min_size {
            Some(_) => Some(q8_tensors(params, explicit_groups.then_some(&groups[..]))?),
            None => None,
        };
        let lane_table = if explicit_groups && q8_tensors.is_none() {
            Some(groups::lane_table(params, &groups)?)
        } else {
            None
        };
        // Past this point only allocation and the kernel build can fail.
        let low = self.low.map(|lp| LowSetup {
            code: lp.format().code(),
            // Only bf16 params round stochastically (checked above).
            stochastic: self.param_rounding == Rounding::Stochastic && bf16_params,
            grads: lp.grads_buffer().clone(),
            params: lp.params_buffer().clone(),
        });
        let state_stochastic = bf16_state && self.state_rounding == Rounding::Stochastic;
        if bf16_state {
            // Packed bf16 state is bound whole (not in windows).
            let bytes = padded_len(params.len() as u64) * 2;
            let limit = params.context().max_binding_bytes();
            if bytes > limit {
                return Err(Error::BufferTooLarge {
                    what: "bf16 state (bound whole: max_storage_buffer_binding_size)",
                    bytes,
                    limit,
                });
            }
        }
        // Inside error scopes: an allocation or a binding the device refuses becomes a typed
        // error, and everything made so far is dropped with the half-built optimizer.
        let ctx = params.context().clone();
        ctx.scoped("optimizer build", || {
            let mut opt = build(
                params,
                groups,
                lane_table,
                low,
                bf16_state.then_some(state_stochastic),
                q8_tensors.is_some(),
                self.members.is_some().then_some(members),
            )?;
            if let (Some(tensors), Some(min_size)) = (q8_tensors, q8_min_size) {
                let algo = match opt.groups[0].config {
                    OptimizerConfig::Lion(_) => 1,
                    OptimizerConfig::Sgd(_) => 2,
                    _ => 0,
                };
                opt.q8 = Some(Blockwise8Device::new(
                    params,
                    &tensors,
                    min_size,
                    &opt.control,
                    algo,
                )?);
            }
            Ok(opt)
        })
    }
}

/// Allocate the state, build the kernel over `groups` (validated), with the lane table
/// (explicit groups), the 16-bit buffers and bf16 state (`Some(stochastic)`) as given.
fn build(
    params: &FlatParams,
    groups: Vec<ParamGroup>,
    lane_groups: Option<wgpu::Buffer>,
    low: Option<LowSetup>,
    bf16_state: Option<bool>,
    blockwise8: bool,
    members: Option<Vec<usize>>,
) -> Result<GpuOptimizer> {
    let config = groups[0].config;
    let ctx = params.context().clone();
    // Some: the segments stepped, their state back to back; None: every segment, the
    // state at the params' offsets.
    let compact = members.is_some();
    let members = members.unwrap_or_else(|| (0..params.segment_table().segments().len()).collect());
    let n = crate::gpu::segmented::state_len(params, &members, compact);
    let state_names = config.state_names();
    // Each state tensor's length: n, or (not one element per parameter) by the members'
    // shapes, their parts back to back.
    let segs = params.segment_table().segments();
    let member_shapes: Vec<Vec<usize>> = members.iter().map(|&k| segs[k].shape.clone()).collect();
    let layout = crate::optim::StateLayout::packed_over_shapes(&config, &member_shapes);
    let state_lens: Vec<usize> = if config.state_per_element() {
        vec![n; state_names.len()]
    } else {
        layout.lens().to_vec()
    };

    let mut states = Vec::with_capacity(state_names.len());
    for (name, &len) in state_names.iter().zip(&state_lens).filter(|_| !blockwise8) {
        let buffer = match bf16_state {
            None => {
                // (At least one element: an empty tensor's buffer still binds.)
                let b = create_flat(&ctx, "fused-optim state", len.max(1))?;
                fill(
                    &ctx,
                    &b,
                    len.max(1),
                    config.initial_state_value(name) as f32,
                );
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
    let configs: Vec<OptimizerConfig> = groups.iter().map(|g| g.config).collect();
    let (file, source, slots) = kernel_source_for(&config);
    let control = control_buffer(&ctx, &GradOptions::default());
    let bound: Vec<(&str, &wgpu::Buffer)> =
        state_names.iter().copied().zip(states.iter()).collect();
    let runner = KernelRunner::new(
        params,
        KernelSpec {
            file,
            source,
            slots,
            // A per-tensor algorithm over some segments has compact state the elementwise
            // kernel (never dispatched for it) cannot bind over the params' windows.
            active: if bf16_state.is_some()
                || blockwise8
                || n != params.len()
                || !config.state_per_element()
            {
                Vec::new()
            } else {
                bound.clone()
            },
            constants: config.overrides(),
            specialization: Specialization::of(&configs),
            trusted: true,
            control: &control,
            lane_groups: lane_groups.as_ref(),
            low: low.as_ref().map(|l| LowBinding {
                format_code: l.code,
                stochastic: l.stochastic,
                grads: &l.grads,
                params: &l.params,
            }),
            packed_states: bf16_state.map(|stochastic| (bound.clone(), stochastic)),
        },
    )?;

    let native_f16 = runner.variant().uses_native_f16();
    let factored = match config.segmented_kernel() {
        Some(k) if !config.state_per_element() => Some(crate::gpu::factored::FactoredKernel::new(
            params, k.file, k.source, &states, &members, &layout, &control,
        )?),
        _ => None,
    };
    let segmented = match config.segmented_kernel() {
        Some(k) if !config.is_elementwise() && config.state_per_element() => {
            Some(crate::gpu::segmented::SegmentedKernel::new(
                params,
                k.file,
                k.source,
                &states,
                config.matrix_transform().as_ref(),
                &members,
                compact,
                &control,
            )?)
        }
        _ => None,
    };
    Ok(GpuOptimizer {
        ctx,
        params: params.clone(),
        groups: groups
            .into_iter()
            .map(|g| Group {
                host: g.config.initial_host_state(),
                segments: g.segments,
                config: g.config,
            })
            .collect(),
        _lane_groups: lane_groups,
        state_names,
        states,
        bf16_state: bf16_state.is_some(),
        runner,
        control,
        grad_options: GradOptions::default(),
        clipper: None,
        device: None,
        hyper_bytes: Vec::with_capacity(MAX_GROUPS * 48),
        low,
        native_f16,
        q8: None,
        segmented,
        factored,
        members,
        state_len: n,
        state_lens,
    })
}

/// The tensors of 8-bit state: every segment of `params` in offset order, as (first
/// element, length, group); with explicit `groups`, every segment must be in exactly one.
fn q8_tensors(
    params: &FlatParams,
    groups: Option<&[ParamGroup]>,
) -> Result<Vec<(usize, usize, u32)>> {
    let mut segs: Vec<&crate::gpu::buffer::Segment> = params.segments().iter().collect();
    segs.sort_by_key(|s| s.offset);
    let mut out = Vec::with_capacity(segs.len());
    for seg in segs {
        let group = match groups {
            None => 0,
            Some(gs) => {
                let mut found = gs
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.segments.contains(&seg.name));
                let (k, _) = found.next().ok_or_else(|| Error::Segment {
                    name: seg.name.clone(),
                    reason: "is in no parameter group",
                })?;
                if found.next().is_some() {
                    return Err(Error::Segment {
                        name: seg.name.clone(),
                        reason: "is in more than one parameter group",
                    });
                }
                k as u32
            }
        };
        out.push((seg.offset, seg.len(), group));
    }
    if let Some(gs) = groups {
        for g in gs {
            for name in &g.segments {
                params.segment(name)?;
            }
        }
    }
    Ok(out)
}
