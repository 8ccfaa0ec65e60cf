//! `KernelRunner`: one compute pipeline over a flat parameter buffer, with its bind groups
//! (one per binding window), its per-step uniform ring and its launch grids, all built once.
//! The optimizers and the roofline kernels both run on it.

use std::num::NonZeroU64;

use super::buffer::FlatParams;
use super::context::GpuContext;
use super::shaders::{
    assemble_with, check_fits, required_bindings, BindingKind, BindingRole, LowPrecision, Variant,
};
use crate::dispatch::{grid, padded_len, window_header, windows, Window};
use crate::error::{Error, Result};
use crate::grads::GradControl;
use crate::optim::{OptimizerConfig, MAX_UNIFORM_BYTES};

/// Per-step uniform slots. Each step writes its own slot (addressed by a dynamic offset), so
/// up to this many steps can be encoded into one submission and each still sees its own
/// scalars (`queue.write_buffer` lands before the whole submission, not between passes).
pub const UNIFORM_RING: u64 = 256;

/// Parameter groups a kernel can tell apart (`MAX_GROUPS` in `common.wgsl`).
pub const MAX_GROUPS: usize = 8;

/// Bytes of the per-step uniform: one StepUniform per group.
pub(crate) const HYPER_BINDING_BYTES: u64 = MAX_GROUPS as u64 * MAX_UNIFORM_BYTES;

/// Bytes of the per-step `StepInfo` (stochastic-rounding seed), right after the Hypers.
pub(crate) const STEP_INFO_BYTES: u64 = 16;

/// Low-precision buffers of a kernel: f16/bf16 gradients in, params out (2 per u32).
#[derive(Clone, Copy)]
pub(crate) struct LowBinding<'a> {
    /// 1 = f16, 2 = bf16 (`LOW_PRECISION` in common.wgsl).
    pub format_code: u32,
    /// Stochastic rounding of the written params (bf16 only).
    pub stochastic: bool,
    /// Packed gradients.
    pub grads: &'a wgpu::Buffer,
    /// Packed params.
    pub params: &'a wgpu::Buffer,
}

struct Launch {
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// The per-lane options a kernel is compiled for (override constants `MAXIMIZE`, `L2_DECAY`,
/// `DECOUPLED_DECAY` of common.wgsl): an option that no parameter group uses is left out of
/// the kernel's arithmetic. On a CPU implementation of WebGPU (lavapipe) every vector
/// operation costs time (measured: about 1.5 instructions per element of Adam's 87); a GPU
/// hardly notices. Each combination is compiled once, when first used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Specialization {
    pub maximize: bool,
    pub l2_decay: bool,
    pub decoupled_decay: bool,
}

impl Specialization {
    /// Every option compiled in (kernels that do not read them: roofs, copies).
    #[cfg(feature = "roofline")]
    pub const GENERAL: Self = Self {
        maximize: true,
        l2_decay: true,
        decoupled_decay: true,
    };

    /// The options some group of `configs` uses.
    pub fn of(configs: &[OptimizerConfig]) -> Self {
        let mut s = Self {
            maximize: false,
            l2_decay: false,
            decoupled_decay: false,
        };
        for c in configs {
            let o = c.lane_options();
            s.maximize |= o.maximize;
            s.l2_decay |= o.l2_decay;
            s.decoupled_decay |= o.decoupled_decay;
        }
        s
    }

    pub(crate) fn constants(self) -> [(&'static str, f64); 3] {
        [
            ("MAXIMIZE", f64::from(u8::from(self.maximize))),
            ("L2_DECAY", f64::from(u8::from(self.l2_decay))),
            ("DECOUPLED_DECAY", f64::from(u8::from(self.decoupled_decay))),
        ]
    }
}

/// What a kernel binds: its WGSL source and state slots, and the buffers. The kernel variant
/// (which bindings the module declares and the layout holds) follows from these buffers and
/// the device (`KernelRunner::new`).
pub(crate) struct KernelSpec<'a> {
    pub file: &'static str,
    /// The algorithm file, without the prelude (assembled per variant by the runner).
    pub source: &'static str,
    /// Slot names in binding order (bindings 4, 5, ..., or 12, 13, ... in bf16).
    pub slots: &'a [&'a str],
    /// The buffer bound to each active slot; slots absent here are not bound (stubs).
    pub active: Vec<(&'a str, &'a wgpu::Buffer)>,
    /// Pipeline-overridable constants besides the launch shape and the specialization.
    pub constants: Vec<(&'static str, f64)>,
    /// The per-lane options compiled in (can be changed later: `set_specialization`).
    pub specialization: Specialization,
    /// Skip naga's runtime bounds checks (every kernel does its own index check).
    pub trusted: bool,
    /// The gradient control block (binding 7).
    pub control: &'a wgpu::Buffer,
    /// The parameter group of every vec4 lane (binding 8), for grouped optimizers.
    pub lane_groups: Option<&'a wgpu::Buffer>,
    /// Low-precision gradients and params (bindings 9, 10).
    pub low: Option<LowBinding<'a>>,
    /// bf16 state tensors (bindings 12+), with stochastic rounding or not; `active` is then
    /// empty.
    pub packed_states: Option<(Vec<(&'a str, &'a wgpu::Buffer)>, bool)>,
}

pub(crate) struct KernelRunner {
    ctx: GpuContext,
    /// The pipeline in use, its key (gradient pipeline on, specialization), and every
    /// variant built so far (each at most once, never per step).
    pipeline: wgpu::ComputePipeline,
    key: (bool, Specialization),
    variants: Vec<((bool, Specialization), wgpu::ComputePipeline)>,
    recipe: PipelineRecipe,
    hyper_buffer: wgpu::Buffer,
    hyper_stride: u64,
    launches: Vec<Launch>,
    _window_buffer: wgpu::Buffer,
    stochastic: bool,
    /// The variant the module and layout were built for.
    variant: Variant,
    /// Dynamic offsets per `set_bind_group` (the hyper ring, and the step info when bound).
    dynamic_offsets: usize,
}

impl KernelRunner {
    pub fn new<'a>(params: &FlatParams, spec: KernelSpec<'a>) -> Result<Self> {
        let ctx = params.context().clone();
        let device = ctx.device();
        let limits = device.limits();
        let tuning = ctx.options().tuning;
        check_launch(&ctx)?;
        // The variant: which bindings the module declares and the layout holds.
        let packed: Vec<(&str, &wgpu::Buffer)> = spec
            .packed_states
            .as_ref()
            .map_or(Vec::new(), |p| p.0.clone());
        let bound_states = if spec.packed_states.is_some() {
            &packed
        } else {
            &spec.active
        };
        let state_buffer = |k: usize| {
            spec.slots
                .get(k)
                .and_then(|slot| bound_states.iter().find(|(n, _)| n == slot))
                .map(|(_, b)| *b)
        };
        let low_precision = LowPrecision::from_code(spec.low.map_or(0, |l| l.format_code));
        let variant = Variant {
            grouped: spec.lane_groups.is_some(),
            low_precision,
            bf16_state: spec.packed_states.is_some(),
            state_slots: (0..spec.slots.len().min(8))
                .filter(|&k| state_buffer(k).is_some())
                .fold(0u8, |m, k| m | (1 << k)),
            ..ctx.kernel_variant(low_precision == LowPrecision::F16)
        };
        // Refuse what the device cannot hold before creating anything (a layout over the
        // limits would be a device-side validation error).
        check_fits(spec.file, &variant, &limits, device.features())?;
        let bindings = required_bindings(&variant);
        let layout = bind_group_layout(device, &bindings);
        let stochastic = spec.low.is_some_and(|l| l.stochastic)
            || spec.packed_states.as_ref().is_some_and(|p| p.1);
        let recipe = PipelineRecipe {
            file: spec.file,
            source: assemble_with(spec.source, spec.slots, variant),
            constants: {
                let mut c = spec.constants.clone();
                c.push(("STOCHASTIC_ROUNDING", f64::from(u8::from(stochastic))));
                c
            },
            trusted: spec.trusted,
            layout: device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.file),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            }),
        };
        let key = (false, spec.specialization);
        let pipeline = recipe.build(&ctx, key)?;

        // Slots are bound as uniforms by the kernel and as storage by the device step counter
        // (which completes them on the device), so they are aligned for both.
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

        let wins = windows(
            params.len() as u64,
            ctx.max_binding_bytes(),
            u64::from(limits.min_storage_buffer_offset_alignment),
        );
        let window_stride =
            16u64.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let window_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim windows"),
            size: window_stride * wins.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let per_group = u64::from(tuning.workgroup_size) * u64::from(tuning.vec4_per_invocation);
        let mut launches = Vec::with_capacity(wins.len());
        for (w_index, w) in wins.iter().enumerate() {
            let window_offset = window_stride * w_index as u64;
            let header = window_header(w)?;
            ctx.queue()
                .write_buffer(&window_buffer, window_offset, bytemuck::cast_slice(&header));
            let mut entries = Vec::with_capacity(bindings.len());
            for &role in &bindings {
                let binding = role.binding();
                let missing = || Error::Wgpu {
                    during: "bind group creation",
                    message: format!("{}: no buffer for binding {binding} ({role:?})", spec.file),
                };
                let entire = |b: Option<&'a wgpu::Buffer>| {
                    b.map(|b| b.as_entire_binding()).ok_or_else(missing)
                };
                let resource = match role {
                    BindingRole::Hyper => uniform_binding(&hyper_buffer, 0, HYPER_BINDING_BYTES),
                    BindingRole::Window => uniform_binding(&window_buffer, window_offset, 16),
                    BindingRole::Param => {
                        wgpu::BindingResource::Buffer(window_binding(params.params_buffer(), w))
                    }
                    BindingRole::Grad => {
                        wgpu::BindingResource::Buffer(window_binding(params.grads_buffer(), w))
                    }
                    BindingRole::State(k) => wgpu::BindingResource::Buffer(window_binding(
                        state_buffer(usize::from(k)).ok_or_else(missing)?,
                        w,
                    )),
                    BindingRole::Control => spec.control.as_entire_binding(),
                    BindingRole::LaneGroups => entire(spec.lane_groups)?,
                    BindingRole::LowGrad => entire(spec.low.map(|l| l.grads))?,
                    BindingRole::LowParam => entire(spec.low.map(|l| l.params))?,
                    BindingRole::StepInfo => {
                        uniform_binding(&hyper_buffer, HYPER_BINDING_BYTES, STEP_INFO_BYTES)
                    }
                    BindingRole::Bf16State(k) => entire(state_buffer(usize::from(k)))?,
                    // Flat kernels are never external (the variant above).
                    BindingRole::TensorTable => return Err(missing()),
                };
                entries.push(wgpu::BindGroupEntry { binding, resource });
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fused-optim window"),
                layout: &layout,
                entries: &entries,
            });
            let lanes = padded_len(w.len) / 4;
            let groups = grid(
                lanes.div_ceil(per_group),
                limits.max_compute_workgroups_per_dimension,
            );
            launches.push(Launch { bind_group, groups });
        }
        Ok(Self {
            ctx,
            variants: vec![(key, pipeline.clone())],
            pipeline,
            key,
            recipe,
            hyper_buffer,
            hyper_stride,
            launches,
            _window_buffer: window_buffer,
            stochastic,
            variant,
            dynamic_offsets: bindings
                .iter()
                .filter(|r| r.kind() == BindingKind::Uniform { dynamic: true })
                .count(),
        })
    }

    /// The variant the kernel was built for.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The per-step uniform ring.
    pub fn hyper_ring(&self) -> &wgpu::Buffer {
        &self.hyper_buffer
    }

    /// Byte offset of uniform slot `slot % RING` in the ring.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        (slot % UNIFORM_RING) * self.hyper_stride
    }

    /// Record one launch over every window, with `hyper` in uniform slot `slot % RING`.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, slot: u64, hyper: &[u8]) {
        let offset = self.slot_offset(slot);
        self.ctx
            .queue()
            .write_buffer(&self.hyper_buffer, offset, hyper);
        if self.stochastic {
            // A fresh seed per step for stochastic rounding, from the step index.
            let seed = (slot as u32).wrapping_mul(0x9E37_79B9) ^ 0x85EB_CA6B;
            self.ctx.queue().write_buffer(
                &self.hyper_buffer,
                offset + HYPER_BINDING_BYTES,
                bytemuck::bytes_of(&[seed, 0u32, 0, 0]),
            );
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim step"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        for launch in &self.launches {
            let offsets = [offset as u32; 2];
            pass.set_bind_group(0, &launch.bind_group, &offsets[..self.dynamic_offsets]);
            pass.dispatch_workgroups(launch.groups.0, launch.groups.1, 1);
        }
    }

    /// Encode and submit one launch.
    pub fn submit(&self, slot: u64, hyper: &[u8]) {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fused-optim step"),
                });
        self.encode(&mut encoder, slot, hyper);
        self.ctx.queue().submit([encoder.finish()]);
    }

    /// Switch between plain gradient loads and the gradient pipeline (unscale, clip). The
    /// variant is compiled the first time it is asked for, never per step.
    pub fn set_grad_pipeline(&mut self, on: bool) -> Result<()> {
        self.use_variant((on, self.key.1))
    }

    /// Switch to the kernel compiled for `specialization` (compiled the first time).
    pub fn set_specialization(&mut self, specialization: Specialization) -> Result<()> {
        self.use_variant((self.key.0, specialization))
    }

    /// On error (the variant does not compile) the pipeline in use stays.
    fn use_variant(&mut self, key: (bool, Specialization)) -> Result<()> {
        if key == self.key {
            return Ok(());
        }
        let pipeline = match self.variants.iter().find(|(k, _)| *k == key) {
            Some((_, p)) => p.clone(),
            None => {
                let p = self.recipe.build(&self.ctx, key)?;
                self.variants.push((key, p.clone()));
                p
            }
        };
        self.pipeline = pipeline;
        self.key = key;
        Ok(())
    }

    pub fn windows(&self) -> usize {
        self.launches.len()
    }
}

/// Refuse launch shapes and binding caps the device cannot run (instead of failing later).
pub(crate) fn check_launch(ctx: &GpuContext) -> Result<()> {
    let limits = ctx.device().limits();
    let t = ctx.options().tuning;
    let bad = |name, value: f64, requirement| {
        Err(Error::InvalidLaunchOption {
            name,
            value: value as u64,
            requirement,
        })
    };
    if t.workgroup_size == 0
        || t.workgroup_size > limits.max_compute_workgroup_size_x
        || t.workgroup_size > limits.max_compute_invocations_per_workgroup
    {
        return bad(
            "workgroup_size",
            f64::from(t.workgroup_size),
            "must be between 1 and the device's max_compute_workgroup_size_x",
        );
    }
    if t.vec4_per_invocation == 0 || t.vec4_per_invocation > 64 {
        return bad(
            "vec4_per_invocation",
            f64::from(t.vec4_per_invocation),
            "must be between 1 and 64",
        );
    }
    let align = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
    if ctx.max_binding_bytes() < 2 * align {
        return bad(
            "max_binding_bytes",
            ctx.max_binding_bytes() as f64,
            "must hold at least two offset-alignment blocks",
        );
    }
    Ok(())
}

pub(crate) fn uniform_binding(
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size),
    })
}

fn window_binding<'a>(buffer: &'a wgpu::Buffer, w: &Window) -> wgpu::BufferBinding<'a> {
    wgpu::BufferBinding {
        buffer,
        offset: w.byte_offset(),
        size: NonZeroU64::new(w.bound_bytes()),
    }
}

/// The layout of exactly `bindings` (a variant's [`required_bindings`]).
pub(crate) fn bind_group_layout(
    device: &wgpu::Device,
    bindings: &[BindingRole],
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&role| {
            let min_size: u64 = match role {
                BindingRole::Hyper => HYPER_BINDING_BYTES,
                BindingRole::StepInfo => STEP_INFO_BYTES,
                BindingRole::Window => 16,
                BindingRole::Param | BindingRole::Grad | BindingRole::State(_) => 16,
                BindingRole::Control => std::mem::size_of::<GradControl>() as u64,
                BindingRole::LaneGroups => 4,
                BindingRole::LowGrad | BindingRole::LowParam | BindingRole::Bf16State(_) => 8,
                BindingRole::TensorTable => 4,
            };
            let ty = match role.kind() {
                BindingKind::Uniform { .. } => wgpu::BufferBindingType::Uniform,
                BindingKind::Storage { read_only } => {
                    wgpu::BufferBindingType::Storage { read_only }
                }
            };
            let dynamic = role.kind() == BindingKind::Uniform { dynamic: true };
            wgpu::BindGroupLayoutEntry {
                binding: role.binding(),
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: dynamic,
                    min_binding_size: NonZeroU64::new(min_size),
                },
                count: None,
            }
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("fused-optim layout"),
        entries: &entries,
    })
}

pub(crate) struct PipelineRecipe {
    pub file: &'static str,
    pub source: String,
    pub constants: Vec<(&'static str, f64)>,
    pub trusted: bool,
    pub layout: wgpu::PipelineLayout,
}

impl PipelineRecipe {
    pub fn build(
        &self,
        ctx: &GpuContext,
        key: (bool, Specialization),
    ) -> Result<wgpu::ComputePipeline> {
        self.build_tuned(ctx, key, ctx.options().tuning)
    }

    /// [`Self::build`] with a launch geometry other than the context's.
    pub fn build_tuned(
        &self,
        ctx: &GpuContext,
        (grad_pipeline, specialization): (bool, Specialization),
        tuning: crate::gpu::context::KernelTuning,
    ) -> Result<wgpu::ComputePipeline> {
        let device = ctx.device();
        let mut constants = self.constants.clone();
        constants.extend(specialization.constants());
        constants.push(("WORKGROUP_SIZE", f64::from(tuning.workgroup_size)));
        constants.push(("VEC4_PER_INVOCATION", f64::from(tuning.vec4_per_invocation)));
        constants.push(("GRAD_PIPELINE", f64::from(u8::from(grad_pipeline))));
        // The default uncaptured-error handler panics; capture instead and return a typed
        // error.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(self.file),
            source: wgpu::ShaderSource::Wgsl(self.source.as_str().into()),
        };
        let module = if self.trusted {
            // SAFETY: every kernel bounds-checks its lane index against the window's element
            // count (common.wgsl `main`), and every binding covers whole lanes of the window,
            // so no access is out of bounds without naga's clamping.
            unsafe {
                device.create_shader_module_trusted(
                    descriptor,
                    wgpu::ShaderRuntimeChecks::unchecked(),
                )
            }
        } else {
            device.create_shader_module(descriptor)
        };
        let pipeline = compute_pipeline(
            device,
            self.file,
            &module,
            Some(&self.layout),
            "main",
            &constants,
            false,
        );
        ctx.pop_scope(scope, "pipeline creation")?;
        Ok(pipeline)
    }
}

/// A compute pipeline (named `label` in errors) for `entry` of `module` with override
/// `constants` (`layout: None`: the layout is derived from the shader).
/// `zero_workgroup_memory` only matters for shaders with workgroup arrays.
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    label: &str,
    module: &wgpu::ShaderModule,
    layout: Option<&wgpu::PipelineLayout>,
    entry: &str,
    constants: &[(&str, f64)],
    zero_workgroup_memory: bool,
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout,
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            zero_initialize_workgroup_memory: zero_workgroup_memory,
        },
        cache: None,
    })
}

/// A buffer binding of a compute bind-group layout: `ty` (uniform or storage), with a
/// dynamic offset or not, any size.
pub(crate) fn buffer_layout_entry(
    binding: u32,
    ty: wgpu::BufferBindingType,
    dynamic: bool,
) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: dynamic,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A bind-group entry binding all of `buffer`.
pub(crate) fn whole_buffer_entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: None,
        }),
    }
}
