//! Adafactor (`torch.optim.Adafactor`, PyTorch 2.15) on the fast CPU path and the GPU
//! (`shaders/adafactor_segmented.wgsl`) against the f64 reference over shaped tensors: matrices spanning several tiles with partial ones, a
//! 3-D tensor (a batch of matrices), a 1 x n and an n x 1 matrix, 1-D and 0-D tensors, a row
//! and a column whose gradients are always 0, an all-zero first gradient of one matrix,
//! mixed magnitudes and an lr schedule with a zero; every option (`cases::shaped`). Then:
//! the factored state's size and contents, bit-identical results at any thread count,
//! checkpoints (resume bit for bit, shapes and lengths checked, typed errors with the state
//! untouched), Adafactor beside AdamW in one mixed optimizer, and the GPU's typed refusal.
//!
//! Tolerance: the golden README's M2 metric, `|got - ref| <= TOL * k * max(|ref|, |p0|,
//! 1e-2, RMS_k)` with RMS_k the reference tensor's RMS after step k, TOL = 1e-5 (the README
//! measured torch's own float32 run against its float64 run at 9.4e-8 k, an independent
//! float32 implementation at 9.7e-8 k). The state tensors within 1e-5 per step relative to
//! max(|ref|, 1e-3 max|ref|) (the README's state metric).

mod cases;
mod common;

use common::*;
use fused_optim::mixed::{AlgorithmGroup, MixedCpuOptimizer, MixedReference};
use fused_optim::*;

const STEPS: u64 = 8;
const TOL: f64 = 1e-5;

/// The model: several tiles (300 > 256 columns, 130 > 64 rows), a batch of matrices, thin
/// matrices both ways, a vector and a scalar.
fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![70, 300],
        vec![130, 5],
        vec![3, 4, 70],
        vec![1, 33],
        vec![29, 1],
        vec![17],
        vec![],
    ]
}

/// Row 3 and column 7 of tensor 0 always 0 (a zero row factor and a zero column factor);
/// tensor 1 all 0 on step 1 (every factor 0: V clamped to eps1^2, U = 0).
fn step_grads(rng: &mut Rng, table: &SegmentTable, k: u64) -> Vec<f32> {
    let mut g = grads(rng, table.len());
    let s0 = &table.segments()[0];
    for i in 0..s0.len() {
        let (r, c) = (i / 300, i % 300);
        if r == 3 || c == 7 {
            g[s0.start + i] = 0.0;
        }
    }
    if k == 1 {
        let s1 = &table.segments()[1];
        g[s1.range()].iter_mut().for_each(|x| *x = 0.0);
    }
    g
}

/// The lr before step k: warm-up, a zero at step 5 (state still advances, params do not
/// move), then above the base lr (rho = min(lr, 1 / sqrt(t)) takes both branches for the
/// larger base lrs).
fn lr_at(base: f64, k: u64) -> f64 {
    base * [0.5, 1.0, 1.0, 2.0, 0.0, 4.0, 1.0, 0.5][(k - 1) as usize]
}

/// The worst M2 ratio of one step, or the first element past the bound.
fn check_m2(
    label: &str,
    table: &SegmentTable,
    got: &[f32],
    want: &[f64],
    p0: &[f32],
    k: u64,
) -> Result<f64, String> {
    let mut worst = 0.0f64;
    for (t, s) in table.segments().iter().enumerate() {
        let r = s.range();
        let rms = (want[r.clone()].iter().map(|x| x * x).sum::<f64>() / s.len() as f64).sqrt();
        for i in r {
            let scale = want[i].abs().max(f64::from(p0[i]).abs()).max(1e-2).max(rms);
            let bound = TOL * k as f64 * scale;
            let err = (f64::from(got[i]) - want[i]).abs();
            if !within(err, bound) {
                return Err(format!(
                    "{label}: tensor {t} element {} after step {k}: got {} want {} \
                     (|err| {err:.3e} > {bound:.3e})",
                    i - s.start,
                    got[i],
                    want[i]
                ));
            }
            worst = worst.max(err / bound);
        }
    }
    Ok(worst)
}

fn model() -> (SegmentTable, Vec<f32>) {
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let p0 = params0(&mut Rng::new(0xADA), table.len());
    (table, p0)
}

/// `config`'s fast path and reference side by side for STEPS steps; the worst M2 ratio.
fn run_against_reference(desc: &str, config: OptimizerConfig) -> Result<f64, String> {
    let none = GradOptions::default();
    run_with_options(desc, config, none, none)
}

/// `run_against_reference` with gradient options: `options` on the reference and the CPU
/// path, `gpu_options` on the GPU. With norm clipping the GPU's tensors are back to back
/// (the norm pass sums the whole buffer: lane-aligned padding is refused with it).
fn run_with_options(
    desc: &str,
    config: OptimizerConfig,
    options: GradOptions,
    gpu_options: GradOptions,
) -> Result<f64, String> {
    let (table, p0) = model();
    let n = table.len();
    let mut cpu = CpuOptimizer::builder(config, n)
        .shapes(&shapes())
        .build()
        .unwrap();
    let mut reference = ReferenceOptimizer::with_shapes(config, &shapes()).unwrap();
    cpu.set_grad_options(options).unwrap();
    reference.set_grad_options(options).unwrap();
    let aligned = options.max_norm.is_none() && gpu_options.max_norm.is_none();
    let mut gpu = gpu().map(|ctx| {
        let mut run = GpuRun::new(&ctx, config, &p0, aligned);
        run.opt.set_grad_options(gpu_options).unwrap();
        run
    });
    let (mut p, mut q) = (
        p0.clone(),
        p0.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
    );
    let mut rng = Rng::new(0x5EED);
    let mut worst = 0.0f64;
    for k in 1..=STEPS {
        let g = step_grads(&mut rng, &table, k);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let lr = lr_at(config.lr(), k);
        cpu.set_lr(lr).unwrap();
        reference.set_lr(lr).unwrap();
        let before = p.clone();
        cpu.step(&mut p, &g).unwrap();
        reference.step(&mut q, &g64).unwrap();
        worst = worst.max(check_m2(desc, &table, &p, &q, &p0, k)?);
        if let Some(gpu) = &mut gpu {
            let got = gpu.step(lr, &g);
            worst = worst.max(check_m2(
                &format!("{desc} (gpu)"),
                &table,
                &got,
                &q,
                &p0,
                k,
            )?);
            for name in ["alpha", "denom"] {
                let a = gpu.opt.segment_scalar(name).unwrap().unwrap();
                let b = reference.segment_scalar(name).unwrap();
                for (t, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs(),
                        "{desc} (gpu): {name} of tensor {t} after step {k}: {x} vs {y}"
                    );
                }
            }
        }
        if lr == 0.0 {
            // rho = 0 and the decay factor is 1.
            assert_eq!(p, before, "{desc}: lr 0 moved the params");
        }
        // The per-tensor scalars.
        for name in ["alpha", "denom"] {
            let (a, b) = (
                cpu.segment_scalar(name).unwrap(),
                reference.segment_scalar(name).unwrap(),
            );
            for (t, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs(),
                    "{desc}: {name} of tensor {t} after step {k}: {x} vs {y}"
                );
            }
        }
    }
    for name in ["row_var", "col_var", "variance"] {
        let mut paths = vec![("cpu", cpu.state(name).unwrap().to_vec())];
        if let Some(gpu) = &gpu {
            paths.push(("gpu", gpu.opt.read_state_f32(name).unwrap()));
        }
        let want = reference.state(name).unwrap();
        for (path, got) in paths {
            check_state_close(&format!("{desc} ({path})"), name, &got, want);
        }
    }
    Ok(worst)
}

/// A state tensor within the state metric of the reference's.
fn check_state_close(label: &str, name: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: {name} length");
    let max = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (i, (&x, &y)) in got.iter().zip(want).enumerate() {
        let bound = TOL * STEPS as f64 * y.abs().max(1e-3 * max);
        assert!(
            within((f64::from(x) - y).abs(), bound),
            "{label}: {name}[{i}] = {x}, reference {y}"
        );
    }
}

const POISON: f32 = f32::from_bits(0x7FC0_BEEF);

/// The model on the GPU: lane-aligned tensors (padding between them, `aligned`) or back
/// to back, the padding of params and gradients poisoned.
struct GpuRun {
    flat: FlatParams,
    opt: GpuOptimizer,
}

impl GpuRun {
    fn new(ctx: &GpuContext, config: OptimizerConfig, p0: &[f32], aligned: bool) -> Self {
        let mut b = FlatParams::builder();
        if aligned {
            b = b.lane_aligned();
        }
        let mut at = 0;
        for (k, s) in shapes().iter().enumerate() {
            let n = s.iter().product::<usize>();
            b = b.shaped(&format!("t{k}"), s, &p0[at..at + n]);
            at += n;
        }
        let flat = b.build(ctx).unwrap();
        let mut p = flat.read_params().unwrap();
        for i in padding(flat.segment_table()) {
            p[i] = POISON;
        }
        flat.write_params(&p).unwrap();
        let opt = GpuOptimizer::new(&flat, config).unwrap();
        Self { flat, opt }
    }

    /// One step with `g` (the model's elements back to back); the model's params after it.
    fn step(&mut self, lr: f64, g: &[f32]) -> Vec<f32> {
        let table = self.flat.segment_table().clone();
        let mut padded = vec![POISON; table.len()];
        let mut at = 0;
        for s in table.segments() {
            padded[s.range()].copy_from_slice(&g[at..at + s.len()]);
            at += s.len();
        }
        self.flat.write_grads(&padded).unwrap();
        self.opt.set_lr(lr).unwrap();
        self.opt.step().unwrap();
        let p = self.flat.read_params().unwrap();
        for i in padding(&table) {
            assert_eq!(
                p[i].to_bits(),
                POISON.to_bits(),
                "padding element {i} written"
            );
        }
        table
            .segments()
            .iter()
            .flat_map(|s| p[s.range()].to_vec())
            .collect()
    }
}

/// The padding elements of a table.
fn padding(table: &SegmentTable) -> Vec<usize> {
    let mut covered = vec![false; table.len()];
    for s in table.segments() {
        covered[s.range()].iter_mut().for_each(|c| *c = true);
    }
    (0..table.len()).filter(|&i| !covered[i]).collect()
}

#[test]
fn every_option_matches_the_reference_over_shaped_tensors() {
    let mut failures = Vec::new();
    for (desc, config) in cases::shaped() {
        match run_against_reference(desc, config) {
            Ok(worst) => eprintln!("{desc}: worst M2 ratio {worst:.3e} of {TOL:e} per step"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Unscaling, clipping by value and by the global norm on both paths, every option row,
/// against the reference with the same options, the same metric: on the lane-aligned GPU
/// model (poisoned padding: never read) without the norm clip, on tensors back to back with
/// it. Not vacuous: the GPU without the value clip, or without the norm clip, fails.
#[test]
fn gradient_options_match_the_reference() {
    // |g| up to ~100: the value clip bites on the largest elements. Adafactor's update is
    // normalised by its second moment, so the norm clip shows through the moments' mix of
    // steps and through eps1.
    let clip = GradOptions {
        grad_scale: 0.5,
        clip_value: Some(2.0),
        max_norm: None,
        skip_nonfinite: false,
    };
    let norm = GradOptions {
        max_norm: Some(1.0),
        ..clip
    };
    let mut failures = Vec::new();
    for (desc, config) in cases::shaped() {
        for options in [clip, norm] {
            match run_with_options(desc, config, options, options) {
                Ok(worst) => eprintln!("{desc} {options:?}: worst M2 ratio {worst:.3e}"),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if gpu().is_some() {
        let (desc, config) = cases::shaped()[0];
        for wrong in [
            GradOptions {
                max_norm: None,
                ..norm
            },
            GradOptions {
                clip_value: None,
                ..norm
            },
        ] {
            let e = run_with_options(desc, config, norm, wrong);
            assert!(
                e.as_ref().is_err_and(|e| e.contains("(gpu)")),
                "GPU options {wrong:?} against {norm:?} passed: {e:?}"
            );
        }
    }
}

/// The comparison is not vacuous: leaving out the update clipping, or taking alpha after the
/// weight decay, is caught (the golden README's mutants: 1.8e3 and 2.6 times its bound).
#[test]
fn wrong_variants_are_caught() {
    let base = AdafactorConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    // A d so large that nothing is clipped stands in for "no clipping".
    let unclipped = AdafactorConfig { d: 1e30, ..base };
    let (table, p0) = model();
    let run = |config: AdafactorConfig| {
        let mut cpu = CpuOptimizer::builder(config, table.len())
            .shapes(&shapes())
            .build()
            .unwrap();
        let mut p = p0.clone();
        let mut rng = Rng::new(0x5EED);
        for k in 1..=STEPS {
            cpu.step(&mut p, &step_grads(&mut rng, &table, k)).unwrap();
        }
        p
    };
    let mut reference = ReferenceOptimizer::with_shapes(base, &shapes()).unwrap();
    let mut q: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut rng = Rng::new(0x5EED);
    for k in 1..=STEPS {
        let g: Vec<f64> = step_grads(&mut rng, &table, k)
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        reference.step(&mut q, &g).unwrap();
    }
    assert!(check_m2("right", &table, &run(base), &q, &p0, STEPS).is_ok());
    assert!(check_m2("unclipped", &table, &run(unclipped), &q, &p0, STEPS).is_err());
    // The clip binds in this model (else the mutant above proves nothing).
    assert!(reference
        .segment_scalar("denom")
        .unwrap()
        .iter()
        .any(|&d| d > 1.0));
}

#[test]
fn factored_state_is_rows_plus_cols_and_deterministic_at_any_thread_count() {
    let (table, p0) = model();
    let config = AdafactorConfig::default();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut cpu = CpuOptimizer::builder(config, table.len())
                    .shapes(&shapes())
                    .build()
                    .unwrap();
                let mut p = p0.clone();
                let mut rng = Rng::new(0x5EED);
                for k in 1..=STEPS {
                    cpu.step(&mut p, &step_grads(&mut rng, &table, k)).unwrap();
                }
                let states: Vec<Vec<f32>> = ["row_var", "col_var", "variance"]
                    .iter()
                    .map(|n| cpu.state(n).unwrap().to_vec())
                    .collect();
                (p, states)
            })
    };
    let (p1, s1) = run(1);
    let (p3, s3) = run(3);
    assert!(
        p1.iter().zip(&p3).all(|(a, b)| a.to_bits() == b.to_bits()),
        "params differ between 1 and 3 threads"
    );
    assert_eq!(s1, s3, "state differs between 1 and 3 threads");
    // rows + cols per matrix, one per element for the 1-D and 0-D tensors.
    let rows: usize = 70 + 130 + 3 * 4 + 1 + 29;
    let cols: usize = 300 + 5 + 3 * 70 + 33 + 1;
    assert_eq!(
        (s1[0].len(), s1[1].len(), s1[2].len()),
        (rows, cols, 17 + 1)
    );
    assert!(s1[0].len() + s1[1].len() + s1[2].len() < table.len() / 20);
    // Tensor 0's row 3 and column 7 got only zero gradients: their factors are exactly 0.
    assert_eq!(s1[0][3], 0.0);
    assert_eq!(s1[1][7], 0.0);
    assert!(s1[0].iter().filter(|&&x| x == 0.0).count() == 1);
}

#[test]
fn checkpoints_resume_bit_for_bit_and_refuse_other_shapes() {
    let dir = std::env::temp_dir().join(format!("fused-optim-adafactor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adafactor.safetensors");
    let (table, p0) = model();
    let config = AdafactorConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let build = || {
        CpuOptimizer::builder(config, table.len())
            .shapes(&shapes())
            .build()
            .unwrap()
    };
    let grads: Vec<Vec<f32>> = {
        let mut rng = Rng::new(0x5EED);
        (1..=6).map(|k| step_grads(&mut rng, &table, k)).collect()
    };
    let mut whole = build();
    let mut p = p0.clone();
    for g in &grads {
        whole.step(&mut p, g).unwrap();
    }
    let mut first = build();
    let mut q = p0.clone();
    for g in &grads[..3] {
        first.step(&mut q, g).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    let mut resumed = build();
    resumed.load_checkpoint(&path).unwrap();
    for g in &grads[3..] {
        resumed.step(&mut q, g).unwrap();
    }
    assert!(p.iter().zip(&q).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(resumed.step_count(), 6);
    // The f64 reference loads the same file (widened exactly).
    let mut reference = ReferenceOptimizer::with_shapes(config, &shapes()).unwrap();
    reference.load_checkpoint(&path).unwrap();
    assert_eq!(
        reference.state("row_var").unwrap(),
        &first
            .read_state("row_var")
            .unwrap()
            .into_iter()
            .collect::<Vec<f64>>()[..]
    );
    // The same element count as one vector: factored state on a 1-D tensor is refused,
    // typed, and the optimizer keeps its state.
    let n = table.len();
    let mut flat = CpuOptimizer::new(config, n).unwrap();
    let mut pf = p0.clone();
    flat.step(&mut pf, &grads[0]).unwrap();
    let before = flat.read_state("variance").unwrap();
    let e = flat.load_checkpoint(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert_eq!(flat.read_state("variance").unwrap(), before);
    assert_eq!(flat.step_count(), 1);
    // A state of the wrong length.
    let e = flat.load_state("row_var", &[1.0; 3]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                expected: 0,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = resumed.load_state("col_var", &vec![1.0; n]).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn adafactor_beside_adamw_in_one_mixed_optimizer() {
    let (table, p0) = model();
    let adamw = AdamConfig {
        lr: 3e-3,
        weight_decay: 0.05,
        ..AdamConfig::adamw()
    };
    let groups = vec![
        AlgorithmGroup {
            segments: vec![0, 2, 4],
            config: AdafactorConfig::default().into(),
        },
        AlgorithmGroup {
            segments: vec![1, 3, 5, 6],
            config: adamw.into(),
        },
    ];
    let mut cpu = MixedCpuOptimizer::new(table.clone(), &groups).unwrap();
    let mut reference = MixedReference::new(table.clone(), &groups).unwrap();
    // The GPU: binding-aligned tensors (the elementwise group binds its ranges), one
    // submission per step for both groups.
    let gpu_side = gpu().map(|ctx| {
        let mut b = FlatParams::builder().binding_aligned();
        let mut at = 0;
        for (k, s) in shapes().iter().enumerate() {
            let n = s.iter().product::<usize>();
            b = b.shaped(&format!("t{k}"), s, &p0[at..at + n]);
            at += n;
        }
        let flat = b.build(&ctx).unwrap();
        let opt = fused_optim::mixed::MixedGpuOptimizer::new(&flat, &groups).unwrap();
        (flat, opt)
    });
    let mut gpu_side = gpu_side;
    let mut p = p0.clone();
    let mut q: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut rng = Rng::new(0x5EED);
    for k in 1..=STEPS {
        let g = step_grads(&mut rng, &table, k);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        cpu.step(&mut p, &g).unwrap();
        reference.step(&mut q, &g64).unwrap();
        // M2 covers AdamW's elements too (its floors are M1's plus the RMS).
        check_m2("mixed", &table, &p, &q, &p0, k).unwrap();
        if let Some((flat, opt)) = &mut gpu_side {
            let padded_table = flat.segment_table().clone();
            let mut padded = vec![0.0f32; padded_table.len()];
            let mut at = 0;
            for s in padded_table.segments() {
                padded[s.range()].copy_from_slice(&g[at..at + s.len()]);
                at += s.len();
            }
            flat.write_grads(&padded).unwrap();
            opt.step().unwrap();
            let all = flat.read_params().unwrap();
            let got: Vec<f32> = padded_table
                .segments()
                .iter()
                .flat_map(|s| all[s.range()].to_vec())
                .collect();
            check_m2("mixed (gpu)", &table, &got, &q, &p0, k).unwrap();
        }
    }
    // Alone on its tensors, the Adafactor group gives the same bits.
    let own: Vec<Vec<usize>> = [0, 2, 4].iter().map(|&k| shapes()[k].clone()).collect();
    let own_table = SegmentTable::contiguous(&own).unwrap();
    let mut alone = CpuOptimizer::builder(AdafactorConfig::default(), own_table.len())
        .shapes(&own)
        .build()
        .unwrap();
    let gather = |v: &[f32]| -> Vec<f32> {
        [0, 2, 4]
            .iter()
            .flat_map(|&k| v[table.segments()[k].range()].to_vec())
            .collect()
    };
    let mut pa = gather(&p0);
    let mut rng = Rng::new(0x5EED);
    for k in 1..=STEPS {
        alone
            .step(&mut pa, &gather(&step_grads(&mut rng, &table, k)))
            .unwrap();
    }
    assert!(gather(&p)
        .iter()
        .zip(&pa)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // Its checkpoint folder loads back.
    let dir = std::env::temp_dir().join(format!(
        "fused-optim-adafactor-mixed-{}",
        std::process::id()
    ));
    cpu.save_checkpoint(&dir).unwrap();
    let mut again = MixedCpuOptimizer::new(table.clone(), &groups).unwrap();
    again.load_checkpoint(&dir).unwrap();
    assert_eq!(again.step_count(), STEPS);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_typed_error() {
    // Hyper-parameters (torch's checks, and non-finite values).
    for (bad, name) in [
        (
            AdafactorConfig {
                beta2_decay: 0.1,
                ..Default::default()
            },
            "beta2_decay",
        ),
        (
            AdafactorConfig {
                d: 0.5,
                ..Default::default()
            },
            "d",
        ),
        (
            AdafactorConfig {
                eps1: Some(-1.0),
                ..Default::default()
            },
            "eps[0]",
        ),
        (
            AdafactorConfig {
                lr: f64::NAN,
                ..Default::default()
            },
            "lr",
        ),
    ] {
        let e = CpuOptimizer::new(bad, 8).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperParameter { name: n, .. } if n == name),
            "{e}"
        );
    }
    // Shapes that do not hold the parameter count.
    let e = CpuOptimizer::builder(AdafactorConfig::default(), 10)
        .shapes(&[vec![3, 3]])
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::SegmentTable { .. }), "{e}");
    // The GPU's per-tensor path does not skip non-finite steps, nor clip by norm over
    // padded tensors: refused, typed, nothing changed; a state of the wrong length too.
    if let Some(ctx) = gpu() {
        let flat = FlatParams::builder()
            .shaped("w", &[4, 6], &[0.5; 24])
            .build(&ctx)
            .unwrap();
        let mut opt = GpuOptimizer::new(&flat, AdafactorConfig::default()).unwrap();
        let e = opt
            .set_grad_options(GradOptions {
                skip_nonfinite: true,
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert_eq!(opt.grad_options(), GradOptions::default());
        let e = opt.load_state_f32("variance", &[0.0; 24]).unwrap_err();
        assert!(
            matches!(e, Error::LengthMismatch { expected: 0, .. }),
            "{e}"
        );
    }
}
