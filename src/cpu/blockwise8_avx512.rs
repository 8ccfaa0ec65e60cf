//! The 8-bit Adam block loop of [`super::blockwise8`] written with AVX-512 intrinsics: the
//! same operations in the same order as the portable `blocks` loop, 16 lanes at a time, with
//! the two table look-ups the compiler cannot vectorise on its own done by hardware gathers
//! (the 256-entry maps, and the 65536-entry quantiser table read as bytes).
//!
//! Same bits as the portable loop (checked against the serial oracle by
//! `tests/blockwise8.rs` at every SIMD level):
//! - dequantisation, `mul_add` (one rounding: `vfmadd`), `sqrt`, `/`, `*`, `+` are the same
//!   IEEE operations at any width;
//! - absmax: `max(|x|, lanes)` keeps the lane when `|x|` is NaN, as the portable
//!   `if a > lane` does, and the maximum of non-NaN values does not depend on the order;
//! - the clamp to [-1, 1]: `max(x, -1)` sends NaN to -1, whose grid index is 0, the index
//!   NaN takes in the portable loop too.

use std::arch::x86_64::*;

use super::blockwise8::{Blockwise8Scalars, Quantizer, BLOCK};

/// Lanes of one AVX-512 f32 vector.
const LANES: usize = 16;

/// One full block (exactly [`BLOCK`] elements) of the 8-bit step; returns the new absmax of
/// m and of v.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL and DQ (the caller's `SimdLevel::Avx512`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
pub(super) unsafe fn full_block(
    s: &Blockwise8Scalars,
    q1: &Quantizer,
    q2: &Quantizer,
    p: &mut [f32; BLOCK],
    g: &[f32; BLOCK],
    c1: &mut [u8; BLOCK],
    c2: &mut [u8; BLOCK],
    am1: f32,
    am2: f32,
) -> (f32, f32) {
    let mut m = [0.0f32; BLOCK];
    let mut v = [0.0f32; BLOCK];
    let map1 = q1.map().as_ptr();
    let map2 = q2.map().as_ptr();
    let (vam1, vam2) = (_mm512_set1_ps(am1), _mm512_set1_ps(am2));
    let (b1, omb1) = (_mm512_set1_ps(s.beta1), _mm512_set1_ps(s.one_minus_beta1));
    let (b2, omb2) = (_mm512_set1_ps(s.beta2), _mm512_set1_ps(s.one_minus_beta2));
    let (vc2, eps) = (_mm512_set1_ps(s.c2), _mm512_set1_ps(s.eps));
    let (step, decay) = (_mm512_set1_ps(s.step_size), _mm512_set1_ps(s.decay_factor));
    let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
    let mut max1 = _mm512_setzero_ps();
    let mut max2 = _mm512_setzero_ps();
    for k in (0..BLOCK).step_by(LANES) {
        // Dequantise: map[code] * absmax.
        let i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(c1.as_ptr().add(k).cast()));
        let i2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(c2.as_ptr().add(k).cast()));
        let m0 = _mm512_mul_ps(_mm512_i32gather_ps::<4>(i1, map1), vam1);
        let v0 = _mm512_mul_ps(_mm512_i32gather_ps::<4>(i2, map2), vam2);
        // m = fma(1 - b1, g, b1 * m);  v = fma((1 - b2) * g, g, b2 * v)
        let gk = _mm512_loadu_ps(g.as_ptr().add(k));
        let mk = _mm512_fmadd_ps(omb1, gk, _mm512_mul_ps(b1, m0));
        let vk = _mm512_fmadd_ps(_mm512_mul_ps(omb2, gk), gk, _mm512_mul_ps(b2, v0));
        _mm512_storeu_ps(m.as_mut_ptr().add(k), mk);
        _mm512_storeu_ps(v.as_mut_ptr().add(k), vk);
        // denom = sqrt(v) / c2 + eps;  p = [p * decay] + (step * m) / denom
        let denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vk), vc2), eps);
        let pk = _mm512_loadu_ps(p.as_ptr().add(k));
        let pk = if s.decays {
            _mm512_mul_ps(pk, decay)
        } else {
            pk
        };
        let pk = _mm512_add_ps(pk, _mm512_div_ps(_mm512_mul_ps(step, mk), denom));
        _mm512_storeu_ps(p.as_mut_ptr().add(k), pk);
        let abs =
            |x: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), abs_mask));
        max1 = _mm512_max_ps(abs(mk), max1);
        max2 = _mm512_max_ps(abs(vk), max2);
    }
    let a1 = quantize(q1, &m, c1, horizontal_max(max1));
    let a2 = quantize(q2, &v, c2, horizontal_max(max2));
    (a1, a2)
}

/// The largest lane of `x` (no lane is NaN: they start at 0 and `max` never takes a NaN).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
unsafe fn horizontal_max(x: __m512) -> f32 {
    let mut lanes = [0.0f32; LANES];
    _mm512_storeu_ps(lanes.as_mut_ptr(), x);
    lanes.iter().fold(0.0f32, |a, &b| a.max(b))
}

/// Quantise one full block whose absmax is `absmax`: codes = LUT[grid index of x / absmax].
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
unsafe fn quantize(q: &Quantizer, x: &[f32; BLOCK], codes: &mut [u8; BLOCK], absmax: f32) -> f32 {
    if absmax == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let inv = _mm512_set1_ps(1.0f32 / absmax);
    let (minus_one, one) = (_mm512_set1_ps(-1.0), _mm512_set1_ps(1.0));
    let (half, top) = (_mm512_set1_ps(0.5), _mm512_set1_ps(65535.0));
    let byte = _mm512_set1_epi32(0xff);
    // The table is padded with 3 bytes, so a 4-byte load at any grid index stays inside it.
    let lut = q.padded_lut().as_ptr();
    for k in (0..BLOCK).step_by(LANES) {
        let xk = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(k)), inv);
        let xk = _mm512_min_ps(_mm512_max_ps(xk, minus_one), one);
        let t = _mm512_add_ps(
            _mm512_mul_ps(_mm512_mul_ps(_mm512_add_ps(xk, one), half), top),
            half,
        );
        let idx = _mm512_cvttps_epi32(t);
        let words = _mm512_i32gather_epi32::<1>(idx, lut.cast());
        let bytes = _mm512_cvtepi32_epi8(_mm512_and_si512(words, byte));
        _mm_storeu_si128(codes.as_mut_ptr().add(k).cast(), bytes);
    }
    absmax
}
