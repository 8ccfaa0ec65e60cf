//! The gradient pipeline (unscale, clip by value, clip by global norm on the device) against
//! the f64 reference doing the same in f64; determinism of the device reduction; non-finite
//! detection; invalid options.

mod common;

use common::*;
use fused_optim::*;

const STEPS: u64 = 20;

fn configs() -> Vec<OptimizerConfig> {
    vec![
        AdamConfig::default().into(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .into(),
        RmspropConfig {
            centered: true,
            momentum: 0.5,
            ..Default::default()
        }
        .into(),
        // Decoupled decay: with L2 decay, g + wd * p can cancel once norm clipping has made g
        // small, and the adaptive step then amplifies that f32 rounding of g (an input
        // conditioning effect, not a kernel error; L2 decay is covered in parity.rs).
        NadamConfig {
            weight_decay: 0.01,
            decoupled_weight_decay: true,
            ..Default::default()
        }
        .into(),
        AdagradConfig::default().into(),
    ]
}

/// Gradients scaled by 1024 (a loss scale) with the pipeline undoing it, clipping by value
/// at 0.5 and the global norm to 1.0 (active: the raw norm is far above 1).
fn options() -> GradOptions {
    GradOptions {
        grad_scale: 1.0 / 1024.0,
        clip_value: Some(0.5),
        max_norm: Some(1.0),
        skip_nonfinite: false,
    }
}

fn run(
    ctx: &GpuContext,
    config: OptimizerConfig,
    opts: GradOptions,
    n: usize,
) -> Result<(), String> {
    let mut rng = Rng::new(77);
    let p0 = params0(&mut rng, n);
    let flat = FlatParams::from_slice(ctx, &p0).unwrap();
    let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
    gpu.set_grad_options(opts).unwrap();
    let mut reference = ReferenceOptimizer::new(config, n).unwrap();
    reference.set_grad_options(opts).unwrap();
    let mut fast = CpuOptimizer::new(config, n).unwrap();
    fast.set_grad_options(opts).unwrap();
    let mut p = p0.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    let mut p_fast = p0.clone();
    let mut peak: Vec<f64> = p.iter().map(|v| v.abs()).collect();
    let mut state_peaks = StatePeaks::new(&reference);
    for k in 1..=STEPS {
        let g: Vec<f32> = grads(&mut rng, n).iter().map(|&v| v * 1024.0).collect();
        flat.write_grads(&g).unwrap();
        gpu.step().unwrap();
        let g64: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
        reference.step(&mut p, &g64).unwrap();
        fast.step(&mut p_fast, &g).unwrap();
        track_peak(&mut peak, &p);
        state_peaks.track(&reference);
        check_params(
            "gpu",
            &flat.read_params().unwrap(),
            &p,
            &peak,
            k,
            RTOL_PER_STEP,
        )?;
        check_params("cpu_fast", &p_fast, &p, &peak, k, RTOL_PER_STEP)?;
        if let (Some(want), Some(got)) = (
            reference.last_grad_norm().unwrap(),
            gpu.last_grad_norm().unwrap(),
        ) {
            // f32 partial sums in a fixed tree vs an f64 sum: relative 1e-5 is ~100 ulp.
            if (got - want).abs() > 1e-5 * want {
                return Err(format!("norm after step {k}: gpu {got} reference {want}"));
            }
            let fast_norm = fast.last_grad_norm().unwrap().unwrap();
            if (fast_norm - want).abs() > 1e-6 * want {
                return Err(format!(
                    "norm after step {k}: cpu_fast {fast_norm} reference {want}"
                ));
            }
        }
    }
    for (name, peak) in reference.state_names().iter().zip(&state_peaks.0) {
        check_state(
            name,
            &gpu.read_state_f32(name).unwrap(),
            reference.state(name).unwrap(),
            peak,
            STEPS,
            RTOL_PER_STEP,
        )?;
    }
    Ok(())
}

#[test]
fn clipped_and_unscaled_steps_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    let mut failures = Vec::new();
    for config in configs() {
        for opts in [
            options(),
            GradOptions {
                max_norm: None,
                ..options()
            },
            GradOptions {
                clip_value: None,
                ..options()
            },
        ] {
            for n in [257, 100_003] {
                if let Err(e) = run(&ctx, config, opts, n) {
                    failures.push(format!("{} {opts:?} n={n}: {e}", config.name()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reduction spans several binding windows (64 KiB windows: 7 of them).
#[test]
fn norm_clipping_across_binding_windows() {
    let Some(ctx) = gpu_windowed(64 << 10) else {
        return;
    };
    run(&ctx, AdamConfig::default().into(), options(), 100_003).unwrap();
}

/// The norm pass and the kernels with vec4<f32> lanes forced (the default context uses u64
/// lanes on lavapipe).
#[test]
fn norm_clipping_with_vec4_f32_lanes() {
    let Some(ctx) = gpu() else { return };
    let forced = ctx.clone().with_context_options(ContextOptions {
        lane_transport: LaneTransport::F32x4,
        ..*ctx.options()
    });
    assert!(!forced.uses_u64_lanes());
    run(&forced, AdamConfig::default().into(), options(), 10_007).unwrap();
}

#[test]
fn device_norm_is_deterministic_and_a_large_max_norm_changes_nothing() {
    let Some(ctx) = gpu() else { return };
    let n = 300_001;
    let mut rng = Rng::new(5);
    let p0 = params0(&mut rng, n);
    let g = grads(&mut rng, n);
    let result = |opts: Option<GradOptions>| {
        let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
        flat.write_grads(&g).unwrap();
        let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
        if let Some(o) = opts {
            opt.set_grad_options(o).unwrap();
        }
        opt.step().unwrap();
        opt.step().unwrap();
        (flat.read_params().unwrap(), opt.last_grad_norm().unwrap())
    };
    let clip = GradOptions {
        max_norm: Some(10.0),
        ..Default::default()
    };
    let (a, norm_a) = result(Some(clip));
    let (b, norm_b) = result(Some(clip));
    assert_eq!(norm_a.unwrap().to_bits(), norm_b.unwrap().to_bits());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // max_norm above the norm: coefficient exactly 1, the same bits as no clipping.
    let big = GradOptions {
        max_norm: Some(1e30),
        ..Default::default()
    };
    let (c, _) = result(Some(big));
    let (d, none) = result(None);
    assert!(none.is_none());
    assert!(c.iter().zip(&d).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn non_finite_gradients_are_detected_on_the_device() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[1.0; 1001]).unwrap();
    let mut opt = GpuOptimizer::new(&flat, SgdConfig::default()).unwrap();
    opt.set_grad_options(GradOptions {
        max_norm: Some(1.0),
        ..Default::default()
    })
    .unwrap();
    flat.write_grads(&[0.5; 1001]).unwrap();
    opt.step().unwrap();
    opt.check_finite_gradients().unwrap();
    let mut g = vec![0.5f32; 1001];
    g[777] = f32::INFINITY;
    flat.write_grads(&g).unwrap();
    opt.step().unwrap();
    assert!(matches!(
        opt.check_finite_gradients(),
        Err(Error::NonFiniteGradients { .. })
    ));
    g[777] = f32::NAN;
    flat.write_grads(&g).unwrap();
    opt.step().unwrap();
    assert!(matches!(
        opt.check_finite_gradients(),
        Err(Error::NonFiniteGradients { .. })
    ));
}

#[test]
fn invalid_gradient_options_are_typed_errors_and_change_nothing() {
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), 3).unwrap();
    for bad in [
        GradOptions {
            grad_scale: 0.0,
            ..Default::default()
        },
        GradOptions {
            grad_scale: f64::NAN,
            ..Default::default()
        },
        GradOptions {
            clip_value: Some(-1.0),
            ..Default::default()
        },
        GradOptions {
            max_norm: Some(0.0),
            ..Default::default()
        },
        GradOptions {
            max_norm: Some(f64::INFINITY),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            cpu.set_grad_options(bad),
            Err(Error::InvalidHyperParameter { .. })
        ));
        if let Some(ctx) = gpu() {
            let flat = FlatParams::from_slice(&ctx, &[1.0, 2.0, 3.0]).unwrap();
            let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
            assert!(opt.set_grad_options(bad).is_err());
            assert_eq!(opt.grad_options(), GradOptions::default());
        }
    }
}
