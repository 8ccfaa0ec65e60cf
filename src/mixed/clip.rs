//! The global gradient-norm clip of a mixed optimizer: `torch.nn.utils.clip_grad_norm_` over
//! every tensor of every group (norm type 2), applied before the groups step.
//!
//! ```text
//! norm = sqrt(sum over every segment element of g^2)
//! coef = min(1, max_norm / (norm + 1e-6));   g = g * coef
//! ```
//!
//! On the GPU (`shaders/mixed_clip.wgsl`): per chunk of 1024 elements of a segment a partial
//! sum into its own slot, one workgroup sums the slots in a fixed order, then the gradients
//! are scaled in place (as torch scales `p.grad` in place), all in the step's encoder. On the
//! CPU paths the scaled gradients go to a buffer allocated when the clip is set (the caller's
//! gradients are only read). Only segment elements are read: padding never enters the norm.

use std::num::NonZeroU64;

use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::context::GpuContext;
use crate::segments::SegmentTable;

/// Elements per chunk (GPU workgroups and CPU partial sums alike).
pub(crate) const CLIP_CHUNK: usize = 1024;

/// The chunks of every segment of `table`: (start, end) element ranges.
pub(crate) fn clip_chunks(table: &SegmentTable) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for s in table.segments() {
        let mut start = s.start;
        while start < s.end() {
            let end = (start + CLIP_CHUNK).min(s.end());
            out.push((start, end));
            start = end;
        }
    }
    out
}

/// `max_norm` checked as [`GradOptions`](crate::GradOptions) checks it: finite and > 0.
pub(crate) fn check_max_norm(max_norm: Option<f64>) -> Result<()> {
    match max_norm {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(Error::InvalidHyperParameter {
            optimizer: "mixed optimizer global clip",
            name: "max_norm",
            value: v,
            requirement: "must be finite and > 0",
        }),
        _ => Ok(()),
    }
}

/// torch's clip coefficient for a total norm.
pub(crate) fn clip_coef(max_norm: f64, norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ClipUniform {
    max_norm: f32,
    chunks: u32,
    grid_x: u32,
    _pad: u32,
}

/// The device clip over a `FlatParams`' gradients.
pub(crate) struct GpuClip {
    ctx: GpuContext,
    reduce: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    scale: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    work: wgpu::Buffer,
    _chunks: wgpu::Buffer,
    chunk_count: usize,
    grid: (u32, u32),
    max_norm: f64,
}

impl GpuClip {
    /// Pipelines, the chunk table and the work buffer for `params`, clipping at `max_norm`.
    pub fn new(params: &FlatParams, max_norm: f64) -> Result<Self> {
        let ctx = params.context().clone();
        let chunks: Vec<[u32; 2]> = clip_chunks(params.segment_table())
            .into_iter()
            .map(|(a, b)| Ok([word(a)?, word(b)?]))
            .collect::<Result<_>>()?;
        let chunk_count = chunks.len();
        let bytes = params.grads_buffer().size();
        if bytes > ctx.max_binding_bytes() {
            return Err(Error::BufferTooLarge {
                what: "gradients of a mixed optimizer's global clip (bound whole)",
                bytes,
                limit: ctx.max_binding_bytes(),
            });
        }
        let limit = ctx.device().limits().max_compute_workgroups_per_dimension;
        let x = (chunk_count as u64).clamp(1, u64::from(limit));
        let grid = (x as u32, (chunk_count as u64).div_ceil(x).max(1) as u32);
        ctx.scoped("mixed clip build", || {
            let device = ctx.device();
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("mixed_clip.wgsl"),
                source: wgpu::ShaderSource::Wgsl(
                    include_str!("../../shaders/mixed_clip.wgsl").into(),
                ),
            });
            let entry = |binding, ty| crate::gpu::kernel::buffer_layout_entry(binding, ty, false);
            let rw = wgpu::BufferBindingType::Storage { read_only: false };
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("fused-optim mixed clip"),
                entries: &[
                    entry(0, wgpu::BufferBindingType::Uniform),
                    entry(1, rw),
                    entry(2, wgpu::BufferBindingType::Storage { read_only: true }),
                    entry(3, rw),
                ],
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("fused-optim mixed clip"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = |name| {
                crate::gpu::kernel::compute_pipeline(
                    device,
                    name,
                    &module,
                    Some(&pipeline_layout),
                    name,
                    &[],
                    true,
                )
            };
            let (reduce, finish, scale) =
                (pipeline("reduce"), pipeline("finish"), pipeline("scale"));
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim mixed clip uniform"),
                size: 16,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let table = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim mixed clip chunks"),
                size: (chunk_count.max(1) * 8) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue()
                .write_buffer(&table, 0, bytemuck::cast_slice(&chunks));
            let work = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim mixed clip work"),
                size: ((chunk_count + 2) * 4).next_multiple_of(16) as u64,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
                wgpu::BindGroupEntry {
                    binding,
                    resource: buffer.as_entire_binding(),
                }
            }
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fused-optim mixed clip"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniform,
                            offset: 0,
                            size: NonZeroU64::new(16),
                        }),
                    },
                    whole(1, params.grads_buffer()),
                    whole(2, &table),
                    whole(3, &work),
                ],
            });
            let clip = Self {
                ctx: ctx.clone(),
                reduce,
                finish,
                scale,
                bind_group,
                uniform,
                work,
                _chunks: table,
                chunk_count,
                grid,
                max_norm,
            };
            clip.write_uniform();
            Ok(clip)
        })
    }

    fn write_uniform(&self) {
        let u = ClipUniform {
            max_norm: self.max_norm as f32,
            chunks: self.chunk_count as u32,
            grid_x: self.grid.0,
            _pad: 0,
        };
        self.ctx
            .queue()
            .write_buffer(&self.uniform, 0, bytemuck::bytes_of(&u));
    }

    /// Record the clip (norm, coefficient, in-place scaling) into `encoder`.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim mixed clip"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_pipeline(&self.reduce);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
        pass.set_pipeline(&self.finish);
        pass.dispatch_workgroups(1, 1, 1);
        pass.set_pipeline(&self.scale);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }

    /// The global norm of the last step's gradients (reads back; waits).
    pub fn last_norm(&self) -> Result<f64> {
        let w = crate::gpu::buffer::read_f32(&self.ctx, &self.work, self.chunk_count, 1)?;
        Ok(f64::from(w[0]))
    }
}

fn word(x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::TooManyElements {
        what: "mixed clip chunk table",
        len: x as u64,
        limit: u64::from(u32::MAX),
    })
}
