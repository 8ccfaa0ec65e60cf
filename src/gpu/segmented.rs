//! The GPU step of per-tensor algorithms (`Algorithm::ELEMENTWISE = false`): the
//! algorithm's `SEGMENTED_KERNEL` (one WGSL module, entry points `reduce`, `finish`,
//! `apply`, and `gnorm`, `gfinish` for a global gradient clip) over the params, the
//! gradients, the state tensors, the params' segment table, a chunk table and a work buffer,
//! all bound once. Every chunk lies inside one segment; the first pass writes each chunk's
//! partial sums into its own slot, the finish pass reduces a segment's slots in a fixed tree
//! (deterministic, no float atomics), the last pass applies. One compute pass, one
//! submission per step; the tables are built with the optimizer, never per step.
//!
//! Bindings: 0 the per-step uniform (a ring slot per step, dynamic offset), 1 params,
//! 2 gradients, 3.. the state tensors in `state_names` order, then the segment table, the
//! chunk table and the work buffer (layout: `shaders/lamb_segmented.wgsl`).

use std::num::NonZeroU64;

use super::buffer::FlatParams;
use super::context::GpuContext;
use super::kernel::UNIFORM_RING;
use crate::error::{Error, Result};
use crate::optim::MAX_UNIFORM_BYTES;

/// Elements per chunk (one workgroup of 256 invocations, 4 elements each).
pub(crate) const CHUNK_ELEMENTS: usize = 1024;
/// Floats of the work buffer per segment: the applied coefficient, the algorithm's
/// `SEGMENT_SCALARS` (words 1..), and the non-finite flag (the last word: 1 when a sum of the
/// segment was not finite).
pub(crate) const SEGMENT_WORDS: usize = 8;

/// A per-tensor kernel bound to one optimizer's buffers.
pub(crate) struct SegmentedKernel {
    ctx: GpuContext,
    gnorm: (wgpu::ComputePipeline, wgpu::ComputePipeline),
    reduce: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    apply: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    stride: u64,
    work: wgpu::Buffer,
    _chunks: wgpu::Buffer,
    chunk_grid: (u32, u32),
    segment_grid: (u32, u32),
    segments: usize,
}

/// The chunk table: per segment (first chunk, chunk count, 0, 0), then per chunk
/// (segment, start, end, 0).
fn chunk_table(params: &FlatParams) -> Result<(Vec<[u32; 4]>, usize)> {
    let table = params.segment_table();
    let segs = table.segments();
    let mut heads = Vec::with_capacity(segs.len());
    let mut chunks = Vec::new();
    let word = |x: usize| {
        u32::try_from(x).map_err(|_| Error::TooManyElements {
            what: "segmented kernel chunk table",
            len: x as u64,
            limit: u64::from(u32::MAX),
        })
    };
    for (k, s) in segs.iter().enumerate() {
        let first = chunks.len();
        let mut start = s.start;
        while start < s.end() {
            let end = (start + CHUNK_ELEMENTS).min(s.end());
            chunks.push([word(k)?, word(start)?, word(end)?, 0]);
            start = end;
        }
        heads.push([word(first)?, word(chunks.len() - first)?, 0, 0]);
    }
    let count = chunks.len();
    heads.extend(chunks);
    Ok((heads, count))
}

/// A 2-D grid of at least `n` workgroups within the per-dimension limit.
fn grid(n: usize, limit: u32) -> (u32, u32) {
    let x = (n as u64).clamp(1, u64::from(limit));
    let y = (n as u64).div_ceil(x).max(1);
    (x as u32, y as u32)
}

impl SegmentedKernel {
    /// Builds the pipelines and binds `params`, its segment table and `states` (f32, in
    /// `state_names` order).
    pub fn new(
        params: &FlatParams,
        file: &'static str,
        source: &'static str,
        states: &[wgpu::Buffer],
    ) -> Result<Self> {
        let ctx = params.context().clone();
        let device = ctx.device();
        let limits = device.limits();
        let storage = 5 + states.len() as u32;
        if storage > limits.max_storage_buffers_per_shader_stage {
            return Err(Error::KernelDoesNotFit {
                kernel: file.to_string(),
                needs: storage,
                what: "storage buffers per shader stage",
                limit: limits.max_storage_buffers_per_shader_stage,
            });
        }
        let bytes = params.params_buffer().size();
        let limit = ctx.max_binding_bytes();
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "params of a per-tensor algorithm (bound whole: \
                       max_storage_buffer_binding_size)",
                bytes,
                limit,
            });
        }
        let (table, chunk_count) = chunk_table(params)?;
        let segments = params.segment_table().segments().len();
        let stride = MAX_UNIFORM_BYTES
            .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim segmented uniform"),
            size: stride * UNIFORM_RING,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let chunks = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim chunk table"),
            size: (table.len() * 16) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&chunks, 0, bytemuck::cast_slice(&table));
        let work_words = SEGMENT_WORDS * segments + 4 + 4 * chunk_count;
        let work = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim segmented work"),
            size: (work_words * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entry =
            |binding: u32, ty: wgpu::BufferBindingType, dynamic: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset: dynamic,
                    min_binding_size: None,
                },
                count: None,
            };
        let rw = wgpu::BufferBindingType::Storage { read_only: false };
        let ro = wgpu::BufferBindingType::Storage { read_only: true };
        let first_table = 3 + states.len() as u32;
        let mut entries = vec![
            entry(0, wgpu::BufferBindingType::Uniform, true),
            entry(1, rw, false),
            entry(2, ro, false),
        ];
        entries.extend((0..states.len() as u32).map(|k| entry(3 + k, rw, false)));
        entries.extend([
            entry(first_table, ro, false),
            entry(first_table + 1, ro, false),
            entry(first_table + 2, rw, false),
        ]);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(file),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(file),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = |name| {
            super::kernel::compute_pipeline(
                device,
                name,
                &module,
                Some(&pipeline_layout),
                name,
                &[],
                true,
            )
        };
        fn whole(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
            wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: None,
                }),
            }
        }
        let mut group_entries = vec![
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniform,
                    offset: 0,
                    size: NonZeroU64::new(MAX_UNIFORM_BYTES),
                }),
            },
            whole(1, params.params_buffer()),
            whole(2, params.grads_buffer()),
        ];
        group_entries.extend(
            states
                .iter()
                .enumerate()
                .map(|(k, b)| whole(3 + k as u32, b)),
        );
        group_entries.extend([
            whole(first_table, params.segment_table_buffer()),
            whole(first_table + 1, &chunks),
            whole(first_table + 2, &work),
        ]);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(file),
            layout: &layout,
            entries: &group_entries,
        });
        let kernel = Self {
            gnorm: (pipeline("gnorm"), pipeline("gfinish")),
            reduce: pipeline("reduce"),
            finish: pipeline("finish"),
            apply: pipeline("apply"),
            bind_group,
            uniform,
            stride,
            work,
            _chunks: chunks,
            chunk_grid: grid(chunk_count, limits.max_compute_workgroups_per_dimension),
            segment_grid: grid(segments, limits.max_compute_workgroups_per_dimension),
            segments,
            ctx: ctx.clone(),
        };
        ctx.pop_scope(scope, "segmented kernel creation")?;
        Ok(kernel)
    }

    /// Record one step: the uniform `bytes` into ring slot `slot % UNIFORM_RING` (written
    /// through the queue), then the passes in one compute pass. `global_clip`: the
    /// configuration's global gradient clip is on.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slot: u64,
        bytes: &[u8],
        global_clip: bool,
    ) {
        let offset = (slot % UNIFORM_RING) * self.stride;
        self.ctx.queue().write_buffer(&self.uniform, offset, bytes);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim segmented step"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &self.bind_group, &[offset as u32]);
        let (cx, cy) = self.chunk_grid;
        if global_clip {
            let (gnorm, gfinish) = &self.gnorm;
            pass.set_pipeline(gnorm);
            pass.dispatch_workgroups(cx, cy, 1);
            pass.set_pipeline(gfinish);
            pass.dispatch_workgroups(1, 1, 1);
        }
        pass.set_pipeline(&self.reduce);
        pass.dispatch_workgroups(cx, cy, 1);
        pass.set_pipeline(&self.finish);
        let (sx, sy) = self.segment_grid;
        pass.dispatch_workgroups(sx, sy, 1);
        pass.set_pipeline(&self.apply);
        pass.dispatch_workgroups(cx, cy, 1);
    }

    /// The work buffer's per-segment words after the last step ([`SEGMENT_WORDS`] each),
    /// read back (waits; on the web use [`Self::segment_words_async`]).
    pub async fn segment_words_async(&self) -> Result<Vec<f32>> {
        super::buffer::read_f32_async(&self.ctx, &self.work, 0, SEGMENT_WORDS * self.segments).await
    }
}
