//! Newton–Schulz orthogonalisation (Muon's inner step): the fast f32 path
//! (`cpu::newton_schulz`, matrixmultiply's sgemm) against the f64 oracle
//! (`cpu::reference::newton_schulz`), and the oracle against a value computed by hand.

mod common;

use common::{gpu, Rng};
use fused_optim::cpu::newton_schulz::{NewtonSchulz, NsWorkspace};
use fused_optim::cpu::reference::newton_schulz::{newton_schulz_reference, NsPrecision};
use fused_optim::Error;

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Mixed magnitudes and exact zeros, as momentum buffers have.
    (0..n)
        .map(|i| {
            if i % 11 == 3 {
                0.0
            } else {
                rng.normal() as f32 * 10f32.powi((i % 5) as i32 - 3)
            }
        })
        .collect()
}

/// Tall, wide, square, vectors-as-matrices and sizes around matrixmultiply's blocks.
const SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (1, 7),
    (7, 1),
    (13, 29),
    (64, 48),
    (33, 33),
    (100, 3),
    (5, 130),
    (129, 65),
];

#[test]
fn fast_f32_equals_the_f64_oracle_within_f32_rounding() {
    let ns = NewtonSchulz::default();
    let mut rng = Rng::new(5);
    let mut ws = NsWorkspace::default();
    for (rows, cols) in SHAPES {
        let u = random(&mut rng, rows * cols);
        // Poisoned output: every element must be written.
        let mut out = vec![f32::NAN; rows * cols];
        ns.orthogonalize(&u, rows, cols, &mut out, &mut ws).unwrap();
        let u64: Vec<f64> = u.iter().map(|&v| f64::from(v)).collect();
        let want = newton_schulz_reference(&ns, &u64, rows, cols, NsPrecision::F64).unwrap();
        let (scale, worst) = scale_and_worst(&out, &want);
        eprintln!("{rows}x{cols}: max|O| {scale:.3}, max |f32 - f64| {worst:.2e}");
        // Five steps of a degree-5 polynomial with coefficients up to 4.8 amplify the f32
        // rounding of each matmul (relative 2^-24 per term, sums of up to 130 terms): measured
        // at most 2.2e-6 of max|O| on these shapes; the bound 2e-5 leaves ~10x.
        assert!(
            worst <= 2e-5 * scale,
            "{rows}x{cols}: {worst} vs max {scale}"
        );
        assert!(scale > 0.1, "{rows}x{cols}: degenerate result");
    }
}

/// For U = s·I (r x r) the iteration acts on the single singular value: X0 = I / sqrt(r),
/// then x -> a x + b x^3 + c x^5, five times, so O = f^5(1/sqrt(r)) I: computed here by hand
/// in f64, independently of the matmul code.
#[test]
fn a_scaled_identity_follows_the_scalar_polynomial() {
    let ns = NewtonSchulz::default();
    let (a, b, c) = ns.coefficients;
    for r in [1usize, 2, 5, 16] {
        let mut x = 1.0 / (r as f64).sqrt();
        for _ in 0..5 {
            x = a * x + b * x.powi(3) + c * x.powi(5);
        }
        let mut u = vec![0.0f64; r * r];
        for i in 0..r {
            u[i * r + i] = 3.5;
        }
        let o = newton_schulz_reference(&ns, &u, r, r, NsPrecision::F64).unwrap();
        for i in 0..r {
            for j in 0..r {
                let want = if i == j { x } else { 0.0 };
                assert!((o[i * r + j] - want).abs() <= 1e-12, "r {r} ({i},{j})");
            }
        }
        let mut fast = vec![0.0f32; r * r];
        let uf: Vec<f32> = u.iter().map(|&v| v as f32).collect();
        ns.orthogonalize(&uf, r, r, &mut fast, &mut NsWorkspace::default())
            .unwrap();
        assert!(
            (f64::from(fast[0]) - x).abs() <= 1e-5,
            "r {r}: fast {}",
            fast[0]
        );
    }
}

#[test]
fn an_all_zero_matrix_stays_zero_and_bad_shapes_are_refused() {
    let ns = NewtonSchulz::default();
    let mut ws = NsWorkspace::default();
    let mut out = vec![1.0f32; 12];
    ns.orthogonalize(&[0.0; 12], 3, 4, &mut out, &mut ws)
        .unwrap();
    assert!(out.iter().all(|&v| v == 0.0));
    let mut out = vec![7.0f32; 12];
    assert!(matches!(
        ns.orthogonalize(&[1.0; 12], 3, 5, &mut out, &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        ns.orthogonalize(&[1.0; 12], 3, 4, &mut out[..11], &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        ns.orthogonalize(&[], 0, 4, &mut [], &mut ws),
        Err(Error::Empty { .. })
    ));
    assert!(
        out.iter().all(|&v| v == 7.0),
        "a refused call wrote its output"
    );
    assert!(matches!(
        newton_schulz_reference(&ns, &[1.0; 6], 2, 2, NsPrecision::Bf16),
        Err(Error::LengthMismatch { .. })
    ));
}

/// The device's batched Newton–Schulz (`gpu::newton_schulz`, tiled WGSL matmuls) against the
/// f64 oracle: every shape above in one batch (so tiles of different matrices share
/// dispatches), and a second batch whose shapes cross the 32 x 32 tiles and the 16-wide
/// inner steps unevenly. f32 accumulation in another order than sgemm's: same bound.
#[test]
fn gpu_batch_equals_the_f64_oracle_within_f32_rounding() {
    use fused_optim::gpu::newton_schulz::GpuNewtonSchulz;
    let Some(ctx) = gpu() else { return };
    let ns = NewtonSchulz::default();
    let mut rng = Rng::new(9);
    for shapes in [
        SHAPES.to_vec(),
        vec![(31, 33), (64, 64), (17, 96), (96, 17), (2, 2)],
    ] {
        let inputs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(r, c)| random(&mut rng, r * c))
            .collect();
        let batch = GpuNewtonSchulz::new(&ctx, &shapes, &ns).unwrap();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let outs = batch.run(&refs).unwrap();
        for ((&(rows, cols), u), got) in shapes.iter().zip(&inputs).zip(&outs) {
            let u64: Vec<f64> = u.iter().map(|&v| f64::from(v)).collect();
            let want = newton_schulz_reference(&ns, &u64, rows, cols, NsPrecision::F64).unwrap();
            let (scale, worst) = scale_and_worst(got, &want);
            eprintln!("gpu {rows}x{cols}: max |f32 - f64| {worst:.2e} of max|O| {scale:.3}");
            assert!(
                worst <= 2e-5 * scale,
                "gpu {rows}x{cols}: {worst} vs {scale}"
            );
        }
    }
    assert!(matches!(
        GpuNewtonSchulz::new(&ctx, &[], &ns),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        GpuNewtonSchulz::new(&ctx, &[(3, 0)], &ns),
        Err(Error::Empty { .. })
    ));
    let batch = GpuNewtonSchulz::new(&ctx, &[(3, 4)], &ns).unwrap();
    assert!(matches!(
        batch.run(&[&[1.0; 11]]),
        Err(Error::LengthMismatch { .. })
    ));
}

/// `NsArithmetic::Bf16` (torch's arithmetic) against the oracle's emulation of it
/// (`NsPrecision::Bf16`: exact sums, one bf16 rounding per torch operation), on both product
/// kernels (`vdpbf16ps` where the CPU has it, the widened f32 GEMM below the AVX-512 level).
/// The two differ only where an f32 sum (or the f32 `addmm` combination) rounds to the other
/// side of a bf16 midpoint, which the iteration then propagates. Measured (2-core EPYC with
/// AVX-512 BF16, each kernel): small matrices (up to 17 x 13) bit-identical in 39 of 40
/// calls; the larger shapes within 1.6e-2 of max|O| (33 x 33). Bounds: >= 32 of 40 identical and
/// 6e-2 of max|O| (torch's own GEMM differs from the same emulation by 2-3%, golden README).
/// Rounding the coefficients to bf16 (what an entry with bf16 alpha/beta would do) leaves
/// 0 of 40 identical: the count is the sensitive check.
#[test]
fn fast_bf16_follows_torchs_bf16_arithmetic() {
    use fused_optim::cpu::newton_schulz::NsArithmetic;
    use fused_optim::simd::{set_simd_level, simd_level, SimdLevel};
    let ns = NewtonSchulz {
        arithmetic: NsArithmetic::Bf16,
        ..NewtonSchulz::default()
    };
    let (a, b, c) = ns.coefficients;
    let round = |v: f64| f64::from(half::bf16::from_f64(v).to_f32());
    let rounded = NewtonSchulz {
        coefficients: (round(a), round(b), round(c)),
        ..ns
    };
    let before = simd_level();
    for level in [SimdLevel::Avx512, SimdLevel::Avx2] {
        let used = set_simd_level(level);
        let mut rng = Rng::new(17);
        let mut ws = NsWorkspace::default();
        let (mut identical, mut identical_rounded) = (0, 0);
        for k in 0..40 {
            let (rows, cols) = (1 + (k * 7) % 17, 1 + (k * 5) % 13);
            let u = random(&mut rng, rows * cols);
            let u64: Vec<f64> = u.iter().map(|&v| f64::from(v)).collect();
            let want = newton_schulz_reference(&ns, &u64, rows, cols, NsPrecision::Bf16).unwrap();
            let mut out = vec![f32::NAN; rows * cols];
            ns.orthogonalize(&u, rows, cols, &mut out, &mut ws).unwrap();
            identical += usize::from(out.iter().zip(&want).all(|(&g, &w)| f64::from(g) == w));
            rounded
                .orthogonalize(&u, rows, cols, &mut out, &mut ws)
                .unwrap();
            identical_rounded +=
                usize::from(out.iter().zip(&want).all(|(&g, &w)| f64::from(g) == w));
        }
        eprintln!(
            "{used:?}: {identical} of 40 small calls bit-identical to the emulation \
             ({identical_rounded} with bf16 coefficients)"
        );
        assert!(identical >= 32, "{used:?}: {identical} of 40");
        assert!(
            identical_rounded < 32,
            "the count cannot tell the coefficients apart"
        );
        for (rows, cols) in SHAPES {
            let u = random(&mut rng, rows * cols);
            let mut out = vec![f32::NAN; rows * cols];
            ns.orthogonalize(&u, rows, cols, &mut out, &mut ws).unwrap();
            assert!(
                out.iter()
                    .all(|&v| half::bf16::from_f32(v).to_f32().to_bits() == v.to_bits()),
                "{rows}x{cols}: an output is not a bf16 value"
            );
            let u64: Vec<f64> = u.iter().map(|&v| f64::from(v)).collect();
            let want = newton_schulz_reference(&ns, &u64, rows, cols, NsPrecision::Bf16).unwrap();
            let (scale, worst) = scale_and_worst(&out, &want);
            eprintln!("{used:?} {rows}x{cols}: max |bf16 - emulation| {worst:.2e} of {scale:.3}");
            assert!(worst <= 6e-2 * scale, "{rows}x{cols}: {worst} vs {scale}");
        }
    }
    set_simd_level(before);
}

/// The GPU path refuses torch's bf16 arithmetic (its matmul is f32) with a typed error.
#[test]
fn the_gpu_refuses_bf16_arithmetic() {
    use fused_optim::cpu::newton_schulz::NsArithmetic;
    use fused_optim::gpu::newton_schulz::GpuNewtonSchulz;
    let Some(ctx) = gpu() else { return };
    let ns = NewtonSchulz {
        arithmetic: NsArithmetic::Bf16,
        ..NewtonSchulz::default()
    };
    assert!(matches!(
        GpuNewtonSchulz::new(&ctx, &[(3, 4)], &ns),
        Err(Error::InvalidCombination { .. })
    ));
}

/// (max |want|, max |got - want|): the scale of an orthogonalised matrix and the worst
/// element's distance from the expected one.
fn scale_and_worst(got: &[f32], want: &[f64]) -> (f64, f64) {
    let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max);
    (scale, worst)
}
