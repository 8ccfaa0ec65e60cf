//! Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear
//! Memory Cost"), as `torch.optim.Adafactor` (PyTorch 2.15) implements it: a per-tensor
//! algorithm (`ELEMENTWISE = false`) whose second moment of a tensor of rank >= 2 is
//! factored over its last two dimensions (state: rows + cols per matrix, not rows x cols;
//! `STATE_PER_ELEMENT = false`). Mirror of `shaders/adafactor_segmented.wgsl` (the GPU's
//! five passes, `src/gpu/factored.rs`) and `shaders/adafactor.wgsl` (the unfactored update);
//! reference `src/cpu/reference/adafactor.rs`.
//!
//! The fast CPU step of one tensor (`cpu_segment_step`) takes three passes: (A) over tiles of
//! [`TILE_ROWS`] x [`TILE_COLS`] elements in parallel, `sum p^2` and the partial row and
//! column sums of `g^2`, each tile into its own slots; then the factors are updated from the
//! slots summed in tile order (deterministic, whatever the thread count); (B) `sum U^2` over
//! the same tiles; (C) the update, in parallel over row bands. A 1-D tensor takes two passes
//! over fixed chunks (its variance and both sums in the first).

use rayon::prelude::*;

use crate::simd::at_simd_level;

use super::algorithm::{
    Algorithm, HostState, HparamReader, KernelSource, LaneOptions, SegmentScratch,
};
use super::muon::lerp;
use super::validate::non_negative;
use super::WordClass;
use crate::error::{Error, Result};
use crate::segments::SegmentShape;

/// Adafactor (`torch.optim.Adafactor`): factored second moments, relative step size and
/// update clipping, no first moment.
///
/// Per step (t from 1, lr of the step), per tensor of n elements:
/// ```text
/// g = -g                                        if maximize
/// w = t^beta2_decay;  rho = min(lr, 1 / sqrt(t))
/// alpha = max(eps2, ||p|| / sqrt(n)) * rho      (p before the decay)
/// p = p * (1 - lr * wd)
/// rank >= 2, over the last two dims (r x c; leading dims are a batch):
///   R = lerp(R, mean_cols(g^2), w);  C = lerp(C, mean_rows(g^2), w)
///   V = R C^T / max(mean(R), eps1)
/// rank <= 1:
///   V = variance = lerp(variance, g^2, w)
/// U = g / sqrt(max(V, eps1^2))
/// p = p - alpha / max(1, ||U|| / (sqrt(n) * d)) * U
/// ```
/// State: `row_var` (batch x rows per factored tensor), `col_var` (batch x cols),
/// `variance` (n per tensor of rank <= 1), all starting at 0; each state tensor holds its
/// tensors' parts back to back. `eps1 = None` is torch's `finfo(dtype).eps`: f32's on the
/// f32 paths, f64's in the f64 reference (as torch's float64 run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdafactorConfig {
    /// Learning rate: the cap of the relative step size and the decay's rate (default 1e-2).
    pub lr: f64,
    /// The exponent of the second moment's weight `t^beta2_decay` (default -0.8, <= 0).
    pub beta2_decay: f64,
    /// The clamp of V (squared) and of the row mean; `None` (default) is the dtype's epsilon.
    pub eps1: Option<f64>,
    /// The floor of RMS(p) in the step size (default 1e-3).
    pub eps2: f64,
    /// The update-clipping threshold on RMS(U) (default 1, >= 1).
    pub d: f64,
    /// Decoupled weight decay `p * (1 - lr * wd)` (default 0).
    pub weight_decay: f64,
    /// Maximize instead of minimize (default false).
    pub maximize: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            beta2_decay: -0.8,
            eps1: None,
            eps2: 1e-3,
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdafactorConfig {
    const NAME: &'static str = "Adafactor";

    /// eps1 of an f32 run: the configured value, or f32's machine epsilon.
    pub fn eps1_f32(&self) -> f64 {
        self.eps1.unwrap_or(f64::from(f32::EPSILON))
    }
}

/// Per-step uniform of `shaders/adafactor.wgsl` (`struct StepUniform`); `coef` is the
/// segment's `alpha / denom`, set between the passes.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdafactorUniform {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// The decay factor 1 - lr * wd (computed in f64).
    pub decay: f32,
    /// The second moment's lerp weight t^beta2_decay (computed in f64).
    pub weight: f32,
    /// eps1 (f32's epsilon when unset).
    pub eps1: f32,
    /// eps1^2 (computed in f64), the clamp of V.
    pub eps1_sq: f32,
    /// The segment's step `alpha / denom` (second pass; 0 in the first; the GPU keeps it
    /// in its work buffer).
    pub coef: f32,
    /// The relative step size `min(lr, 1 / sqrt(t))` (computed in f64; the GPU's finish
    /// pass).
    pub rho: f32,
    /// eps2, the floor of RMS(p) (the GPU's finish pass).
    pub eps2: f32,
    /// d, the clipping threshold (the GPU's finish pass).
    pub d: f32,
    /// Padding to 16 bytes.
    pub _pad0: f32,
    /// Padding to 16 bytes.
    pub _pad1: f32,
    /// Padding to 16 bytes.
    pub _pad2: f32,
}

/// Rows of a factored tensor's tile (fixed, so that the partial sums do not depend on the
/// thread count).
pub const TILE_ROWS: usize = 64;
/// Columns of a tile.
pub const TILE_COLS: usize = 256;
/// Elements of a 1-D tensor's chunk.
const CHUNK: usize = 1 << 15;
/// Per tile of a factored tensor: its rows' partial sums of g^2, its columns' partial sums
/// of g^2, and sum p^2.
const TILE_WORDS: usize = TILE_ROWS + TILE_COLS + 1;

impl Algorithm for AdafactorConfig {
    type Uniform = AdafactorUniform;
    const ID: &'static str = "adafactor";
    const ELEMENTWISE: bool = false;
    const STATE_PER_ELEMENT: bool = false;
    const KERNEL: KernelSource = KernelSource {
        file: "adafactor.wgsl",
        source: include_str!("../../shaders/adafactor.wgsl"),
        slots: &["row_var", "col_var", "variance"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Adafactor"];
    // The step depends on per-tensor reductions: no device step counter.
    const WORD_CLASSES: Option<&'static [WordClass]> = None;
    const SEGMENTED_KERNEL: Option<KernelSource> = Some(KernelSource {
        file: "adafactor_segmented.wgsl",
        source: include_str!("../../shaders/adafactor_segmented.wgsl"),
        slots: &["row_var", "col_var", "variance"],
    });
    const SEGMENT_SCALARS: &'static [&'static str] = &["alpha", "denom"];

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        // Measured against its three-pass roof by `examples/structured.rs`.
        vec![]
    }

    fn class_name(&self) -> &'static str {
        Self::NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn with_lr(self, lr: f64) -> Self {
        Self { lr, ..self }
    }

    fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        if !(self.beta2_decay.is_finite() && self.beta2_decay <= 0.0) {
            return Err(Error::InvalidHyperParameter {
                optimizer: Self::NAME,
                name: "beta2_decay",
                value: self.beta2_decay,
                requirement: "must be finite and <= 0",
            });
        }
        if let Some(eps1) = self.eps1 {
            non_negative(Self::NAME, "eps[0]", eps1)?;
        }
        non_negative(Self::NAME, "eps[1]", self.eps2)?;
        if !(self.d.is_finite() && self.d >= 1.0) {
            return Err(Error::InvalidHyperParameter {
                optimizer: Self::NAME,
                name: "d",
                value: self.d,
                requirement: "must be finite and >= 1",
            });
        }
        non_negative(Self::NAME, "weight_decay", self.weight_decay)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["row_var", "col_var", "variance"]
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    /// Factored (rank >= 2): `row_var` batch x rows, `col_var` batch x cols, no
    /// `variance`; else only `variance`, one per element.
    fn state_elements(&self, state: usize, segment: &SegmentShape) -> usize {
        let factored = segment.rank() >= 2;
        match (state, factored) {
            (0, true) => segment.batch() * segment.rows(),
            (1, true) => segment.batch() * segment.cols(),
            (2, false) => segment.len(),
            _ => 0,
        }
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, true)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> AdafactorUniform {
        let eps1 = self.eps1_f32();
        AdafactorUniform {
            grad_sign: super::algorithm::sign(self.maximize),
            decay: (1.0 - host.lr * self.weight_decay) as f32,
            weight: (host.step as f64).powf(self.beta2_decay) as f32,
            eps1: eps1 as f32,
            eps1_sq: (eps1 * eps1) as f32,
            coef: 0.0,
            rho: host.lr.min(1.0 / (host.step as f64).sqrt()) as f32,
            eps2: self.eps2 as f32,
            d: self.d as f32,
            _pad0: 0.0,
            _pad1: 0.0,
            _pad2: 0.0,
        }
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "beta2_decay": self.beta2_decay,
            "eps": [self.eps1, self.eps2], "d": self.d,
            "weight_decay": self.weight_decay, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        let (eps1, eps2) = h.optional_first_pair("eps", (d.eps1, d.eps2))?;
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            beta2_decay: h.num("beta2_decay", d.beta2_decay)?,
            eps1,
            eps2,
            d: h.num("d", d.d)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    /// The step of one tensor on the fast CPU path (see the module's documentation).
    fn cpu_segment_step(
        &self,
        host: &HostState,
        u: &AdafactorUniform,
        segment: &SegmentShape,
        p: &mut [f32],
        g: &[f32],
        states: &mut [&mut [f32]],
        scratch: &mut SegmentScratch,
        scalars: &mut [f64],
    ) -> bool {
        let [row_var, col_var, variance] = states else {
            unreachable!("Adafactor has three state tensors")
        };
        let t = host.step as f64;
        let rho = host.lr.min(1.0 / t.sqrt());
        let n = p.len() as f64;
        let factored = segment.rank() >= 2;
        let (sum_pp, sum_uu) = if factored {
            factored_step(u, segment, p, g, row_var, col_var, scratch)
        } else {
            vector_step(u, p, g, variance, &mut scratch.wide)
        };
        let alpha = self.eps2.max(sum_pp.sqrt() / n.sqrt()) * rho;
        let denom = (sum_uu.sqrt() / (n.sqrt() * self.d)).max(1.0);
        scalars[..2].copy_from_slice(&[alpha, denom]);
        let u2 = AdafactorUniform {
            coef: (alpha / denom) as f32,
            ..*u
        };
        if factored {
            factored_apply(&u2, segment, p, g, col_var, &scratch.narrow);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(variance.par_chunks(CHUNK))
                .for_each(|((p, g), v)| {
                    at_simd_level(
                        #[inline(always)]
                        || vector_apply(&u2, p, g, v),
                    )
                });
        }
        true
    }

    /// The unfactored update over one chunk: `p = p * decay - coef * g / sqrt(max(v,
    /// eps1^2))`, with the updated variance in `s[2]` (the kernel of `adafactor.wgsl`).
    #[inline(always)]
    fn cpu_chunk(&self, u: &AdafactorUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        let [_, _, v] = s else {
            unreachable!("Adafactor has three state tensors")
        };
        vector_apply(u, p, g, v);
    }
}

/// `U = g / sqrt(max(v, eps1^2))` for one element (torch: `clamp_(min).rsqrt_()` then
/// `mul_(grad)`).
#[inline(always)]
fn scaled(u: &AdafactorUniform, g: f32, v: f32) -> f32 {
    (1.0 / v.max(u.eps1_sq).sqrt()) * g
}

#[inline(always)]
fn vector_apply(u: &AdafactorUniform, p: &mut [f32], g: &[f32], v: &[f32]) {
    let n = p.len();
    let (g, v) = (&g[..n], &v[..n]);
    for i in 0..n {
        let x = scaled(u, g[i] * u.grad_sign, v[i]);
        p[i] = p[i] * u.decay - u.coef * x;
    }
}

/// Pass 1 of a tensor of rank <= 1 over one chunk: the variance, and (sum p^2, sum U^2) in
/// 16 f64 lanes each (added in lane order: deterministic).
#[inline(always)]
fn vector_reduce(u: &AdafactorUniform, p: &[f32], g: &[f32], v: &mut [f32]) -> (f64, f64) {
    const L: usize = 16;
    let n = p.len();
    let (g, v) = (&g[..n], &mut v[..n]);
    let (mut pp, mut uu) = ([0.0f64; L], [0.0f64; L]);
    for i in 0..n {
        let gi = g[i] * u.grad_sign;
        let vi = lerp(v[i], gi * gi, u.weight);
        v[i] = vi;
        let x = scaled(u, gi, vi);
        pp[i % L] += f64::from(p[i]) * f64::from(p[i]);
        uu[i % L] += f64::from(x) * f64::from(x);
    }
    (pp.iter().sum(), uu.iter().sum())
}

/// Both sums (p^2, U^2) of a tensor of rank <= 1, its variance updated.
fn vector_step(
    u: &AdafactorUniform,
    p: &[f32],
    g: &[f32],
    v: &mut [f32],
    scratch: &mut Vec<f64>,
) -> (f64, f64) {
    let chunks = p.len().div_ceil(CHUNK);
    scratch.clear();
    scratch.resize(2 * chunks, 0.0);
    scratch
        .par_chunks_mut(2)
        .zip(p.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((out, p), g), v)| {
            let (a, b) = at_simd_level(
                #[inline(always)]
                || vector_reduce(u, p, g, v),
            );
            out.copy_from_slice(&[a, b]);
        });
    scratch
        .chunks(2)
        .fold((0.0, 0.0), |(a, b), s| (a + s[0], b + s[1]))
}

/// A factored tensor's tiles: (batch index, first row, first column) of tile `k`, with
/// `bands` row bands and `blocks` column blocks per matrix.
#[derive(Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
    bands: usize,
    blocks: usize,
}

impl Tiles {
    fn of(segment: &SegmentShape) -> Self {
        let (rows, cols) = (segment.rows(), segment.cols());
        Self {
            rows,
            cols,
            bands: rows.div_ceil(TILE_ROWS),
            blocks: cols.div_ceil(TILE_COLS),
        }
    }

    fn per_matrix(&self) -> usize {
        self.bands * self.blocks
    }

    /// (batch, rows, columns) of tile `k`.
    fn tile(&self, k: usize) -> (usize, std::ops::Range<usize>, std::ops::Range<usize>) {
        let (b, rest) = (k / self.per_matrix(), k % self.per_matrix());
        let (band, block) = (rest / self.blocks, rest % self.blocks);
        let r0 = band * TILE_ROWS;
        let c0 = block * TILE_COLS;
        (
            b,
            r0..(r0 + TILE_ROWS).min(self.rows),
            c0..(c0 + TILE_COLS).min(self.cols),
        )
    }
}

/// Pass A over one tile: `out` = its rows' sums of g^2, its columns' sums of g^2, sum p^2
/// (g's sign does not matter here).
#[inline(always)]
fn tile_sums(
    p: &[f32],
    g: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    out: &mut [f64],
) {
    const L: usize = 16;
    let (row_out, rest) = out.split_at_mut(TILE_ROWS);
    let (col_out, rest) = rest.split_at_mut(TILE_COLS);
    let width = cs.len();
    let col_acc = &mut col_out[..width];
    col_acc.fill(0.0);
    let mut pp = [0.0f64; L];
    for (r, i) in rows.enumerate() {
        let at = i * cols + cs.start;
        let (pr, gr) = (&p[at..at + width], &g[at..at + width]);
        let mut acc = [0.0f64; L];
        let whole = width - width % L;
        // Fixed blocks of L over local copies (so that the loop vectorises); element j goes
        // to lane j % L, as in the remainder loop.
        let blocks = pr[..whole]
            .chunks_exact(L)
            .zip(gr[..whole].chunks_exact(L))
            .zip(col_acc[..whole].chunks_exact_mut(L));
        for ((p16, g16), c16) in blocks {
            let (p16, g16): (&[f32; L], &[f32; L]) =
                (p16.try_into().expect("L"), g16.try_into().expect("L"));
            let mut cv: [f64; L] = (&*c16).try_into().expect("L");
            for l in 0..L {
                let x = f64::from(g16[l]) * f64::from(g16[l]);
                cv[l] += x;
                acc[l] += x;
                pp[l] += f64::from(p16[l]) * f64::from(p16[l]);
            }
            c16.copy_from_slice(&cv);
        }
        for j in whole..width {
            let x = f64::from(gr[j]) * f64::from(gr[j]);
            col_acc[j] += x;
            acc[j % L] += x;
            pp[j % L] += f64::from(pr[j]) * f64::from(pr[j]);
        }
        row_out[r] = acc.iter().sum();
    }
    rest[0] = pp.iter().sum();
}

/// One matrix's update factors: `U_ij = g_ij * s_ij` with `s_ij = row_scale_i *
/// col_scale_j` where `V_ij = row_a_i * C_j >= eps1^2`, else `1 / eps1`; `row_a_i = R_i /
/// max(mean(R), eps1)`, `row_scale_i = 1 / sqrt(row_a_i)`, `col_scale_j = 1 / sqrt(C_j)`.
/// torch's `rsqrt(max(R_i C_j / mean, eps1^2))` up to rounding (the square root of a product
/// taken as the product of the roots): two multiplications per element instead of a
/// division and a square root.
#[derive(Clone, Copy)]
struct Factors<'a> {
    row_a: &'a [f32],
    row_scale: &'a [f32],
    col_var: &'a [f32],
    col_scale: &'a [f32],
}

/// `s_ij` of one element (see [`Factors`]).
#[inline(always)]
fn factor(u: &AdafactorUniform, a: f32, rs: f32, c: f32, cs: f32, clamped: f32) -> f32 {
    if a * c >= u.eps1_sq {
        rs * cs
    } else {
        clamped
    }
}

/// `1 / sqrt(eps1^2)`: the factor where the clamp binds.
#[inline(always)]
fn clamped_factor(u: &AdafactorUniform) -> f32 {
    1.0 / u.eps1_sq.sqrt()
}

/// Pass B over one tile: sum U^2 (16 f64 lanes, added in lane order).
#[inline(always)]
fn tile_update_sum(
    u: &AdafactorUniform,
    g: &[f32],
    cols: usize,
    rows: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    f: Factors<'_>,
) -> f64 {
    const L: usize = 16;
    let width = cs.len();
    let (cv, csc) = (&f.col_var[cs.clone()], &f.col_scale[cs.clone()]);
    let clamped = clamped_factor(u);
    let mut uu = [0.0f64; L];
    let whole = width - width % L;
    for i in rows {
        let at = i * cols + cs.start;
        let gr = &g[at..at + width];
        let (a, rs) = (f.row_a[i], f.row_scale[i]);
        let blocks = gr[..whole]
            .chunks_exact(L)
            .zip(cv[..whole].chunks_exact(L))
            .zip(csc[..whole].chunks_exact(L));
        for ((g16, c16), s16) in blocks {
            let (g16, c16, s16): (&[f32; L], &[f32; L], &[f32; L]) = (
                g16.try_into().expect("L"),
                c16.try_into().expect("L"),
                s16.try_into().expect("L"),
            );
            for l in 0..L {
                let x = g16[l] * u.grad_sign * factor(u, a, rs, c16[l], s16[l], clamped);
                uu[l] += f64::from(x) * f64::from(x);
            }
        }
        for j in whole..width {
            let x = gr[j] * u.grad_sign * factor(u, a, rs, cv[j], csc[j], clamped);
            uu[j % L] += f64::from(x) * f64::from(x);
        }
    }
    uu.iter().sum()
}

/// Pass A, the factor updates and pass B of a factored tensor: (sum p^2, sum U^2). Leaves
/// each matrix's [`Factors`] in `scratch.narrow` (row_a, row_scale, col_scale per matrix)
/// for the update.
fn factored_step(
    u: &AdafactorUniform,
    segment: &SegmentShape,
    p: &[f32],
    g: &[f32],
    row_var: &mut [f32],
    col_var: &mut [f32],
    scratch: &mut SegmentScratch,
) -> (f64, f64) {
    let tiles = Tiles::of(segment);
    let (rows, cols, batch) = (tiles.rows, tiles.cols, segment.batch());
    let count = tiles.per_matrix() * batch;
    let words = &mut scratch.wide;
    words.clear();
    words.resize(count * TILE_WORDS, 0.0);
    let m = rows * cols;
    words
        .par_chunks_mut(TILE_WORDS)
        .enumerate()
        .for_each(|(k, out)| {
            let (b, rs, cs) = tiles.tile(k);
            let (pm, gm) = (&p[b * m..(b + 1) * m], &g[b * m..(b + 1) * m]);
            at_simd_level(
                #[inline(always)]
                || tile_sums(pm, gm, cols, rs, cs, out),
            );
        });
    // The factors, from the tiles' partial sums in tile order.
    let per = 2 * rows + cols;
    let narrow = &mut scratch.narrow;
    narrow.clear();
    narrow.resize(batch * per, 0.0);
    let mut sum_pp = 0.0;
    for b in 0..batch {
        let tile_words = |band: usize, block: usize| {
            let k = b * tiles.per_matrix() + band * tiles.blocks + block;
            &words[k * TILE_WORDS..(k + 1) * TILE_WORDS]
        };
        let rv = &mut row_var[b * rows..(b + 1) * rows];
        for (i, r) in rv.iter_mut().enumerate() {
            let sum: f64 = (0..tiles.blocks)
                .map(|block| tile_words(i / TILE_ROWS, block)[i % TILE_ROWS])
                .sum();
            *r = lerp(*r, (sum / cols as f64) as f32, u.weight);
        }
        let cv = &mut col_var[b * cols..(b + 1) * cols];
        for (j, c) in cv.iter_mut().enumerate() {
            let sum: f64 = (0..tiles.bands)
                .map(|band| tile_words(band, j / TILE_COLS)[TILE_ROWS + j % TILE_COLS])
                .sum();
            *c = lerp(*c, (sum / rows as f64) as f32, u.weight);
        }
        for band in 0..tiles.bands {
            for block in 0..tiles.blocks {
                sum_pp += tile_words(band, block)[TILE_ROWS + TILE_COLS];
            }
        }
        let mean =
            ((rv.iter().map(|&x| f64::from(x)).sum::<f64>() / rows as f64) as f32).max(u.eps1);
        let f = &mut narrow[b * per..(b + 1) * per];
        let (row_a, rest) = f.split_at_mut(rows);
        let (row_scale, col_scale) = rest.split_at_mut(rows);
        for ((a, s), &r) in row_a.iter_mut().zip(row_scale.iter_mut()).zip(rv.iter()) {
            *a = r / mean;
            *s = 1.0 / a.sqrt();
        }
        for (s, &c) in col_scale.iter_mut().zip(cv.iter()) {
            *s = 1.0 / c.sqrt();
        }
    }
    let (col_var, narrow) = (&*col_var, &*narrow);
    let sums: Vec<f64> = (0..count)
        .into_par_iter()
        .map(|k| {
            let (b, rs, cs) = tiles.tile(k);
            let f = factors(narrow, col_var, rows, cols, b);
            at_simd_level(
                #[inline(always)]
                || tile_update_sum(u, &g[b * m..(b + 1) * m], cols, rs, cs, f),
            )
        })
        .collect();
    (sum_pp, sums.iter().sum())
}

/// Matrix `b`'s [`Factors`] from `scratch.narrow` and the column factors.
fn factors<'a>(
    narrow: &'a [f32],
    col_var: &'a [f32],
    rows: usize,
    cols: usize,
    b: usize,
) -> Factors<'a> {
    let per = 2 * rows + cols;
    let f = &narrow[b * per..(b + 1) * per];
    Factors {
        row_a: &f[..rows],
        row_scale: &f[rows..2 * rows],
        col_var: &col_var[b * cols..(b + 1) * cols],
        col_scale: &f[2 * rows..],
    }
}

/// Pass C of a factored tensor, in parallel over row bands of each matrix (none straddles
/// two): `p = p * decay - coef * U`, with the factors `factored_step` left in `narrow`.
fn factored_apply(
    u: &AdafactorUniform,
    segment: &SegmentShape,
    p: &mut [f32],
    g: &[f32],
    col_var: &[f32],
    narrow: &[f32],
) {
    let (rows, cols, batch) = (segment.rows(), segment.cols(), segment.batch());
    let m = rows * cols;
    for b in 0..batch {
        let (pm, gm) = (&mut p[b * m..(b + 1) * m], &g[b * m..(b + 1) * m]);
        let f = factors(narrow, col_var, rows, cols, b);
        pm.par_chunks_mut(TILE_ROWS * cols)
            .zip(gm.par_chunks(TILE_ROWS * cols))
            .enumerate()
            .for_each(|(band, (pb, gb))| {
                at_simd_level(
                    #[inline(always)]
                    || band_apply(u, pb, gb, cols, band * TILE_ROWS, f),
                )
            });
    }
}

/// The update of one row band, its first row `first`.
#[inline(always)]
fn band_apply(
    u: &AdafactorUniform,
    p: &mut [f32],
    g: &[f32],
    cols: usize,
    first: usize,
    f: Factors<'_>,
) {
    let (cv, csc) = (&f.col_var[..cols], &f.col_scale[..cols]);
    let clamped = clamped_factor(u);
    for (r, (pr, gr)) in p.chunks_mut(cols).zip(g.chunks(cols)).enumerate() {
        let (a, rs) = (f.row_a[first + r], f.row_scale[first + r]);
        for (((p, &g), &c), &cs) in pr.iter_mut().zip(gr).zip(cv).zip(csc) {
            let x = g * u.grad_sign * factor(u, a, rs, c, cs, clamped);
            *p = *p * u.decay - u.coef * x;
        }
    }
}
