//! Block-wise 8-bit optimizer state on the device ([`StateFormat::Blockwise8`](crate::StateFormat)):
//! the buffers, the block table, the pipeline of `shaders/blockwise8.wgsl` and the
//! conversions to and from the host's [`Blockwise8State`] (read-back, loading, checkpoints).
//!
//! One workgroup owns one block of at most [`BLOCK`] = 256 elements of one tensor (a
//! segment of the [`FlatParams`]); the absmax of a block is a workgroup reduction in the
//! same pass that updates it. Quantisation goes through bitsandbytes' 65536-entry lookup
//! table ([`Quantizer::lut`]), uploaded once. Device memory of the state (exactly,
//! [`Blockwise8Device::state_bytes`]): per quantised block 2 × 256 code bytes + 2 f32
//! absmax; per 32-bit block 2 × 256 f32; plus the tables (2 × 256 map values + 2 × 65536
//! table bytes) and the block table (16 bytes per block). Everything is allocated when the
//! optimizer is built; a step writes one uniform slot and dispatches one pass.

use std::num::NonZeroU64;

use super::buffer::{read_bytes, FlatParams, FLAT_USAGE};
use super::context::GpuContext;
use super::kernel::{compute_pipeline, MAX_GROUPS, UNIFORM_RING};
use super::shaders::with_grad_control;
use crate::cpu::blockwise8::{
    Blockwise8Scalars, Blockwise8State, OneStateScalars, Quantizer, SegmentState, BLOCK,
};
use crate::error::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/blockwise8.wgsl");

/// Words of the table buffer: two maps (256 f32 each) and two LUTs (65536 bytes each).
const TABLE_WORDS: usize = 512 + 2 * 16384;

/// The per-group scalars of one 8-bit step (`Q8Uniform` in `blockwise8.wgsl`), 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Q8Uniform {
    /// f32(beta1).
    pub beta1: f32,
    /// f32(1 - beta1).
    pub one_minus_beta1: f32,
    /// f32(beta2).
    pub beta2: f32,
    /// f32(1 - beta2).
    pub one_minus_beta2: f32,
    /// f32(sqrt(1 - beta2^t)).
    pub c2: f32,
    /// f32(eps).
    pub eps: f32,
    /// f32(-lr / (1 - beta1^t)).
    pub step_size: f32,
    /// f32(1 - lr * wd).
    pub decay_factor: f32,
    /// 32-bit tensors: f32(-lr * c2 / c1).
    pub step_size_32: f32,
    /// 32-bit tensors: f32(eps * c2).
    pub eps_32: f32,
    /// 1 when weight decay applies (wd > 0).
    pub decays: u32,
    /// Always 0: the kernel XORs every intermediate result with it, so that the shader
    /// compiler can neither contract nor reassociate the f32 operations (exact CPU bits).
    pub zero: u32,
    /// One-state SGD: f32(wd) (L2 decay added to the gradient).
    pub weight_decay: f32,
    /// One-state SGD: 1 at step 1 (the momentum buffer starts as the gradient).
    pub first: u32,
    /// One-state SGD: 1 when wd > 0.
    pub wd_positive: u32,
    /// Padding to 64 bytes.
    pub _pad: u32,
}

impl Q8Uniform {
    /// The uniform of the host scalars `s` (the same f32 values the CPU step uses).
    pub fn new(s: &Blockwise8Scalars) -> Self {
        Self {
            beta1: s.beta1,
            one_minus_beta1: s.one_minus_beta1,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            c2: s.c2,
            eps: s.eps,
            step_size: s.step_size,
            decay_factor: s.decay_factor,
            step_size_32: s.step_size_32,
            eps_32: s.eps_32,
            decays: u32::from(s.decays),
            zero: 0,
            weight_decay: 0.0,
            first: 0,
            wd_positive: 0,
            _pad: 0,
        }
    }

    /// The uniform of a one-state optimizer (Lion, SGD with momentum): beta1, beta2, their
    /// complements, `step_size` = -lr, the decay factor and flags.
    pub fn one_state(s: &OneStateScalars) -> Self {
        Self {
            beta1: s.beta1,
            one_minus_beta1: s.one_minus_beta1,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            step_size: s.neg_lr,
            decay_factor: s.decay_factor,
            decays: u32::from(s.decays),
            weight_decay: s.weight_decay,
            first: u32::from(s.first),
            wd_positive: u32::from(s.wd_positive),
            ..Self::default()
        }
    }
}

/// Bytes of one ring slot: one [`Q8Uniform`] per group.
const SLOT_BYTES: u64 = MAX_GROUPS as u64 * std::mem::size_of::<Q8Uniform>() as u64;

/// One tensor as the device keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tensor8 {
    /// First element in the flat params.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// Parameter group.
    pub group: u32,
    /// Quantised (len >= min_size) or 32-bit.
    pub quantized: bool,
    /// Ordinal of its first block among the blocks of its kind.
    pub first_block: usize,
}

/// The 8-bit state of a [`GpuOptimizer`](crate::GpuOptimizer) on the device, with its
/// pipeline and bind group.
pub(crate) struct Blockwise8Device {
    ctx: GpuContext,
    n: usize,
    min_size: usize,
    tensors: Vec<Tensor8>,
    qblocks: usize,
    fblocks: usize,
    codes: wgpu::Buffer,
    absmax: wgpu::Buffer,
    full: wgpu::Buffer,
    _tables: wgpu::Buffer,
    _blocks: wgpu::Buffer,
    ring: wgpu::Buffer,
    ring_stride: u64,
    module: wgpu::ShaderModule,
    layout: wgpu::PipelineLayout,
    /// Plain gradients, and the gradient pipeline (built when first asked for).
    pipelines: [Option<wgpu::ComputePipeline>; 2],
    grad_pipeline: bool,
    /// `ALGO` of the kernel (0: Adam, 1: Lion, 2: SGD with momentum).
    algo: u32,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

impl std::fmt::Debug for Blockwise8Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockwise8Device")
            .field("tensors", &self.tensors.len())
            .field("quantized_blocks", &self.qblocks)
            .field("full_blocks", &self.fblocks)
            .finish()
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn whole(b: &wgpu::Buffer, binding: u32) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: b.as_entire_binding(),
    }
}

fn buffer(ctx: &GpuContext, label: &'static str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(4),
        usage: FLAT_USAGE,
        mapped_at_creation: false,
    })
}

impl Blockwise8Device {
    /// The layout of `tensors` ((first element, length, group) each, non-empty, inside the
    /// params) under `min_size`: (tensors, quantised blocks, 32-bit blocks).
    pub(crate) fn plan(
        tensors: &[(usize, usize, u32)],
        min_size: usize,
    ) -> (Vec<Tensor8>, usize, usize) {
        let (mut q, mut f) = (0usize, 0usize);
        let out = tensors
            .iter()
            .map(|&(offset, len, group)| {
                let quantized = len >= min_size;
                let blocks = len.div_ceil(BLOCK);
                let counter = if quantized { &mut q } else { &mut f };
                let first_block = *counter;
                *counter += blocks;
                Tensor8 {
                    offset,
                    len,
                    group,
                    quantized,
                    first_block,
                }
            })
            .collect();
        (out, q, f)
    }

    /// Device bytes of the state of `tensors` planned by [`Self::plan`]: codes, absmax,
    /// 32-bit state, tables and block table.
    pub(crate) fn bytes_of(qblocks: usize, fblocks: usize) -> u64 {
        let q = qblocks as u64;
        let f = fblocks as u64;
        q * 2 * BLOCK as u64
            + q * 8
            + f * 2 * BLOCK as u64 * 4
            + TABLE_WORDS as u64 * 4
            + (q + f) * 16
    }

    /// Allocate and initialise (zero state) the 8-bit state of `tensors` over `params`, and
    /// build the kernel. `control`: the gradient control block. Call inside an error scope.
    /// `algo`: 0 Adam/AdamW, 1 Lion, 2 SGD with momentum (`ALGO` in the kernel).
    pub(crate) fn new(
        params: &FlatParams,
        tensors: &[(usize, usize, u32)],
        min_size: usize,
        control: &wgpu::Buffer,
        algo: u32,
    ) -> Result<Self> {
        Self::with_source(params, tensors, min_size, control, SOURCE, algo)
    }

    /// [`Self::new`] with another kernel over the same bindings (the roofline kernel
    /// `roof8.wgsl`, [`crate::roofline::GpuRoof8`]).
    pub(crate) fn with_source(
        params: &FlatParams,
        tensors: &[(usize, usize, u32)],
        min_size: usize,
        control: &wgpu::Buffer,
        source: &str,
        algo: u32,
    ) -> Result<Self> {
        let ctx = params.context().clone();
        let (tensors, qblocks, fblocks) = Self::plan(tensors, min_size);
        let nblocks = qblocks + fblocks;
        let limit = ctx.max_binding_bytes();
        for (what, bytes) in [
            (
                "params (bound whole by the 8-bit kernel)",
                params.len() as u64 * 4,
            ),
            ("8-bit codes (bound whole)", qblocks as u64 * 512),
            ("8-bit 32-bit state (bound whole)", fblocks as u64 * 2048),
        ] {
            if bytes > limit {
                return Err(Error::BufferTooLarge { what, bytes, limit });
            }
        }
        let max_dim = ctx.device().limits().max_compute_workgroups_per_dimension;
        if nblocks as u64 > u64::from(max_dim) * u64::from(max_dim) {
            return Err(Error::TooManyElements {
                what: "8-bit blocks",
                len: nblocks as u64,
                limit: u64::from(max_dim) * u64::from(max_dim),
            });
        }
        // Block table.
        let mut table: Vec<[u32; 4]> = Vec::with_capacity(nblocks);
        for t in &tensors {
            for k in 0..t.len.div_ceil(BLOCK) {
                let count = (t.len - k * BLOCK).min(BLOCK);
                table.push([
                    (t.offset + k * BLOCK) as u32,
                    count as u32,
                    (t.first_block + k) as u32,
                    u32::from(!t.quantized) | (t.group << 8),
                ]);
            }
        }
        let blocks = buffer(&ctx, "fused-optim 8-bit block table", nblocks as u64 * 16);
        ctx.queue()
            .write_buffer(&blocks, 0, bytemuck::cast_slice(&table));
        let codes = buffer(&ctx, "fused-optim 8-bit codes", qblocks as u64 * 512);
        let absmax = buffer(&ctx, "fused-optim 8-bit absmax", qblocks as u64 * 8);
        let full = buffer(&ctx, "fused-optim 8-bit f32 state", fblocks as u64 * 2048);
        let tables = buffer(&ctx, "fused-optim 8-bit tables", TABLE_WORDS as u64 * 4);
        let mut words = vec![0u32; TABLE_WORDS];
        let (q1, q2) = (Quantizer::signed(), Quantizer::unsigned());
        for j in 0..256 {
            words[j] = q1.map()[j].to_bits();
            words[256 + j] = q2.map()[j].to_bits();
        }
        let lut_bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words[512..]);
        lut_bytes[..65536].copy_from_slice(q1.lut());
        lut_bytes[65536..].copy_from_slice(q2.lut());
        ctx.queue()
            .write_buffer(&tables, 0, bytemuck::cast_slice(&words));

        let align = u64::from(ctx.device().limits().min_uniform_buffer_offset_alignment);
        let ring_stride = SLOT_BYTES.next_multiple_of(align);
        let ring = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim 8-bit uniform ring"),
            size: ring_stride * UNIFORM_RING,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let device = ctx.device();
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: NonZeroU64::new(SLOT_BYTES),
            },
            count: None,
        }];
        for (binding, read_only) in [
            (1, true),
            (2, false),
            (3, true),
            (4, false),
            (5, false),
            (6, false),
            (7, true),
            (8, true),
        ] {
            entries.push(storage_entry(binding, read_only));
        }
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("fused-optim 8-bit"),
            entries: &entries,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fused-optim 8-bit"),
            layout: &bgl,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &ring,
                        offset: 0,
                        size: NonZeroU64::new(SLOT_BYTES),
                    }),
                },
                whole(&blocks, 1),
                whole(params.params_buffer(), 2),
                whole(params.grads_buffer(), 3),
                whole(&codes, 4),
                whole(&absmax, 5),
                whole(&full, 6),
                whole(control, 7),
                whole(&tables, 8),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("fused-optim 8-bit"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("blockwise8.wgsl"),
            source: wgpu::ShaderSource::Wgsl(with_grad_control(source).into()),
        });
        let grid = crate::dispatch::grid(nblocks as u64, max_dim);
        let mut me = Self {
            ctx: ctx.clone(),
            n: params.len(),
            min_size,
            tensors,
            qblocks,
            fblocks,
            codes,
            absmax,
            full,
            _tables: tables,
            _blocks: blocks,
            ring,
            ring_stride,
            module,
            layout,
            pipelines: [None, None],
            grad_pipeline: false,
            algo,
            bind_group,
            grid,
        };
        me.set_grad_pipeline(false)?;
        Ok(me)
    }

    /// Switch between plain gradients and the gradient pipeline (unscale, clip by value,
    /// norm-clip coefficient): the pipeline is compiled the first time it is asked for.
    pub(crate) fn set_grad_pipeline(&mut self, on: bool) -> Result<()> {
        self.prepare(on)?;
        self.grad_pipeline = on;
        Ok(())
    }

    /// Compile the pipeline variant `on` (see [`Self::set_grad_pipeline`]) without selecting it.
    pub(crate) fn prepare(&mut self, on: bool) -> Result<()> {
        let k = usize::from(on);
        if self.pipelines[k].is_none() {
            let device = self.ctx.device();
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let pipeline = compute_pipeline(
                device,
                "blockwise8.wgsl",
                &self.module,
                Some(&self.layout),
                "main",
                &self.constants(on),
                false,
            );
            self.ctx.pop_scope(scope, "pipeline creation")?;
            self.pipelines[k] = Some(pipeline);
        }
        Ok(())
    }

    /// The override constants of a pipeline variant.
    fn constants(&self, grad_pipeline: bool) -> Vec<(&'static str, f64)> {
        let mut c = vec![("GRAD_PIPELINE", f64::from(u8::from(grad_pipeline)))];
        if self.algo != 0 {
            c.push(("ALGO", f64::from(self.algo)));
        }
        c
    }

    /// Record one step: `uniforms` (one [`Q8Uniform`] per group, group 0 first) in ring slot
    /// `slot % UNIFORM_RING`, one dispatch of one workgroup per block.
    pub(crate) fn encode(&self, encoder: &mut wgpu::CommandEncoder, slot: u64, uniforms: &[u8]) {
        let offset = (slot % UNIFORM_RING) * self.ring_stride;
        self.ctx.queue().write_buffer(&self.ring, offset, uniforms);
        let Some(pipeline) = &self.pipelines[usize::from(self.grad_pipeline)] else {
            return; // built by set_grad_pipeline before it is selected
        };
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-optim 8-bit step"),
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &self.bind_group, &[offset as u32]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }

    /// The context.
    #[cfg(feature = "roofline")]
    pub(crate) fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// bitsandbytes' `min_8bit_size` of this state.
    pub(crate) fn min_size(&self) -> usize {
        self.min_size
    }

    /// Device bytes of the state (codes, absmax, 32-bit state, tables, block table).
    pub(crate) fn state_bytes(&self) -> u64 {
        Self::bytes_of(self.qblocks, self.fblocks)
    }

    /// An empty host state shaped like this one (segment lengths, `min_size`).
    pub(crate) fn host_template(&self) -> Result<Blockwise8State> {
        let lens: Vec<usize> = self.tensors.iter().map(|t| t.len).collect();
        Blockwise8State::new(&lens, self.min_size)
    }

    /// Read the whole state back (waits for the device).
    pub(crate) fn read(&self) -> Result<Blockwise8State> {
        let codes = read_bytes(&self.ctx, &self.codes, 0, self.qblocks as u64 * 512)?;
        let absmax: Vec<f32> = bytemuck::pod_collect_to_vec(&read_bytes(
            &self.ctx,
            &self.absmax,
            0,
            self.qblocks as u64 * 8,
        )?);
        let full: Vec<f32> = bytemuck::pod_collect_to_vec(&read_bytes(
            &self.ctx,
            &self.full,
            0,
            self.fblocks as u64 * 2048,
        )?);
        let mut state = self.host_template()?;
        for (t, seg) in self.tensors.iter().zip(state.segments.iter_mut()) {
            let nb = t.len.div_ceil(BLOCK);
            match seg {
                SegmentState::Quantized {
                    state1,
                    state2,
                    absmax1,
                    absmax2,
                } => {
                    for k in 0..nb {
                        let q = t.first_block + k;
                        let r = k * BLOCK..(k * BLOCK + BLOCK).min(t.len);
                        let c = r.len();
                        state1[r.clone()].copy_from_slice(&codes[q * 512..q * 512 + c]);
                        state2[r].copy_from_slice(&codes[q * 512 + 256..q * 512 + 256 + c]);
                        absmax1[k] = absmax[2 * q];
                        absmax2[k] = absmax[2 * q + 1];
                    }
                }
                SegmentState::Full { state1, state2 } => {
                    for k in 0..nb {
                        let f = t.first_block + k;
                        let r = k * BLOCK..(k * BLOCK + BLOCK).min(t.len);
                        let c = r.len();
                        state1[r.clone()].copy_from_slice(&full[f * 512..f * 512 + c]);
                        state2[r].copy_from_slice(&full[f * 512 + 256..f * 512 + 256 + c]);
                    }
                }
            }
        }
        Ok(state)
    }

    /// Upload `state` (shaped like [`Self::host_template`]: the caller checked it); takes
    /// effect at the next submission.
    pub(crate) fn write(&self, state: &Blockwise8State) {
        let mut codes = vec![0u8; self.qblocks * 512];
        let mut absmax = vec![0.0f32; self.qblocks * 2];
        let mut full = vec![0.0f32; self.fblocks * 512];
        for (t, seg) in self.tensors.iter().zip(state.segments()) {
            let nb = t.len.div_ceil(BLOCK);
            for k in 0..nb {
                let b = t.first_block + k;
                let r = k * BLOCK..(k * BLOCK + BLOCK).min(t.len);
                let c = r.len();
                match seg {
                    SegmentState::Quantized {
                        state1,
                        state2,
                        absmax1,
                        absmax2,
                    } => {
                        codes[b * 512..b * 512 + c].copy_from_slice(&state1[r.clone()]);
                        codes[b * 512 + 256..b * 512 + 256 + c].copy_from_slice(&state2[r]);
                        absmax[2 * b] = absmax1[k];
                        absmax[2 * b + 1] = absmax2[k];
                    }
                    SegmentState::Full { state1, state2 } => {
                        full[b * 512..b * 512 + c].copy_from_slice(&state1[r.clone()]);
                        full[b * 512 + 256..b * 512 + 256 + c].copy_from_slice(&state2[r]);
                    }
                }
            }
        }
        let q = self.ctx.queue();
        if !codes.is_empty() {
            q.write_buffer(&self.codes, 0, &codes);
            q.write_buffer(&self.absmax, 0, bytemuck::cast_slice(&absmax));
        }
        if !full.is_empty() {
            q.write_buffer(&self.full, 0, bytemuck::cast_slice(&full));
        }
    }

    /// `exp_avg` (`which = 0`) or `exp_avg_sq` (`1`) over all `n` params (dequantised; 0
    /// outside every tensor).
    pub(crate) fn read_moments(&self, which: usize) -> Result<Vec<f32>> {
        let state = self.read()?;
        let mut out = vec![0.0f32; self.n];
        for (t, seg) in self.tensors.iter().zip(state.segments()) {
            out[t.offset..t.offset + t.len].copy_from_slice(&seg.moments(which));
        }
        Ok(out)
    }

    /// The values of the tensors' elements of a flat vector of `n` values, concatenated
    /// (the host state's layout).
    pub(crate) fn gather(&self, values: &[f32]) -> Vec<f32> {
        self.tensors
            .iter()
            .flat_map(|t| values[t.offset..t.offset + t.len].iter().copied())
            .collect()
    }
}

/// Checks that `state` can be installed where `like` is (same `min_size`, segment lengths and
/// kinds, code and absmax lengths; every absmax finite and >= 0, every 32-bit value finite,
/// `exp_avg_sq` >= 0): [`Error::LengthMismatch`] or [`Error::InvalidState`].
pub(crate) fn check_like(state: &Blockwise8State, like: &Blockwise8State) -> Result<()> {
    let mismatch = |what, expected, got| {
        Err(Error::LengthMismatch {
            what,
            expected,
            got,
        })
    };
    if state.min_size() != like.min_size() {
        return mismatch("min_8bit_size", like.min_size(), state.min_size());
    }
    if state.segments().len() != like.segments().len() {
        return mismatch("segments", like.segments().len(), state.segments().len());
    }
    for (i, (s, l)) in state.segments().iter().zip(like.segments()).enumerate() {
        if s.len() != l.len() {
            return mismatch("segment length", l.len(), s.len());
        }
        match (s, l) {
            (
                SegmentState::Quantized {
                    state1,
                    state2,
                    absmax1,
                    absmax2,
                },
                SegmentState::Quantized { .. },
            ) => {
                let blocks = l.len().div_ceil(BLOCK);
                if state1.len() != l.len() || state2.len() != l.len() {
                    return mismatch("8-bit codes", l.len(), state1.len().min(state2.len()));
                }
                if absmax1.len() != blocks || absmax2.len() != blocks {
                    return mismatch("absmax", blocks, absmax1.len().min(absmax2.len()));
                }
                if let Some(a) = absmax1
                    .iter()
                    .chain(absmax2)
                    .find(|a| !(a.is_finite() && **a >= 0.0))
                {
                    return Err(Error::InvalidState {
                        what: "absmax",
                        reason: format!("segment {i}: absmax {a} is not finite and >= 0"),
                    });
                }
            }
            (SegmentState::Full { state1, state2 }, SegmentState::Full { .. }) => {
                if state1.len() != l.len() || state2.len() != l.len() {
                    return mismatch("32-bit state", l.len(), state1.len().min(state2.len()));
                }
                if state1.iter().chain(state2).any(|x| !x.is_finite())
                    || state2.iter().any(|&x| x < 0.0)
                {
                    return Err(Error::InvalidState {
                        what: "32-bit state",
                        reason: format!("segment {i}: non-finite value or negative exp_avg_sq"),
                    });
                }
            }
            _ => {
                return Err(Error::InvalidState {
                    what: "segment kind",
                    reason: format!(
                        "segment {i}: 8-bit where 32-bit state is expected, or the reverse"
                    ),
                })
            }
        }
    }
    Ok(())
}
