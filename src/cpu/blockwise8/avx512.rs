//! The 8-bit block steps written by hand for AVX-512 with VBMI (Intel Ice Lake and later,
//! AMD Zen 4 and later), chosen at run time at [`SimdLevel::Avx512`](crate::cpu::simd::SimdLevel::Avx512) when the CPU has
//! `avx512vbmi`. The same operations as the portable loops (`full_block` and
//! `blocks_1state` in the parent module), so the same bits; only how the look-ups are done
//! differs:
//!
//! - **Dequantisation** of 64 codes at once without memory look-ups: each of the 4 bytes of
//!   the 256-entry f32 map is a 256-byte table held in 4 vectors; two `vpermi2b` (128
//!   entries each) and a blend on bit 7 of the code give one byte plane, byte unpacks put
//!   the planes back together as f32. The codes are permuted once first (one `vpermb`) so
//!   that the unpacks, which work within 128-bit lanes, leave the values in order.
//! - **Quantisation**: the grid index in 16 lanes as the portable `grid_index` (the clamp as
//!   `vmaxps`/`vminps`, which select exactly as its `x > -1 ? x : -1` and `x < 1 ? x : 1`),
//!   then the code from the 65536-entry table by a hardware gather (`vpgatherdd` of 4 bytes
//!   at each index, from a copy of the table with 4 bytes of padding; the low byte is the
//!   code).
//! - **`sqrt(v) / c2`** by Markstein's correction instead of a division (the divider is this
//!   loop's bottleneck on Intel cores): with `y = RN(1 / c2)` (computed once, a correctly
//!   rounded f32 division), `q = RN(a * y)`, `r = a - c2 * q` (exact, one `fma`),
//!   `RN(q + r * y)` is the correctly rounded quotient `RN(a / c2)` for every `a` for which
//!   nothing overflows or underflows (Markstein 1990, the theorem behind IA-64's
//!   division sequences; `markstein_division_by_c2_is_exact` checks it exhaustively over `a`
//!   for 44 divisors, and the ignored `markstein_holds_for_every_bias_correction_of_common_betas`
//!   for all 91 957 divisors `c2` of runs with beta2 in {0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
//!   0.9999}, no mismatch, 2026-12-06; we have no proof for every divisor: an f64 product,
//!   which is provably exact, ran as slowly as the division). Here `a = sqrt(v) >= 0` and
//!   `c2 in (0, 1]`: `a = +inf` (a v that overflowed) is the one case outside, taken by a
//!   select (`inf / c2 = inf`); a zero or NaN `a` passes through unchanged. When `c2` or
//!   `1 / c2` is not a normal number the plain division runs instead. `tests/blockwise8.rs`
//!   checks every build against the oracle bit for bit, overflowing moments included.
//! - The block absmax by `vmaxps(|x|, l)` (= `|x| > l ? |x| : l`, NaN skipped as the
//!   portable select does) in 16 lanes, then a horizontal maximum (order-free).
//!
//! Partial blocks (a tensor's last) take the portable `one_block`.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{block_1state, one_block, Blockwise8Scalars, OneStateScalars, Quantizer, BLOCK, GRID};

/// Whether this CPU runs the kernels of this module: the AVX-512 level plus VBMI.
pub(super) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vbmi")
            && std::is_x86_feature_detected!("fma")
    })
}

/// One quantiser's tables in the form the kernels read.
#[repr(C, align(64))]
struct Tables {
    /// `planes[k][c]` = byte `k` (little-endian) of `map[c]`'s bits.
    planes: [[u8; 256]; 4],
    /// The 65536-entry table and 4 bytes of padding, so that a 4-byte gather at any index
    /// stays in bounds.
    lut: Box<[u8; GRID + 4]>,
}

impl Tables {
    fn new(q: &Quantizer) -> Self {
        let mut planes = [[0u8; 256]; 4];
        for (c, value) in q.map().iter().enumerate() {
            for (k, byte) in value.to_bits().to_le_bytes().into_iter().enumerate() {
                planes[k][c] = byte;
            }
        }
        let mut lut = Box::new([0u8; GRID + 4]);
        lut[..GRID].copy_from_slice(q.lut());
        Self { planes, lut }
    }

    fn signed() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(|| Tables::new(Quantizer::signed()))
    }

    fn unsigned() -> &'static Tables {
        static T: OnceLock<Tables> = OnceLock::new();
        T.get_or_init(|| Tables::new(Quantizer::unsigned()))
    }
}

/// The byte permutation applied to 64 codes before the plane look-ups: position
/// `16 L + 4 j + i` takes code `16 j + 4 L + i` (L = 128-bit lane, j = output vector,
/// i = element), so that after the lane-wise unpacks output vector `j` holds codes
/// `16 j .. 16 j + 16` in order.
const UNPACK_ORDER: [u8; 64] = {
    let mut order = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        let (lane, j, i) = (k / 16, (k / 4) % 4, k % 4);
        order[k] = (16 * j + 4 * lane + i) as u8;
        k += 1;
    }
    order
};

/// `map[codes[0..64]]` as 4 vectors of 16 f32 (codes in order).
#[inline(always)]
unsafe fn dequantize64(t: &Tables, codes: *const u8) -> [__m512; 4] {
    let order = _mm512_loadu_si512(UNPACK_ORDER.as_ptr().cast());
    let c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(codes.cast()));
    let high = _mm512_movepi8_mask(c);
    let plane = |k: usize| {
        let tab = t.planes[k].as_ptr();
        let low = _mm512_permutex2var_epi8(
            _mm512_load_si512(tab.cast()),
            c,
            _mm512_load_si512(tab.add(64).cast()),
        );
        let top = _mm512_permutex2var_epi8(
            _mm512_load_si512(tab.add(128).cast()),
            c,
            _mm512_load_si512(tab.add(192).cast()),
        );
        _mm512_mask_mov_epi8(low, high, top)
    };
    let (b0, b1, b2, b3) = (plane(0), plane(1), plane(2), plane(3));
    let w01_low = _mm512_unpacklo_epi8(b0, b1);
    let w01_high = _mm512_unpackhi_epi8(b0, b1);
    let w23_low = _mm512_unpacklo_epi8(b2, b3);
    let w23_high = _mm512_unpackhi_epi8(b2, b3);
    [
        _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01_low, w23_low)),
        _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01_low, w23_low)),
        _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01_high, w23_high)),
        _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01_high, w23_high)),
    ]
}

/// The codes of 16 values `x` already multiplied by `1 / absmax` (16 bytes).
#[inline(always)]
unsafe fn quantize16(t: &Tables, x: __m512) -> __m128i {
    let one = _mm512_set1_ps(1.0);
    let half = _mm512_set1_ps(0.5);
    // vmaxps(x, -1) = x > -1 ? x : -1 (NaN -> -1); vminps(x, 1) = x < 1 ? x : 1.
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-1.0)), one);
    let scaled = _mm512_mul_ps(
        _mm512_mul_ps(_mm512_add_ps(x, one), half),
        _mm512_set1_ps(65535.0),
    );
    let index = _mm512_cvttps_epi32(_mm512_add_ps(scaled, half));
    // Indices lie in [0, 65535]; the table has 4 bytes of padding past 65535.
    let words = _mm512_i32gather_epi32::<1>(index, t.lut.as_ptr().cast());
    _mm512_cvtepi32_epi8(words)
}

/// Quantises 16 vectors (one block) with absmax `absmax` into `codes`.
#[inline(always)]
unsafe fn quantize_block(t: &Tables, x: &[__m512; 16], absmax: f32, codes: &mut [u8; BLOCK]) {
    if absmax == 0.0 {
        // An all-zero block: every code 0 (the quantiser's rule).
        codes.fill(0);
        return;
    }
    let inv = _mm512_set1_ps(1.0f32 / absmax);
    for (k, &v) in x.iter().enumerate() {
        let c = quantize16(t, _mm512_mul_ps(v, inv));
        _mm_storeu_si128(codes.as_mut_ptr().add(16 * k).cast(), c);
    }
}

/// `a / c2` for `a >= 0` (or NaN), by Markstein's correction when `markstein` (see the
/// module documentation), else by a division.
#[inline(always)]
unsafe fn divide_by_c2(a: __m512, c2: __m512, inv_c2: __m512, markstein: bool) -> __m512 {
    if !markstein {
        return _mm512_div_ps(a, c2);
    }
    let q = _mm512_mul_ps(a, inv_c2);
    let r = _mm512_fnmadd_ps(c2, q, a);
    let corrected = _mm512_fmadd_ps(r, inv_c2, q);
    // a = +inf: q = +inf, r = NaN; the quotient is +inf.
    let infinite = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(q, _mm512_set1_ps(f32::INFINITY));
    _mm512_mask_mov_ps(corrected, infinite, q)
}

/// Whether `RN(1 / c2)` makes Markstein's correction exact (both normal numbers).
fn markstein_applies(c2: f32) -> bool {
    c2.is_normal() && (1.0f32 / c2).is_normal()
}

/// The two-state (Adam/AdamW) step over consecutive blocks: [`full_block`] for whole
/// blocks, the portable `one_block` for a partial last one.
///
/// # Safety
/// The CPU must have the features of [`available`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma")]
pub(super) unsafe fn blocks(
    s: &Blockwise8Scalars,
    p: &mut [f32],
    g: &[f32],
    c1: &mut [u8],
    c2: &mut [u8],
    a1: &mut [f32],
    a2: &mut [f32],
) {
    let (q1, q2) = (Quantizer::signed(), Quantizer::unsigned());
    let (t1, t2) = (Tables::signed(), Tables::unsigned());
    let markstein = markstein_applies(s.c2);
    // The block walk of the portable `blocks`, written out again: shared as a generic
    // function taking the two block steps as closures, the closures' bodies were not
    // compiled with the callers' target features (AVX2 build 1.88 -> 7.62 ns/param,
    // `examples/state_formats.rs`, 2026-12-06).
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
            (Ok(p), Ok(g), Ok(c1), Ok(c2)) => {
                full_block(s, markstein, t1, t2, p, g, c1, c2, a1, a2)
            }
            _ => one_block(s, q1, q2, p, g, c1, c2, a1, a2),
        }
    }
}

/// One whole block of the two-state step (the operations of the portable `full_block`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn full_block(
    s: &Blockwise8Scalars,
    markstein: bool,
    t1: &Tables,
    t2: &Tables,
    p: &mut [f32; BLOCK],
    g: &[f32; BLOCK],
    c1: &mut [u8; BLOCK],
    c2: &mut [u8; BLOCK],
    a1: &mut f32,
    a2: &mut f32,
) {
    let (am1, am2) = (_mm512_set1_ps(*a1), _mm512_set1_ps(*a2));
    let (beta1, omb1) = (_mm512_set1_ps(s.beta1), _mm512_set1_ps(s.one_minus_beta1));
    let (beta2, omb2) = (_mm512_set1_ps(s.beta2), _mm512_set1_ps(s.one_minus_beta2));
    let (cc2, inv_c2) = (_mm512_set1_ps(s.c2), _mm512_set1_ps(1.0f32 / s.c2));
    let (eps, step_size) = (_mm512_set1_ps(s.eps), _mm512_set1_ps(s.step_size));
    let decay = _mm512_set1_ps(s.decay_factor);
    let mut m = [_mm512_setzero_ps(); 16];
    let mut v = [_mm512_setzero_ps(); 16];
    let (mut l1, mut l2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for quarter in 0..4 {
        let d1 = dequantize64(t1, c1.as_ptr().add(64 * quarter));
        let d2 = dequantize64(t2, c2.as_ptr().add(64 * quarter));
        for k in 0..4 {
            let at = 64 * quarter + 16 * k;
            let gi = _mm512_loadu_ps(g.as_ptr().add(at));
            let m0 = _mm512_mul_ps(d1[k], am1);
            let v0 = _mm512_mul_ps(d2[k], am2);
            let mi = _mm512_fmadd_ps(omb1, gi, _mm512_mul_ps(beta1, m0));
            let vi = _mm512_fmadd_ps(_mm512_mul_ps(omb2, gi), gi, _mm512_mul_ps(beta2, v0));
            let denom = _mm512_add_ps(
                divide_by_c2(_mm512_sqrt_ps(vi), cc2, inv_c2, markstein),
                eps,
            );
            let pp = p.as_mut_ptr().add(at);
            let pi = _mm512_loadu_ps(pp);
            let pi = if s.decays {
                _mm512_mul_ps(pi, decay)
            } else {
                pi
            };
            _mm512_storeu_ps(
                pp,
                _mm512_add_ps(pi, _mm512_div_ps(_mm512_mul_ps(step_size, mi), denom)),
            );
            m[4 * quarter + k] = mi;
            v[4 * quarter + k] = vi;
            l1 = _mm512_max_ps(_mm512_abs_ps(mi), l1);
            l2 = _mm512_max_ps(_mm512_abs_ps(vi), l2);
        }
    }
    let (absmax1, absmax2) = (_mm512_reduce_max_ps(l1), _mm512_reduce_max_ps(l2));
    quantize_block(t1, &m, absmax1, c1);
    quantize_block(t2, &v, absmax2, c2);
    *a1 = absmax1;
    *a2 = absmax2;
}

/// The one-state (Lion, SGD with momentum) step over consecutive blocks: [`full_block_1state`]
/// for whole blocks, the portable `block_1state` for a partial last one (and for any
/// quantiser other than the shared signed one, whose tables this module holds).
///
/// # Safety
/// The CPU must have the features of [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma")]
pub(super) unsafe fn blocks_1state(
    s: &OneStateScalars,
    q: &Quantizer,
    p: &mut [f32],
    g: &[f32],
    c: &mut [u8],
    a: &mut [f32],
) {
    let tables = std::ptr::eq(q, Quantizer::signed()).then(Tables::signed);
    for (((p, g), c), a) in p
        .chunks_mut(BLOCK)
        .zip(g.chunks(BLOCK))
        .zip(c.chunks_mut(BLOCK))
        .zip(a.iter_mut())
    {
        match (
            tables,
            <&mut [f32; BLOCK]>::try_from(&mut *p),
            <&[f32; BLOCK]>::try_from(g),
            <&mut [u8; BLOCK]>::try_from(&mut *c),
        ) {
            (Some(t), Ok(p), Ok(g), Ok(c)) => full_block_1state(s, t, p, g, c, a),
            _ => block_1state(s, q, p, g, c, a),
        }
    }
}

/// `x > 0 ? 1 : x < 0 ? -1 : x` (zeros and NaN unchanged), as the portable `sign_1state`.
#[inline(always)]
unsafe fn sign(x: __m512) -> __m512 {
    let zero = _mm512_setzero_ps();
    let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, zero);
    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero);
    let x = _mm512_mask_mov_ps(x, positive, _mm512_set1_ps(1.0));
    _mm512_mask_mov_ps(x, negative, _mm512_set1_ps(-1.0))
}

/// One whole block of the one-state step (the operations of the portable `block_1state`).
#[inline(always)]
unsafe fn full_block_1state(
    s: &OneStateScalars,
    t: &Tables,
    p: &mut [f32; BLOCK],
    g: &[f32; BLOCK],
    c: &mut [u8; BLOCK],
    a: &mut f32,
) {
    let absmax_old = _mm512_set1_ps(*a);
    let (beta1, omb1) = (_mm512_set1_ps(s.beta1), _mm512_set1_ps(s.one_minus_beta1));
    let (beta2, omb2) = (_mm512_set1_ps(s.beta2), _mm512_set1_ps(s.one_minus_beta2));
    let (neg_lr, decay) = (_mm512_set1_ps(s.neg_lr), _mm512_set1_ps(s.decay_factor));
    let wd = _mm512_set1_ps(s.weight_decay);
    let mut m = [_mm512_setzero_ps(); 16];
    let mut l = _mm512_setzero_ps();
    for quarter in 0..4 {
        let d = dequantize64(t, c.as_ptr().add(64 * quarter));
        for k in 0..4 {
            let at = 64 * quarter + 16 * k;
            let gi = _mm512_loadu_ps(g.as_ptr().add(at));
            let pp = p.as_mut_ptr().add(at);
            let pi = _mm512_loadu_ps(pp);
            let m0 = _mm512_mul_ps(d[k], absmax_old);
            let (pi, mi) = if s.lion {
                let pi = if s.decays {
                    _mm512_mul_ps(pi, decay)
                } else {
                    pi
                };
                let u = _mm512_add_ps(_mm512_mul_ps(beta1, m0), _mm512_mul_ps(omb1, gi));
                let pi = _mm512_fmadd_ps(neg_lr, sign(u), pi);
                (pi, _mm512_fmadd_ps(omb2, gi, _mm512_mul_ps(beta2, m0)))
            } else {
                let gi = _mm512_fmadd_ps(wd, pi, gi);
                let mi = if s.first {
                    gi
                } else {
                    _mm512_add_ps(_mm512_mul_ps(beta1, m0), gi)
                };
                (_mm512_fmadd_ps(neg_lr, mi, pi), mi)
            };
            _mm512_storeu_ps(pp, pi);
            m[4 * quarter + k] = mi;
            l = _mm512_max_ps(_mm512_abs_ps(mi), l);
        }
    }
    let absmax = _mm512_reduce_max_ps(l);
    quantize_block(t, &m, absmax, c);
    *a = absmax;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Markstein's correction equals the division for every significand of `a` (all f32 in
    /// [1, 4): the quotient's rounding depends only on the significands while nothing
    /// overflows or underflows), for the `c2` of common `beta2` over the first steps and a
    /// few others, plus the edge values the kernel meets: 0, +inf, NaN.
    #[test]
    fn markstein_division_by_c2_is_exact() {
        if !available() {
            eprintln!("NOT TESTED here: this CPU has no AVX-512 VBMI");
            return;
        }
        let mut divisors: Vec<f32> = Vec::new();
        for beta2 in [0.999f64, 0.99, 0.95, 0.9999, 0.98] {
            for t in [1i32, 2, 3, 7, 10, 100, 1000, 10_000] {
                divisors.push((1.0 - beta2.powi(t)).sqrt() as f32);
            }
        }
        divisors.extend([
            1.0,
            0.5,
            f32::from_bits(0x3f7f_ffff),
            f32::from_bits(0x3f00_0001),
        ]);
        for &c2 in &divisors {
            assert!(markstein_applies(c2));
            // SAFETY: `available()` checked the features.
            let bad = unsafe { count_mismatches(c2) };
            assert_eq!(bad, 0, "c2 = {c2:e}");
        }
        assert!(!markstein_applies(0.0));
        assert!(!markstein_applies(f32::from_bits(1)));
    }

    /// Every `c2` that a run with a common `beta2` meets (`f32(sqrt(1 - beta2^t))` in f64
    /// as `Blockwise8Scalars` computes it, for every step t until it is 1), every
    /// significand of `a`: the evidence behind the kernel's use of Markstein's correction
    /// beyond the divisors of the test above (a proof for every divisor is not at hand).
    /// Minutes of CPU: `cargo test --release -p fused-optim --lib markstein_holds -- --ignored`.
    #[test]
    #[ignore = "minutes: run by hand (the result is recorded in docs/q8_status.md)"]
    fn markstein_holds_for_every_bias_correction_of_common_betas() {
        use rayon::prelude::*;
        if !available() {
            eprintln!("NOT TESTED here: this CPU has no AVX-512 VBMI");
            return;
        }
        for beta2 in [0.9f64, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999] {
            let mut divisors = Vec::new();
            let mut t = 1i32;
            loop {
                let c2 = (1.0 - beta2.powi(t)).sqrt() as f32;
                if divisors.last() != Some(&c2) {
                    divisors.push(c2);
                }
                if c2 == 1.0 {
                    break;
                }
                t += 1;
            }
            let bad: Vec<(f32, usize)> = divisors
                .par_iter()
                .map(|&c2| {
                    assert!(markstein_applies(c2));
                    // SAFETY: `available()` checked the features.
                    (c2, unsafe { count_mismatches(c2) })
                })
                .filter(|&(_, n)| n != 0)
                .collect();
            eprintln!(
                "beta2 {beta2}: {} distinct c2 (steps 1..={t}), mismatches {bad:?}",
                divisors.len()
            );
            assert!(bad.is_empty(), "beta2 {beta2}: {bad:?}");
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma")]
    unsafe fn count_mismatches(c2: f32) -> usize {
        let (cc2, inv) = (_mm512_set1_ps(c2), _mm512_set1_ps(1.0f32 / c2));
        let mut bad = 0;
        let first = 1.0f32.to_bits();
        let last = 4.0f32.to_bits();
        let mut lanes = [0.0f32; 16];
        let mut out = [0.0f32; 16];
        let mut bits = first;
        while bits < last {
            for (k, x) in lanes.iter_mut().enumerate() {
                *x = f32::from_bits(bits + k as u32);
            }
            let q = divide_by_c2(_mm512_loadu_ps(lanes.as_ptr()), cc2, inv, true);
            _mm512_storeu_ps(out.as_mut_ptr(), q);
            bad += lanes
                .iter()
                .zip(&out)
                .filter(|(a, q)| (**a / c2).to_bits() != q.to_bits())
                .count();
            bits += 16;
        }
        for a in [0.0f32, f32::INFINITY, f32::NAN] {
            let q = divide_by_c2(_mm512_set1_ps(a), cc2, inv, true);
            _mm512_storeu_ps(out.as_mut_ptr(), q);
            let want = a / c2;
            if !(out[0].to_bits() == want.to_bits() || (want.is_nan() && out[0].is_nan())) {
                bad += 1;
            }
        }
        bad
    }
}
