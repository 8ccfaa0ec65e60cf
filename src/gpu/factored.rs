//! The GPU step of per-tensor algorithms whose state is not one element per parameter
//! (`Algorithm::STATE_PER_ELEMENT = false`: Adafactor's factored second moment): the
//! algorithm's `SEGMENTED_KERNEL` with entry points `tiles_a`, `factors`, `tiles_b`,
//! `finish` and `apply` (layout: `shaders/adafactor_segmented.wgsl`) over the params, the
//! gradients, three state tensors laid out by [`StateLayout`], one table (segments, tiles,
//! matrices), a work buffer and (binding 8) the gradient control block
//! (`shaders/segmented_grad.wgsl`), all bound once. The tables are built with the optimizer, the
//! partial sums live in fixed slots (deterministic, no float atomics); one compute pass, one
//! submission per step.

use std::num::NonZeroU64;

use super::buffer::FlatParams;
use super::context::GpuContext;
use super::kernel::UNIFORM_RING;
use super::segmented::{check_fits, grid, CONTROL_BINDING, SEGMENTED_GRAD, SEGMENT_WORDS};
use crate::error::{Error, Result};
use crate::optim::{StateLayout, MAX_UNIFORM_BYTES, TILE_COLS, TILE_ROWS};

/// Elements of a tile of a tensor of rank <= 1 (one workgroup, 4 per invocation).
const VECTOR_TILE: usize = 1024;
/// u32 words per segment in the table.
const SEGMENT_RECORD: usize = 12;
/// f32 words per tile in the work buffer: row sums, column sums, sum p^2, sum U^2.
const TILE_WORDS: usize = TILE_ROWS + TILE_COLS + 2;
/// Entry points in dispatch order.
const ENTRIES: [&str; 5] = ["tiles_a", "factors", "tiles_b", "finish", "apply"];

/// A factored per-tensor kernel bound to one optimizer's buffers.
pub(crate) struct FactoredKernel {
    ctx: GpuContext,
    /// The entry points in [`ENTRIES`] order without the gradient pipeline, and with it
    /// (built when gradient options are first set); `grad_pipeline`: which is in use.
    plain: Vec<wgpu::ComputePipeline>,
    graded: Option<Vec<wgpu::ComputePipeline>>,
    grad_pipeline: bool,
    module: wgpu::ShaderModule,
    pipeline_layout: wgpu::PipelineLayout,
    file: &'static str,
    bind_group: wgpu::BindGroup,
    _table: wgpu::Buffer,
    uniform: wgpu::Buffer,
    stride: u64,
    work: wgpu::Buffer,
    /// Workgroup grids of the tile, matrix and segment passes.
    tile_grid: (u32, u32),
    matrix_grid: (u32, u32),
    segment_grid: (u32, u32),
    segments: usize,
}

fn word(x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::TooManyElements {
        what: "factored kernel table",
        len: x as u64,
        limit: u64::from(u32::MAX),
    })
}

/// The table: header, per segment of the whole table a record (tile count 0 for one not
/// in `members`), per tile and per matrix of the members their entries.
fn table(params: &FlatParams, members: &[usize], layout: &StateLayout) -> Result<Vec<u32>> {
    let segs = params.segment_table().segments();
    let mut records = vec![0u32; SEGMENT_RECORD * segs.len()];
    let (mut tiles, mut matrices) = (Vec::new(), Vec::new());
    for (j, &k) in members.iter().enumerate() {
        let s = &segs[k];
        let factored = s.rank() >= 2;
        let (first_tile, first_matrix) = (tiles.len() / 4, matrices.len() / 2);
        if factored {
            let (rows, cols) = (s.rows(), s.cols());
            for b in 0..s.batch() {
                for r0 in (0..rows).step_by(TILE_ROWS) {
                    for c0 in (0..cols).step_by(TILE_COLS) {
                        tiles.extend([word(k)?, word(b)?, word(r0)?, word(c0)?]);
                    }
                }
                matrices.extend([word(k)?, word(b)?]);
            }
        } else {
            for e0 in (0..s.len()).step_by(VECTOR_TILE) {
                tiles.extend([word(k)?, 0, 0, word(e0)?]);
            }
        }
        let record = [
            s.start,
            s.len(),
            s.rows(),
            s.cols(),
            s.batch(),
            layout.range(0, j).start,
            layout.range(1, j).start,
            layout.range(2, j).start,
            first_tile,
            tiles.len() / 4 - first_tile,
            usize::from(factored),
            first_matrix,
        ];
        for (d, v) in records[SEGMENT_RECORD * k..].iter_mut().zip(record) {
            *d = word(v)?;
        }
    }
    let mut out = vec![
        word(segs.len())?,
        word(tiles.len() / 4)?,
        word(matrices.len() / 2)?,
        0,
    ];
    out.extend(records);
    out.extend(tiles);
    out.extend(matrices);
    Ok(out)
}

impl FactoredKernel {
    /// Builds the pipelines and binds `params` and `states` (three f32 tensors laid out by
    /// `layout`, which is over the shapes of `members` in order: increasing segment indices).
    /// `control`: the optimizer's gradient control block (read only in the
    /// gradient-pipeline variant, [`Self::set_grad_pipeline`]).
    pub fn new(
        params: &FlatParams,
        file: &'static str,
        source: &'static str,
        states: &[wgpu::Buffer],
        members: &[usize],
        layout: &StateLayout,
        control: &wgpu::Buffer,
    ) -> Result<Self> {
        let ctx = params.context().clone();
        let device = ctx.device();
        let limits = device.limits();
        let storage = 6 + states.len() as u32;
        check_fits(&ctx, file, storage, params)?;
        let segs = params.segment_table().segments();
        let table = table(params, members, layout)?;
        let (tiles, matrices) = (table[1] as usize, table[2] as usize);
        let stride = MAX_UNIFORM_BYTES
            .next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim factored uniform"),
            size: stride * UNIFORM_RING,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let work_words = SEGMENT_WORDS * segs.len() + matrices + TILE_WORDS * tiles;
        let work = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim factored work"),
            size: (work_words.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let table_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim factored table"),
            size: (table.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&table_buffer, 0, bytemuck::cast_slice(&table));
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(
                super::shaders::with_grad_control(&format!("{SEGMENTED_GRAD}\n{source}")).into(),
            ),
        });
        let rw = wgpu::BufferBindingType::Storage { read_only: false };
        let ro = wgpu::BufferBindingType::Storage { read_only: true };
        let mut kinds = vec![
            (wgpu::BufferBindingType::Uniform, true),
            (rw, false),
            (ro, false),
        ];
        kinds.extend(states.iter().map(|_| (rw, false)));
        kinds.extend([(ro, false), (rw, false)]);
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
            .iter()
            .enumerate()
            .map(|(b, &(ty, dynamic))| super::kernel::buffer_layout_entry(b as u32, ty, dynamic))
            .collect();
        entries.push(super::kernel::buffer_layout_entry(
            CONTROL_BINDING,
            ro,
            false,
        ));
        let layout_bg = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(file),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(file),
            bind_group_layouts: &[Some(&layout_bg)],
            immediate_size: 0,
        });
        let plain = build_pipelines(device, &module, &pipeline_layout, false);
        let whole = super::kernel::whole_buffer_entry;
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
        let first_table = 3 + states.len() as u32;
        group_entries.extend(
            states
                .iter()
                .enumerate()
                .map(|(k, b)| whole(3 + k as u32, b)),
        );
        group_entries.extend([
            whole(first_table, &table_buffer),
            whole(first_table + 1, &work),
            whole(CONTROL_BINDING, control),
        ]);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(file),
            layout: &layout_bg,
            entries: &group_entries,
        });
        let dim = limits.max_compute_workgroups_per_dimension;
        let kernel = Self {
            plain,
            graded: None,
            grad_pipeline: false,
            module,
            pipeline_layout,
            file,
            bind_group,
            _table: table_buffer,
            uniform,
            stride,
            work,
            tile_grid: grid(tiles, dim),
            matrix_grid: grid(matrices, dim),
            segment_grid: grid(segs.len(), dim),
            segments: segs.len(),
            ctx: ctx.clone(),
        };
        ctx.pop_scope(scope, "factored kernel creation")?;
        Ok(kernel)
    }

    /// Read every gradient through the gradient pipeline (`on`) or plainly; the variant is
    /// compiled the first time. On error (it does not compile) the variant in use stays.
    pub fn set_grad_pipeline(&mut self, on: bool) -> Result<()> {
        if on && self.graded.is_none() {
            let device = self.ctx.device();
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let graded = build_pipelines(device, &self.module, &self.pipeline_layout, true);
            self.ctx.pop_scope(scope, self.file)?;
            self.graded = Some(graded);
        }
        self.grad_pipeline = on;
        Ok(())
    }

    /// Record one step: the uniform `bytes` into ring slot `slot % UNIFORM_RING` (written
    /// through the queue), then the five passes in one compute pass.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, slot: u64, bytes: &[u8]) {
        let offset = (slot % UNIFORM_RING) * self.stride;
        self.ctx.queue().write_buffer(&self.uniform, offset, bytes);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim factored step"),
            timestamp_writes: None,
        });
        pass.set_bind_group(0, &self.bind_group, &[offset as u32]);
        let grids = [
            self.tile_grid,
            self.matrix_grid,
            self.tile_grid,
            self.segment_grid,
            self.tile_grid,
        ];
        let pipelines = match (&self.graded, self.grad_pipeline) {
            (Some(graded), true) => graded,
            _ => &self.plain,
        };
        for (pipeline, (x, y)) in pipelines.iter().zip(grids) {
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    /// The work buffer's per-segment words after the last step ([`SEGMENT_WORDS`] each:
    /// alpha / denom, alpha, denom, ..., the non-finite flag).
    pub async fn segment_words_async(&self) -> Result<Vec<f32>> {
        super::buffer::read_f32_async(&self.ctx, &self.work, 0, SEGMENT_WORDS * self.segments).await
    }
}

/// The entry points of `module` in [`ENTRIES`] order, with the gradient pipeline on or off.
fn build_pipelines(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    layout: &wgpu::PipelineLayout,
    grad_pipeline: bool,
) -> Vec<wgpu::ComputePipeline> {
    let constants = [("GRAD_PIPELINE", f64::from(u8::from(grad_pipeline)))];
    ENTRIES
        .iter()
        .map(|name| {
            super::kernel::compute_pipeline(
                device,
                name,
                module,
                Some(layout),
                name,
                &constants,
                true,
            )
        })
        .collect()
}
