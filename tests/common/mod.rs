//! Shared test helpers: a seeded RNG, input generators, the GPU context (shared per test
//! binary), and the comparator with its tolerance.
#![allow(dead_code)]

use std::sync::OnceLock;

use fused_optim::{ContextOptions, GpuContext, Optimizer};

/// SplitMix64: small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Initial parameters: mostly N(0,1), some tiny, some large, some exactly 0.
pub fn params0(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let r = rng.uniform();
            let x = rng.normal();
            (if r < 0.05 {
                0.0
            } else if r < 0.25 {
                x * 1e-2
            } else if r < 0.30 {
                x * 10.0
            } else {
                x
            }) as f32
        })
        .collect()
}

/// Gradients: N(0,1) scaled by 10^U(-3, 2) (magnitudes 1e-3..1e2), ~5% exact zeros, and
/// element 0 always exactly 0.
pub fn grads(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = rng.normal() * 10f64.powf(rng.uniform() * 5.0 - 3.0);
            if i == 0 || rng.uniform() < 0.05 {
                0.0
            } else {
                x as f32
            }
        })
        .collect()
}

static CONTEXT: OnceLock<Option<GpuContext>> = OnceLock::new();

/// The shared GPU context of this test binary. With `FUSED_OPTIM_REQUIRE_GPU=1` a missing
/// adapter fails the test; otherwise the test says loudly that it is skipped.
pub fn gpu() -> Option<GpuContext> {
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(ctx) => {
                eprintln!("GPU tests run on: {}", ctx.describe());
                Some(ctx)
            }
            Err(e) => {
                if std::env::var("FUSED_OPTIM_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("FUSED_OPTIM_REQUIRE_GPU=1 but no adapter: {e}");
                }
                eprintln!("SKIPPING GPU TEST: no adapter ({e}); set FUSED_OPTIM_REQUIRE_GPU=1 to fail instead");
                None
            }
        })
        .clone()
}

/// The same device with binding windows capped at `bytes`, to exercise windowed dispatch on
/// small buffers.
pub fn gpu_windowed(bytes: u64) -> Option<GpuContext> {
    gpu().map(|ctx| {
        ctx.with_context_options(ContextOptions {
            max_binding_bytes: Some(bytes),
            ..ContextOptions::default()
        })
    })
}

/// The tolerance of every f32-vs-f64 comparison, per step.
///
/// Why 1e-5: f32 unit roundoff is 6e-8 and one step performs 5-12 rounded operations per
/// element, with WGSL `/` and `sqrt` allowed a few ULP. The update rules are contractions
/// (moments are convex combinations; p feeds back only through weight decay with a factor
/// <= 1), so the error grows at most linearly in the step count k. PyTorch's own f32 run
/// differs from its f64 run by at most 1.0e-6 * k on the golden data (golden/README.md), so
/// 1e-5 * k leaves 10x headroom, while typical bugs (eps misplaced, a bias correction
/// missing, a 1% hyper-parameter error) shift results by 1e-3 or more within a few steps.
pub const RTOL_PER_STEP: f64 = 1e-5;

/// Compare params after step k: |got - want| <= rtol * k * max(|want|, peak_i, 1e-2), where
/// `peak_i` is the largest |p_i| of the reference trajectory so far (p0 included).
///
/// Why the peak: the rounding error an f32 step adds to p is a few ulp of the values it
/// handles, and those are as large as p has been, not as large as it is now. With gradients
/// up to 1e2 and momentum an element can travel far and come back near 0; its absolute error
/// then reflects the path (the golden README's max(|exp|, |p0|) floor answers the same
/// problem for its milder inputs). [`track_peak`] keeps `peak` up to date.
pub fn check_params(
    label: &str,
    got: &[f32],
    want: &[f64],
    peak: &[f64],
    k: u64,
    rtol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{label}: length {} vs {}", got.len(), want.len()));
    }
    for i in 0..got.len() {
        let scale = want[i].abs().max(peak[i]).max(1e-2);
        let err = (f64::from(got[i]) - want[i]).abs();
        if !within(err, rtol * k as f64 * scale) {
            return Err(format!(
                "{label}: params[{i}] after step {k}: got {} want {} (|err| {err:.3e} > {:.3e})",
                got[i],
                want[i],
                rtol * k as f64 * scale
            ));
        }
    }
    Ok(())
}

/// Compare a state tensor after k steps:
/// |got - want| <= rtol * k * max(|want|, peak_i, 1e-3 * max_j |want_j|), with `peak_i` the
/// largest |state_i| of the reference trajectory (see [`check_params`]: signed sums such as
/// momentum buffers carry the rounding of the largest values they held).
pub fn check_state(
    label: &str,
    got: &[f32],
    want: &[f64],
    peak: &[f64],
    k: u64,
    rtol: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{label}: length {} vs {}", got.len(), want.len()));
    }
    let max = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    for i in 0..got.len() {
        let scale = want[i].abs().max(peak[i]).max(1e-3 * max);
        let err = (f64::from(got[i]) - want[i]).abs();
        if !within(err, rtol * k as f64 * scale) && err != 0.0 {
            return Err(format!(
                "{label}[{i}] after step {k}: got {} want {} (|err| {err:.3e} > {:.3e})",
                got[i],
                want[i],
                rtol * k as f64 * scale
            ));
        }
    }
    Ok(())
}

/// peak_i = max(peak_i, |p_i|).
pub fn track_peak(peak: &mut [f64], p: &[f64]) {
    for (m, x) in peak.iter_mut().zip(p) {
        *m = m.max(x.abs());
    }
}

/// Per-element peaks of every state tensor of a reference optimizer.
pub struct StatePeaks(pub Vec<Vec<f64>>);

impl StatePeaks {
    pub fn new(reference: &fused_optim::ReferenceOptimizer) -> Self {
        Self(
            reference
                .state_names()
                .iter()
                .map(|n| {
                    reference
                        .state(n)
                        .unwrap()
                        .iter()
                        .map(|x| x.abs())
                        .collect()
                })
                .collect(),
        )
    }
    pub fn track(&mut self, reference: &fused_optim::ReferenceOptimizer) {
        for (peak, name) in self.0.iter_mut().zip(reference.state_names()) {
            track_peak(peak, reference.state(name).unwrap());
        }
    }
}

/// `err <= bound`; false for NaN, so a NaN result always fails.
pub fn within(err: f64, bound: f64) -> bool {
    err <= bound
}

/// RNE rounding and widening by the `half` crate directly: an implementation independent of
/// both the WGSL kernels and the library (the low-precision tests' oracle).
pub fn round16(format: fused_optim::LowFormat, x: f32) -> u16 {
    match format {
        fused_optim::LowFormat::F16 => half::f16::from_f32(x).to_bits(),
        fused_optim::LowFormat::Bf16 => half::bf16::from_f32(x).to_bits(),
    }
}

/// The value of 16-bit `bits`, by the `half` crate.
pub fn value16(format: fused_optim::LowFormat, bits: u16) -> f32 {
    match format {
        fused_optim::LowFormat::F16 => half::f16::from_bits(bits).to_f32(),
        fused_optim::LowFormat::Bf16 => half::bf16::from_bits(bits).to_f32(),
    }
}

/// The f64 reference run over the steps a test takes, with the per-element trajectory peaks
/// of the params and of every state tensor that [`check_params`] and [`check_state`] need.
pub struct ReferenceRun {
    pub reference: fused_optim::ReferenceOptimizer,
    pub p: Vec<f64>,
    pub peak: Vec<f64>,
    pub state_peaks: StatePeaks,
    pub steps: u64,
}

/// The shape of n elements as one tensor for `config`: a 1 x n matrix for algorithms that
/// take matrices only (Muon), else a vector.
pub fn one_tensor(config: fused_optim::OptimizerConfig, n: usize) -> Vec<usize> {
    if fused_optim::CpuOptimizer::new(config, n).is_ok() {
        vec![n]
    } else {
        vec![1, n]
    }
}

impl ReferenceRun {
    /// Over `p0` as one tensor ([`one_tensor`]).
    pub fn new(config: fused_optim::OptimizerConfig, p0: &[f32]) -> Self {
        let reference =
            fused_optim::ReferenceOptimizer::with_shapes(config, &[one_tensor(config, p0.len())])
                .unwrap();
        let p: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
        Self {
            state_peaks: StatePeaks::new(&reference),
            peak: p.iter().map(|v| v.abs()).collect(),
            p,
            reference,
            steps: 0,
        }
    }

    /// One reference step on `g` (widened to f64).
    pub fn step(&mut self, g: &[f32]) {
        let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        self.reference.step(&mut self.p, &g).unwrap();
        track_peak(&mut self.peak, &self.p);
        self.state_peaks.track(&self.reference);
        self.steps += 1;
    }

    /// `got` params against the reference after the steps taken, `RTOL_PER_STEP` per step.
    pub fn check(&self, label: &str, got: &[f32]) {
        check_params(label, got, &self.p, &self.peak, self.steps, RTOL_PER_STEP).unwrap();
    }

    /// Every state tensor (`read(name)`) against the reference, `rtol` per step.
    pub fn check_states(&self, label: &str, rtol: f64, mut read: impl FnMut(&str) -> Vec<f32>) {
        for (name, peak) in self.reference.state_names().iter().zip(&self.state_peaks.0) {
            let want = self.reference.state(name).unwrap();
            check_state(
                &format!("{label} {name}"),
                &read(name),
                want,
                peak,
                self.steps,
                rtol,
            )
            .unwrap();
        }
    }
}
