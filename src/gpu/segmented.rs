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
//! chunk table and the work buffer (layout: `shaders/lamb_segmented.wgsl`); 8 the gradient
//! control block (`shaders/segmented_grad.wgsl`: unscaling and clipping of every gradient
//! read, in a pipeline variant built when gradient options are first set).
//!
//! An algorithm with a matrix transform (Muon) also binds a Newton–Schulz batch buffer
//! ([`GpuNewtonSchulz`]) after the work buffer: `reduce` writes each segment's matrix into
//! it, the batch is orthogonalised in place between `reduce` and `finish`, and `apply` reads
//! the result. The segments are split into parts whose batch fits one binding; each part has
//! its own chunk table (every chunk's 4th word: its offset in the part's batch buffer) and
//! bind group, and all parts are recorded into the same compute pass.

use std::num::NonZeroU64;

use super::buffer::FlatParams;
use super::context::GpuContext;
use super::kernel::UNIFORM_RING;
use super::newton_schulz::GpuNewtonSchulz;
use crate::cpu::newton_schulz::NewtonSchulz;
use crate::error::{Error, Result};
use crate::optim::MAX_UNIFORM_BYTES;

/// The WGSL every per-tensor module is compiled with, before its own source.
const COMMON: &str = include_str!("../../shaders/segmented_common.wgsl");
/// The gradient pipeline of the per-tensor kernels (`load_grad`, the control binding 8).
pub(crate) const SEGMENTED_GRAD: &str = include_str!("../../shaders/segmented_grad.wgsl");
/// The binding of the gradient control block in every per-tensor kernel.
pub(crate) const CONTROL_BINDING: u32 = 8;

/// Elements per chunk (one workgroup of 256 invocations, 4 elements each).
pub(crate) const CHUNK_ELEMENTS: usize = 1024;
/// Floats of the work buffer per segment: the applied coefficient, the algorithm's
/// `SEGMENT_SCALARS` (words 1..), and the non-finite flag (the last word: 1 when a sum of the
/// segment was not finite).
pub(crate) const SEGMENT_WORDS: usize = 8;

/// A per-tensor kernel bound to one optimizer's buffers.
pub(crate) struct SegmentedKernel {
    ctx: GpuContext,
    /// The pipelines in use: `plain`, or `graded` while gradient options are on.
    plain: Pipelines,
    graded: Option<Pipelines>,
    grad_pipeline: bool,
    module: wgpu::ShaderModule,
    pipeline_layout: wgpu::PipelineLayout,
    file: &'static str,
    clip_entries: bool,
    parts: Vec<Part>,
    uniform: wgpu::Buffer,
    stride: u64,
    work: wgpu::Buffer,
    segment_grid: (u32, u32),
    segments: usize,
}

/// One variant's entry points.
struct Pipelines {
    gnorm: Option<(wgpu::ComputePipeline, wgpu::ComputePipeline)>,
    reduce: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    apply: wgpu::ComputePipeline,
}

impl Pipelines {
    /// The entry points of `module` with the gradient pipeline on or off.
    fn build(
        device: &wgpu::Device,
        module: &wgpu::ShaderModule,
        layout: &wgpu::PipelineLayout,
        clip_entries: bool,
        grad_pipeline: bool,
    ) -> Self {
        let constants = [("GRAD_PIPELINE", f64::from(u8::from(grad_pipeline)))];
        let pipeline = |name| {
            super::kernel::compute_pipeline(
                device,
                name,
                module,
                Some(layout),
                name,
                &constants,
                true,
            )
        };
        Self {
            gnorm: clip_entries.then(|| (pipeline("gnorm"), pipeline("gfinish"))),
            reduce: pipeline("reduce"),
            finish: pipeline("finish"),
            apply: pipeline("apply"),
        }
    }
}

/// Some of the segments (all of them without a matrix transform): their chunks, bind group
/// and Newton–Schulz batch.
struct Part {
    bind_group: wgpu::BindGroup,
    _chunks: wgpu::Buffer,
    chunk_grid: (u32, u32),
    transform: Option<GpuNewtonSchulz>,
}

fn word(x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::TooManyElements {
        what: "segmented kernel chunk table",
        len: x as u64,
        limit: u64::from(u32::MAX),
    })
}

/// The chunk table of the segments `members` (indices into the params' segment table, in
/// order): per segment of the whole table (first chunk, chunk count, state shift, 0) (count 0
/// for a segment not in `members`), then per chunk (segment, start, end, offset), where
/// `offset` is `offsets[j] + (start - segment start)` for the j-th member (0 without
/// offsets). The state shift is the segment's start minus its state's start (`state_starts`,
/// a member's first element in the state buffers): element `i` of the params has its state
/// at `i - shift` (segmented_common.wgsl's `state_shift`).
fn chunk_table(
    params: &FlatParams,
    members: &[usize],
    state_starts: &[usize],
    offsets: Option<&[usize]>,
) -> Result<(Vec<[u32; 4]>, usize)> {
    let segs = params.segment_table().segments();
    let mut heads = vec![[0u32; 4]; segs.len()];
    let mut chunks = Vec::new();
    for (j, &k) in members.iter().enumerate() {
        let s = &segs[k];
        let first = chunks.len();
        let mut start = s.start;
        while start < s.end() {
            let end = (start + CHUNK_ELEMENTS).min(s.end());
            let offset = offsets.map_or(0, |o| o[j] + (start - s.start));
            chunks.push([word(k)?, word(start)?, word(end)?, word(offset)?]);
            start = end;
        }
        heads[k] = [
            word(first)?,
            word(chunks.len() - first)?,
            word(s.start - state_starts[j])?,
            0,
        ];
    }
    let count = chunks.len();
    heads.extend(chunks);
    Ok((heads, count))
}

/// Where each member's state starts in state buffers of [`state_len`] elements: the members
/// back to back in order (`compact`), or at their own offsets in the params.
pub(crate) fn state_starts(params: &FlatParams, members: &[usize], compact: bool) -> Vec<usize> {
    let segs = params.segment_table().segments();
    if !compact {
        return segs.iter().map(|s| s.start).collect();
    }
    let mut end = 0;
    members
        .iter()
        .map(|&k| {
            let start = end;
            end += segs[k].len();
            start
        })
        .collect()
}

/// Elements of each state buffer for `members`: their element count (`compact`), or the
/// params' length.
pub(crate) fn state_len(params: &FlatParams, members: &[usize], compact: bool) -> usize {
    let segs = params.segment_table().segments();
    if !compact {
        params.len()
    } else {
        members.iter().map(|&k| segs[k].len()).sum()
    }
}

/// The parts of a transform: consecutive members whose Newton–Schulz batch fits
/// `max_bytes`, as (index into `members`, (rows, cols)) per member.
fn transform_parts(
    params: &FlatParams,
    members: &[usize],
    max_bytes: u64,
) -> Vec<Vec<(usize, (usize, usize))>> {
    let segs = params.segment_table().segments();
    let shapes: Vec<(usize, usize)> = members
        .iter()
        .map(|&k| (segs[k].rows(), segs[k].cols()))
        .collect();
    let mut j = 0;
    GpuNewtonSchulz::split(&shapes, max_bytes)
        .into_iter()
        .map(|batch| {
            let part: Vec<(usize, (usize, usize))> = batch
                .into_iter()
                .enumerate()
                .map(|(i, s)| (j + i, s))
                .collect();
            j += part.len();
            part
        })
        .collect()
}

/// A per-tensor kernel with `storage` storage bindings over `params` (bound whole) fits the
/// device, or the typed refusal.
pub(crate) fn check_fits(
    ctx: &crate::gpu::context::GpuContext,
    file: &str,
    storage: u32,
    params: &FlatParams,
) -> Result<()> {
    let limits = ctx.device().limits();
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
    Ok(())
}

/// A 2-D grid of at least `n` workgroups within the per-dimension limit.
pub(crate) fn grid(n: usize, limit: u32) -> (u32, u32) {
    let x = (n as u64).clamp(1, u64::from(limit));
    let y = (n as u64).div_ceil(x).max(1);
    (x as u32, y as u32)
}

impl SegmentedKernel {
    /// Builds the pipelines and binds `params`, its segment table and `states` (f32, in
    /// `state_names` order, [`state_len`] elements each). `members`: the segments stepped
    /// (indices into the segment table, increasing); the others are left as they are.
    /// `compact`: their state back to back (else at the params' offsets).
    /// `transform`: the Newton–Schulz iteration of an algorithm with a matrix transform
    /// (every segment must then be one matrix: rank 2, checked by the algorithm). The
    /// global-clip pipelines are built when the module has them (`gnorm`, `gfinish`): a
    /// checkpoint may switch the clip on later. `control`: the optimizer's gradient control
    /// block (read only in the gradient-pipeline variant, [`Self::set_grad_pipeline`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: &FlatParams,
        file: &'static str,
        source: &'static str,
        states: &[wgpu::Buffer],
        transform: Option<&NewtonSchulz>,
        members: &[usize],
        compact: bool,
        control: &wgpu::Buffer,
    ) -> Result<Self> {
        let clip_entries = source.contains("fn gnorm(") && source.contains("fn gfinish(");
        let ctx = params.context().clone();
        let device = ctx.device();
        let limits = device.limits();
        let storage = 6 + states.len() as u32 + u32::from(transform.is_some());
        check_fits(&ctx, file, storage, params)?;
        let segments = params.segment_table().segments().len();
        let segs = params.segment_table().segments();
        if members.is_empty()
            || members.windows(2).any(|w| w[0] >= w[1])
            || members[members.len() - 1] >= segs.len()
        {
            return Err(Error::InvalidCombination {
                optimizer: "segmented kernel",
                reason: "members must be increasing segment indices, at least one",
            });
        }
        if let Some(s) = members
            .iter()
            .map(|&k| &segs[k])
            .find(|s| transform.is_some() && s.batch() != 1)
        {
            return Err(Error::WrongRank {
                optimizer: "Muon",
                segment: format!("elements {}..{}", s.start, s.end()),
                shape: s.shape.clone(),
                requirement: "a matrix transform takes one matrix per segment",
            });
        }
        let starts = state_starts(params, members, compact);
        // (indices into `members`, Newton-Schulz batch) per part.
        let plans: Vec<(Vec<usize>, Option<GpuNewtonSchulz>)> = match transform {
            None => vec![((0..members.len()).collect(), None)],
            Some(ns) => transform_parts(params, members, ctx.max_binding_bytes())
                .into_iter()
                .map(|part| {
                    let shapes: Vec<(usize, usize)> = part.iter().map(|&(_, s)| s).collect();
                    let batch = GpuNewtonSchulz::new(&ctx, &shapes, ns)?;
                    Ok((part.into_iter().map(|(j, _)| j).collect(), Some(batch)))
                })
                .collect::<Result<_>>()?,
        };
        let stride = MAX_UNIFORM_BYTES
            .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim segmented uniform"),
            size: stride * UNIFORM_RING,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let total_chunks: usize = segs.iter().map(|s| s.len().div_ceil(CHUNK_ELEMENTS)).sum();
        let work_words = SEGMENT_WORDS * segments + 4 + 4 * total_chunks;
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
            source: wgpu::ShaderSource::Wgsl(
                super::shaders::with_grad_control(&format!("{COMMON}\n{SEGMENTED_GRAD}\n{source}"))
                    .into(),
            ),
        });
        let entry = super::kernel::buffer_layout_entry;
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
        if transform.is_some() {
            entries.push(entry(first_table + 3, rw, false));
        }
        entries.push(entry(CONTROL_BINDING, ro, false));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(file),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(file),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let whole = super::kernel::whole_buffer_entry;
        let mut parts = Vec::with_capacity(plans.len());
        for (picked, batch) in plans {
            let offsets: Option<Vec<usize>> = batch.as_ref().map(|b| {
                (0..picked.len())
                    .map(|j| b.matrix_offset(j).unwrap_or(0))
                    .collect()
            });
            let part_members: Vec<usize> = picked.iter().map(|&j| members[j]).collect();
            let part_starts: Vec<usize> = picked.iter().map(|&j| starts[j]).collect();
            let (table, chunk_count) =
                chunk_table(params, &part_members, &part_starts, offsets.as_deref())?;
            let chunks = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-optim chunk table"),
                size: (table.len() * 16) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue()
                .write_buffer(&chunks, 0, bytemuck::cast_slice(&table));
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
            if let Some(b) = &batch {
                group_entries.push(whole(first_table + 3, b.buffer()));
            }
            group_entries.push(whole(CONTROL_BINDING, control));
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(file),
                layout: &layout,
                entries: &group_entries,
            });
            parts.push(Part {
                bind_group,
                _chunks: chunks,
                chunk_grid: grid(chunk_count, limits.max_compute_workgroups_per_dimension),
                transform: batch,
            });
        }
        let kernel = Self {
            plain: Pipelines::build(device, &module, &pipeline_layout, clip_entries, false),
            graded: None,
            grad_pipeline: false,
            module,
            pipeline_layout,
            file,
            clip_entries,
            parts,
            uniform,
            stride,
            work,
            segment_grid: grid(segments, limits.max_compute_workgroups_per_dimension),
            segments,
            ctx: ctx.clone(),
        };
        ctx.pop_scope(scope, "segmented kernel creation")?;
        Ok(kernel)
    }

    /// Read every gradient through the gradient pipeline (`on`: unscale, clip by value, the
    /// norm-clip coefficient of the control block) or plainly; the variant is compiled the
    /// first time. On error (it does not compile) the variant in use stays.
    pub fn set_grad_pipeline(&mut self, on: bool) -> Result<()> {
        if on && self.graded.is_none() {
            let device = self.ctx.device();
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let graded = Pipelines::build(
                device,
                &self.module,
                &self.pipeline_layout,
                self.clip_entries,
                true,
            );
            self.ctx.pop_scope(scope, self.file)?;
            self.graded = Some(graded);
        }
        self.grad_pipeline = on;
        Ok(())
    }

    fn pipelines(&self) -> &Pipelines {
        match (&self.graded, self.grad_pipeline) {
            (Some(graded), true) => graded,
            _ => &self.plain,
        }
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
        let dynamic = [offset as u32];
        let pipelines = self.pipelines();
        if global_clip {
            // The optimizer's builder refuses a clip the module lacks; a global clip comes
            // with one part (no transform).
            let (Some((gnorm, gfinish)), [part]) = (&pipelines.gnorm, &self.parts[..]) else {
                unreachable!("a global clip without gnorm entry points or with several parts")
            };
            let (cx, cy) = part.chunk_grid;
            pass.set_bind_group(0, &part.bind_group, &dynamic);
            pass.set_pipeline(gnorm);
            pass.dispatch_workgroups(cx, cy, 1);
            pass.set_pipeline(gfinish);
            pass.dispatch_workgroups(1, 1, 1);
        }
        for part in &self.parts {
            let (cx, cy) = part.chunk_grid;
            pass.set_bind_group(0, &part.bind_group, &dynamic);
            pass.set_pipeline(&pipelines.reduce);
            pass.dispatch_workgroups(cx, cy, 1);
            if let Some(batch) = &part.transform {
                batch.encode(&mut pass);
                pass.set_bind_group(0, &part.bind_group, &dynamic);
            }
            pass.set_pipeline(&pipelines.finish);
            let (sx, sy) = self.segment_grid;
            pass.dispatch_workgroups(sx, sy, 1);
            pass.set_pipeline(&pipelines.apply);
            pass.dispatch_workgroups(cx, cy, 1);
        }
    }

    /// The work buffer's per-segment words after the last step ([`SEGMENT_WORDS`] each),
    /// read back (waits; on the web use [`Self::segment_words_async`]).
    pub async fn segment_words_async(&self) -> Result<Vec<f32>> {
        super::buffer::read_f32_async(&self.ctx, &self.work, 0, SEGMENT_WORDS * self.segments).await
    }
}
