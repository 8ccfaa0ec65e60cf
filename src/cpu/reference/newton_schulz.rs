//! The oracle of Newton–Schulz orthogonalisation (Muon's inner step): plain triple loops in
//! f64, sharing no code with [`crate::cpu::newton_schulz`], in two precisions:
//!
//! - [`NsPrecision::F64`]: every value f64 — the iteration as written.
//! - [`NsPrecision::Bf16`]: torch 2.15's CPU computation (`_zeropower_via_newtonschulz` runs
//!   in bfloat16 in every run dtype), emulated by computing each torch operation exactly
//!   (f64 sums of products of bf16 values are exact for these sizes up to the last bits)
//!   and rounding its result once to bf16 (nearest even): `X = bf16(U)`; the norm
//!   `bf16(||X||_F)`, floored at `bf16(eps)`; `X = bf16(X / norm)`; then per step
//!   `A = bf16(X Xᵀ)`, `B = bf16(b A + c A A)` (one `addmm`), `X = bf16(a X + B X)` (one
//!   `addmm`). The golden README measured this emulation identical to torch's `ns_step1`
//!   outputs on its small matrices.

use half::bf16;

use crate::cpu::newton_schulz::{ns_shape, NewtonSchulz};
use crate::error::{Error, Result};

/// The arithmetic of [`newton_schulz_reference`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsPrecision {
    /// f64 throughout.
    F64,
    /// torch's bfloat16 CPU computation, one rounding per torch operation.
    Bf16,
}

fn round(x: f64, p: NsPrecision) -> f64 {
    match p {
        NsPrecision::F64 => x,
        NsPrecision::Bf16 => bf16_nearest(x).to_f64(),
    }
}

/// The bf16 value nearest to `x`, ties to even. (`half::bf16::from_f64` drops `x`'s low 32
/// bits before it rounds, so it can round the wrong way just off a midpoint.) Through the
/// nearest f32, which is exact unless rounding to f32 moved `x` onto a bf16 midpoint (its
/// low 16 bits 0x8000); there `x`'s side of the midpoint decides.
fn bf16_nearest(x: f64) -> bf16 {
    let f = x as f32;
    let on_midpoint = f.to_bits() & 0xffff == 0x8000 && f64::from(f) != x;
    if !on_midpoint || !f.is_finite() {
        return bf16::from_f32(f);
    }
    let toward_zero = bf16::from_bits((f.to_bits() >> 16) as u16);
    let away = bf16::from_bits(toward_zero.to_bits() + 1);
    if x.abs() > f64::from(f).abs() {
        away
    } else {
        toward_zero
    }
}

/// `m[i][j]` of a row-major matrix with `cols` columns.
fn at(m: &[f64], cols: usize, i: usize, j: usize) -> f64 {
    m[i * cols + j]
}

/// Newton–Schulz of the row-major `rows` x `cols` matrix `u` with `ns`'s steps,
/// coefficients and eps, in precision `p`; returns the rows x cols result.
pub fn newton_schulz_reference(
    ns: &NewtonSchulz,
    u: &[f64],
    rows: usize,
    cols: usize,
    p: NsPrecision,
) -> Result<Vec<f64>> {
    let (r, c, transposed) = ns_shape(u.len(), rows, cols)?;
    if ns.eps.is_nan() || ns.eps < 0.0 {
        return Err(Error::InvalidHyperParameter {
            optimizer: "Muon",
            name: "eps",
            value: ns.eps,
            requirement: "eps >= 0",
        });
    }
    // X: r x c.
    let mut x = vec![0.0f64; r * c];
    for i in 0..r {
        for j in 0..c {
            let v = if transposed {
                at(u, cols, j, i)
            } else {
                at(u, cols, i, j)
            };
            x[i * c + j] = round(v, p);
        }
    }
    let norm = round(x.iter().map(|v| v * v).sum::<f64>().sqrt(), p);
    let norm = norm.max(round(ns.eps, p));
    for v in x.iter_mut() {
        *v = round(*v / norm, p);
    }
    let (ca, cb, cc) = ns.coefficients;
    for _ in 0..ns.steps {
        // A = X Xᵀ (r x r)
        let mut a = vec![0.0f64; r * r];
        for i in 0..r {
            for j in 0..r {
                let s: f64 = (0..c).map(|k| at(&x, c, i, k) * at(&x, c, j, k)).sum();
                a[i * r + j] = round(s, p);
            }
        }
        // B = b A + c A A
        let mut b = vec![0.0f64; r * r];
        for i in 0..r {
            for j in 0..r {
                let s: f64 = (0..r).map(|k| at(&a, r, i, k) * at(&a, r, k, j)).sum();
                b[i * r + j] = round(cb * at(&a, r, i, j) + cc * s, p);
            }
        }
        // X = a X + B X
        let mut y = vec![0.0f64; r * c];
        for i in 0..r {
            for j in 0..c {
                let s: f64 = (0..r).map(|k| at(&b, r, i, k) * at(&x, c, k, j)).sum();
                y[i * c + j] = round(ca * at(&x, c, i, j) + s, p);
            }
        }
        x = y;
    }
    let mut out = vec![0.0f64; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[i * cols + j] = if transposed {
                at(&x, c, j, i)
            } else {
                at(&x, c, i, j)
            };
        }
    }
    Ok(out)
}
