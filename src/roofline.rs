//! Roofline kernels: the memory-traffic cost of each optimizer's access pattern, measured on
//! the same device. A fused optimizer kernel is judged by its time relative to its roof, a
//! ratio that carries across machines where absolute times do not.
//!
//! - GPU: [`GpuRoof`] (same bindings, vector width, elements per invocation and masking as
//!   the optimizer kernels; trivial arithmetic), [`GpuRoof::copy`] (a WGSL vec4 copy) and
//!   [`gpu_buffer_copy`] (`copy_buffer_to_buffer`, the driver's own copy).
//! - CPU: [`cpu_roof`] (same access pattern and threading as [`CpuOptimizer`](crate::CpuOptimizer))
//!   and [`cpu_copy`] (a parallel memcpy).

use rayon::prelude::*;

use crate::cpu::staggered::StaggeredVec;
use crate::error::Result;
use crate::gpu::buffer::{create_flat, FlatParams};
use crate::gpu::gradients::{control_buffer, GradOptions};
use crate::gpu::kernel::{KernelRunner, KernelSpec, Specialization};

const ROOF: &str = include_str!("../shaders/roof.wgsl");
const COPY: &str = include_str!("../shaders/copy.wgsl");
const ROOF8: &str = include_str!("../shaders/roof8.wgsl");
const SLOTS: &[&str] = &["s0", "s1", "s2"];

/// A roofline kernel on the device over a [`FlatParams`].
pub struct GpuRoof {
    runner: KernelRunner,
    _control: wgpu::Buffer,
    _states: Vec<wgpu::Buffer>,
    launches: u64,
}

impl GpuRoof {
    /// Reads p, g and `states` state tensors, writes p and the states: the access pattern of
    /// an optimizer with that many state tensors (at most 3).
    pub fn new(params: &FlatParams, states: usize) -> Result<Self> {
        let states = states.min(3);
        let control = control_buffer(params.context(), &GradOptions::default());
        let buffers: Vec<wgpu::Buffer> = (0..states)
            .map(|_| create_flat(params.context(), "roof state", params.len()))
            .collect::<Result<_>>()?;
        let runner = KernelRunner::new(
            params,
            KernelSpec {
                file: "roof.wgsl",
                source: ROOF,
                slots: SLOTS,
                active: SLOTS.iter().copied().zip(buffers.iter()).collect(),
                constants: vec![("STATES", states as f64)],
                specialization: Specialization::GENERAL,
                trusted: true,
                control: &control,
                lane_groups: None,
                low: None,
                packed_states: None,
            },
        )?;
        Ok(Self {
            runner,
            _control: control,
            _states: buffers,
            launches: 0,
        })
    }

    /// A vec4 copy kernel (grads -> params) with the same launch geometry.
    pub fn copy(params: &FlatParams) -> Result<Self> {
        let control = control_buffer(params.context(), &GradOptions::default());
        let runner = KernelRunner::new(
            params,
            KernelSpec {
                file: "copy.wgsl",
                source: COPY,
                slots: &[],
                active: vec![],
                constants: vec![],
                specialization: Specialization::GENERAL,
                trusted: true,
                control: &control,
                lane_groups: None,
                low: None,
                packed_states: None,
            },
        )?;
        Ok(Self {
            runner,
            _control: control,
            _states: vec![],
            launches: 0,
        })
    }

    /// One launch (one submission, no wait).
    pub fn step(&mut self) {
        // Small enough to keep the values bounded, large enough that every store changes p.
        let hyper = [1e-6f32, 0.0, 0.0, 0.0];
        self.runner
            .submit(self.launches, bytemuck::cast_slice(&hyper));
        self.launches += 1;
    }
}

/// The roof of the 8-bit state ([`StateFormat::Blockwise8`](crate::StateFormat)): the
/// buffers, bindings, launch geometry and block table of the 8-bit kernel
/// (`shaders/roof8.wgsl`), reading p, g, both code bytes and the absmax pair, writing p, the
/// codes and the absmax, with trivial arithmetic (no reduction, no table look-up).
/// [`Self::bytes_per_param`] per element.
pub struct GpuRoof8 {
    dev: crate::gpu::blockwise8::Blockwise8Device,
    _control: wgpu::Buffer,
    launches: u64,
}

impl GpuRoof8 {
    /// Minimal traffic per parameter of an 8-bit step with `states` (1 or 2) quantised
    /// state tensors: p read and written (8), g read (4), per state one code byte read and
    /// written (2) and one f32 absmax per 256 elements read and written (8 / 256). Adam:
    /// 16.0625; Lion, SGD with momentum: 14.03125.
    pub fn bytes_per_param(states: usize) -> f64 {
        12.0 + states as f64 * (2.0 + 8.0 / 256.0)
    }

    /// The roof over all of `params`, as one 8-bit tensor with `states` (1 or 2) code
    /// bytes per element.
    pub fn new(params: &FlatParams, states: usize) -> Result<Self> {
        let control = control_buffer(params.context(), &GradOptions::default());
        let dev = params.context().scoped("8-bit roof", || {
            crate::gpu::blockwise8::Blockwise8Device::with_source(
                params,
                &[(0, params.len(), 0)],
                0,
                &control,
                ROOF8,
                u32::from(states < 2),
            )
        })?;
        Ok(Self {
            dev,
            _control: control,
            launches: 0,
        })
    }

    /// One launch (one submission, no wait).
    pub fn step(&mut self) {
        let ctx = self.dev.context();
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("8-bit roof"),
            });
        let mut u = [0f32; 16 * crate::gpu::kernel::MAX_GROUPS];
        u[0] = 1e-6;
        self.dev
            .encode(&mut encoder, self.launches, bytemuck::cast_slice(&u));
        ctx.queue().submit([encoder.finish()]);
        self.launches += 1;
    }
}

/// `copy_buffer_to_buffer` of the grads into the params buffer (one submission, no wait).
pub fn gpu_buffer_copy(params: &FlatParams) {
    let ctx = params.context();
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("copy"),
        });
    encoder.copy_buffer_to_buffer(
        params.grads_buffer(),
        0,
        params.params_buffer(),
        0,
        params.len() as u64 * 4,
    );
    ctx.queue().submit([encoder.finish()]);
}

/// Allocate a throw-away state-sized device buffer (used by benchmarks to size memory).
pub fn scratch_buffer(params: &FlatParams) -> Result<wgpu::Buffer> {
    create_flat(params.context(), "scratch", params.len())
}

/// The CPU roof: p += s * (g + sum(states)); state += g, over the same chunks, threads and
/// vector code (AVX2 where the CPU has it) as the fast CPU path. `states` should be allocated
/// as [`CpuOptimizer`](crate::CpuOptimizer) allocates its own:
/// `StaggeredVec::filled(n, 0.0, k + 1)` for state k.
pub fn cpu_roof(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec]) {
    // As the GPU roof: every store changes p.
    crate::cpu::fast::roof_step(p, g, states, 1e-6)
}

/// The CPU roof of the 8-bit state: per block of 256 elements p += s * g, both code bytes
/// and both absmax read and written, over the fast 8-bit step's tasks (128 blocks) and
/// threads; trivial arithmetic (no table look-up, no reduction). `codes1`, `codes2`: one byte
/// per element (`codes2` empty: the one-state pattern of Lion and SGD, `codes1` only);
/// `absmax`: two f32 per block.
pub fn cpu_roof8(
    p: &mut [f32],
    g: &[f32],
    codes1: &mut [u8],
    codes2: &mut [u8],
    absmax: &mut [f32],
) {
    const TASK: usize = 256 * 128;
    if codes2.is_empty() {
        // The one-state pattern (Lion, SGD with momentum).
        p.par_chunks_mut(TASK)
            .zip(g.par_chunks(TASK))
            .zip(codes1.par_chunks_mut(TASK))
            .zip(absmax.par_chunks_mut(2 * 128))
            .for_each(|(((p, g), c1), a)| {
                for (((p, g), c1), a) in p
                    .chunks_mut(256)
                    .zip(g.chunks(256))
                    .zip(c1.chunks_mut(256))
                    .zip(a.chunks_mut(2))
                {
                    for ((p, &g), c1) in p.iter_mut().zip(g).zip(c1.iter_mut()) {
                        *p += 1e-6 * g;
                        *c1 ^= g.to_bits() as u8;
                    }
                    a[0] += 1e-6;
                }
            });
        return;
    }
    p.par_chunks_mut(TASK)
        .zip(g.par_chunks(TASK))
        .zip(codes1.par_chunks_mut(TASK))
        .zip(codes2.par_chunks_mut(TASK))
        .zip(absmax.par_chunks_mut(2 * 128))
        .for_each(|((((p, g), c1), c2), a)| {
            for ((((p, g), c1), c2), a) in p
                .chunks_mut(256)
                .zip(g.chunks(256))
                .zip(c1.chunks_mut(256))
                .zip(c2.chunks_mut(256))
                .zip(a.chunks_mut(2))
            {
                for (((p, &g), c1), c2) in p.iter_mut().zip(g).zip(c1.iter_mut()).zip(c2.iter_mut())
                {
                    *p += 1e-6 * g;
                    *c1 ^= g.to_bits() as u8;
                    *c2 ^= (g.to_bits() >> 24) as u8;
                }
                a[0] += 1e-6;
                a[1] += 1e-6;
            }
        });
}

/// A parallel memcpy.
pub fn cpu_copy(dst: &mut [f32], src: &[f32]) {
    const CHUNK: usize = 1 << 16;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// The optimizer configurations the benchmarks measure, by short name: one per distinct
/// access pattern and kernel variant of every registered algorithm
/// ([`Algorithm::benchmark_configs`](crate::optim::Algorithm::benchmark_configs)).
pub fn benchmark_suite() -> Vec<(&'static str, crate::OptimizerConfig)> {
    crate::OptimizerConfig::benchmark_suite()
}

/// The roof of a two-pass per-tensor step with LAMB's access pattern on the device
/// (`shaders/segmented_roof.wgsl`): the segmented kernel's bindings, chunk and segment grids
/// and passes (first pass: read p, g, m, v, write m, v and one slot per chunk; finish per
/// segment; second pass: read p, m, v, write p), trivial arithmetic.
pub struct GpuSegmentedRoof {
    kernel: crate::gpu::segmented::SegmentedKernel,
    ctx: crate::GpuContext,
    _states: Vec<wgpu::Buffer>,
    launches: u64,
}

impl GpuSegmentedRoof {
    /// Over `params` and its segment table, with two state tensors of its own.
    pub fn new(params: &FlatParams) -> Result<Self> {
        let states: Vec<wgpu::Buffer> = (0..2)
            .map(|_| create_flat(params.context(), "segmented roof state", params.len()))
            .collect::<Result<_>>()?;
        let kernel = crate::gpu::segmented::SegmentedKernel::new(
            params,
            "segmented_roof.wgsl",
            include_str!("../shaders/segmented_roof.wgsl"),
            &states,
            None,
            &(0..params.segment_table().segments().len()).collect::<Vec<_>>(),
            false,
            &crate::gpu::gradients::control_buffer(params.context(), &Default::default()),
        )?;
        Ok(Self {
            kernel,
            ctx: params.context().clone(),
            _states: states,
            launches: 0,
        })
    }

    /// One step (one submission, no wait).
    pub fn step(&mut self) {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("segmented roof"),
                });
        // grad_sign 1, step_size 1e-3 (words 0 and 8); the rest 0.
        let mut words = [0.0f32; 12];
        words[0] = 1.0;
        words[8] = 1e-3;
        self.kernel.encode(
            &mut encoder,
            self.launches,
            bytemuck::cast_slice(&words),
            false,
        );
        self.ctx.queue().submit([encoder.finish()]);
        self.launches += 1;
    }
}

/// The roof of Adafactor's GPU step (`shaders/factored_roof.wgsl`): the factored kernel's
/// bindings, tables, grids and five passes (tiles: read p, g, write the slots; matrices:
/// read the slots, read and write the factors; tiles: read g and the factors; segments;
/// tiles: read p, g and the factors, write p), with trivial arithmetic.
pub struct GpuFactoredRoof {
    kernel: crate::gpu::factored::FactoredKernel,
    ctx: crate::GpuContext,
    _states: Vec<wgpu::Buffer>,
    launches: u64,
}

impl GpuFactoredRoof {
    /// Over `params` and its segment table, with Adafactor's state layout of its own.
    pub fn new(params: &FlatParams) -> Result<Self> {
        let config = crate::OptimizerConfig::from(crate::AdafactorConfig::default());
        let shapes = params.segment_table().shapes();
        let layout = crate::StateLayout::packed_over_shapes(&config, &shapes);
        let states: Vec<wgpu::Buffer> = layout
            .lens()
            .iter()
            .map(|&len| create_flat(params.context(), "factored roof state", len.max(1)))
            .collect::<Result<_>>()?;
        let kernel = crate::gpu::factored::FactoredKernel::new(
            params,
            "factored_roof.wgsl",
            include_str!("../shaders/factored_roof.wgsl"),
            &states,
            &(0..shapes.len()).collect::<Vec<_>>(),
            &layout,
            &crate::gpu::gradients::control_buffer(params.context(), &Default::default()),
        )?;
        Ok(Self {
            kernel,
            ctx: params.context().clone(),
            _states: states,
            launches: 0,
        })
    }

    /// One step (one submission, no wait).
    pub fn step(&mut self) {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("factored roof"),
                });
        // grad_sign 1, decay 1, weight 0.5, eps1 1e-7, rho 1e-3, eps2 1e-3, d 1.
        let mut words = [0.0f32; 12];
        words[..9].copy_from_slice(&[1.0, 1.0, 0.5, 1e-7, 1e-14, 0.0, 1e-3, 1e-3, 1.0]);
        self.kernel
            .encode(&mut encoder, self.launches, bytemuck::cast_slice(&words));
        self.ctx.queue().submit([encoder.finish()]);
        self.launches += 1;
    }
}

/// The CPU roof of a two-pass per-tensor step with LAMB's access pattern, over the same
/// segments, chunks and threads as the fast path's per-tensor step: per segment, pass 1 reads
/// p, g, m, v, writes m, v and sums one value per chunk; pass 2 reads p, m, v and writes p.
pub fn cpu_segmented_roof(
    table: &crate::SegmentTable,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> f64 {
    use crate::cpu::fast::CHUNK;
    let mut total = 0.0;
    for seg in table.segments() {
        let r = seg.start..seg.end();
        let sums: Vec<f64> = p[r.clone()]
            .par_chunks(CHUNK)
            .zip(g[r.clone()].par_chunks(CHUNK))
            .zip(m[r.clone()].par_chunks_mut(CHUNK))
            .zip(v[r.clone()].par_chunks_mut(CHUNK))
            .map(|(((p, g), m), v)| roof_first_pass(p, g, m, v))
            .collect();
        let scale = 1e-3 / (1.0 + sums.iter().sum::<f64>().abs()) as f32;
        total += f64::from(scale);
        p[r.clone()]
            .par_chunks_mut(CHUNK)
            .zip(m[r.clone()].par_chunks(CHUNK))
            .zip(v[r].par_chunks(CHUNK))
            .for_each(|((p, m), v)| roof_second_pass(p, m, v, scale));
    }
    total
}

/// The roof's first pass over one chunk: `m += g`, `v += g`, the sum of `p * m` in 16 f64
/// lanes (as LAMB's first pass has: one serial f64 chain would make it latency-bound rather
/// than a memory roof), at the fast path's SIMD level.
fn roof_first_pass(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::simd::{simd_level, SimdLevel};
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        unsafe fn avx512(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> f64 {
            first_pass_body(p, g, m, v)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> f64 {
            first_pass_body(p, g, m, v)
        }
        match simd_level() {
            // SAFETY: the CPU has the features of the level it reports.
            SimdLevel::Avx512 => return unsafe { avx512(p, g, m, v) },
            SimdLevel::Avx2 => return unsafe { avx2(p, g, m, v) },
            SimdLevel::Baseline => {}
        }
    }
    first_pass_body(p, g, m, v)
}

#[inline(always)]
fn first_pass_body(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32]) -> f64 {
    const L: usize = 16;
    let mut acc = [0.0f64; L];
    let whole = p.len() - p.len() % L;
    let blocks = p[..whole]
        .chunks_exact(L)
        .zip(g[..whole].chunks_exact(L))
        .zip(m[..whole].chunks_exact_mut(L))
        .zip(v[..whole].chunks_exact_mut(L));
    for (((p8, g8), m8), v8) in blocks {
        let (mut mv, mut vv) = (
            <[f32; L]>::try_from(&*m8).expect("L"),
            <[f32; L]>::try_from(&*v8).expect("L"),
        );
        for lane in 0..L {
            mv[lane] += g8[lane];
            vv[lane] += g8[lane];
            acc[lane] += f64::from(p8[lane]) * f64::from(mv[lane]);
        }
        m8.copy_from_slice(&mv);
        v8.copy_from_slice(&vv);
    }
    for i in whole..p.len() {
        m[i] += g[i];
        v[i] += g[i];
        acc[i % L] += f64::from(p[i]) * f64::from(m[i]);
    }
    acc.iter().sum::<f64>()
}

/// The roof's second pass over one chunk: `p += scale * (m + v)`, at the fast path's SIMD
/// level.
fn roof_second_pass(p: &mut [f32], m: &[f32], v: &[f32], scale: f32) {
    #[inline(always)]
    fn body(p: &mut [f32], m: &[f32], v: &[f32], scale: f32) {
        for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
            *p += scale * (m + v);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::simd::{simd_level, SimdLevel};
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        unsafe fn avx512(p: &mut [f32], m: &[f32], v: &[f32], scale: f32) {
            body(p, m, v, scale)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &mut [f32], m: &[f32], v: &[f32], scale: f32) {
            body(p, m, v, scale)
        }
        match simd_level() {
            // SAFETY: the CPU has the features of the level it reports.
            SimdLevel::Avx512 => return unsafe { avx512(p, m, v, scale) },
            SimdLevel::Avx2 => return unsafe { avx2(p, m, v, scale) },
            SimdLevel::Baseline => {}
        }
    }
    body(p, m, v, scale)
}

/// The CPU roof of Adafactor's factored step (`AdafactorConfig::cpu_segment_step`), with
/// its access pattern over the same tiles ([`TILE_ROWS`](crate::optim::TILE_ROWS) x
/// [`TILE_COLS`](crate::optim::TILE_COLS) per matrix of every segment's matrix view), row
/// bands and threads, at the fast path's SIMD level: pass A reads p and g of each tile and
/// sums `p + g` (16 f64 lanes) into the tile's slot, pass B reads g and sums it, pass C
/// writes `p += s * g` per band of TILE_ROWS rows; the factors (rows + cols per matrix) are
/// left out. `scratch` holds the tiles' sums (grown once). Returns a value derived from the
/// sums, so that no pass is optimised away.
pub fn cpu_factored_roof(
    table: &crate::SegmentTable,
    p: &mut [f32],
    g: &[f32],
    scratch: &mut Vec<f64>,
) -> f64 {
    use crate::optim::{TILE_COLS, TILE_ROWS};
    use crate::simd::at_simd_level;
    const L: usize = 16;
    #[inline(always)]
    fn sum_tile(
        a: &[f32],
        b: &[f32],
        cols: usize,
        rows: std::ops::Range<usize>,
        cs: std::ops::Range<usize>,
    ) -> f64 {
        let mut acc = [0.0f64; L];
        let w = cs.len();
        for i in rows {
            let at = i * cols + cs.start;
            let (ar, br) = (&a[at..at + w], &b[at..at + w]);
            for j in 0..w {
                acc[j % L] += f64::from(ar[j] + br[j]);
            }
        }
        acc.iter().sum()
    }
    let mut total = 0.0;
    for seg in table.segments() {
        let (rows, cols, batch) = (seg.rows(), seg.cols(), seg.batch());
        let (bands, blocks) = (rows.div_ceil(TILE_ROWS), cols.div_ceil(TILE_COLS));
        let per = bands * blocks;
        let m = rows * cols;
        let tile = |k: usize| {
            let (b, rest) = (k / per, k % per);
            let (band, block) = (rest / blocks, rest % blocks);
            (
                b,
                band * TILE_ROWS..((band + 1) * TILE_ROWS).min(rows),
                block * TILE_COLS..((block + 1) * TILE_COLS).min(cols),
            )
        };
        let r = seg.range();
        let (ps, gs) = (&mut p[r.clone()], &g[r]);
        scratch.clear();
        scratch.resize(per * batch, 0.0);
        let pr = &*ps;
        scratch.par_iter_mut().enumerate().for_each(|(k, out)| {
            let (b, rs, cs) = tile(k);
            let (pm, gm) = (&pr[b * m..(b + 1) * m], &gs[b * m..(b + 1) * m]);
            *out = at_simd_level(
                #[inline(always)]
                || sum_tile(pm, gm, cols, rs, cs),
            );
        });
        let a: f64 = scratch.iter().sum();
        let sums: Vec<f64> = (0..per * batch)
            .into_par_iter()
            .map(|k| {
                let (b, rs, cs) = tile(k);
                let gm = &gs[b * m..(b + 1) * m];
                at_simd_level(
                    #[inline(always)]
                    || sum_tile(gm, gm, cols, rs, cs),
                )
            })
            .collect();
        let s = 1e-3 / (1.0 + (a + sums.iter().sum::<f64>()).abs()) as f32;
        total += f64::from(s);
        #[inline(always)]
        fn axpy(p: &mut [f32], g: &[f32], s: f32) {
            for (p, g) in p.iter_mut().zip(g) {
                *p += s * g;
            }
        }
        for b in 0..batch {
            ps[b * m..(b + 1) * m]
                .par_chunks_mut(TILE_ROWS * cols)
                .zip(gs[b * m..(b + 1) * m].par_chunks(TILE_ROWS * cols))
                .for_each(|(p, g)| {
                    at_simd_level(
                        #[inline(always)]
                        || axpy(p, g, s),
                    )
                });
        }
    }
    total
}

/// The 2-D tensor shapes (rows, cols) of a Muon benchmark model, by name: `square_D` (one
/// D x D matrix) or `transformer_L_D` (L layers of attention q, k, v, o of D x D and the MLP's
/// D x 4D and 4D x D); `None` for another name. The Muon examples, the CPU timing server and
/// `scripts/pytorch_compare.py` (its own copy, in Python) measure these.
pub fn muon_model_shapes(model: &str) -> Option<Vec<(usize, usize)>> {
    let words: Vec<&str> = model.split('_').collect();
    match words.as_slice() {
        ["square", d] => {
            let d = d.parse().ok()?;
            Some(vec![(d, d)])
        }
        ["transformer", l, d] => {
            let (l, d): (usize, usize) = (l.parse().ok()?, d.parse().ok()?);
            let mut shapes = Vec::with_capacity(6 * l);
            for _ in 0..l {
                shapes.extend([(d, d); 4]);
                shapes.extend([(d, 4 * d), (4 * d, d)]);
            }
            Some(shapes)
        }
        _ => None,
    }
}
