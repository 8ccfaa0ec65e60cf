//! Block-wise dynamic 8-bit optimizer state, as bitsandbytes 0.50's CPU backend keeps it
//! (`bitsandbytes.optim.Adam8bit` / `AdamW8bit`, `libbitsandbytes_cpu`), and the fast CPU
//! Adam/AdamW step over it ([`StateFormat::Blockwise8`](crate::optim::StateFormat)).
//!
//! **Maps** ([`dynamic_map`], bitsandbytes' `create_dynamic_map(signed, 7, 8)`, all f32):
//! for i = 0..7, n_i = 2^i + 1 (signed) or 2^(i+1) + 1 (unsigned) points
//! b = `torch.linspace(0.1, 1, n_i)`, means (b_j + b_{j+1}) / 2, values f32(10^(i-6)) · mean
//! (and their negatives for the signed map); plus 0 and 1; sorted ascending.
//!
//! **Quantiser** ([`Quantizer::quantize_block`], bitsandbytes' CPU `quantize_block`), per
//! block of [`BLOCK`] = 256 elements of the flattened tensor (the last block partial):
//! ```text
//! absmax = max |x|;  if absmax = 0: every code 0
//! x~  = clamp(x * f32(1 / absmax), -1, 1)
//! idx = trunc(((x~ + 1) * 0.5) * 65535 + 0.5)                  f32 arithmetic
//! code = LUT[idx],  LUT[i] = #{ j : (q_j + q_{j+1}) / 2 < f32(-1 + f32(2i) / 65535) }
//! ```
//! i.e. the code nearest to the 65536-point grid value of x~ (not to x~ itself: 0 maps to
//! code 131 = +2.125e-5 of the signed map and to code 7 = 1.5625e-5 of the unsigned map).
//! **Dequantisation**: `q[code] * absmax` (f32 product).
//!
//! **Step** of a quantised tensor (f32; t = step, c1 = 1 - b1^t, c2 = sqrt(1 - b2^t) in f64):
//! ```text
//! m = qmap1[state1] * absmax1[block];  v = qmap2[state2] * absmax2[block]
//! m = fma(f32(1 - b1), g, f32(b1) * m)
//! v = fma(f32(1 - b2) * g, g, f32(b2) * v)
//! denom = sqrt(v) / f32(c2) + f32(eps)
//! if wd > 0: p = p * f32(1 - lr * wd)                             (decoupled, Adam8bit too)
//! p = p + (f32(-lr / c1) * m) / denom                              (the fresh f32 moments)
//! state1, absmax1 = quantise(m, qmap1);  state2, absmax2 = quantise(v, qmap2)
//! ```
//! A tensor of fewer than `min_size` elements keeps f32 `state1` (m) and `state2` (v) and
//! takes bitsandbytes' 32-bit step: m, v as above, then the decay, then
//! `p = p + f32(-lr * c2 / c1) * (m / (sqrt(v) + f32(eps * c2)))`.
//!
//! The oracle of these steps, written separately (serial, quantising by counting midpoints
//! instead of a table), is [`crate::cpu::reference::blockwise8`].

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::cpu::simd::SimdLevel;
use crate::error::{Error, Result};
use crate::optim::AdamConfig;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Elements per quantisation block (bitsandbytes' CPU `blocksize`).
pub const BLOCK: usize = 256;
/// Points of the quantiser's grid over [-1, 1] (the size of its lookup table).
pub const GRID: usize = 65536;
/// bitsandbytes' default `min_8bit_size`: tensors with fewer elements keep f32 state.
pub const DEFAULT_MIN_8BIT_SIZE: usize = 4096;
/// Blocks per parallel task of the fast step (32768 elements, the fast path's `CHUNK`).
const BLOCKS_PER_TASK: usize = 128;

/// `torch.linspace(0.1, 1, n)` in f32 as torch 2.15's CPU kernel computes it: step =
/// (1 - 0.1) / (n - 1); the first half `fma(step, j, 0.1)`, the second half
/// `fma(-step, n - 1 - j, 1)` (one rounding each: the kernel's multiply-add is fused; a
/// separately rounded product gives 42 of the 256 signed values 1 ulp off, checked against
/// the golden files' `qmap1`/`qmap2`).
fn linspace_01_1(n: usize) -> Vec<f32> {
    let (start, end) = (0.1f32, 1.0f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|j| {
            if j < half {
                step.mul_add(j as f32, start)
            } else {
                (-step).mul_add((n - 1 - j) as f32, end)
            }
        })
        .collect()
}

/// 10^(i - 6) for i = 0..7, correctly rounded f64 (Python's `10 ** (i - 6)`).
const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8)`: 256
/// f32 values ascending. Signed: 127 negative values (smallest -0.99296874), 0, 127
/// positive values, 1.0. Unsigned: 0, 254 positive values, 1.0.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7u32 {
        let n = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let b = linspace_01_1(n);
        let scale = DECADES[i as usize] as f32;
        let means: Vec<f32> = b.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|&m| scale * m));
        if signed {
            data.extend(means.iter().map(|&m| -scale * m));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// A dynamic map with its 65536-entry lookup table: bitsandbytes' CPU quantiser.
#[derive(Clone)]
pub struct Quantizer {
    map: [f32; 256],
    /// Indexed by a `u16` grid index: the fixed size makes every look-up provably in bounds.
    lut: Box<[u8; GRID]>,
}

impl std::fmt::Debug for Quantizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantizer")
            .field("map[0]", &self.map[0])
            .field("map[255]", &self.map[255])
            .finish()
    }
}

impl Quantizer {
    /// The quantiser of `map` (256 ascending values): `LUT[i]` = the number of midpoints
    /// `(q_j + q_{j+1}) / 2` (f32) strictly below the grid value `f32(-1 + f32(2i) / 65535)`.
    pub fn new(map: [f32; 256]) -> Self {
        let mids: Vec<f32> = map.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let mut lut = Box::new([0u8; GRID]);
        for (i, code) in lut.iter_mut().enumerate() {
            let x = -1.0f32 + (2 * i) as f32 / 65535.0f32;
            *code = mids.partition_point(|&m| m < x) as u8;
        }
        Self { map, lut }
    }

    /// The shared quantiser of the signed map (`qmap1`, for `exp_avg`).
    pub fn signed() -> &'static Quantizer {
        static Q: OnceLock<Quantizer> = OnceLock::new();
        Q.get_or_init(|| Quantizer::new(dynamic_map(true)))
    }

    /// The shared quantiser of the unsigned map (`qmap2`, for `exp_avg_sq`).
    pub fn unsigned() -> &'static Quantizer {
        static Q: OnceLock<Quantizer> = OnceLock::new();
        Q.get_or_init(|| Quantizer::new(dynamic_map(false)))
    }

    /// The map (256 ascending f32 values; bitsandbytes' `qmap1` / `qmap2`).
    pub fn map(&self) -> &[f32; 256] {
        &self.map
    }

    /// The 65536-entry lookup table: `LUT[idx]` is the code of grid point `idx` (what the
    /// GPU kernel uploads and indexes, `src/gpu/blockwise8.rs`).
    pub fn lut(&self) -> &[u8] {
        &self.lut[..]
    }

    /// `q[code] * absmax`.
    #[inline(always)]
    pub fn dequantize(&self, code: u8, absmax: f32) -> f32 {
        self.map[code as usize] * absmax
    }

    /// Quantise one block (`x.len() == codes.len() <= BLOCK`): writes the codes and returns
    /// the block's absmax (see the module documentation).
    #[inline(always)]
    /// (Only the first `min(x.len(), codes.len())` elements are used.)
    pub fn quantize_block(&self, x: &[f32], codes: &mut [u8]) -> f32 {
        let n = x.len().min(codes.len());
        let (x, codes) = (&x[..n], &mut codes[..n]);
        // max |x| in 8 lanes (vectorisable; the maximum does not depend on the order, and
        // `>` skips NaN as `f32::max` does), as a select: see `full_block`.
        let mut lanes = [0.0f32; 8];
        let mut tail = x.chunks_exact(8);
        for c in &mut tail {
            for j in 0..8 {
                let a = c[j].abs();
                lanes[j] = if a > lanes[j] { a } else { lanes[j] };
            }
        }
        let absmax = tail
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(0.0f32, |a, &v| a.max(v.abs()));
        if absmax == 0.0 {
            codes.fill(0);
            return 0.0;
        }
        let inv = 1.0f32 / absmax;
        // Grid indices first (a loop the compiler vectorises), then the table look-ups.
        let mut idx = [0u16; BLOCK];
        for (chunk_c, chunk_x) in codes.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
            let idx = &mut idx[..chunk_x.len()];
            for (d, &v) in idx.iter_mut().zip(chunk_x) {
                *d = grid_index(v * inv);
            }
            for (c, &i) in chunk_c.iter_mut().zip(idx.iter()) {
                *c = self.lut[usize::from(i)];
            }
        }
        absmax
    }

    /// Quantise a whole flattened tensor block by block: `codes.len() == x.len()`,
    /// `absmax.len() == x.len().div_ceil(BLOCK)`; otherwise [`Error::LengthMismatch`].
    pub fn quantize(&self, x: &[f32], codes: &mut [u8], absmax: &mut [f32]) -> Result<()> {
        check_len("codes", x.len(), codes.len())?;
        check_len("absmax", x.len().div_ceil(BLOCK), absmax.len())?;
        x.par_chunks(BLOCK)
            .zip(codes.par_chunks_mut(BLOCK))
            .zip(absmax.par_iter_mut())
            .for_each(|((x, c), a)| *a = self.quantize_block(x, c));
        Ok(())
    }
}

/// The grid index of a scaled value `x` (= value / absmax): `trunc(((clamp(x, -1, 1) + 1) *
/// 0.5) * 65535 + 0.5)` in f32, 0 for NaN (as bitsandbytes' `(int)` of its clamped float).
///
/// Written so that it vectorises: the clamp as two selects (`x > -1 ? x : -1` sends NaN to
/// -1, whose index is 0, the index NaN takes in the scalar formula too) and an unchecked
/// conversion of a value known to lie in [0.5, 65535.5].
#[inline(always)]
fn grid_index(x: f32) -> u16 {
    let x = if x > -1.0 { x } else { -1.0 };
    let x = if x < 1.0 { x } else { 1.0 };
    let t = ((x + 1.0) * 0.5) * 65535.0 + 0.5;
    // SAFETY: x is in [-1, 1], so t is finite and in [0.5, 65535.5]: its truncation fits an
    // i32 (and a u16).
    let i: i32 = unsafe { t.to_int_unchecked() };
    i as u16
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// The state of one tensor (segment) under [`StateFormat::Blockwise8`](crate::optim::StateFormat),
/// under bitsandbytes' names.
#[derive(Clone, Debug, PartialEq)]
pub enum SegmentState {
    /// A quantised tensor (at least `min_size` elements).
    Quantized {
        /// `exp_avg` codes into the signed map (one per element).
        state1: Vec<u8>,
        /// `exp_avg_sq` codes into the unsigned map (one per element).
        state2: Vec<u8>,
        /// Per block of [`BLOCK`] elements: max |exp_avg|.
        absmax1: Vec<f32>,
        /// Per block of [`BLOCK`] elements: max |exp_avg_sq|.
        absmax2: Vec<f32>,
    },
    /// A small tensor with f32 state (bitsandbytes' 32-bit path).
    Full {
        /// `exp_avg`.
        state1: Vec<f32>,
        /// `exp_avg_sq`.
        state2: Vec<f32>,
    },
}

impl SegmentState {
    /// The initial (zero) state of a tensor of `len` elements: quantised when
    /// `len >= min_size`.
    pub fn zeros(len: usize, min_size: usize) -> Self {
        if len >= min_size {
            let blocks = len.div_ceil(BLOCK);
            SegmentState::Quantized {
                state1: vec![0; len],
                state2: vec![0; len],
                absmax1: vec![0.0; blocks],
                absmax2: vec![0.0; blocks],
            }
        } else {
            SegmentState::Full {
                state1: vec![0.0; len],
                state2: vec![0.0; len],
            }
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            SegmentState::Quantized { state1, .. } => state1.len(),
            SegmentState::Full { state1, .. } => state1.len(),
        }
    }

    /// True for a tensor of no elements (never built: segments are non-empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `exp_avg` (`which = 0`) or `exp_avg_sq` (`1`) as f32 values: dequantised
    /// (`q[code] * absmax`) for a quantised tensor.
    pub fn moments(&self, which: usize) -> Vec<f32> {
        match self {
            SegmentState::Quantized {
                state1,
                state2,
                absmax1,
                absmax2,
            } => {
                let (q, codes, absmax) = if which == 0 {
                    (Quantizer::signed(), state1, absmax1)
                } else {
                    (Quantizer::unsigned(), state2, absmax2)
                };
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| q.dequantize(c, absmax[i / BLOCK]))
                    .collect()
            }
            SegmentState::Full { state1, state2 } => {
                if which == 0 {
                    state1.clone()
                } else {
                    state2.clone()
                }
            }
        }
    }

    /// Bytes of state per element: 2 + 8/256 quantised, 8 for f32.
    pub fn bytes(&self) -> usize {
        match self {
            SegmentState::Quantized {
                state1, absmax1, ..
            } => 2 * state1.len() + 8 * absmax1.len(),
            SegmentState::Full { state1, .. } => 8 * state1.len(),
        }
    }
}

/// The f32 scalars of one 8-bit Adam step, computed once on the host from f64 values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blockwise8Scalars {
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
    /// Whether weight decay applies (wd > 0).
    pub decays: bool,
    /// f32(1 - lr * wd).
    pub decay_factor: f32,
    /// 32-bit path: f32(-lr * c2 / c1).
    pub step_size_32: f32,
    /// 32-bit path: f32(eps * c2).
    pub eps_32: f32,
}

impl Blockwise8Scalars {
    /// The scalars of step `t` (1-based) at learning rate `lr` (c1 = 1 - b1^t,
    /// c2 = sqrt(1 - b2^t) in f64, each scalar rounded to f32 once).
    pub fn new(config: &AdamConfig, t: u64, lr: f64) -> Self {
        let (b1, b2) = config.betas;
        let ti = t.min(i32::MAX as u64) as i32;
        let c1 = 1.0 - b1.powi(ti);
        let c2 = (1.0 - b2.powi(ti)).sqrt();
        let wd = config.weight_decay;
        Self {
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            c2: c2 as f32,
            eps: config.eps as f32,
            step_size: (-lr / c1) as f32,
            decays: wd > 0.0,
            decay_factor: (1.0 - lr * wd) as f32,
            step_size_32: (-lr * c2 / c1) as f32,
            eps_32: (config.eps * c2) as f32,
        }
    }
}

/// Checks that `config` can keep 8-bit state: Adam/AdamW without AMSGrad or `maximize`,
/// with decoupled (or no) weight decay, as bitsandbytes' `Adam8bit` does.
pub fn check_config(config: &AdamConfig) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidCombination {
            optimizer: if config.decoupled_weight_decay {
                "AdamW"
            } else {
                "Adam"
            },
            reason,
        })
    };
    if config.amsgrad {
        return refuse(
            "8-bit state (StateFormat::Blockwise8) has no AMSGrad (bitsandbytes' Adam8bit neither)",
        );
    }
    if config.maximize {
        return refuse("8-bit state (StateFormat::Blockwise8) does not implement maximize");
    }
    if config.weight_decay != 0.0 && !config.decoupled_weight_decay {
        return refuse(
            "8-bit state (StateFormat::Blockwise8) applies weight decay decoupled, as \
             bitsandbytes' Adam8bit does: set decoupled_weight_decay (AdamW) or weight_decay 0",
        );
    }
    Ok(())
}

/// The 8-bit state of a whole optimizer: one [`SegmentState`] per tensor, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Blockwise8State {
    pub(crate) min_size: usize,
    pub(crate) ranges: Vec<Range<usize>>,
    pub(crate) segments: Vec<SegmentState>,
}

impl Blockwise8State {
    /// Zero state for tensors of lengths `lens` (each > 0).
    pub fn new(lens: &[usize], min_size: usize) -> Result<Self> {
        let mut ranges = Vec::with_capacity(lens.len());
        let mut start = 0usize;
        for &len in lens {
            if len == 0 {
                return Err(Error::Empty { what: "segment" });
            }
            let end = start.checked_add(len).ok_or(Error::TooManyElements {
                what: "segments",
                len: u64::MAX,
                limit: usize::MAX as u64,
            })?;
            ranges.push(start..end);
            start = end;
        }
        Ok(Self {
            min_size,
            segments: lens
                .iter()
                .map(|&l| SegmentState::zeros(l, min_size))
                .collect(),
            ranges,
        })
    }

    /// bitsandbytes' `min_8bit_size`: tensors with fewer elements have f32 state.
    pub fn min_size(&self) -> usize {
        self.min_size
    }

    /// Each tensor's element range in the flat parameter vector.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Each tensor's state, in order.
    pub fn segments(&self) -> &[SegmentState] {
        &self.segments
    }

    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// `exp_avg` (`which = 0`) or `exp_avg_sq` (`1`) of every tensor, dequantised, flat.
    pub fn moments(&self, which: usize) -> Vec<f32> {
        self.segments
            .iter()
            .flat_map(|s| s.moments(which))
            .collect()
    }

    /// Overwrite `exp_avg` (`which = 0`) or `exp_avg_sq` (`1`) of every tensor with the flat
    /// f32 `values` ([`Self::len`] of them): quantised per block for a quantised tensor, as
    /// a step stores them. [`Error::LengthMismatch`] (nothing changed) for a wrong length.
    pub fn load_moments(&mut self, which: usize, values: &[f32]) -> Result<()> {
        check_len("state", self.len(), values.len())?;
        for (r, seg) in self.ranges.iter().zip(self.segments.iter_mut()) {
            let x = &values[r.clone()];
            match seg {
                SegmentState::Quantized {
                    state1,
                    state2,
                    absmax1,
                    absmax2,
                } => {
                    if which == 0 {
                        Quantizer::signed().quantize(x, state1, absmax1)?;
                    } else {
                        Quantizer::unsigned().quantize(x, state2, absmax2)?;
                    }
                }
                SegmentState::Full { state1, state2 } => {
                    if which == 0 {
                        state1.copy_from_slice(x);
                    } else {
                        state2.copy_from_slice(x);
                    }
                }
            }
        }
        Ok(())
    }

    /// One fast step of `config` at step `t` (1-based) and learning rate `lr` over the
    /// flat `params` and `grads` (of [`Self::len`] elements; the caller checks lengths).
    pub(crate) fn step(
        &mut self,
        config: &AdamConfig,
        t: u64,
        lr: f64,
        params: &mut [f32],
        grads: &[f32],
        level: SimdLevel,
    ) {
        let s = Blockwise8Scalars::new(config, t, lr);
        for (r, seg) in self.ranges.iter().zip(self.segments.iter_mut()) {
            let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
            match seg {
                SegmentState::Quantized {
                    state1,
                    state2,
                    absmax1,
                    absmax2,
                } => step_quantized(&s, p, g, state1, state2, absmax1, absmax2, level),
                SegmentState::Full { state1, state2 } => step_full(&s, p, g, state1, state2, level),
            }
        }
    }
}

/// The 8-bit step over one quantised tensor, in parallel over tasks of
/// `BLOCKS_PER_TASK` blocks.
#[allow(clippy::too_many_arguments)]
fn step_quantized(
    s: &Blockwise8Scalars,
    p: &mut [f32],
    g: &[f32],
    state1: &mut [u8],
    state2: &mut [u8],
    absmax1: &mut [f32],
    absmax2: &mut [f32],
    level: SimdLevel,
) {
    let task = BLOCK * BLOCKS_PER_TASK;
    p.par_chunks_mut(task)
        .zip(g.par_chunks(task))
        .zip(state1.par_chunks_mut(task))
        .zip(state2.par_chunks_mut(task))
        .zip(absmax1.par_chunks_mut(BLOCKS_PER_TASK))
        .zip(absmax2.par_chunks_mut(BLOCKS_PER_TASK))
        .for_each(|(((((p, g), c1), c2), a1), a2)| {
            run_blocks(s, p, g, c1, c2, a1, a2, level);
        });
}

/// Dispatches [`blocks`] to the build of `level` (the fast path's [`SimdLevel`], never above
/// what the CPU has); the same bits at every level: the loop uses explicit `mul_add`
/// (correctly rounded in every build) and plain f32 operations. At the AVX-512 level, on a
/// CPU with VBMI, the hand-written kernel of [`avx512`] runs (1.36 against 1.88 ns/param for
/// the AVX2 build single-threaded on an Intel Xeon with AVX-512 VBMI, 2026-12-06, CPU time,
/// `examples/state_formats.rs`); without VBMI the AVX2 build (on an AMD EPYC with AVX-512
/// on 256-bit units the compiler's AVX-512 builds of this loop were slower than AVX2:
/// 3.7–4.1 against 3.1–3.4 ns/param).
#[allow(clippy::too_many_arguments)]
fn run_blocks(
    s: &Blockwise8Scalars,
    p: &mut [f32],
    g: &[f32],
    c1: &mut [u8],
    c2: &mut [u8],
    a1: &mut [f32],
    a2: &mut [f32],
    level: SimdLevel,
) {
    match level {
        // SAFETY: `level` comes from `simd_level()`, never above `SimdLevel::detected()`.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if avx512::available() => unsafe {
            avx512::blocks(s, p, g, c1, c2, a1, a2)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 | SimdLevel::Avx2 => unsafe { x86::blocks_avx2(s, p, g, c1, c2, a1, a2) },
        _ => blocks(s, p, g, c1, c2, a1, a2),
    }
}

/// [`blocks`] and [`blocks_1state`] compiled for AVX2, [`full`] for AVX2 and for AVX-512.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
mod x86 {
    use super::{blocks, blocks_1state, full, Blockwise8Scalars, OneStateScalars, Quantizer};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn blocks_1state_avx2(
        s: &OneStateScalars,
        q: &Quantizer,
        p: &mut [f32],
        g: &[f32],
        c: &mut [u8],
        a: &mut [f32],
    ) {
        blocks_1state(s, q, p, g, c, a)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn blocks_avx2(
        s: &Blockwise8Scalars,
        p: &mut [f32],
        g: &[f32],
        c1: &mut [u8],
        c2: &mut [u8],
        a1: &mut [f32],
        a2: &mut [f32],
    ) {
        blocks(s, p, g, c1, c2, a1, a2)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn full_avx2(
        s: &Blockwise8Scalars,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        full(s, p, g, m, v)
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub unsafe fn full_avx512(
        s: &Blockwise8Scalars,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        full(s, p, g, m, v)
    }
}

/// The step over consecutive blocks: dequantise, update m, v and p in f32, re-quantise.
#[inline(always)]
fn blocks(
    s: &Blockwise8Scalars,
    p: &mut [f32],
    g: &[f32],
    c1: &mut [u8],
    c2: &mut [u8],
    a1: &mut [f32],
    a2: &mut [f32],
) {
    let (q1, q2) = (Quantizer::signed(), Quantizer::unsigned());
    for ((((p, g), c1), c2), (a1, a2)) in p
        .chunks_mut(BLOCK)
        .zip(g.chunks(BLOCK))
        .zip(c1.chunks_mut(BLOCK))
        .zip(c2.chunks_mut(BLOCK))
        .zip(a1.iter_mut().zip(a2.iter_mut()))
    {
        match (
            <&mut [f32; BLOCK]>::try_from(&mut *p),
            <&[f32; BLOCK]>::try_from(g),
            <&mut [u8; BLOCK]>::try_from(&mut *c1),
            <&mut [u8; BLOCK]>::try_from(&mut *c2),
        ) {
            (Ok(p), Ok(g), Ok(c1), Ok(c2)) => full_block(s, q1, q2, p, g, c1, c2, a1, a2),
            _ => one_block(s, q1, q2, p, g, c1, c2, a1, a2),
        }
    }
}

/// [`one_block`] for a whole block, arranged for speed with the same operations: the
/// absmax of the new moments is taken in the update loop (8 lanes each), and both
/// moments' grid indices and table look-ups share loops (more independent loads in
/// flight).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn full_block(
    s: &Blockwise8Scalars,
    q1: &Quantizer,
    q2: &Quantizer,
    p: &mut [f32; BLOCK],
    g: &[f32; BLOCK],
    c1: &mut [u8; BLOCK],
    c2: &mut [u8; BLOCK],
    a1: &mut f32,
    a2: &mut f32,
) {
    const L: usize = 8;
    let mut m = [0.0f32; BLOCK];
    let mut v = [0.0f32; BLOCK];
    let (am1, am2) = (*a1, *a2);
    let (mut l1, mut l2) = ([0.0f32; L], [0.0f32; L]);
    for k in (0..BLOCK).step_by(L) {
        for j in 0..L {
            let i = k + j;
            let gi = g[i];
            let m0 = q1.map[c1[i] as usize] * am1;
            let v0 = q2.map[c2[i] as usize] * am2;
            let mi = s.one_minus_beta1.mul_add(gi, s.beta1 * m0);
            let vi = (s.one_minus_beta2 * gi).mul_add(gi, s.beta2 * v0);
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() / s.c2 + s.eps;
            let pi = if s.decays {
                p[i] * s.decay_factor
            } else {
                p[i]
            };
            p[i] = pi + (s.step_size * mi) / denom;
            // `>` skips NaN, as the portable quantiser's absmax does. Written as a select
            // (a `maxps`), not as `if a > l { l = a }`: that form compiled to a masked store
            // to the stack per 8 elements (`vmaskmovps`, slow on AMD), 1.8x this loop's time
            // (single-threaded 2.97 against 1.66 ns/param, `examples/state_formats.rs`).
            let (a1, a2) = (mi.abs(), vi.abs());
            l1[j] = if a1 > l1[j] { a1 } else { l1[j] };
            l2[j] = if a2 > l2[j] { a2 } else { l2[j] };
        }
    }
    let absmax1 = l1.iter().fold(0.0f32, |a, &b| a.max(b));
    let absmax2 = l2.iter().fold(0.0f32, |a, &b| a.max(b));
    let inv1 = if absmax1 == 0.0 {
        0.0
    } else {
        1.0f32 / absmax1
    };
    let inv2 = if absmax2 == 0.0 {
        0.0
    } else {
        1.0f32 / absmax2
    };
    let mut i1 = [0u16; BLOCK];
    let mut i2 = [0u16; BLOCK];
    for i in 0..BLOCK {
        i1[i] = grid_index(m[i] * inv1);
        i2[i] = grid_index(v[i] * inv2);
    }
    for i in 0..BLOCK {
        c1[i] = q1.lut[usize::from(i1[i])];
        c2[i] = q2.lut[usize::from(i2[i])];
    }
    // An all-zero block: every code 0 (the quantiser's rule), not LUT[grid index of 0].
    if absmax1 == 0.0 {
        c1.fill(0);
    }
    if absmax2 == 0.0 {
        c2.fill(0);
    }
    *a1 = absmax1;
    *a2 = absmax2;
}

/// The step over one block (at most [`BLOCK`] elements).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn one_block(
    s: &Blockwise8Scalars,
    q1: &Quantizer,
    q2: &Quantizer,
    p: &mut [f32],
    g: &[f32],
    c1: &mut [u8],
    c2: &mut [u8],
    a1: &mut f32,
    a2: &mut f32,
) {
    let mut m = [0.0f32; BLOCK];
    let mut v = [0.0f32; BLOCK];
    let n = p.len();
    let (m, v, g, c1, c2) = (
        &mut m[..n],
        &mut v[..n],
        &g[..n],
        &mut c1[..n],
        &mut c2[..n],
    );
    let (am1, am2) = (*a1, *a2);
    for i in 0..n {
        m[i] = q1.map[c1[i] as usize] * am1;
        v[i] = q2.map[c2[i] as usize] * am2;
    }
    for i in 0..n {
        let gi = g[i];
        let mi = s.one_minus_beta1.mul_add(gi, s.beta1 * m[i]);
        let vi = (s.one_minus_beta2 * gi).mul_add(gi, s.beta2 * v[i]);
        m[i] = mi;
        v[i] = vi;
        let denom = vi.sqrt() / s.c2 + s.eps;
        let pi = if s.decays {
            p[i] * s.decay_factor
        } else {
            p[i]
        };
        p[i] = pi + (s.step_size * mi) / denom;
    }
    *a1 = q1.quantize_block(m, c1);
    *a2 = q2.quantize_block(v, c2);
}

/// bitsandbytes' 32-bit step over one small tensor (f32 state), in parallel chunks.
fn step_full(
    s: &Blockwise8Scalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    level: SimdLevel,
) {
    let task = BLOCK * BLOCKS_PER_TASK;
    p.par_chunks_mut(task)
        .zip(g.par_chunks(task))
        .zip(m.par_chunks_mut(task))
        .zip(v.par_chunks_mut(task))
        .for_each(|(((p, g), m), v)| match level {
            // SAFETY: `level` comes from `simd_level()`, never above `SimdLevel::detected()`.
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => unsafe { x86::full_avx512(s, p, g, m, v) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => unsafe { x86::full_avx2(s, p, g, m, v) },
            _ => full(s, p, g, m, v),
        });
}

/// bitsandbytes' 32-bit update over one chunk.
#[inline(always)]
fn full(s: &Blockwise8Scalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = s.one_minus_beta1.mul_add(gi, s.beta1 * m[i]);
        let vi = (s.one_minus_beta2 * gi).mul_add(gi, s.beta2 * v[i]);
        m[i] = mi;
        v[i] = vi;
        let pi = if s.decays {
            p[i] * s.decay_factor
        } else {
            p[i]
        };
        p[i] = pi + s.step_size_32 * (mi / (vi.sqrt() + s.eps_32));
    }
}

// ---- One-state optimizers: bitsandbytes' Lion8bit and SGD8bit (momentum) ----------------

/// The f32 scalars of one step of a one-state 8-bit optimizer (bitsandbytes' `Lion8bit`,
/// `SGD8bit`), computed once on the host from f64 values; the update rules are in
/// [`crate::cpu::reference::blockwise8_1state`] (the oracle), which the fast step
/// (`Blockwise8State::step_1state`) and the GPU kernel reproduce bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneStateScalars {
    /// Lion (true) or SGD with momentum (false).
    pub lion: bool,
    /// Lion: f32(beta1); momentum: f32(momentum).
    pub beta1: f32,
    /// Lion: f32(1 - beta1).
    pub one_minus_beta1: f32,
    /// Lion: f32(beta2).
    pub beta2: f32,
    /// Lion: f32(1 - beta2).
    pub one_minus_beta2: f32,
    /// f32(-lr).
    pub neg_lr: f32,
    /// Lion: decoupled decay applies (wd > 0).
    pub decays: bool,
    /// Lion: f32(1 - lr * wd).
    pub decay_factor: f32,
    /// Momentum: f32(wd) (L2, added to the gradient).
    pub weight_decay: f32,
    /// Momentum: wd > 0 (the 32-bit path adds the decay only then; the 8-bit path always).
    pub wd_positive: bool,
    /// Step 1 (momentum: the buffer starts as the gradient).
    pub first: bool,
}

impl OneStateScalars {
    /// The scalars of step `t` (1-based) at learning rate `lr` for `config` (Lion or SGD;
    /// checked by [`check_config_1state`]).
    pub fn new(config: &crate::optim::OptimizerConfig, t: u64, lr: f64) -> Self {
        use crate::optim::OptimizerConfig as C;
        let (lion, b1, b2, wd) = match config {
            C::Lion(c) => (true, c.betas.0, c.betas.1, c.weight_decay),
            C::Sgd(c) => (false, c.momentum, 0.0, c.weight_decay),
            _ => (false, 0.0, 0.0, 0.0),
        };
        Self {
            lion,
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            neg_lr: (-lr) as f32,
            decays: wd > 0.0,
            decay_factor: (1.0 - lr * wd) as f32,
            weight_decay: wd as f32,
            wd_positive: wd > 0.0,
            first: t == 1,
        }
    }
}

/// Checks that `config` can keep 8-bit state as a one-state optimizer of bitsandbytes:
/// Lion without `decoupled_weight_decay` (bitsandbytes decays by lr · wd), SGD with
/// momentum > 0, no dampening, no Nesterov, no `maximize` (`SGD8bit`'s only form).
pub fn check_config_1state(config: &crate::optim::OptimizerConfig) -> Result<()> {
    use crate::optim::OptimizerConfig as C;
    let refuse = |reason| {
        Err(Error::InvalidCombination {
            optimizer: config.name(),
            reason,
        })
    };
    match config {
        C::Lion(c) if c.decoupled_weight_decay => refuse(
            "8-bit state (StateFormat::Blockwise8): bitsandbytes' Lion8bit decays by lr * wd; \
             decoupled_weight_decay (lr / lr0 scaling) is not implemented",
        ),
        C::Lion(_) => Ok(()),
        C::Sgd(c) if c.momentum <= 0.0 => {
            refuse("8-bit state (StateFormat::Blockwise8) needs momentum > 0 (as SGD8bit)")
        }
        C::Sgd(c) if c.dampening != 0.0 || c.nesterov || c.maximize => refuse(
            "8-bit state (StateFormat::Blockwise8): SGD8bit has no dampening, Nesterov or \
             maximize",
        ),
        C::Sgd(_) => Ok(()),
        _ => refuse(
            "8-bit state (StateFormat::Blockwise8) is implemented for Adam/AdamW, Lion and \
             SGD with momentum only",
        ),
    }
}

#[inline(always)]
fn sign_1state(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// The one-state update of one element (8-bit tensors: `quantized`): the new momentum
/// (returned) and the new parameter.
#[inline(always)]
fn one_state_element(s: &OneStateScalars, quantized: bool, p: &mut f32, g: f32, m0: f32) -> f32 {
    if s.lion {
        if s.decays {
            *p *= s.decay_factor;
        }
        let u = if quantized {
            s.beta1 * m0 + s.one_minus_beta1 * g
        } else {
            s.one_minus_beta1.mul_add(g, s.beta1 * m0)
        };
        *p = s.neg_lr.mul_add(sign_1state(u), *p);
        s.one_minus_beta2.mul_add(g, s.beta2 * m0)
    } else {
        let gi = if quantized || s.wd_positive {
            s.weight_decay.mul_add(*p, g)
        } else {
            g
        };
        let m = if s.first { gi } else { s.beta1 * m0 + gi };
        *p = s.neg_lr.mul_add(m, *p);
        m
    }
}

/// Dispatches [`blocks_1state`] to the build of `level` (at the AVX-512 level the kernel of
/// [`avx512`] when the CPU has VBMI, else the AVX2 build, as [`run_blocks`]); the same bits
/// at every level.
fn run_blocks_1state(
    s: &OneStateScalars,
    q: &Quantizer,
    p: &mut [f32],
    g: &[f32],
    c: &mut [u8],
    a: &mut [f32],
    level: SimdLevel,
) {
    match level {
        // SAFETY: `level` comes from `simd_level()`, never above `SimdLevel::detected()`;
        // `available()` checks the rest.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 if avx512::available() => unsafe {
            avx512::blocks_1state(s, q, p, g, c, a)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 | SimdLevel::Avx2 => unsafe { x86::blocks_1state_avx2(s, q, p, g, c, a) },
        _ => blocks_1state(s, q, p, g, c, a),
    }
}

/// The one-state step over consecutive blocks of an 8-bit tensor: [`block_1state`] per
/// block.
#[inline(always)]
fn blocks_1state(
    s: &OneStateScalars,
    q: &Quantizer,
    p: &mut [f32],
    g: &[f32],
    c: &mut [u8],
    a: &mut [f32],
) {
    for (((p, g), c), a) in p
        .chunks_mut(BLOCK)
        .zip(g.chunks(BLOCK))
        .zip(c.chunks_mut(BLOCK))
        .zip(a.iter_mut())
    {
        block_1state(s, q, p, g, c, a);
    }
}

/// The one-state step over one block (at most [`BLOCK`] elements): dequantise the momentum,
/// update it and the params in f32, re-quantise. The same arithmetic as
/// [`one_state_element`] with `quantized` (so the same bits), with the branches on the
/// algorithm and its options taken once per block instead of per element, so that the
/// element loops vectorise.
#[inline(always)]
fn block_1state(
    s: &OneStateScalars,
    q: &Quantizer,
    p: &mut [f32],
    g: &[f32],
    c: &mut [u8],
    a: &mut f32,
) {
    let mut m = [0.0f32; BLOCK];
    let n = p.len();
    let (m, g) = (&mut m[..n], &g[..n]);
    let codes = &c[..n];
    let (map, absmax) = (&q.map, *a);
    if s.lion {
        if s.decays {
            for x in p.iter_mut() {
                *x *= s.decay_factor;
            }
        }
        for i in 0..n {
            let m0 = map[codes[i] as usize] * absmax;
            let u = s.beta1 * m0 + s.one_minus_beta1 * g[i];
            p[i] = s.neg_lr.mul_add(sign_1state(u), p[i]);
            m[i] = s.one_minus_beta2.mul_add(g[i], s.beta2 * m0);
        }
    } else if s.first {
        for i in 0..n {
            let gi = s.weight_decay.mul_add(p[i], g[i]);
            m[i] = gi;
            p[i] = s.neg_lr.mul_add(gi, p[i]);
        }
    } else {
        for i in 0..n {
            let m0 = map[codes[i] as usize] * absmax;
            let mi = s.beta1 * m0 + s.weight_decay.mul_add(p[i], g[i]);
            m[i] = mi;
            p[i] = s.neg_lr.mul_add(mi, p[i]);
        }
    }
    *a = q.quantize_block(m, c);
}

impl Blockwise8State {
    /// One fast step of a one-state optimizer (Lion, SGD with momentum) with scalars `s`
    /// over the flat `params` and `grads` ([`Self::len`] elements; the caller checks).
    /// Only `state1`/`absmax1` are used (`state2`/`absmax2` stay zero).
    pub(crate) fn step_1state(
        &mut self,
        s: &OneStateScalars,
        params: &mut [f32],
        grads: &[f32],
        level: SimdLevel,
    ) {
        let q1 = Quantizer::signed();
        for (r, seg) in self.ranges.iter().zip(self.segments.iter_mut()) {
            let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
            match seg {
                SegmentState::Quantized {
                    state1, absmax1, ..
                } => {
                    // Tasks of BLOCKS_PER_TASK blocks, as the two-state step.
                    let task = BLOCK * BLOCKS_PER_TASK;
                    p.par_chunks_mut(task)
                        .zip(g.par_chunks(task))
                        .zip(state1.par_chunks_mut(task))
                        .zip(absmax1.par_chunks_mut(BLOCKS_PER_TASK))
                        .for_each(|(((p, g), c), a)| {
                            run_blocks_1state(s, q1, p, g, c, a, level);
                        });
                }
                SegmentState::Full { state1, .. } => {
                    p.par_chunks_mut(BLOCK * BLOCKS_PER_TASK)
                        .zip(g.par_chunks(BLOCK * BLOCKS_PER_TASK))
                        .zip(state1.par_chunks_mut(BLOCK * BLOCKS_PER_TASK))
                        .for_each(|((p, g), m)| {
                            for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                                *m = one_state_element(s, false, p, g, *m);
                            }
                        });
                }
            }
        }
    }
}
