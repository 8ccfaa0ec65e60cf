//! Newton–Schulz orthogonalisation of a matrix, Muon's inner step (Jordan et al. 2024;
//! `torch.optim.Muon`'s `_zeropower_via_newtonschulz`), in f32 on the CPU with a GEMM crate
//! (`matrixmultiply`'s `sgemm`, blocked and vectorised).
//!
//! For a rows x cols matrix U (row-major):
//! ```text
//! X = U, or Uᵀ if rows > cols              (so X is r x c with r <= c)
//! X = X / max(||X||_F, eps)
//! repeat steps times:
//!     A = X Xᵀ                              (r x r)
//!     B = b A + c A A
//!     X = a X + B X
//! O = X, or Xᵀ if U was transposed
//! ```
//! with the quintic coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) and 5 steps by
//! default. The iteration pushes every singular value of X towards ~1 (into about
//! [0.7, 1.2]: the coefficients trade exactness for speed), keeping the singular vectors:
//! O ≈ U V ᵀ of U's SVD.
//!
//! torch runs the iteration in bfloat16 on the CPU (its float32 and float64 runs alike);
//! the f32 version ([`NsArithmetic::F32`], the default) differs from torch's result by a few
//! percent of max|O| (the golden README measured 3.8% for an f32 NS;
//! `tools/tests/golden_muon_ns.rs` checks the bound). [`NsArithmetic::Bf16`] runs torch's
//! arithmetic: bf16 values, products summed in f32 (`vdpbf16ps` where the CPU has it, see
//! `bf16_gemm`), each torch operation rounded once to bf16 with f32 coefficients.
//! The f64 oracle, with an option that emulates torch's bf16 roundings, is
//! [`crate::cpu::reference::newton_schulz`].

use half::bf16;

pub(crate) use super::bf16_gemm::Threads;
use super::bf16_gemm::{Bf16Gemm, Operand};
use crate::error::{Error, Result};

pub use crate::optim::{NewtonSchulz, NsArithmetic};

/// Scratch matrices of [`NewtonSchulz::orthogonalize`], grown to the largest matrix seen
/// and then reused: no allocation per call once warm.
#[derive(Clone, Debug, Default)]
pub struct NsWorkspace {
    x: Vec<f32>,
    y: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    bf16: Bf16Workspace,
}

/// The bf16 iteration's matrices (X, A, B in bf16, the f32 products) and GEMM scratch.
#[derive(Clone, Debug, Default)]
struct Bf16Workspace {
    x: Vec<bf16>,
    a: Vec<bf16>,
    b: Vec<bf16>,
    product: Vec<f32>,
    gemm: Bf16Gemm,
}

impl Bf16Workspace {
    fn fit(&mut self, r: usize, c: usize) {
        for (v, len) in [
            (&mut self.x, r * c),
            (&mut self.a, r * r),
            (&mut self.b, r * r),
        ] {
            if v.len() < len {
                v.resize(len, bf16::ZERO);
            }
        }
        if self.product.len() < r * c {
            self.product.resize(r * c, 0.0);
        }
    }
}

/// bf16 of an f32 value, round to nearest even (torch's rounding), NaN kept quiet: the
/// bits of `half::bf16::from_f32` without its branches, so the loops over matrices vectorise.
#[inline(always)]
fn to_bf16(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    bf16::from_bits(if v.is_nan() { quiet_nan } else { rounded } as u16)
}

/// bf16 of an f64 value rounded once, to nearest even, with the common case (f32's normal
/// range) as integer arithmetic on the bits so the loop vectorises (bf16 keeps 7 of f64's 52
/// fraction bits there; a carry into the exponent is the correct rounding up). Elsewhere
/// `half::bf16::from_f64`, which drops the low 32 bits before it rounds: it differs from
/// the exact rounding only within 2^-20 (relative) of a midpoint, where a quotient of two
/// bf16 values (what this rounds) never lies: its distance from one is at least ~2^-17.
#[inline(always)]
fn f64_to_bf16(v: f64) -> bf16 {
    let magnitude = v.abs();
    if (f64::from(f32::MIN_POSITIVE)..f64::from(f32::MAX)).contains(&magnitude) {
        let bits = v.to_bits();
        let half_ulp = (1u64 << 44) - 1 + ((bits >> 45) & 1);
        let rounded = (bits + half_ulp) & !((1u64 << 45) - 1);
        // Exact: `rounded` has 8 significant bits and an exponent in f32's range.
        let wide = f64::from_bits(rounded) as f32;
        bf16::from_bits((wide.to_bits() >> 16) as u16)
    } else {
        bf16::from_f64(v)
    }
}

/// Matrices with at least this many rows (after the transpose to r <= c) have their
/// symmetric products X Xᵀ and A A computed by block rows, on and below the diagonal only.
/// Below it, the whole product: gemmkit's rate falls with the block rows' height (measured
/// on the 2-core EPYC, one X Xᵀ of 1024²: 128-row blocks 1.10x the whole product's time,
/// 256-row 0.88x, 512-row 0.77-0.84x; at 512², no block height gained more than 3%).
const SYMMETRIC_MIN: usize = 1024;

/// Rows of a block row of the symmetric products.
const SYMMETRIC_BLOCK: usize = 512;

/// The block rows `(first row, end row)` of an r x r symmetric product.
fn block_rows(r: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..r)
        .step_by(SYMMETRIC_BLOCK)
        .map(move |i0| (i0, (i0 + SYMMETRIC_BLOCK).min(r)))
}

/// `f(row index, rows)` over runs of whole rows (`len` elements each) of `m`, about 2^14
/// elements a run: on rayon's pool for `Threads::All` and matrices of at least 2^16
/// elements (each element's value does not depend on the split, so the result is the same
/// either way), else on the calling thread.
fn for_rows<T: Send>(
    m: &mut [T],
    len: usize,
    threads: Threads,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    use rayon::prelude::*;
    let run = (1 << 14) / len.max(1) + 1;
    if threads == Threads::All && m.len() >= 1 << 16 {
        m.par_chunks_mut(len * run)
            .enumerate()
            .for_each(|(i, rows)| f(i * run, rows));
    } else {
        m.chunks_mut(len * run)
            .enumerate()
            .for_each(|(i, rows)| f(i * run, rows));
    }
}

/// Completes the symmetric r x r matrix `dst` whose block rows (`block_rows`) hold their
/// entries up to the end of their diagonal block: `dst[i][j] = dst[j][i]` for the entries
/// right of it, in 32 x 32 tiles (a tile's source rows stay in cache), the tile rows on
/// rayon's pool for `Threads::All`.
fn mirror_upper_blocks(dst: &mut [bf16], r: usize, threads: Threads) {
    use rayon::prelude::*;
    const TILE: usize = 32;
    const _: () = assert!(SYMMETRIC_BLOCK.is_multiple_of(TILE));
    assert!(dst.len() >= r * r);
    /// The matrix's address, shared by the tile rows (see the SAFETY note below).
    #[derive(Clone, Copy)]
    struct Shared(*mut bf16);
    // SAFETY: `Shared` is only dereferenced as described below.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    impl Shared {
        /// The address of element `at` (a method, so closures capture the whole `Shared`).
        fn at(self, at: usize) -> *mut bf16 {
            self.0.wrapping_add(at)
        }
    }
    let base = Shared(dst.as_mut_ptr());
    let tile_row = |i0: usize| {
        // A tile row never straddles a block row (the block is a multiple of the tile).
        let end = ((i0 / SYMMETRIC_BLOCK + 1) * SYMMETRIC_BLOCK).min(r);
        for j0 in (end..r).step_by(TILE) {
            for i in i0..(i0 + TILE).min(end) {
                for j in j0..(j0 + TILE).min(r) {
                    // SAFETY: i, j < r and `dst` holds r * r elements (asserted). Tile row
                    // i0 writes only its own rows' entries right of their diagonal block
                    // (j >= end > i) and reads entries (j, i) whose column i lies left of row
                    // j's diagonal block (i < end <= j's block start): entries no tile row
                    // writes. So the writes are disjoint and no read races a write.
                    unsafe {
                        *base.at(i * r + j) = *base.at(j * r + i);
                    }
                }
            }
        }
    };
    if threads == Threads::All && r * r >= 1 << 16 {
        (0..r).into_par_iter().step_by(TILE).for_each(tile_row);
    } else {
        (0..r).step_by(TILE).for_each(tile_row);
    }
}

impl NsWorkspace {
    fn fit(&mut self, r: usize, c: usize) {
        for (v, len) in [
            (&mut self.x, r * c),
            (&mut self.y, r * c),
            (&mut self.a, r * r),
            (&mut self.b, r * r),
        ] {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        }
    }
}

/// Checks `len == rows * cols` and both non-zero; returns (r, c, transposed).
pub(crate) fn ns_shape(len: usize, rows: usize, cols: usize) -> Result<(usize, usize, bool)> {
    if rows == 0 || cols == 0 {
        return Err(Error::Empty {
            what: "Newton-Schulz matrix",
        });
    }
    let want = rows.checked_mul(cols).ok_or(Error::LengthMismatch {
        what: "Newton-Schulz matrix (rows x cols overflows)",
        expected: usize::MAX,
        got: len,
    })?;
    if want != len {
        return Err(Error::LengthMismatch {
            what: "Newton-Schulz matrix (rows x cols)",
            expected: want,
            got: len,
        });
    }
    Ok(if rows > cols {
        (cols, rows, true)
    } else {
        (rows, cols, false)
    })
}

/// `C = alpha A B + beta C` for row-major A (m x k), B (k x n), C (m x n); `bt`: B is given
/// as its transpose (n x k, row-major).
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    bt: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let (rsb, csb) = if bt { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the slices hold the m x k, k x n and m x n matrices the strides describe
    // (checked above); C does not alias A or B (distinct borrows).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

impl NewtonSchulz {
    /// Orthogonalise the row-major `rows` x `cols` matrix `u` into `out` (same shape).
    /// Errors: [`Error::Empty`] for a zero dimension, [`Error::LengthMismatch`] when `u` or
    /// `out` does not hold rows x cols values; `out` is untouched then.
    pub fn orthogonalize(
        &self,
        u: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
        ws: &mut NsWorkspace,
    ) -> Result<()> {
        self.orthogonalize_on(u, rows, cols, out, ws, Threads::All)
    }

    /// [`Self::orthogonalize`]; `threads` says whether the bf16 products may use rayon's
    /// pool (`Threads::One` when the caller is parallel over matrices already).
    pub(crate) fn orthogonalize_on(
        &self,
        u: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
        ws: &mut NsWorkspace,
        threads: Threads,
    ) -> Result<()> {
        let (r, c, transposed) = ns_shape(u.len(), rows, cols)?;
        if out.len() != u.len() {
            return Err(Error::LengthMismatch {
                what: "Newton-Schulz output",
                expected: u.len(),
                got: out.len(),
            });
        }
        if self.arithmetic == NsArithmetic::Bf16 {
            self.orthogonalize_bf16(u, rows, cols, out, &mut ws.bf16, threads, SYMMETRIC_MIN);
            return Ok(());
        }
        ws.fit(r, c);
        let NsWorkspace { x, y, a, b, .. } = ws;
        let (x, y, a, b) = (
            &mut x[..r * c],
            &mut y[..r * c],
            &mut a[..r * r],
            &mut b[..r * r],
        );
        if transposed {
            for i in 0..rows {
                for j in 0..cols {
                    x[j * rows + i] = u[i * cols + j];
                }
            }
        } else {
            x.copy_from_slice(u);
        }
        let norm = x
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        let inv = (1.0 / norm.max(self.eps)) as f32;
        x.iter_mut().for_each(|v| *v *= inv);
        let (ca, cb, cc) = self.coefficients;
        let (ca, cb, cc) = (ca as f32, cb as f32, cc as f32);
        let (mut x, mut y) = (x, y);
        for _ in 0..self.steps {
            // A = X Xᵀ
            gemm(r, c, r, 1.0, x, x, true, 0.0, a);
            // B = b A + c A A
            b.copy_from_slice(a);
            gemm(r, r, r, cc, a, a, false, cb, b);
            // X' = a X + B X
            y.copy_from_slice(x);
            gemm(r, r, c, 1.0, b, x, false, ca, y);
            std::mem::swap(&mut x, &mut y);
        }
        if transposed {
            for i in 0..rows {
                for j in 0..cols {
                    out[i * cols + j] = x[j * rows + i];
                }
            }
        } else {
            out.copy_from_slice(x);
        }
        Ok(())
    }

    /// [`NsArithmetic::Bf16`]: torch 2.15's `_zeropower_via_newtonschulz` on the CPU, one
    /// bf16 rounding per torch operation (shape already checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn orthogonalize_bf16(
        &self,
        u: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
        ws: &mut Bf16Workspace,
        threads: Threads,
        symmetric_min: usize,
    ) {
        let (r, c, transposed) = if rows > cols {
            (cols, rows, true)
        } else {
            (rows, cols, false)
        };
        ws.fit(r, c);
        let Bf16Workspace {
            x,
            a,
            b,
            product,
            gemm,
        } = ws;
        let (x, a, b, s) = (
            &mut x[..r * c],
            &mut a[..r * r],
            &mut b[..r * r],
            &mut product[..r * c],
        );
        // X = bf16(U), or bf16(Uᵀ).
        if transposed {
            for_rows(x, c, threads, |j0, block| {
                for (j, row) in (j0..).zip(block.chunks_mut(c)) {
                    for (i, x) in row.iter_mut().enumerate() {
                        *x = to_bf16(u[i * cols + j]);
                    }
                }
            });
        } else {
            for_rows(x, c, threads, |i, block| {
                for (x, &u) in block.iter_mut().zip(&u[i * c..]) {
                    *x = to_bf16(u);
                }
            });
        }
        // X = bf16(X / max(bf16(||X||), bf16(eps))) (the quotient of two bf16 values, rounded
        // once: in f64, where it is exact enough not to round twice). The squares of bf16
        // values are exact in f64 and so, short of a 2^37 spread of magnitudes, are their
        // sums: 8 fixed lanes on the calling thread, the same value for every thread count.
        let mut lanes = [0.0f64; 8];
        let whole = x.len() / 8 * 8;
        for block in x[..whole].chunks_exact(8) {
            for (lane, v) in lanes.iter_mut().zip(block) {
                *lane += v.to_f64() * v.to_f64();
            }
        }
        let tail: f64 = x[whole..].iter().map(|v| v.to_f64() * v.to_f64()).sum();
        let norm = (lanes.iter().sum::<f64>() + tail).sqrt();
        let norm = bf16::from_f64(norm)
            .to_f64()
            .max(bf16::from_f64(self.eps).to_f64());
        for_rows(x, c, threads, |_, block| {
            for v in block {
                *v = f64_to_bf16(v.to_f64() / norm);
            }
        });
        // torch's addmm: bf16(beta * C + alpha * (A B)) with f32 alpha, beta.
        let (ca, cb, cc) = self.coefficients;
        let (ca, cb, cc) = (ca as f32, cb as f32, cc as f32);
        // X Xᵀ and A A are symmetric: from `SYMMETRIC_MIN` rows on, only the block rows'
        // parts up to their diagonal block are multiplied (3/4 of the flops of each at 1024
        // rows, 5/8 at 2048) and the rest is read mirrored.
        let symmetric = r >= symmetric_min;
        for _ in 0..self.steps {
            // A = bf16(X Xᵀ)
            if symmetric {
                for (i0, i1) in block_rows(r) {
                    let top = Operand::rows(&x[i0 * c..], c);
                    let xt = Operand::transposed(x, c);
                    gemm.product(i1 - i0, c, i1, top, xt, &mut s[i0 * r..], r, threads);
                }
            } else {
                let (xr, xt) = (Operand::rows(x, c), Operand::transposed(x, c));
                gemm.product(r, c, r, xr, xt, s, r, threads);
            }
            // (Whole rows: right of the diagonal blocks the sums are stale, and the mirror
            // overwrites them.)
            let sums = &*s;
            for_rows(a, r, threads, |i, block| {
                for (a, &p) in block.iter_mut().zip(&sums[i * r..]) {
                    *a = to_bf16(p);
                }
            });
            if symmetric {
                mirror_upper_blocks(a, r, threads);
            }
            // B = bf16(b A + c (A A))
            if symmetric {
                for (i0, i1) in block_rows(r) {
                    let top = Operand::rows(&a[i0 * r..], r);
                    let whole = Operand::rows(a, r);
                    gemm.product(i1 - i0, r, i1, top, whole, &mut s[i0 * r..], r, threads);
                }
            } else {
                let whole = Operand::rows(a, r);
                gemm.product(r, r, r, whole, whole, s, r, threads);
            }
            let (sums, a) = (&*s, &*a);
            for_rows(b, r, threads, |i, block| {
                for ((b, a), &p) in block.iter_mut().zip(&a[i * r..]).zip(&sums[i * r..]) {
                    *b = to_bf16(cb * a.to_f32() + cc * p);
                }
            });
            if symmetric {
                mirror_upper_blocks(b, r, threads);
            }
            // X = bf16(a X + B X)
            gemm.product(
                r,
                r,
                c,
                Operand::rows(b, r),
                Operand::rows(x, c),
                s,
                c,
                threads,
            );
            let sums = &*s;
            for_rows(x, c, threads, |i, block| {
                for (x, &p) in block.iter_mut().zip(&sums[i * c..]) {
                    *x = to_bf16(ca * x.to_f32() + p);
                }
            });
        }
        // O = X (widened exactly), or Xᵀ.
        let x = &*x;
        if transposed {
            for_rows(&mut out[..rows * cols], cols, threads, |i0, block| {
                for (i, row) in (i0..).zip(block.chunks_mut(cols)) {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = x[j * rows + i].to_f32();
                    }
                }
            });
        } else {
            for_rows(&mut out[..rows * cols], cols, threads, |i, block| {
                for (o, x) in block.iter_mut().zip(&x[i * c..]) {
                    *o = x.to_f32();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-row symmetric products (and the tiled mirror of the blocks right of the diagonal) against the whole
    /// products on the same matrices, both orientations, a last block row of 7 rows and a
    /// size that is not a multiple of the fill's 32 x 32 tiles. The two sum each entry in
    /// the GEMM's own order, which may depend on the call's shape, so they could differ by
    /// f32 rounding (then propagated by the iteration). Measured (2-core EPYC): every entry
    /// identical on both kernels (the sums' order follows k only). Bounds: >= 90% of the
    /// entries identical and 2e-2 of max|O| (a block or mirror error is O(1)).
    /// The two bf16 roundings against `half`'s: f32 and f64 values spread over every
    /// exponent, subnormals, infinities and NaN (f64 values with their low 32 bits cleared,
    /// which `half`'s f64 rounding drops; f32 values against its f32 rounding), and the midpoints between bf16 values (ties to
    /// even) and their f64 neighbours (rounded away from the midpoint, exactly).
    #[test]
    fn bf16_roundings_match_half() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let same = |a: bf16, b: bf16| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for _ in 0..1 << 20 {
            let bits = next();
            let f = f32::from_bits(bits as u32);
            assert!(
                same(to_bf16(f), bf16::from_f32(f)),
                "{f:e} ({:#x})",
                bits as u32
            );
            let d = f64::from_bits(bits & !0xffff_ffff);
            assert!(same(f64_to_bf16(d), bf16::from_f64(d)), "{d:e}");
            // f32 values (their f64 form has 3 of its 23 fraction bits in the low 32):
            // against half's f32 rounding.
            let d = f64::from(f);
            assert!(same(f64_to_bf16(d), bf16::from_f32(f)), "{d:e}");
            // A positive finite bf16 below the largest, the next one up, their midpoint.
            let low = bf16::from_bits(((bits >> 48) as u16 & 0x7fff).min(0x7f7e));
            let high = bf16::from_bits(low.to_bits() + 1);
            let mid = (low.to_f64() + high.to_f64()) / 2.0;
            let even = if low.to_bits().is_multiple_of(2) {
                low
            } else {
                high
            };
            for (w, want) in [
                (mid, even),
                (f64::from_bits(mid.to_bits() + 1), high),
                (f64::from_bits(mid.to_bits() - 1), low),
            ] {
                if w >= f64::from(f32::MIN_POSITIVE) {
                    assert!(same(f64_to_bf16(w), want), "{w:e}");
                }
                let f = w as f32;
                assert!(same(to_bf16(f), bf16::from_f32(f)), "{f:e}");
            }
        }
        for v in [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e-40,
            3.4e38,
            3.5e38,
        ] {
            assert!(same(f64_to_bf16(v), bf16::from_f64(v)), "{v:e}");
            let f = v as f32;
            assert!(same(to_bf16(f), bf16::from_f32(f)), "{f:e}");
        }
    }

    #[test]
    fn symmetric_products_match_whole_products() {
        let ns = NewtonSchulz {
            arithmetic: NsArithmetic::Bf16,
            ..NewtonSchulz::default()
        };
        let before = crate::simd::simd_level();
        for (level, (rows, cols)) in [
            (crate::simd::SimdLevel::Avx512, (1031, 1100)),
            (crate::simd::SimdLevel::Avx512, (1100, 1031)),
            (crate::simd::SimdLevel::Avx2, (1031, 1100)),
        ] {
            let level = crate::simd::set_simd_level(level);
            let u: Vec<f32> = (0..rows * cols)
                .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * (1.0 + (i % 7) as f32))
                .collect();
            let mut ws = Bf16Workspace::default();
            let (mut whole, mut blocks) = (vec![f32::NAN; u.len()], vec![f32::NAN; u.len()]);
            ns.orthogonalize_bf16(
                &u,
                rows,
                cols,
                &mut whole,
                &mut ws,
                Threads::All,
                usize::MAX,
            );
            ns.orthogonalize_bf16(&u, rows, cols, &mut blocks, &mut ws, Threads::All, 1024);
            let scale = whole.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let worst = whole
                .iter()
                .zip(&blocks)
                .map(|(w, b)| (w - b).abs())
                .fold(0.0f32, f32::max);
            let same = whole.iter().zip(&blocks).filter(|(w, b)| w == b).count();
            eprintln!(
                "{level:?} {rows}x{cols}: {same} of {} entries identical, max |d| {worst:.2e} \
                 of {scale:.3}",
                u.len()
            );
            assert!(scale > 0.1 && worst.is_finite() && worst <= 2e-2 * scale);
            assert!(same * 10 >= u.len() * 9, "{same} of {}", u.len());
        }
        crate::simd::set_simd_level(before);
    }
}
