//! Schedule-Free's train/eval switch on the GPU, the fast CPU path and the f64 reference:
//! params hold y while training and x for evaluation; a round trip eval -> train returns
//! y; a step in evaluation mode is a typed error that changes nothing; algorithms without
//! modes refuse the switch.

mod common;

use common::*;
use fused_optim::*;

const N: usize = 1001;

fn configs() -> Vec<ScheduleFreeConfig> {
    vec![
        ScheduleFreeConfig {
            lr: 0.01,
            warmup_steps: 3,
            weight_decay: 0.01,
            ..ScheduleFreeConfig::adamw()
        },
        ScheduleFreeConfig {
            lr: 0.05,
            warmup_steps: 3,
            ..ScheduleFreeConfig::sgd()
        },
    ]
}

/// |got - want| <= tol * max(|want|, 1e-2), element by element.
fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let bound = tol * w.abs().max(1e-2);
        assert!(
            (f64::from(g) - w).abs() <= bound,
            "{what}: element {i}: {g} vs {w} (bound {bound})"
        );
    }
}

#[test]
fn train_eval_switch_matches_the_reference_on_every_path() {
    for config in configs() {
        let mut rng = Rng::new(9);
        let p0 = params0(&mut rng, N);
        let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
        let mut reference = ReferenceOptimizer::new(config, N).unwrap();
        let mut fast = CpuOptimizer::new(config, N).unwrap();
        let mut p_fast = p0.clone();
        let ctx = gpu();
        let flat = ctx
            .as_ref()
            .map(|c| FlatParams::from_slice(c, &p0).unwrap());
        let mut gpu_opt = flat.as_ref().map(|f| GpuOptimizer::new(f, config).unwrap());
        // Switching before the first step changes nothing (x = y = z).
        reference.set_train_mode(&mut p_ref, false).unwrap();
        reference.set_train_mode(&mut p_ref, true).unwrap();
        assert_eq!(p_ref, p0.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        for k in 1..=12u64 {
            let g = grads(&mut rng, N);
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
            reference.step(&mut p_ref, &g64).unwrap();
            fast.step(&mut p_fast, &g).unwrap();
            if let (Some(f), Some(o)) = (&flat, &mut gpu_opt) {
                f.write_grads(&g).unwrap();
                o.step().unwrap();
            }
            if k % 4 == 0 {
                // Evaluate (params -> x), then go back to training (params -> y).
                let y_ref = p_ref.clone();
                reference.set_train_mode(&mut p_ref, false).unwrap();
                fast.set_train_mode(&mut p_fast, false).unwrap();
                assert!(!fast.is_training());
                assert_ne!(p_ref, y_ref, "eval must move the params to x");
                let tol = 1e-5 * k as f64;
                close(&format!("{config:?} cpu x at {k}"), &p_fast, &p_ref, tol);
                // A step in evaluation mode is refused and changes nothing.
                let before = p_fast.clone();
                assert!(matches!(
                    fast.step(&mut p_fast, &g),
                    Err(Error::WrongMode { .. })
                ));
                assert_eq!(p_fast, before);
                assert!(matches!(
                    reference.step(&mut p_ref, &g64),
                    Err(Error::WrongMode { .. })
                ));
                if let (Some(f), Some(o)) = (&flat, &mut gpu_opt) {
                    o.set_train_mode(false).unwrap();
                    assert!(!o.is_training());
                    close(
                        &format!("{config:?} gpu x at {k}"),
                        &f.read_params().unwrap(),
                        &p_ref,
                        tol,
                    );
                    let before = f.read_params().unwrap();
                    assert!(matches!(o.step(), Err(Error::WrongMode { .. })));
                    assert_eq!(f.read_params().unwrap(), before);
                    o.set_train_mode(true).unwrap();
                }
                reference.set_train_mode(&mut p_ref, true).unwrap();
                fast.set_train_mode(&mut p_fast, true).unwrap();
                // Back to y (to rounding: lerp(lerp(y, z, 1 - 1/b), z, 1 - b) = y).
                close(&format!("{config:?} y again at {k}"), &p_fast, &y_ref, tol);
                for (a, b) in p_ref.iter().zip(&y_ref) {
                    assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-2), "{a} vs {b}");
                }
            }
            close(
                &format!("{config:?} cpu y at {k}"),
                &p_fast,
                &p_ref,
                1e-5 * k as f64,
            );
            if let Some(f) = &flat {
                close(
                    &format!("{config:?} gpu y at {k}"),
                    &f.read_params().unwrap(),
                    &p_ref,
                    1e-5 * k as f64,
                );
            }
        }
    }
}

#[test]
fn algorithms_without_modes_refuse_the_switch() {
    let mut p = vec![1.0f32; 8];
    let mut fast = CpuOptimizer::new(AdamConfig::default(), 8).unwrap();
    assert!(matches!(
        fast.set_train_mode(&mut p, false),
        Err(Error::Unsupported { .. })
    ));
    assert!(fast.is_training());
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &p).unwrap();
    let mut opt = GpuOptimizer::new(&flat, LionConfig::default()).unwrap();
    assert!(matches!(
        opt.set_train_mode(false),
        Err(Error::Unsupported { .. })
    ));
    assert!(opt.is_training());
}
