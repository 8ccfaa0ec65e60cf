//! [`TensorOptimizer`]: an optimizer whose parameters and gradients are ranges of the
//! caller's buffers — (buffer, byte offset) per tensor, many tensors per buffer, wherever
//! they are this step — with the optimizer state in fused-optim's own flat buffers, stepped
//! in one submission.
//!
//! How: each step the tensors are grouped by their (params buffer, gradients buffer) pair
//! ([`layout::plan`]); each group is one dispatch (a *unit*) of the algorithm's kernel in its
//! external variant (`shaders/tensors.wgsl`), binding one window of each buffer and a table
//! that gives every workgroup block its tensor: param lane, gradient lane, state lane,
//! elements, parameter group. Params and gradients in one buffer are bound once (read-write)
//! and the gradients read through that binding. A unit that is one whole tensor (a multiple
//! of 4 elements, params and gradients in different buffers: a large model's matrices, each
//! in its own allocation) binds windows that start and end with the tensor and runs the flat
//! kernel unchanged, its parameter group in the window header: no table reads and no partial
//! last lane, the flat path's speed ([`TensorOptimizer::dispatches`] says how many did). Every algorithm, parameter groups (one group
//! index per tensor), schedules (`set_lr` / `set_group_lr`), the gradient pipeline (unscale,
//! clip by value, clip by the global norm over all tensors, skipping non-finite steps with
//! the step count on the device) work as in [`GpuOptimizer`](crate::GpuOptimizer): the same
//! kernels, uniforms and control block. No extra bytes per parameter: the table costs 4
//! bytes per block of `WORKGROUP_SIZE * VEC4_PER_INVOCATION * 4` elements and 32 per tensor.
//!
//! What the caller's ranges must satisfy (else [`Error::TensorRange`], before anything is
//! encoded): byte offsets multiples of the device's `min_storage_buffer_offset_alignment`
//! (and of 16); each tensor's last vec4 lane inside its buffer (the elements past a tensor's
//! end in that lane are read but never written); params sharing no byte with another
//! tensor's params or any gradients; buffers with `STORAGE` usage
//! ([`Error::MissingUsage`]). 16-bit params and bf16 state are not offered here. With u64
//! lanes (a CPU adapter with `shader-int64`) a tensor's last lane is written whole, the bytes
//! past its end with their own bits (see `external_accessors` in `src/gpu/shaders.rs`).

pub mod layout;
mod norm;

use std::collections::HashMap;

use layout::{Geometry, Place, Plan, StateLayout};

use crate::dispatch::grid;
use crate::error::{Error, Result};
use crate::gpu::buffer::{create_flat, fill, read_f32};
use crate::gpu::context::{GpuContext, KernelTuning};
use crate::gpu::device_step::DeviceSteps;
use crate::gpu::gradients::{control_buffer, GradOptions};
use crate::gpu::groups::Group;
use crate::gpu::kernel::{
    bind_group_layout, uniform_binding, PipelineRecipe, Specialization, HYPER_BINDING_BYTES,
    MAX_GROUPS, STEP_INFO_BYTES, UNIFORM_RING,
};
use crate::gpu::shaders::{
    assemble_with, check_fits, kernel_source_for, required_bindings, BindingRole, Variant,
};
use crate::optim::{HostState, OptimizerConfig};

/// Smallest workgroup the kernels over caller ranges fall back to. A tensor takes whole
/// blocks (`workgroup_size * vec4_per_invocation` lanes each), so models of many small
/// tensors waste most of a large block: at the context's default 256 x 2 (2048 elements) a
/// tensor of 500..1600 elements left about half of its block idle. Measured on lavapipe
/// (`examples/tensor_ranges.rs`, 2026-12-03, one run per geometry, flat kernel alternated
/// in the same run): 1000 tensors of 500..1600 elements, flat/ranges 0.54 at 256 x 2 and
/// 0.65–0.69 at 64 x 2; GPT-2-shaped tensors (d = 256) 65 ms at both.
pub const RANGES_MIN_WORKGROUP_SIZE: u32 = 64;

/// Largest fraction of a step's lanes that may fall in the idle tails of tensors' last
/// blocks at a workgroup size larger than [`RANGES_MIN_WORKGROUP_SIZE`]. On one tensor of
/// 2^24 elements 256 x 2 ran 0.83 of the flat kernel against 0.71–0.77 at 64 x 2 (session 11,
/// noisy), so large tensors keep the context's workgroup; GPT-2-shaped models idle ~0.1% of
/// their lanes there, 1000 tensors of 500..1600 elements ~50%.
pub const RANGES_MAX_IDLE_FRACTION: f64 = 0.02;

/// The launch geometry of the kernels over caller ranges for tensors of `lens` elements: the
/// context's, with the largest workgroup (the context's, halved down to
/// [`RANGES_MIN_WORKGROUP_SIZE`]) whose blocks leave at most [`RANGES_MAX_IDLE_FRACTION`] of
/// the launched lanes idle, else the smallest.
pub fn ranges_tuning(context: KernelTuning, lens: &[u64]) -> KernelTuning {
    let floor = context.workgroup_size.min(RANGES_MIN_WORKGROUP_SIZE);
    let mut size = context.workgroup_size;
    while size > floor {
        let block = u64::from(size) * u64::from(context.vec4_per_invocation);
        if idle_fraction(lens, block) <= RANGES_MAX_IDLE_FRACTION {
            break;
        }
        size = (size / 2).max(floor);
    }
    KernelTuning {
        workgroup_size: size,
        ..context
    }
}

/// Fraction of the launched lanes that are no tensor's when every tensor of `lens` elements
/// takes whole blocks of `block_lanes` vec4 lanes.
fn idle_fraction(lens: &[u64], block_lanes: u64) -> f64 {
    let (mut used, mut launched) = (0u64, 0u64);
    for &len in lens {
        let lanes = len.div_ceil(4);
        used += lanes;
        launched += lanes.div_ceil(block_lanes) * block_lanes;
    }
    if launched == 0 {
        return 0.0;
    }
    (launched - used) as f64 / launched as f64
}

/// One tensor a [`TensorOptimizer`] updates: its name (for errors and checkpoints), its
/// element count (fixed) and its parameter group (an index into the groups given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, e.g. the parameter's path in the model.
    pub name: String,
    /// Elements (f32).
    pub len: usize,
    /// Parameter group (index into the configurations given to [`TensorOptimizer::new`]).
    pub group: usize,
}

/// Where a tensor's params or gradients are this step: a caller buffer and the byte offset
/// of the first element (the length is the tensor's).
#[derive(Clone, Copy, Debug)]
pub struct BufferRange<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of element 0.
    pub byte_offset: u64,
}

/// One tensor's params and gradients this step.
#[derive(Clone, Copy, Debug)]
pub struct TensorBinding<'a> {
    /// The params, updated in place.
    pub param: BufferRange<'a>,
    /// The gradients, only read.
    pub grad: BufferRange<'a>,
}

/// The kernel over the table, gradients in their own buffer (a flavour index).
const TABLE: usize = 0;
/// The kernel over the table, gradients read through the params' binding.
const TABLE_SHARED: usize = 1;
/// The flat kernel, on a unit that is one whole tensor ([`layout::Unit::direct`]).
const DIRECT: usize = 2;

/// The flavour a unit runs.
fn flavour_of(unit: &layout::Unit) -> usize {
    if unit.direct.is_some() {
        DIRECT
    } else if unit.grad_in_param() {
        TABLE_SHARED
    } else {
        TABLE
    }
}

/// What a unit's bind group binds (its cache key).
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    flavour: usize,
    param: wgpu::Buffer,
    param_window: (u64, u64),
    grad: Option<(wgpu::Buffer, (u64, u64))>,
    state_window: (u64, u64),
    unit: usize,
}

/// The pipeline of one flavour ([`TABLE`], [`TABLE_SHARED`] or [`DIRECT`]).
struct Flavour {
    variant: Variant,
    /// The kernel's state slot names in binding order.
    slots: &'static [&'static str],
    layout: wgpu::BindGroupLayout,
    recipe: PipelineRecipe,
    pipelines: Vec<((bool, Specialization), wgpu::ComputePipeline)>,
}

/// An optimizer over tensors given each step as ranges of caller buffers (see the
/// [module documentation](self)). Built from the tensors' lengths and groups; the state
/// (one flat buffer per state tensor, each tensor's state on an aligned offset) is
/// initialised as the algorithm's reference does.
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, GpuContext};
/// use fused_optim::gpu::tensors::{BufferRange, TensorBinding, TensorOptimizer, TensorSpec};
/// let ctx = GpuContext::new()?;
/// let specs = [
///     TensorSpec { name: "w".into(), len: 1000, group: 0 },
///     TensorSpec { name: "b".into(), len: 10, group: 1 },
/// ];
/// let decayed = AdamConfig { weight_decay: 0.1, ..AdamConfig::adamw() };
/// let mut opt = TensorOptimizer::new(&ctx, &specs, &[decayed.into(), AdamConfig::adamw().into()])?;
/// # let (page, grads): (wgpu::Buffer, wgpu::Buffer) = todo!();
/// // Both tensors in one caller buffer, their gradients in another, at aligned offsets.
/// let at = |buffer, byte_offset| BufferRange { buffer, byte_offset };
/// opt.step(&[
///     TensorBinding { param: at(&page, 0), grad: at(&grads, 0) },
///     TensorBinding { param: at(&page, 4096), grad: at(&grads, 4096) },
/// ])?;
/// # Ok(()) }
/// ```
pub struct TensorOptimizer {
    ctx: GpuContext,
    names: Vec<String>,
    lens: Vec<u64>,
    tensor_groups: Vec<u32>,
    groups: Vec<Group>,
    layout: StateLayout,
    geometry: Geometry,
    /// The launch geometry chosen for these tensors ([`ranges_tuning`]).
    tuning: KernelTuning,
    state_names: Vec<&'static str>,
    states: Vec<wgpu::Buffer>,
    flavours: [Option<Flavour>; 3],
    key: (bool, Specialization),
    hyper_buffer: wgpu::Buffer,
    hyper_stride: u64,
    unit_buffer: Option<wgpu::Buffer>,
    unit_stride: u64,
    table_buffer: Option<wgpu::Buffer>,
    last: Option<(Vec<(Place, Place)>, Plan)>,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    control: wgpu::Buffer,
    grad_options: GradOptions,
    norm: Option<norm::TensorNorm>,
    device: Option<DeviceSteps>,
    hyper_bytes: Vec<u8>,
}

impl std::fmt::Debug for TensorOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorOptimizer")
            .field("config", &self.groups[0].config)
            .field("tensors", &self.lens.len())
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl TensorOptimizer {
    /// An optimizer over `tensors` with one configuration per parameter group (`groups[k]`
    /// for the tensors whose `group` is `k`; at most [`MAX_GROUPS`], all of the same
    /// optimizer with the same structural options). Refused with a typed error: no tensors
    /// or an empty one, a group index out of range, invalid or mismatched configurations, a
    /// per-tensor algorithm such as LAMB ([`Error::Unsupported`]: this kernel is
    /// elementwise; its trust ratio needs the segmented two-pass kernel).
    pub fn new(
        ctx: &GpuContext,
        tensors: &[TensorSpec],
        groups: &[OptimizerConfig],
    ) -> Result<Self> {
        if tensors.is_empty() {
            return Err(Error::Empty {
                what: "the tensor list",
            });
        }
        let param_groups: Vec<crate::ParamGroup> = groups
            .iter()
            .enumerate()
            .map(|(k, c)| crate::ParamGroup {
                segments: tensors
                    .iter()
                    .filter(|t| t.group == k)
                    .map(|t| t.name.clone())
                    .collect(),
                config: *c,
            })
            .collect();
        crate::gpu::optimizer::validate_groups(&param_groups)?;
        if let Some(c) = groups.iter().find(|c| !c.is_elementwise()) {
            return Err(Error::Unsupported {
                optimizer: c.name(),
                feature: "a per-tensor algorithm over caller buffer ranges (TensorOptimizer \
                          runs elementwise kernels only)",
            });
        }
        for t in tensors {
            if t.len == 0 {
                return Err(Error::TensorRange {
                    tensor: t.name.clone(),
                    reason: "has no elements".into(),
                });
            }
            if t.group >= groups.len() {
                return Err(Error::TensorRange {
                    tensor: t.name.clone(),
                    reason: format!(
                        "parameter group {} does not exist ({} groups)",
                        t.group,
                        groups.len()
                    ),
                });
            }
        }
        crate::gpu::kernel::check_launch(ctx)?;
        let device = ctx.device();
        let limits = device.limits();
        let lens: Vec<u64> = tensors.iter().map(|t| t.len as u64).collect();
        let tuning = ranges_tuning(ctx.options().tuning, &lens);
        let geometry = Geometry {
            align: u64::from(limits.min_storage_buffer_offset_alignment).max(16),
            max_binding: ctx.max_binding_bytes(),
            block_lanes: u64::from(tuning.workgroup_size) * u64::from(tuning.vec4_per_invocation),
        };
        let layout = StateLayout::new(&lens, &geometry);
        let config = groups[0];
        let n = usize::try_from(layout.total).map_err(|_| Error::TooManyElements {
            what: "optimizer state",
            len: layout.total,
            limit: crate::dispatch::MAX_ELEMENTS,
        })?;
        let state_names = config.state_names();
        let grouped = groups.len() > 1;
        let ctx2 = ctx.clone();
        ctx.scoped("tensor optimizer build", move || {
            let ctx = ctx2;
            let device = ctx.device();
            let mut states = Vec::with_capacity(state_names.len());
            for name in &state_names {
                let b = create_flat(&ctx, "fused-optim state", n)?;
                fill(&ctx, &b, n, config.initial_state_value(name) as f32);
                states.push(b);
            }
            let slot_alignment = limits
                .min_uniform_buffer_offset_alignment
                .max(limits.min_storage_buffer_offset_alignment);
            let hyper_stride =
                (HYPER_BINDING_BYTES + STEP_INFO_BYTES).next_multiple_of(u64::from(slot_alignment));
            let hyper_buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim hyper ring"),
                size: hyper_stride * UNIFORM_RING,
                usage: wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let configs: Vec<OptimizerConfig> = groups.to_vec();
            let mut opt = Self {
                names: tensors.iter().map(|t| t.name.clone()).collect(),
                lens,
                tensor_groups: tensors.iter().map(|t| t.group as u32).collect(),
                groups: param_groups
                    .into_iter()
                    .map(|g| Group {
                        host: g.config.initial_host_state(),
                        segments: g.segments,
                        config: g.config,
                    })
                    .collect(),
                layout,
                geometry,
                tuning,
                state_names,
                states,
                flavours: [None, None, None],
                key: (false, Specialization::of(&configs)),
                hyper_buffer,
                hyper_stride,
                unit_buffer: None,
                unit_stride: 16u64
                    .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment)),
                table_buffer: None,
                last: None,
                bind_groups: HashMap::new(),
                control: control_buffer(&ctx, &GradOptions::default()),
                grad_options: GradOptions::default(),
                norm: None,
                device: None,
                hyper_bytes: Vec::with_capacity(MAX_GROUPS * 48),
                ctx,
            };
            // The usual flavour now, so that a kernel the device refuses fails the build.
            opt.flavour(TABLE, grouped)?;
            Ok(opt)
        })
    }

    /// Build (once) the flavour `slot` ([`TABLE`], [`TABLE_SHARED`], [`DIRECT`]) and its
    /// pipeline for the current key.
    fn flavour(&mut self, slot: usize, grouped: bool) -> Result<()> {
        if self.flavours[slot].is_none() {
            let config = self.groups[0].config;
            let (file, source, slots) = kernel_source_for(&config);
            // The slots this configuration uses (e.g. Adam's max_exp_avg_sq only with
            // amsgrad), as KernelRunner binds them.
            let state_slots = (0..slots.len().min(8))
                .filter(|&k| self.state_names.contains(&slots[k]))
                .fold(0u8, |m, k| m | (1 << k));
            // DIRECT: the flat kernel, its one parameter group from the unit's header.
            let variant = Variant {
                grouped: grouped && slot != DIRECT,
                external: slot != DIRECT,
                grad_in_param: slot == TABLE_SHARED,
                state_slots,
                u64_lanes: self.ctx.uses_u64_lanes(),
                ..Variant::default()
            };
            let device = self.ctx.device();
            check_fits(file, &variant, &device.limits(), device.features())?;
            let layout = bind_group_layout(device, &required_bindings(&variant));
            let mut constants = config.overrides();
            constants.push(("STOCHASTIC_ROUNDING", 0.0));
            let recipe = PipelineRecipe {
                file,
                source: assemble_with(source, slots, variant),
                constants,
                trusted: true,
                layout: device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(file),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                }),
            };
            self.flavours[slot] = Some(Flavour {
                variant,
                slots,
                layout,
                recipe,
                pipelines: Vec::new(),
            });
        }
        let key = self.key;
        let flavour = self.flavours[slot].as_mut().expect("built above");
        if !flavour.pipelines.iter().any(|(k, _)| *k == key) {
            let p = flavour.recipe.build_tuned(&self.ctx, key, self.tuning)?;
            flavour.pipelines.push((key, p));
        }
        Ok(())
    }

    /// [`Error::LengthMismatch`] unless `got` is the number of groups.
    fn one_per_group(&self, what: &'static str, got: usize) -> Result<()> {
        if got == self.groups.len() {
            return Ok(());
        }
        Err(Error::LengthMismatch {
            what,
            expected: self.groups.len(),
            got,
        })
    }

    /// Build the pipelines of the current key for every flavour in use (the shared-buffer
    /// one only if built before); on an error the key goes back to `old_key`.
    fn build_for_key(&mut self, old_key: (bool, Specialization)) -> Result<()> {
        let grouped = self.groups.len() > 1;
        for slot in [TABLE, TABLE_SHARED, DIRECT] {
            if self.flavours[slot].is_some() || slot == TABLE {
                if let Err(e) = self.flavour(slot, grouped) {
                    self.key = old_key;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether a step may be taken now: the algorithm's own refusal (Schedule-Free in
    /// evaluation mode), [`Error::WrongMode`]; what [`Self::step`] checks before it records
    /// anything.
    pub fn check_step(&self) -> Result<()> {
        let first = &self.groups[0];
        first.config.check_step(&first.host)
    }

    /// The launch geometry the kernels run at for these tensors: the context's, with the
    /// workgroup chosen by [`ranges_tuning`] from the tensors' lengths.
    pub fn tuning(&self) -> KernelTuning {
        self.tuning
    }

    /// (dispatches, of which run the flat kernel) in the plan of the last step: a unit that
    /// is one whole tensor with a multiple of 4 elements in its own params and gradients
    /// windows runs the flat kernel, with no table reads ([`layout::Unit::direct`]); the
    /// others the kernel over the table. `(0, 0)` before the first step.
    pub fn dispatches(&self) -> (usize, usize) {
        self.last.as_ref().map_or((0, 0), |(_, plan)| {
            let direct = plan.units.iter().filter(|u| u.direct.is_some()).count();
            (plan.units.len(), direct)
        })
    }

    /// Number of tensors.
    pub fn tensors(&self) -> usize {
        self.lens.len()
    }

    /// The tensors' names, in the order given.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of parameter groups.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The configuration of group 0.
    pub fn config(&self) -> &OptimizerConfig {
        &self.groups[0].config
    }

    /// The learning rate of group 0.
    pub fn lr(&self) -> f64 {
        self.groups[0].host.lr
    }

    /// Replace every group's configuration (a checkpoint's hyper-parameters), one per group:
    /// the same optimizer with the same structural options as now (state tensors, amsgrad,
    /// nesterov, centered), else [`Error::InvalidCombination`]; the kernels for the new
    /// per-lane options (weight decay, maximize) are built first, so on any error nothing
    /// changes. The host states (step, lr) are not touched ([`Self::set_host_states`]).
    pub fn set_configs(&mut self, configs: &[OptimizerConfig]) -> Result<()> {
        self.one_per_group("configurations (one per group)", configs.len())?;
        let group = |config: OptimizerConfig| crate::ParamGroup {
            segments: Vec::new(),
            config,
        };
        // Each one against the current configuration, then all together.
        for c in configs {
            crate::gpu::optimizer::validate_groups(&[group(self.groups[0].config), group(*c)])?;
        }
        let all: Vec<crate::ParamGroup> = configs.iter().map(|c| group(*c)).collect();
        crate::gpu::optimizer::validate_groups(&all)?;
        let old_key = self.key;
        self.key.1 = Specialization::of(configs);
        self.build_for_key(old_key)?;
        for (g, c) in self.groups.iter_mut().zip(configs) {
            g.config = *c;
        }
        Ok(())
    }

    /// Set every group's learning rate from the next step on (a schedule calls this).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.groups[0].config.validate_lr(lr)?;
        for g in &mut self.groups {
            g.host.lr = lr;
        }
        Ok(())
    }

    /// Set the learning rate of group `group` from the next step on.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.groups[0].config.validate_lr(lr)?;
        let groups = self.groups.len();
        self.groups
            .get_mut(group)
            .ok_or(Error::GroupIndex {
                index: group,
                groups,
            })?
            .host
            .lr = lr;
        Ok(())
    }

    /// Steps issued (the device's count of steps taken, with `skip_nonfinite`: see
    /// [`Self::device_step_count`]).
    pub fn step_count(&self) -> u64 {
        self.groups[0].host.step
    }

    /// Every group's host state (group 0 first).
    pub fn host_states(&self) -> Vec<HostState> {
        self.groups.iter().map(|g| g.host).collect()
    }

    /// Replace every group's host state (a checkpoint's), one per group.
    pub fn set_host_states(&mut self, hosts: &[HostState]) -> Result<()> {
        self.one_per_group("host states (one per group)", hosts.len())?;
        for (g, h) in self.groups.iter_mut().zip(hosts) {
            g.host = *h;
        }
        if let Some(d) = &mut self.device {
            d.reset(hosts)?;
        }
        Ok(())
    }

    /// The state tensors' names (e.g. `exp_avg`, `exp_avg_sq`).
    pub fn state_names(&self) -> &[&'static str] {
        &self.state_names
    }

    fn state_index(&self, name: &str) -> Result<usize> {
        self.state_names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::UnknownState {
                optimizer: self.groups[0].config.name(),
                name: name.to_string(),
                known: self.state_names.join(", "),
            })
    }

    fn tensor_index(&self, tensor: usize) -> Result<()> {
        if tensor < self.lens.len() {
            Ok(())
        } else {
            Err(Error::GroupIndex {
                index: tensor,
                groups: self.lens.len(),
            })
        }
    }

    /// State `name` of tensor `tensor` (reads back; waits for the submitted steps).
    pub fn read_tensor_state(&self, name: &str, tensor: usize) -> Result<Vec<f32>> {
        let s = self.state_index(name)?;
        self.tensor_index(tensor)?;
        read_f32(
            &self.ctx,
            &self.states[s],
            self.layout.starts[tensor] as usize,
            self.lens[tensor] as usize,
        )
    }

    /// Overwrite state `name` of tensor `tensor` (a checkpoint's values).
    pub fn write_tensor_state(&self, name: &str, tensor: usize, values: &[f32]) -> Result<()> {
        let s = self.state_index(name)?;
        self.tensor_index(tensor)?;
        if values.len() as u64 != self.lens[tensor] {
            return Err(Error::LengthMismatch {
                what: "tensor state values",
                expected: self.lens[tensor] as usize,
                got: values.len(),
            });
        }
        self.ctx.queue().write_buffer(
            &self.states[s],
            self.layout.starts[tensor] * 4,
            bytemuck::cast_slice(values),
        );
        Ok(())
    }

    /// The gradient options in force.
    pub fn grad_options(&self) -> GradOptions {
        self.grad_options
    }

    /// Unscale, clip by value, clip by the global norm over all tensors, skip steps whose
    /// gradients hold inf or NaN (the step count is then kept on the device), as
    /// [`Optimizer::set_grad_options`](crate::Optimizer::set_grad_options) does.
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        self.ctx.check_alive("set_grad_options")?;
        options.validate()?;
        let old_key = self.key;
        self.key.0 = options != GradOptions::default();
        self.build_for_key(old_key)?;
        if options.needs_reduction() && self.norm.is_none() {
            match norm::TensorNorm::new(&self.ctx) {
                Ok(n) => self.norm = Some(n),
                Err(e) => {
                    self.key = old_key;
                    return Err(e);
                }
            }
        }
        if !options.needs_reduction() {
            self.norm = None;
        }
        if options.skip_nonfinite && self.device.is_none() {
            self.device = Some(DeviceSteps::new(
                &self.ctx,
                &self.hyper_buffer,
                &self.control,
                &self.groups,
            )?);
        } else if !options.skip_nonfinite {
            if let Some(d) = self.device.take() {
                let t = d.steps_from(&d.read()?);
                let hosts = d.hosts_at(&self.groups, t);
                for (g, h) in self.groups.iter_mut().zip(hosts) {
                    g.host = h;
                }
            }
        }
        self.ctx
            .queue()
            .write_buffer(&self.control, 0, bytemuck::bytes_of(&options.control()));
        self.grad_options = options;
        Ok(())
    }

    /// The global gradient norm of the last step (clip by norm or `skip_nonfinite` on;
    /// reads back, waits), else `None`.
    pub fn last_grad_norm(&self) -> Result<Option<f64>> {
        if self.norm.is_none() {
            return Ok(None);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        Ok(Some(f64::from(c[4])))
    }

    /// Whether the last step was skipped for inf/NaN gradients (`skip_nonfinite`; reads
    /// back, waits).
    pub fn last_step_skipped(&self) -> Result<bool> {
        if self.device.is_none() || self.norm.is_none() {
            return Ok(false);
        }
        let c = read_f32(&self.ctx, &self.control, 0, 8)?;
        if let Some(device) = &self.device {
            let block = device.read()?;
            device.confirm(&self.groups, &block);
        }
        Ok(c[3].to_bits() != 0)
    }

    /// Steps taken: the device's count with `skip_nonfinite` (reads back, waits), else the
    /// host's.
    pub fn device_step_count(&self) -> Result<u64> {
        match &self.device {
            Some(d) => Ok(d.steps_from(&d.read()?)),
            None => Ok(self.groups[0].host.step),
        }
    }

    /// One optimizer step over the tensors at `bindings` (one per tensor, in the order
    /// given at construction): checks them, plans the dispatches, and submits the gradient
    /// norm pass (when on) and one compute pass with one dispatch per (params buffer,
    /// gradients buffer) pair, in one submission. Nothing is read back or waited for.
    /// On a refused binding nothing is encoded and the step count does not move.
    pub fn step(&mut self, bindings: &[TensorBinding<'_>]) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.submit_step("step", "fused-optim tensor step", |e| {
            self.encode_step(e, bindings)
        })
    }

    /// [`Self::step`] recorded into the caller's encoder (the caller submits, and must keep
    /// the bound buffers alive until then).
    // wgpu::Buffer compares and hashes by its identity (not its contents or mapping
    // state), so it is a sound map key despite its interior mutability.
    #[allow(clippy::mutable_key_type)]
    pub fn encode_step<'b>(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &[TensorBinding<'b>],
    ) -> Result<()> {
        // The step's distinct buffers.
        let mut buffers: Vec<&'b wgpu::Buffer> = Vec::new();
        let mut index: HashMap<&'b wgpu::Buffer, usize> = HashMap::new();
        let mut place = |r: &BufferRange<'b>| -> Result<Place> {
            let buffer = r.buffer;
            let i = match index.get(buffer) {
                Some(&i) => i,
                None => {
                    crate::gpu::buffer::require_usage(
                        buffer,
                        "a tensor's buffer",
                        wgpu::BufferUsages::STORAGE,
                        "STORAGE",
                    )?;
                    buffers.push(buffer);
                    index.insert(buffer, buffers.len() - 1);
                    buffers.len() - 1
                }
            };
            Ok(Place {
                buffer: i,
                byte_offset: r.byte_offset,
                buffer_size: buffer.size(),
            })
        };
        let mut params = Vec::with_capacity(bindings.len());
        let mut grads = Vec::with_capacity(bindings.len());
        for b in bindings {
            params.push(place(&b.param)?);
            grads.push(place(&b.grad)?);
        }
        layout::check(&self.names, &self.lens, &params, &grads, &self.geometry)?;
        self.check_step()?;

        // The plan, and the table and unit headers on the device, when the places changed.
        let places: Vec<(Place, Place)> =
            params.iter().copied().zip(grads.iter().copied()).collect();
        let changed = self.last.as_ref().is_none_or(|(p, _)| *p != places);
        if changed {
            let plan = layout::plan(
                &self.layout,
                &self.tensor_groups,
                &params,
                &grads,
                &self.geometry,
            );
            self.upload(&plan)?;
            self.last = Some((places, plan));
        }
        let grouped = self.groups.len() > 1;
        let plan = self.last.as_ref().expect("planned above").1.clone();
        // Each built once, the first time a step has a unit that runs it.
        for slot in [TABLE_SHARED, DIRECT] {
            if plan.units.iter().any(|u| flavour_of(u) == slot) {
                self.flavour(slot, grouped)?;
            }
        }
        self.encode_planned(encoder, &plan, &buffers)
    }

    /// Write the plan's table and unit headers (growing their buffers when needed; a new
    /// buffer drops the cached bind groups).
    fn upload(&mut self, plan: &Plan) -> Result<()> {
        let device = self.ctx.device();
        let table_bytes = (plan.table.len() as u64 * 4).max(16);
        let limit = device.limits().max_storage_buffer_binding_size;
        if table_bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "tensor table (bound whole)",
                bytes: table_bytes,
                limit,
            });
        }
        if self
            .table_buffer
            .as_ref()
            .is_none_or(|b| b.size() < table_bytes)
        {
            self.table_buffer = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim tensor table"),
                size: table_bytes.next_power_of_two().min(limit.max(table_bytes)),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
            self.bind_groups.clear();
        }
        let unit_bytes = self.unit_stride * plan.units.len().max(1) as u64;
        if self
            .unit_buffer
            .as_ref()
            .is_none_or(|b| b.size() < unit_bytes)
        {
            self.unit_buffer = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim tensor units"),
                size: unit_bytes.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
            self.bind_groups.clear();
        }
        let (Some(table), Some(units)) = (&self.table_buffer, &self.unit_buffer) else {
            return Ok(());
        };
        self.ctx
            .queue()
            .write_buffer(table, 0, bytemuck::cast_slice(&plan.table));
        let words = (self.unit_stride / 4) as usize;
        let mut headers = vec![0u32; words * plan.units.len()];
        for (u, unit) in plan.units.iter().enumerate() {
            // The flat kernel's window (elements, first lane 0, group) or the table's.
            let header = match unit.direct {
                Some((len, group)) => [len, 0, 0, group],
                None => [unit.blocks, unit.first_block, unit.table_base, 0],
            };
            headers[u * words..u * words + 4].copy_from_slice(&header);
        }
        self.ctx
            .queue()
            .write_buffer(units, 0, bytemuck::cast_slice(&headers));
        Ok(())
    }

    // wgpu::Buffer compares and hashes by its identity (not its contents or mapping
    // state), so it is a sound map key despite its interior mutability.
    #[allow(clippy::mutable_key_type)]
    fn encode_planned(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        buffers: &[&wgpu::Buffer],
    ) -> Result<()> {
        if let Some(device) = &mut self.device {
            device.prepare(&self.groups)?;
        }
        let (Some(table), Some(unit_buffer)) = (&self.table_buffer, &self.unit_buffer) else {
            return Err(Error::Wgpu {
                during: "tensor step",
                message: "the tensor table was not uploaded".into(),
            });
        };
        let (table, unit_buffer) = (table.clone(), unit_buffer.clone());
        if let Some(norm) = &mut self.norm {
            let grads: Vec<(&wgpu::Buffer, (u64, u64))> = plan
                .units
                .iter()
                .map(|u| (buffers[u.grad_buffer], u.grad_window))
                .collect();
            norm.encode(
                encoder,
                plan,
                &grads,
                &table,
                &self.control,
                self.geometry.block_lanes,
            );
        }
        // Bind groups: reuse those whose buffers and windows are unchanged, drop the rest
        // (they would keep buffers the caller has freed alive).
        let mut old = std::mem::take(&mut self.bind_groups);
        let mut launches = Vec::with_capacity(plan.units.len());
        for (u, unit) in plan.units.iter().enumerate() {
            let shared = unit.grad_in_param();
            let flavour = flavour_of(unit);
            let key = BindKey {
                flavour,
                param: buffers[unit.param_buffer].clone(),
                param_window: unit.param_window,
                grad: (!shared).then(|| (buffers[unit.grad_buffer].clone(), unit.grad_window)),
                state_window: unit.state_window,
                unit: u,
            };
            let group = match old.remove(&key) {
                Some(g) => g,
                None => self.bind_group(&key, &table, &unit_buffer)?,
            };
            self.bind_groups.insert(key.clone(), group.clone());
            launches.push((flavour, group, unit.blocks));
        }
        drop(old);

        let slot = self.groups[0].host.step;
        self.hyper_bytes.clear();
        for group in &mut self.groups {
            let hyper = group.config.begin_step(&mut group.host);
            match &self.device {
                Some(d) => d.host_words(&hyper, group.host.lr, &mut self.hyper_bytes),
                None => self.hyper_bytes.extend_from_slice(hyper.as_bytes()),
            }
        }
        let offset = (slot % UNIFORM_RING) * self.hyper_stride;
        if let Some(device) = &self.device {
            device.encode_resolve(encoder, offset);
        }
        self.ctx
            .queue()
            .write_buffer(&self.hyper_buffer, offset, &self.hyper_bytes);
        let limit = self
            .ctx
            .device()
            .limits()
            .max_compute_workgroups_per_dimension;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fused-optim tensor step"),
                timestamp_writes: None,
            });
            for (flavour, group, blocks) in &launches {
                let f = self.flavours[*flavour].as_ref().expect("built");
                let pipeline = &f
                    .pipelines
                    .iter()
                    .find(|(k, _)| *k == self.key)
                    .expect("built for the key in force")
                    .1;
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, group, &[offset as u32]);
                let (x, y) = grid(u64::from(*blocks), limit);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        if let Some(device) = &self.device {
            device.encode_update_scale(encoder);
        }
        for group in &mut self.groups {
            group.config.end_step(&mut group.host);
        }
        Ok(())
    }

    fn bind_group(
        &self,
        key: &BindKey,
        table: &wgpu::Buffer,
        units: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup> {
        let flavour = self.flavours[key.flavour]
            .as_ref()
            .ok_or_else(|| Error::Wgpu {
                during: "tensor step",
                message: "kernel flavour not built".into(),
            })?;
        let window = |buffer, (offset, size): (u64, u64)| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset,
                size: std::num::NonZeroU64::new(size),
            })
        };
        let mut entries = Vec::new();
        for role in required_bindings(&flavour.variant) {
            let resource = match role {
                BindingRole::Hyper => uniform_binding(&self.hyper_buffer, 0, HYPER_BINDING_BYTES),
                BindingRole::Window => {
                    uniform_binding(units, self.unit_stride * key.unit as u64, 16)
                }
                BindingRole::Param => window(&key.param, key.param_window),
                BindingRole::Grad => match &key.grad {
                    Some((b, w)) => window(b, *w),
                    None => window(&key.param, key.param_window),
                },
                BindingRole::State(k) => {
                    let name = flavour.slots[usize::from(k)];
                    let s = self.state_index(name)?;
                    window(&self.states[s], key.state_window)
                }
                BindingRole::Control => self.control.as_entire_binding(),
                BindingRole::TensorTable => table.as_entire_binding(),
                other => {
                    return Err(Error::Wgpu {
                        during: "tensor step",
                        message: format!("binding {other:?} in a kernel over caller ranges"),
                    })
                }
            };
            entries.push(wgpu::BindGroupEntry {
                binding: role.binding(),
                resource,
            });
        }
        Ok(self
            .ctx
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fused-optim tensor unit"),
                layout: &flavour.layout,
                entries: &entries,
            }))
    }
}
