//! `GpuOptimizer`: pipeline, bind groups and state buffers built once; `step` writes one
//! small uniform and dispatches one kernel per binding window, in one submission.

use std::num::NonZeroU64;

use super::buffer::{create_flat, fill, flat_bytes, read_f32, FlatParams};
use super::context::GpuContext;
use super::shaders::kernel_for;
use crate::dispatch::{grid, padded_len, windows, Window};
use crate::error::{Error, Result};
use crate::optim::{validate_lr, HostState, OptimizerConfig, MAX_HYPER_BYTES};

/// Per-step uniform slots. Each step writes its own slot (addressed by a dynamic offset), so
/// up to this many steps can be encoded into one submission with [`GpuOptimizer::encode_step`]
/// and each still sees its own scalars (`queue.write_buffer` lands before the whole
/// submission, not between the passes).
pub const UNIFORM_RING: u64 = 256;

struct Launch {
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

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
    pipeline: wgpu::ComputePipeline,
    hyper_buffer: wgpu::Buffer,
    hyper_stride: u64,
    launches: Vec<Launch>,
    _window_buffer: wgpu::Buffer,
    _dummies: Vec<wgpu::Buffer>,
}

impl std::fmt::Debug for GpuOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuOptimizer")
            .field("config", &self.config)
            .field("host", &self.host)
            .field("len", &self.params.len())
            .field("windows", &self.launches.len())
            .finish()
    }
}

impl GpuOptimizer {
    /// Validate `config`, allocate and initialise the state buffers, build the pipeline and
    /// one bind group per binding window.
    pub fn new(params: &FlatParams, config: impl Into<OptimizerConfig>) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let ctx = params.context().clone();
        let device = ctx.device();
        let limits = device.limits();
        let n = params.len();

        let state_names = config.state_names();
        let mut states = Vec::with_capacity(state_names.len());
        for name in &state_names {
            let buffer = create_flat(&ctx, "fused-optim state", n)?;
            fill(&ctx, &buffer, n, config.initial_state_value(name));
            states.push(buffer);
        }

        let (file, source, slots) = kernel_for(&config);
        let tuning = ctx.options().tuning;
        let layout = bind_group_layout(device, slots.len());
        let pipeline = build_pipeline(&ctx, file, &source, &layout, &config)?;

        let hyper_stride =
            MAX_HYPER_BYTES.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let hyper_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim hyper ring"),
            size: hyper_stride * UNIFORM_RING,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let wins = windows(
            n as u64,
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
        // Inactive state slots (e.g. max_exp_avg_sq without amsgrad) are never touched by the
        // specialised kernel but must be bound: each gets its own 16-byte buffer.
        let dummies: Vec<wgpu::Buffer> = slots
            .iter()
            .filter(|s| !state_names.contains(s))
            .map(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused-optim unused slot"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();

        let mut launches = Vec::with_capacity(wins.len());
        for (w_index, w) in wins.iter().enumerate() {
            let window_offset = window_stride * w_index as u64;
            let header: [u32; 4] = [w.len as u32, 0, 0, 0];
            ctx.queue()
                .write_buffer(&window_buffer, window_offset, bytemuck::cast_slice(&header));
            let range = |b| window_binding(b, w);
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &hyper_buffer,
                        offset: 0,
                        size: NonZeroU64::new(MAX_HYPER_BYTES),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &window_buffer,
                        offset: window_offset,
                        size: NonZeroU64::new(16),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Buffer(range(params.params_buffer())),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::Buffer(range(params.grads_buffer())),
                },
            ];
            let mut dummy = dummies.iter();
            for (slot_index, slot) in slots.iter().enumerate() {
                let resource = match state_names.iter().position(|s| s == slot) {
                    Some(k) => wgpu::BindingResource::Buffer(range(&states[k])),
                    None => dummy
                        .next()
                        .expect("one dummy per inactive slot")
                        .as_entire_binding(),
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: 4 + slot_index as u32,
                    resource,
                });
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fused-optim window"),
                layout: &layout,
                entries: &entries,
            });
            let lanes = padded_len(w.len) / 4;
            let per_group =
                u64::from(tuning.workgroup_size) * u64::from(tuning.vec4_per_invocation);
            let groups = grid(
                lanes.div_ceil(per_group),
                limits.max_compute_workgroups_per_dimension,
            );
            launches.push(Launch { bind_group, groups });
        }

        Ok(Self {
            host: HostState::new(config.lr()),
            ctx,
            config,
            params: params.clone(),
            state_names,
            states,
            pipeline,
            hyper_buffer,
            hyper_stride,
            launches,
            _window_buffer: window_buffer,
            _dummies: dummies,
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
        let hyper = self.config.begin_step(&mut self.host);
        let offset = ((self.host.step - 1) % UNIFORM_RING) * self.hyper_stride;
        self.ctx
            .queue()
            .write_buffer(&self.hyper_buffer, offset, hyper.as_bytes());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fused-optim step"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            for launch in &self.launches {
                pass.set_bind_group(0, &launch.bind_group, &[offset as u32]);
                pass.dispatch_workgroups(launch.groups.0, launch.groups.1, 1);
            }
        }
        self.config.end_step(&mut self.host);
    }

    /// Set the learning rate used from the next step on (never rebuilds anything).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        validate_lr(self.config.name(), lr)?;
        self.host.lr = lr;
        Ok(())
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
        self.launches.len()
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
        debug_assert!(self.states[k].size() >= flat_bytes(values.len()));
        self.ctx
            .queue()
            .write_buffer(&self.states[k], 0, bytemuck::cast_slice(values));
        if name == "momentum_buffer" {
            self.host.momentum_buffer_ready = true;
        }
        Ok(())
    }
}

fn window_binding<'a>(buffer: &'a wgpu::Buffer, w: &Window) -> wgpu::BufferBinding<'a> {
    wgpu::BufferBinding {
        buffer,
        offset: w.byte_offset(),
        size: NonZeroU64::new(w.bound_bytes()),
    }
}

fn bind_group_layout(device: &wgpu::Device, state_slots: usize) -> wgpu::BindGroupLayout {
    let uniform = |binding, dynamic, size| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: dynamic,
            min_binding_size: NonZeroU64::new(size),
        },
        count: None,
    };
    let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: NonZeroU64::new(16),
        },
        count: None,
    };
    let mut entries = vec![
        uniform(0, true, MAX_HYPER_BYTES),
        uniform(1, false, 16),
        storage(2, false),
        storage(3, true),
    ];
    for s in 0..state_slots {
        entries.push(storage(4 + s as u32, false));
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("fused-optim layout"),
        entries: &entries,
    })
}

fn build_pipeline(
    ctx: &GpuContext,
    file: &'static str,
    source: &str,
    layout: &wgpu::BindGroupLayout,
    config: &OptimizerConfig,
) -> Result<wgpu::ComputePipeline> {
    let device = ctx.device();
    let tuning = ctx.options().tuning;
    let mut constants = config.overrides();
    constants.push(("WORKGROUP_SIZE", f64::from(tuning.workgroup_size)));
    constants.push(("VEC4_PER_INVOCATION", f64::from(tuning.vec4_per_invocation)));
    // The default uncaptured-error handler panics; capture instead and return a typed error.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(file),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(file),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    match pollster::block_on(scope.pop()) {
        None => Ok(pipeline),
        Some(e) => Err(Error::Wgpu {
            during: "pipeline creation",
            message: e.to_string(),
        }),
    }
}
