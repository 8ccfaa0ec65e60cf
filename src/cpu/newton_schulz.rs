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

use super::bf16_gemm::Bf16Gemm;
pub(crate) use super::bf16_gemm::Threads;
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

/// bf16 of an f32 value, round to nearest even (torch's rounding).
#[inline(always)]
fn to_bf16(v: f32) -> bf16 {
    bf16::from_f32(v)
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
            self.orthogonalize_bf16(u, rows, cols, out, &mut ws.bf16, threads);
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
    fn orthogonalize_bf16(
        &self,
        u: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
        ws: &mut Bf16Workspace,
        threads: Threads,
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
            for i in 0..rows {
                for j in 0..cols {
                    x[j * rows + i] = to_bf16(u[i * cols + j]);
                }
            }
        } else {
            for (x, &u) in x.iter_mut().zip(u) {
                *x = to_bf16(u);
            }
        }
        // X = bf16(X / max(bf16(||X||), bf16(eps))) (the quotient of two bf16 values, rounded
        // once: in f64, where it is exact enough not to round twice).
        let norm = x
            .iter()
            .map(|v| v.to_f64() * v.to_f64())
            .sum::<f64>()
            .sqrt();
        let norm = bf16::from_f64(norm)
            .to_f64()
            .max(bf16::from_f64(self.eps).to_f64());
        for v in x.iter_mut() {
            *v = bf16::from_f64(v.to_f64() / norm);
        }
        // torch's addmm: bf16(beta * C + alpha * (A B)) with f32 alpha, beta.
        let (ca, cb, cc) = self.coefficients;
        let (ca, cb, cc) = (ca as f32, cb as f32, cc as f32);
        for _ in 0..self.steps {
            // A = bf16(X Xᵀ)
            gemm.product(r, c, r, x, x, true, &mut s[..r * r], threads);
            for (a, &p) in a.iter_mut().zip(&s[..r * r]) {
                *a = to_bf16(p);
            }
            // B = bf16(b A + c (A A))
            gemm.product(r, r, r, a, a, false, &mut s[..r * r], threads);
            for ((b, &a), &p) in b.iter_mut().zip(a.iter()).zip(&s[..r * r]) {
                *b = to_bf16(cb * a.to_f32() + cc * p);
            }
            // X = bf16(a X + B X)
            gemm.product(r, r, c, b, x, false, s, threads);
            for (x, &p) in x.iter_mut().zip(s.iter()) {
                *x = to_bf16(ca * x.to_f32() + p);
            }
        }
        // O = X (widened exactly), or Xᵀ.
        if transposed {
            for i in 0..rows {
                for j in 0..cols {
                    out[i * cols + j] = x[j * rows + i].to_f32();
                }
            }
        } else {
            for (o, x) in out.iter_mut().zip(x.iter()) {
                *o = x.to_f32();
            }
        }
    }
}
