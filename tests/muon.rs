//! Muon (torch.optim.Muon, PyTorch 2.15) on the GPU (momentum pass, batched Newton–Schulz
//! and update in one submission) and on the fast CPU path against the f64 reference, over a
//! model of 2-D tensors: wide, tall (transposed inside Newton–Schulz), a row vector, a matrix
//! spanning several GPU and CPU chunks, a tensor with an all-zero first gradient (the
//! orthogonalisation of a zero matrix), mixed magnitudes, the params' padding poisoned, an lr
//! schedule, every row of `cases::matrix()`; the GPU split into several Newton–Schulz
//! batches; checkpoints across paths; and the typed errors.
//!
//! Tolerance (params): |got − ref| ≤ k · (`C_NS` · lr_max · ratio(tensor) + `RTOL_STORE` ·
//! |ref|) after step k: the golden README's M3 metric (step-size units) plus the rounding of
//! the stored f32 param itself (two roundings per step, ≤ 1.2e-7 |p|: `RTOL_STORE` = 1e-6).
//! The reference orthogonalises in f64, the f32 paths in f32: each Newton–Schulz call
//! differs by f32 rounding amplified by the iteration (the quintic step multiplies small
//! singular values by up to 3.4 per step: 3.4^5 ≈ 450 × 6e-8 ≈ 3e-5 of the unit-norm update
//! per element). `C_NS` = 1e-3; the worst fraction of the bound per row is printed, and four
//! Newton–Schulz steps instead of five fail it (the sensitivity test). The momentum buffer
//! depends on the gradients only: `RTOL_PER_STEP`.

mod cases;
mod common;

use common::*;
use fused_optim::gpu::buffer::read_f32;
use fused_optim::*;

const STEPS: u64 = 12;
const POISON: f32 = f32::from_bits(0x7FC0_BEEF);
/// See the module docs.
const C_NS: f64 = 1e-3;
/// See the module docs: the f32 rounding of the stored params, per step.
const RTOL_STORE: f64 = 1e-6;

/// 24 394 elements (not a multiple of 4: the last lane has 2 padding elements).
fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![37, 53],
        vec![300, 7],
        vec![1, 301],
        vec![64, 48],
        vec![5, 12],
        vec![130, 130],
    ]
}

fn offsets() -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    shapes()
        .iter()
        .map(|s| {
            let r = start..start + s.iter().product::<usize>();
            start = r.end;
            r
        })
        .collect()
}

fn total() -> usize {
    offsets().last().unwrap().end
}

/// Gradients: the mixed pattern, tensor 4 all zero on step 1.
fn model_grads(rng: &mut Rng, k: u64) -> Vec<f32> {
    let mut g = grads(rng, total());
    if k == 1 {
        g[offsets()[4].clone()].iter_mut().for_each(|x| *x = 0.0);
    }
    g
}

/// Per tensor, the largest lr of the run times the tensor's ratio.
fn lr_units(config: &MuonConfig) -> Vec<f64> {
    let lr_max = (1..=STEPS)
        .map(|k| config.lr * cases::lr_factor(k))
        .fold(0.0, f64::max);
    shapes()
        .iter()
        .map(|s| lr_max * config.adjust_lr.ratio(s[0], s[1]))
        .collect()
}

/// The worst |got − want| / (k · (C_NS · unit + RTOL_STORE · |want|)) over the tensors
/// (≤ 1 passes; see the module docs).
fn m3(got: &[f32], want: &[f64], k: u64, units: &[f64]) -> f64 {
    offsets()
        .iter()
        .zip(units)
        .map(|(r, unit)| {
            r.clone()
                .map(|i| {
                    let bound = k as f64 * (C_NS * unit + RTOL_STORE * want[i].abs());
                    (f64::from(got[i]) - want[i]).abs() / bound
                })
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

fn muon(config: &OptimizerConfig) -> MuonConfig {
    match config {
        OptimizerConfig::Muon(c) => *c,
        other => panic!("not a Muon row: {other:?}"),
    }
}

fn gpu_model(ctx: &GpuContext, p0: &[f32]) -> FlatParams {
    let mut b = FlatParams::builder();
    for (k, (shape, r)) in shapes().iter().zip(offsets()).enumerate() {
        b = b.shaped(&format!("w{k}"), shape, &p0[r]);
    }
    let flat = b.build(ctx).unwrap();
    // Poison the last lane's padding of params and grads.
    for buffer in [flat.params_buffer(), flat.grads_buffer()] {
        ctx.queue().write_buffer(
            buffer,
            total() as u64 * 4,
            bytemuck::cast_slice(&[POISON; 2]),
        );
    }
    flat
}

/// Runs `config` on the reference and `tested` on the CPU and (with `ctx`) the GPU; returns
/// the worst M3 ratio of (CPU, GPU), or the first failure.
fn run(
    ctx: Option<&GpuContext>,
    desc: &str,
    config: OptimizerConfig,
    tested: OptimizerConfig,
) -> Result<(f64, f64), String> {
    let none = GradOptions::default();
    run_with(ctx, desc, config, tested, none, none)
}

/// `run` with gradient options: `options` on the reference and the CPU path, `gpu_options`
/// on the GPU.
fn run_with(
    ctx: Option<&GpuContext>,
    desc: &str,
    config: OptimizerConfig,
    tested: OptimizerConfig,
    options: GradOptions,
    gpu_options: GradOptions,
) -> Result<(f64, f64), String> {
    let mut rng = Rng::new(0x3A0E);
    let p0 = params0(&mut rng, total());
    let n = p0.len();
    let units = lr_units(&muon(&config));
    let mut reference = ReferenceOptimizer::with_shapes(config, &shapes()).unwrap();
    let mut cpu = CpuOptimizer::builder(tested, n)
        .shapes(&shapes())
        .build()
        .unwrap();
    reference.set_grad_options(options).unwrap();
    cpu.set_grad_options(options).unwrap();
    let mut gpu = ctx.map(|ctx| {
        let flat = gpu_model(ctx, &p0);
        let mut opt = GpuOptimizer::new(&flat, tested).unwrap();
        opt.set_grad_options(gpu_options).unwrap();
        (flat, opt)
    });
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut p_cpu = p0.clone();
    let mut state_peak = vec![0.0f64; n];
    let (mut worst_cpu, mut worst_gpu) = (0.0f64, 0.0f64);
    for k in 1..=STEPS {
        let g = model_grads(&mut rng, k);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let lr = config.lr() * cases::lr_factor(k);
        reference.set_lr(lr).unwrap();
        reference.step(&mut p_ref, &g64).unwrap();
        track_peak(&mut state_peak, reference.state("momentum_buffer").unwrap());
        cpu.set_lr(lr).unwrap();
        cpu.step(&mut p_cpu, &g).unwrap();
        worst_cpu = worst_cpu.max(m3(&p_cpu, &p_ref, k, &units));
        if let Some((flat, opt)) = &mut gpu {
            flat.write_grads(&g).unwrap();
            opt.set_lr(lr).unwrap();
            opt.step().unwrap();
            let p = flat.read_params().unwrap();
            worst_gpu = worst_gpu.max(m3(&p, &p_ref, k, &units));
        }
        for (path, worst) in [("cpu", worst_cpu), ("gpu", worst_gpu)] {
            if worst > 1.0 {
                return Err(format!(
                    "{desc} {path}: step {k}: {worst:.3} of the bound \
                     k (C_NS lr_unit + RTOL_STORE |p|)"
                ));
            }
        }
    }
    let want = reference.state("momentum_buffer").unwrap();
    check_state(
        &format!("{desc} cpu momentum_buffer"),
        cpu.state("momentum_buffer").unwrap(),
        want,
        &state_peak,
        STEPS,
        RTOL_PER_STEP,
    )?;
    if let (Some((flat, opt)), Some(ctx)) = (&gpu, ctx) {
        let buf = opt.read_state_f32("momentum_buffer").unwrap();
        check_state(
            &format!("{desc} gpu momentum_buffer"),
            &buf,
            want,
            &state_peak,
            STEPS,
            RTOL_PER_STEP,
        )?;
        // The padding is never written.
        for buffer in [flat.params_buffer(), flat.grads_buffer()] {
            let tail = read_f32(ctx, buffer, n, 2).unwrap();
            assert!(
                tail.iter().all(|x| x.to_bits() == POISON.to_bits()),
                "{desc}: padding written: {tail:?}"
            );
        }
    }
    Ok((worst_cpu, worst_gpu))
}

#[test]
fn muon_matches_the_reference_on_cpu_and_gpu() {
    let ctx = gpu();
    let rows = cases::matrix();
    assert!(rows.len() >= 4, "the Muon rows of tests/cases");
    let mut failures = Vec::new();
    for (desc, config) in rows {
        match run(ctx.as_ref(), desc, config, config) {
            Ok((cpu, gpu)) => println!("{desc}: worst of the bound: cpu {cpu:.3} gpu {gpu:.3}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Unscaling, clipping by value and by the global norm on both paths (the GPU's per-tensor
/// kernel reads every gradient through the gradient pipeline), every Muon row, against the
/// reference with the same options, the same bound. Not vacuous: the GPU without the value
/// clip, or without the norm clip, fails it.
#[test]
fn muon_takes_gradient_options_on_cpu_and_gpu() {
    let ctx = gpu();
    // |g| up to ~100: the value clip bites on the largest elements; Newton-Schulz
    // normalises the momentum, so the norm clip shows through the momentum's mix of steps.
    let options = GradOptions {
        grad_scale: 0.5,
        clip_value: Some(2.0),
        max_norm: Some(1.0),
        skip_nonfinite: false,
    };
    let mut failures = Vec::new();
    for (desc, config) in cases::matrix() {
        match run_with(ctx.as_ref(), desc, config, config, options, options) {
            Ok((cpu, gpu)) => println!("{desc}: worst of the bound: cpu {cpu:.3} gpu {gpu:.3}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if let Some(ctx) = &ctx {
        let (desc, config) = cases::matrix()[0];
        for wrong in [
            GradOptions {
                max_norm: None,
                ..options
            },
            GradOptions {
                clip_value: None,
                ..options
            },
        ] {
            let e = run_with(Some(ctx), desc, config, config, options, wrong);
            assert!(
                e.as_ref().is_err_and(|e| e.contains(" gpu")),
                "GPU options {wrong:?} against {options:?} passed: {e:?}"
            );
        }
    }
}

/// The bound is not vacuous: four Newton–Schulz steps instead of five fail it (on the
/// CPU, the first path checked).
#[test]
fn muon_comparison_catches_one_newton_schulz_step_less() {
    let config = MuonConfig::default();
    let four = MuonConfig {
        ns: cpu::newton_schulz::NewtonSchulz {
            steps: 4,
            ..config.ns
        },
        ..config
    };
    let e = run(gpu().as_ref(), "four steps", config.into(), four.into())
        .expect_err("one Newton-Schulz step less went unnoticed");
    assert!(e.contains("four steps cpu"), "{e}");
}

/// Several Newton–Schulz batches (a binding cap of 384 KiB: the model's batch needs 458 KiB,
/// so it is split in two) give the same bits as one batch: the orthogonalisation is per
/// matrix.
#[test]
fn muon_gpu_in_several_batches_matches_one_batch() {
    let Some(ctx) = gpu() else { return };
    let cap = 384u64 << 10;
    let matrices: Vec<(usize, usize)> = shapes().iter().map(|s| (s[0], s[1])).collect();
    assert!(gpu::newton_schulz::GpuNewtonSchulz::split(&matrices, cap).len() >= 2);
    assert_eq!(
        gpu::newton_schulz::GpuNewtonSchulz::split(&matrices, ctx.max_binding_bytes()).len(),
        1
    );
    let small = gpu_windowed(cap).unwrap();
    let mut rng = Rng::new(0x5EED);
    let p0 = params0(&mut rng, total());
    let (a, b) = (gpu_model(&ctx, &p0), gpu_model(&small, &p0));
    let config = MuonConfig::default();
    let mut one = GpuOptimizer::new(&a, config).unwrap();
    let mut many = GpuOptimizer::new(&b, config).unwrap();
    for k in 1..=4 {
        let g = model_grads(&mut rng, k);
        a.write_grads(&g).unwrap();
        b.write_grads(&g).unwrap();
        one.step().unwrap();
        many.step().unwrap();
    }
    let (pa, pb) = (a.read_params().unwrap(), b.read_params().unwrap());
    let differ = pa
        .iter()
        .zip(&pb)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(
        differ, 0,
        "{differ} params differ between 1 and several batches"
    );
}

/// Checkpoints: save after 5 steps, resume in a fresh optimizer (CPU → CPU bit-identical to
/// the uninterrupted run; CPU → GPU and GPU → CPU within the Newton–Schulz bound), and a
/// checkpoint of other shapes is refused.
#[test]
fn muon_checkpoints_resume_across_paths() {
    let dir = std::env::temp_dir().join(format!("fused-optim-muon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("muon.safetensors");
    let config = MuonConfig {
        lr: 0.02,
        ..MuonConfig::default()
    };
    let mut rng = Rng::new(0xC0FE);
    let p0 = params0(&mut rng, total());
    let grads: Vec<Vec<f32>> = (1..=8).map(|k| model_grads(&mut rng, k)).collect();
    let build = || {
        CpuOptimizer::builder(config, total())
            .shapes(&shapes())
            .build()
            .unwrap()
    };
    let mut straight = build();
    let mut p_straight = p0.clone();
    for g in &grads {
        straight.step(&mut p_straight, g).unwrap();
    }
    let mut first = build();
    let mut p = p0.clone();
    for g in &grads[..5] {
        first.step(&mut p, g).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    let p_saved = p.clone();
    let mut resumed = build();
    resumed.load_checkpoint(&path).unwrap();
    assert_eq!(resumed.step_count(), 5);
    for g in &grads[5..] {
        resumed.step(&mut p, g).unwrap();
    }
    assert!(
        p.iter()
            .zip(&p_straight)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "CPU resume is not bit-identical"
    );
    // Other shapes: refused, typed, nothing changed.
    let mut other = CpuOptimizer::builder(config, total())
        .shapes(&[vec![total() / 2, 2]])
        .build()
        .unwrap();
    let e = other.load_checkpoint(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert_eq!(other.step_count(), 0);
    assert!(other
        .state("momentum_buffer")
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    let Some(ctx) = gpu() else { return };
    let flat = gpu_model(&ctx, &p_saved);
    let mut on_gpu = GpuOptimizer::new(&flat, config).unwrap();
    on_gpu.load_checkpoint(&path).unwrap();
    for g in &grads[5..] {
        flat.write_grads(g).unwrap();
        on_gpu.step().unwrap();
    }
    let got = flat.read_params().unwrap();
    let want: Vec<f64> = p_straight.iter().map(|&x| f64::from(x)).collect();
    let units: Vec<f64> = shapes()
        .iter()
        .map(|s| config.lr * config.adjust_lr.ratio(s[0], s[1]))
        .collect();
    let worst = m3(&got, &want, 3, &units);
    assert!(worst <= 1.0, "CPU -> GPU resume: {worst} of the bound");
    // And back: the GPU's state into a CPU optimizer.
    on_gpu.save_checkpoint(&path).unwrap();
    let mut back = build();
    back.load_checkpoint(&path).unwrap();
    assert_eq!(back.step_count(), 8);
    let buf_gpu = on_gpu.read_state_f32("momentum_buffer").unwrap();
    assert_eq!(back.state("momentum_buffer").unwrap(), &buf_gpu[..]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Muon takes 2-D tensors only: a 1-D or 3-D segment is refused with `Error::WrongRank` by
/// every constructor, and a flat vector without shapes too.
#[test]
fn muon_refuses_tensors_that_are_not_matrices() {
    let config = MuonConfig::default();
    for shapes in [vec![vec![12usize]], vec![vec![2, 3], vec![2, 2, 3]]] {
        let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let e = CpuOptimizer::builder(config, n)
            .shapes(&shapes)
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::WrongRank { .. }), "{e}");
        let e = ReferenceOptimizer::with_shapes(config, &shapes).unwrap_err();
        assert!(matches!(e, Error::WrongRank { .. }), "{e}");
        if let Some(ctx) = gpu() {
            let mut b = FlatParams::builder();
            for (k, s) in shapes.iter().enumerate() {
                let len = s.iter().product();
                b = b.shaped(&format!("t{k}"), s, &vec![1.0; len]);
            }
            let flat = b.build(&ctx).unwrap();
            let e = GpuOptimizer::new(&flat, config).err().unwrap();
            assert!(matches!(e, Error::WrongRank { .. }), "{e}");
        }
    }
    let e = CpuOptimizer::new(config, 12).unwrap_err();
    assert!(matches!(e, Error::WrongRank { .. }), "{e}");
    let e = ReferenceOptimizer::new(config, 12).unwrap_err();
    assert!(matches!(e, Error::WrongRank { .. }), "{e}");
    // A bad hyper-parameter is named.
    let bad = MuonConfig {
        momentum: 1.5,
        ..config
    };
    let e = CpuOptimizer::builder(bad, 6)
        .shapes(&[vec![2, 3]])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidHyperParameter {
                name: "momentum",
                ..
            }
        ),
        "{e}"
    );
}
