//! Mixed precision: unscaling inside the kernel, inf/NaN gradients found on the device and
//! the whole step skipped (params, state and step counter keep their values), and the loss
//! scaler's GradScaler rules.

mod common;

use common::*;
use fused_optim::*;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn nonfinite_steps_are_skipped_whole_and_the_run_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    let n = 10_007;
    let config: OptimizerConfig = NadamConfig::default().into(); // host-side mu_product too
    let scale = 1024.0f32;
    for (what, poison, clip) in [
        ("inf", f32::INFINITY, None),
        ("-inf", f32::NEG_INFINITY, Some(0.5)),
        ("NaN", f32::NAN, Some(0.5)),
    ] {
        let opts = GradOptions {
            grad_scale: 1.0 / f64::from(scale),
            clip_value: clip,
            skip_nonfinite: true,
            ..Default::default()
        };
        let mut rng = Rng::new(3);
        let p0 = params0(&mut rng, n);
        let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
        let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
        gpu.set_grad_options(opts).unwrap();
        let mut reference = ReferenceOptimizer::new(config, n).unwrap();
        reference
            .set_grad_options(GradOptions {
                skip_nonfinite: false,
                ..opts
            })
            .unwrap();
        let mut p: Vec<f64> = p0.iter().map(|&v| f64::from(v)).collect();
        let mut peak: Vec<f64> = p.iter().map(|v| v.abs()).collect();
        let mut good_steps = 0;
        for k in 1..=8 {
            let mut g: Vec<f32> = grads(&mut rng, n).iter().map(|&v| v * scale).collect();
            let bad = k == 3 || k == 6;
            if bad {
                g[n / 2] = poison;
            }
            let before = (
                bits(&flat.read_params().unwrap()),
                bits(&gpu.read_state_f32("exp_avg_sq").unwrap()),
                gpu.step_count(),
            );
            flat.write_grads(&g).unwrap();
            gpu.step().unwrap();
            assert_eq!(gpu.last_step_skipped().unwrap(), bad, "[{what}] step {k}");
            if bad {
                let after = (
                    bits(&flat.read_params().unwrap()),
                    bits(&gpu.read_state_f32("exp_avg_sq").unwrap()),
                    gpu.step_count(),
                );
                assert_eq!(after, before, "[{what}] a skipped step changed something");
                continue;
            }
            good_steps += 1;
            reference
                .step(&mut p, &g.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
                .unwrap();
            track_peak(&mut peak, &p);
            check_params(
                what,
                &flat.read_params().unwrap(),
                &p,
                &peak,
                good_steps,
                RTOL_PER_STEP,
            )
            .unwrap();
        }
        assert_eq!(gpu.step_count(), 6);
        let (gh, rh) = (gpu.host_state().scalars[0], reference.mu_product());
        assert!(
            (gh - rh).abs() <= 1e-12 * rh.abs(),
            "[{what}] mu_product {gh} vs {rh}"
        );
    }
}

#[test]
fn cpu_fast_path_skips_nonfinite_steps_too() {
    let mut opt = CpuOptimizer::new(AdamConfig::default(), 5).unwrap();
    opt.set_grad_options(GradOptions {
        skip_nonfinite: true,
        ..Default::default()
    })
    .unwrap();
    let mut p = vec![1.0f32, 2.0, 3.0, 4.0, 5.0];
    opt.step(&mut p, &[0.1, f32::NAN, 0.1, 0.1, 0.1]).unwrap();
    assert!(opt.last_step_skipped().unwrap());
    assert_eq!(p, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(opt.step_count(), 0);
    opt.step(&mut p, &[0.1; 5]).unwrap();
    assert!(!opt.last_step_skipped().unwrap());
    assert_eq!(opt.step_count(), 1);
}

#[test]
fn loss_scaler_follows_grad_scaler_rules() {
    let mut s = LossScaler::new(8.0).unwrap();
    s.growth_interval = 3;
    assert_eq!(s.scale(), 8.0);
    s.update(false);
    s.update(false);
    assert_eq!((s.scale(), s.growth_tracker()), (8.0, 2));
    s.update(false);
    assert_eq!((s.scale(), s.growth_tracker()), (16.0, 0));
    s.update(false);
    s.update(true);
    assert_eq!((s.scale(), s.growth_tracker()), (8.0, 0));
    assert_eq!(LossScaler::default().scale(), 65536.0);
    assert!(LossScaler::new(0.0).is_err());
    let o = s.grad_options(GradOptions {
        max_norm: Some(1.0),
        ..Default::default()
    });
    assert_eq!(
        (o.grad_scale, o.skip_nonfinite, o.max_norm),
        (1.0 / 8.0, true, Some(1.0))
    );
}

#[test]
fn loss_scaler_drives_the_gpu_optimizer() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[0.5; 1024]).unwrap();
    let mut opt = GpuOptimizer::new(
        &flat,
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut scaler = LossScaler::new(4.0).unwrap();
    // Gradient 0.25 scaled by 4: unscaled inside the kernel back to 0.25.
    flat.write_grads(&[1.0; 1024]).unwrap();
    assert!(!scaler.step(&mut opt, GpuOptimizer::step).unwrap());
    assert_eq!(flat.read_params().unwrap(), vec![0.5 - 0.1 * 0.25; 1024]);
    // An overflowed gradient: skipped, nothing moves, the scale backs off.
    let mut g = vec![1.0f32; 1024];
    g[5] = f32::INFINITY;
    flat.write_grads(&g).unwrap();
    assert!(scaler.step(&mut opt, GpuOptimizer::step).unwrap());
    assert_eq!(flat.read_params().unwrap(), vec![0.5 - 0.1 * 0.25; 1024]);
    assert_eq!(scaler.scale(), 2.0);
    assert_eq!(opt.step_count(), 1);
}
