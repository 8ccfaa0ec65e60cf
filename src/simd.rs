//! The instruction-set level of the fast CPU path's loops, chosen at run time.
//!
//! The default x86_64 target assumes only SSE2. The fast path compiles each per-chunk loop
//! (an algorithm's `cpu_chunk`, the 8-bit block loop, the roof) once per level — the same
//! source in functions with `#[target_feature]` — and picks the best level the CPU has
//! ([`SimdLevel::detected`]) unless told otherwise ([`set_simd_level`],
//! `FUSED_OPTIM_CPU_SIMD=sse2|avx2|avx512`). Every level gives the same bits: the loops are
//! elementwise or reduce in a fixed order written out in the source, IEEE addition,
//! multiplication, division and square root are exact-rounded at every width, and Rust never
//! contracts `a * b + c` into a fused multiply-add.

use std::sync::atomic::{AtomicU8, Ordering};

/// A level of vector instructions the fast CPU path's loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86_64; the only level elsewhere).
    Baseline,
    /// AVX2 and FMA (256-bit vectors, 8 f32 lanes).
    Avx2,
    /// AVX-512 F, VL, BW and DQ with AVX2 and FMA (512-bit vectors, 16 f32 lanes).
    Avx512,
}

impl SimdLevel {
    /// Every level, lowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The name used by `FUSED_OPTIM_CPU_SIMD` and in reports: `sse2`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "sse2",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The level named `name` (as [`SimdLevel::name`] spells it).
    pub fn from_name(name: &str) -> Option<SimdLevel> {
        SimdLevel::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The best level this CPU supports.
    pub fn detected() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let avx512 = avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq");
            if avx512 {
                SimdLevel::Avx512
            } else if avx2 {
                SimdLevel::Avx2
            } else {
                SimdLevel::Baseline
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            SimdLevel::Baseline
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<SimdLevel> {
        SimdLevel::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }
}

/// 0 = not chosen yet, otherwise `SimdLevel::code`.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level the fast CPU path uses now: the best the CPU has, capped by
/// `FUSED_OPTIM_CPU_SIMD` (read once) or by the last [`set_simd_level`].
pub fn simd_level() -> SimdLevel {
    if let Some(level) = SimdLevel::from_code(LEVEL.load(Ordering::Relaxed)) {
        return level;
    }
    let cap = std::env::var("FUSED_OPTIM_CPU_SIMD")
        .ok()
        .and_then(|v| SimdLevel::from_name(&v))
        .unwrap_or(SimdLevel::Avx512);
    let level = cap.min(SimdLevel::detected());
    LEVEL.store(level.code(), Ordering::Relaxed);
    level
}

/// Use the loops of `level` from now on, process-wide (or the best the CPU has, if it lacks
/// `level`); returns the level in use. Every level gives the same bits: this is for
/// comparisons and for measuring.
pub fn set_simd_level(level: SimdLevel) -> SimdLevel {
    let level = level.min(SimdLevel::detected());
    LEVEL.store(level.code(), Ordering::Relaxed);
    level
}

/// Runs `f` inside a function compiled for the fast path's current level ([`simd_level`]),
/// so that the `#[inline(always)]` loops `f` calls are vectorised for it (the same bits at
/// every level, as above). Mark the closure `#[inline(always)]` too: otherwise LLVM may keep
/// it out of line, compiled for the baseline (measured: Adafactor's CPU step 1.9x slower).
/// Call it inside each parallel task, not around a rayon loop (the tasks run elsewhere).
#[inline(always)]
pub(crate) fn at_simd_level<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match simd_level() {
            // SAFETY: the CPU has the features of the level `simd_level` reports.
            SimdLevel::Avx512 => return unsafe { avx512(f) },
            SimdLevel::Avx2 => return unsafe { avx2(f) },
            SimdLevel::Baseline => {}
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_codes_are_distinct() {
        for level in SimdLevel::ALL {
            assert_eq!(SimdLevel::from_name(level.name()), Some(level));
            assert_eq!(SimdLevel::from_code(level.code()), Some(level));
        }
        assert_eq!(SimdLevel::from_name("avx"), None);
        assert_eq!(SimdLevel::from_code(0), None);
        assert_eq!(SimdLevel::from_code(4), None);
    }
}
