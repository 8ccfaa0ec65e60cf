//! The step counter and the loss scale on the device: steps skipped for inf/NaN gradients
//! need no read-back, every optimizer still uses the right `t` (bias corrections, NAdam's
//! mu_product, SGD's first step), the step table wraps, the loss scale follows GradScaler's
//! rule on the device, and checkpoints / switching the mode off carry the true count.
//!
//! Reference: the f64 CPU reference run over the steps that were not skipped only, with the
//! learning rate of each call (a scheduler steps every call, skipped or not, as in PyTorch).
//! Tolerance: `RTOL_PER_STEP` per step taken (tests/common): the device combines `lr * f(t)`
//! in f32 (one extra rounding, 6e-8 relative) where the host path rounds the f64 product.

mod cases;
mod common;

use common::*;
use fused_optim::optim::{HostState, WordClass};
use fused_optim::*;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Params `p0` and an optimizer that skips non-finite steps on the device.
fn skipping_on_device(
    ctx: &GpuContext,
    p0: &[f32],
    config: OptimizerConfig,
) -> (FlatParams, GpuOptimizer) {
    let flat = FlatParams::from_slice(ctx, p0).unwrap();
    let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
    gpu.set_grad_options(GradOptions {
        skip_nonfinite: true,
        ..Default::default()
    })
    .unwrap();
    (flat, gpu)
}

/// The host state before step `t` (t - 1 steps taken) with learning rate `lr`.
fn host_before(config: &OptimizerConfig, t: u64, lr: f64) -> HostState {
    let mut h = config.initial_host_state();
    h.lr = lr;
    while h.step + 1 < t {
        config.begin_step(&mut h);
        config.end_step(&mut h);
    }
    h
}

fn words(config: &OptimizerConfig, t: u64, lr: f64) -> (Vec<u32>, &'static [WordClass]) {
    let mut h = host_before(config, t, lr);
    let hyper = config.begin_step(&mut h);
    (
        bytemuck::cast_slice(hyper.as_bytes()).to_vec(),
        config
            .word_classes()
            .expect("every algorithm in this test has word classes"),
    )
}

/// The classification the device relies on, checked on every optimizer and option: `Keep`
/// words do not change with t, `OfStep` words do not change with lr, `LrTimes` words are lr
/// times their lr = 1 value (to 2 f32 ulp).
#[test]
fn word_classes_say_how_each_uniform_word_depends_on_t_and_lr() {
    for (desc, base) in cases::all() {
        if base.word_classes().is_none() {
            continue; // refused by the device step counter: see the test below
        }
        for config in [base, with_weight_decay(base)] {
            for t in 1..=40u64 {
                let (a, classes) = words(&config, t, 0.3);
                let (b, _) = words(&config, t, 0.007);
                let (one, _) = words(&config, t, 1.0);
                let (later, _) = words(&config, t + 7, 0.3);
                assert_eq!(classes.len(), a.len(), "{desc}");
                for (w, class) in classes.iter().enumerate() {
                    match class {
                        WordClass::Keep => assert_eq!(a[w], later[w], "{desc} t {t} word {w}"),
                        WordClass::OfStep => assert_eq!(a[w], b[w], "{desc} t {t} word {w}"),
                        WordClass::LrTimes => {
                            for (got, lr) in [(a[w], 0.3f32), (b[w], 0.007)] {
                                let want = lr * f32::from_bits(one[w]);
                                let got = f32::from_bits(got);
                                assert!(
                                    (got - want).abs() <= 2.0 * f32::EPSILON * want.abs(),
                                    "{desc} t {t} word {w}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The same config with (decoupled or L2) weight decay on, so decay words are exercised.
fn with_weight_decay(c: OptimizerConfig) -> OptimizerConfig {
    match c {
        OptimizerConfig::Adam(a) => AdamConfig {
            weight_decay: 0.1,
            ..a
        }
        .into(),
        OptimizerConfig::Nadam(a) => NadamConfig {
            weight_decay: 0.1,
            ..a
        }
        .into(),
        OptimizerConfig::Radam(a) => RadamConfig {
            weight_decay: 0.1,
            ..a
        }
        .into(),
        other => other,
    }
}

/// Calls whose gradients hold an inf or NaN (1-based); the first call is one of them, so
/// the first step taken (t = 1: SGD's buffer copy, Adam's bias corrections) comes later.
const BAD: [u64; 4] = [1, 5, 6, 11];
const CALLS: u64 = 14;

#[test]
fn every_optimizer_skips_on_the_device_without_any_read_back() {
    let Some(ctx) = gpu() else { return };
    let n = 1003;
    for (desc, config) in cases::all() {
        let mut rng = Rng::new(41);
        let p0 = params0(&mut rng, n);
        if config.word_classes().is_none() {
            // Schedule-Free: the uniform depends on the lr history, which the device cannot
            // know; turning the device counter on is a typed error that changes nothing.
            let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
            let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
            let on = GradOptions {
                skip_nonfinite: true,
                ..Default::default()
            };
            assert!(
                matches!(gpu.set_grad_options(on), Err(Error::Unsupported { .. })),
                "{desc}"
            );
            assert_eq!(gpu.grad_options(), GradOptions::default(), "{desc}");
            continue;
        }
        let (flat, mut gpu) = skipping_on_device(&ctx, &p0, config);
        let mut taken = ReferenceRun::new(config, &p0);
        for k in 1..=CALLS {
            let lr = config.lr() * cases::lr_factor(k);
            gpu.set_lr(lr).unwrap();
            let mut g = grads(&mut rng, n);
            if BAD.contains(&k) {
                g[(k as usize * 97) % n] = if k % 2 == 0 { f32::NAN } else { f32::INFINITY };
            }
            flat.write_grads(&g).unwrap();
            gpu.step().unwrap();
            if !BAD.contains(&k) {
                taken.reference.set_lr(lr).unwrap();
                taken.step(&g);
            }
        }
        // Nothing was read so far: the host only knows an upper bound.
        assert_eq!(gpu.step_count(), CALLS, "{desc}");
        assert_eq!(gpu.device_step_count().unwrap(), taken.steps, "{desc}");
        taken.check(desc, &flat.read_params().unwrap());
        taken.check_states(desc, 10.0 * RTOL_PER_STEP, |name| {
            gpu.read_state_f32(name).unwrap()
        });
        assert!(!gpu.last_step_skipped().unwrap());
        assert_eq!(gpu.step_count(), taken.steps, "{desc}: exact once read");
        // Turning the mode off brings the count (and NAdam's mu_product) back to the host.
        gpu.set_grad_options(GradOptions::default()).unwrap();
        assert_eq!(gpu.step_count(), taken.steps, "{desc}");
        let gh = config.host_scalar(&gpu.host_state(), "mu_product");
        let rh = taken.reference.host_scalar("mu_product");
        assert_eq!(gh.is_some(), rh.is_some(), "{desc}");
        if let (Some(gh), Some(rh)) = (gh, rh) {
            assert!((gh - rh).abs() <= 1e-12 * rh.abs(), "{desc}: {gh} vs {rh}");
        }
    }
}

/// Two parameter groups with different betas and learning rates: each group's rows.
#[test]
fn parameter_groups_get_their_own_step_rows() {
    let Some(ctx) = gpu() else { return };
    let a: OptimizerConfig = NadamConfig {
        lr: 3e-3,
        ..Default::default()
    }
    .into();
    let b: OptimizerConfig = NadamConfig {
        lr: 1e-2,
        betas: (0.8, 0.99),
        momentum_decay: 8e-3,
        ..Default::default()
    }
    .into();
    let sizes = [("a", 501usize), ("b", 299usize)];
    let mut rng = Rng::new(5);
    let p0: Vec<Vec<f32>> = sizes.iter().map(|(_, n)| params0(&mut rng, *n)).collect();
    let flat = FlatParams::builder()
        .lane_aligned()
        .slice("a", &p0[0])
        .slice("b", &p0[1])
        .build(&ctx)
        .unwrap();
    let mut gpu = GpuOptimizer::with_groups(
        &flat,
        &[
            ParamGroup {
                segments: vec!["a".into()],
                config: a,
            },
            ParamGroup {
                segments: vec!["b".into()],
                config: b,
            },
        ],
    )
    .unwrap();
    gpu.set_grad_options(GradOptions {
        skip_nonfinite: true,
        ..Default::default()
    })
    .unwrap();
    let mut refs = [ReferenceRun::new(a, &p0[0]), ReferenceRun::new(b, &p0[1])];
    for k in 1..=CALLS {
        let g: Vec<Vec<f32>> = sizes.iter().map(|(_, n)| grads(&mut rng, *n)).collect();
        let mut seg_grads = g.clone();
        if BAD.contains(&k) {
            seg_grads[1][7] = f32::NAN; // one bad element in group b skips both groups
        }
        for ((name, _), v) in sizes.iter().zip(&seg_grads) {
            flat.write_segment_grads(name, v).unwrap();
        }
        gpu.step().unwrap();
        if !BAD.contains(&k) {
            for (r, g) in refs.iter_mut().zip(&g) {
                r.step(g);
            }
        }
    }
    for (i, (name, _)) in sizes.iter().enumerate() {
        let got: Vec<f32> = flat.read_segment(name).unwrap().iter().copied().collect();
        refs[i].check(name, &got);
    }
}

/// More steps than the step table has rows, with a skip every fifth call and nothing read:
/// the table wraps, the host confirms the count by itself when it must, and every step
/// still has its own t. beta2 = 0.9999 keeps the bias correction moving (1 - beta2^t goes
/// from 0.095 to 0.14 over the run), so a step run with a wrong t shows.
#[test]
fn the_step_table_wraps_and_the_count_is_confirmed_when_needed() {
    let Some(ctx) = gpu() else { return };
    let n = 37;
    let config: OptimizerConfig = AdamConfig {
        lr: 1e-2,
        betas: (0.9, 0.9999),
        ..Default::default()
    }
    .into();
    let mut rng = Rng::new(9);
    let p0 = params0(&mut rng, n);
    let (flat, mut gpu) = skipping_on_device(&ctx, &p0, config);
    let mut taken = ReferenceRun::new(config, &p0);
    let calls = 1500u64;
    for k in 1..=calls {
        let mut g = grads(&mut rng, n);
        let bad = k % 5 == 0;
        if bad {
            g[3] = f32::INFINITY;
        }
        flat.write_grads(&g).unwrap();
        gpu.step().unwrap();
        if !bad {
            taken.step(&g);
        }
    }
    assert!(taken.steps > 1024 && calls - taken.steps < 1024);
    assert_eq!(gpu.device_step_count().unwrap(), taken.steps);
    // The host confirmed the count on its own at least once (after 1023 unconfirmed
    // steps), so it knows more than "every call was a step".
    assert!(gpu.step_count() < calls, "{}", gpu.step_count());
    taken.check("wrap", &flat.read_params().unwrap());
}

/// GradScaler's rule run on the device against the host `LossScaler` fed the same events;
/// the params against the reference on the unscaled gradients of the steps taken.
#[test]
fn the_device_loss_scaler_follows_grad_scaler_rules_without_read_back() {
    let Some(ctx) = gpu() else { return };
    let n = 1001;
    let config: OptimizerConfig = AdamConfig::default().into();
    let mut rng = Rng::new(23);
    let p0 = params0(&mut rng, n);
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
    let mut host = LossScaler::new(1024.0).unwrap();
    host.growth_interval = 3;
    gpu.set_device_loss_scaler(Some(host)).unwrap();
    let (buffer, offset) = gpu.loss_scale_buffer().expect("scaler on");
    let buffer = buffer.clone();
    assert!(
        gpu.set_grad_options(GradOptions::default()).is_err(),
        "the scaler needs skip_nonfinite"
    );
    let mut taken = ReferenceRun::new(config, &p0);
    let bad = [2u64, 9, 10, 15];
    for k in 1..=16u64 {
        // The caller scales its loss by the current scale (a power of two: exact).
        let g = grads(&mut rng, n);
        let mut scaled: Vec<f32> = g.iter().map(|&x| x * host.scale() as f32).collect();
        if bad.contains(&k) {
            scaled[k as usize] = f32::INFINITY;
        }
        flat.write_grads(&scaled).unwrap();
        gpu.step().unwrap();
        host.update(bad.contains(&k));
        if !bad.contains(&k) {
            taken.step(&g);
        }
    }
    let device = gpu.device_loss_scaler().unwrap().expect("on");
    assert_eq!(
        (device.scale(), device.growth_tracker()),
        (host.scale(), host.growth_tracker())
    );
    assert_ne!(host.scale(), 1024.0, "the run grew and backed off");
    let bytes = fused_optim::gpu::buffer::read_bytes(&ctx, &buffer, offset, 4).unwrap();
    assert_eq!(
        f64::from(f32::from_le_bytes(bytes.try_into().unwrap())),
        host.scale()
    );
    assert_eq!(gpu.device_step_count().unwrap(), taken.steps);
    taken.check("scaler", &flat.read_params().unwrap());
    // A bad scaler is refused and the one on stays as it was; a new one replaces it.
    let mut bad_scaler = LossScaler::default();
    bad_scaler.backoff_factor = 1.5;
    assert!(matches!(
        gpu.set_device_loss_scaler(Some(bad_scaler)),
        Err(Error::InvalidHyperParameter { .. })
    ));
    assert_eq!(gpu.device_loss_scaler().unwrap(), Some(device));
    gpu.set_device_loss_scaler(Some(LossScaler::new(2.0).unwrap()))
        .unwrap();
    let g = grads(&mut rng, n);
    flat.write_grads(&g.iter().map(|&x| x * 2.0).collect::<Vec<_>>())
        .unwrap();
    gpu.step().unwrap();
    taken.step(&g);
    taken.check("new scaler", &flat.read_params().unwrap());
    // Off: unscaling by GradOptions::grad_scale again, and the options can drop the skip.
    gpu.set_device_loss_scaler(None).unwrap();
    assert!(gpu.device_loss_scaler().unwrap().is_none());
    gpu.set_grad_options(GradOptions::default()).unwrap();
    assert_eq!(gpu.step_count(), taken.steps);
}

/// A checkpoint saved while the device keeps the count holds the true count and NAdam's
/// mu_product; resumed with the device counting too, the next step is bit-identical.
#[test]
fn checkpoints_carry_the_device_count() {
    let Some(ctx) = gpu() else { return };
    let n = 515;
    let config: OptimizerConfig = NadamConfig::default().into();
    let skip = GradOptions {
        skip_nonfinite: true,
        ..Default::default()
    };
    let mut rng = Rng::new(31);
    let p0 = params0(&mut rng, n);
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    let mut gpu = GpuOptimizer::new(&flat, config).unwrap();
    gpu.set_grad_options(skip).unwrap();
    let mut reference = ReferenceOptimizer::new(config, n).unwrap();
    let mut p = f64s(&p0);
    for k in 1..=7u64 {
        let mut g = grads(&mut rng, n);
        if k == 2 || k == 3 {
            g[0] = f32::NAN;
        } else {
            reference.step(&mut p, &f64s(&g)).unwrap();
        }
        flat.write_grads(&g).unwrap();
        gpu.step().unwrap();
    }
    let path = std::env::temp_dir().join(format!("fo-devstep-{}.safetensors", std::process::id()));
    gpu.save_checkpoint(&path).unwrap();
    let flat2 = FlatParams::from_slice(&ctx, &flat.read_params().unwrap()).unwrap();
    let mut resumed = GpuOptimizer::new(&flat2, config).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(resumed.step_count(), 5);
    let (got, want) = (resumed.host_state().scalars[0], reference.mu_product());
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    resumed.set_grad_options(skip).unwrap();
    let g = grads(&mut rng, n);
    flat.write_grads(&g).unwrap();
    flat2.write_grads(&g).unwrap();
    gpu.step().unwrap();
    resumed.step().unwrap();
    let (a, b) = (flat.read_params().unwrap(), flat2.read_params().unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(resumed.device_step_count().unwrap(), 6);
}
