//! `GpuOptimizer::builder`: options combine freely (parameter groups with 16-bit params, with
//! bf16 state), checked against one f64 reference per segment with the tolerances of
//! `tests/groups.rs` and `tests/low_precision.rs`; impossible combinations are typed errors
//! naming the combination.

mod common;

use common::*;
use fused_optim::*;

const SEGMENTS: [(&str, usize); 4] = [("w1", 257), ("b1", 3), ("w2", 1001), ("norm", 6)];

fn master(ctx: &GpuContext, rng: &mut Rng) -> (FlatParams, Vec<Vec<f32>>) {
    let mut b = FlatParams::builder().lane_aligned();
    let mut values = Vec::new();
    for (name, n) in SEGMENTS {
        let v = params0(rng, n);
        b = b.slice(name, &v);
        values.push(v);
    }
    (b.build(ctx).unwrap(), values)
}

fn groups(a: OptimizerConfig, b: OptimizerConfig) -> [ParamGroup; 2] {
    [
        ParamGroup {
            segments: vec!["w1".into(), "w2".into()],
            config: a,
        },
        ParamGroup {
            segments: vec!["b1".into(), "norm".into()],
            config: b,
        },
    ]
}

fn group_of(name: &str, a: OptimizerConfig, b: OptimizerConfig) -> OptimizerConfig {
    if name.starts_with('w') {
        a
    } else {
        b
    }
}

/// Groups over 16-bit params and gradients (f32 masters): every segment's master weights
/// follow its group's f64 reference (fed the 16-bit gradients) within the per-step tolerance,
/// and every 16-bit param is its master rounded to nearest even.
fn groups_with_low_precision(format: LowFormat, a: OptimizerConfig, b: OptimizerConfig) {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(23);
    let (flat, p0) = master(&ctx, &mut rng);
    let lp = LowPrecisionParams::from_master(&flat, format).unwrap();
    let all0 = flat.read_params().unwrap();
    assert_eq!(
        lp.read_param_bits().unwrap(),
        all0.iter().map(|&v| round16(format, v)).collect::<Vec<_>>()
    );
    let mut opt = GpuOptimizer::builder(&flat)
        .groups(&groups(a, b))
        .low_precision(&lp)
        .build()
        .unwrap();
    assert_eq!(opt.groups(), 2);
    let mut refs: Vec<ReferenceOptimizer> = SEGMENTS
        .iter()
        .map(|(name, n)| ReferenceOptimizer::new(group_of(name, a, b), *n).unwrap())
        .collect();
    let mut p: Vec<Vec<f64>> = p0
        .iter()
        .map(|v| v.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let mut peaks: Vec<Vec<f64>> = p
        .iter()
        .map(|v| v.iter().map(|x| x.abs()).collect())
        .collect();
    for k in 1..=20u64 {
        if k == 10 {
            opt.set_group_lr(1, b.lr() * 0.25).unwrap();
            for (i, (name, _)) in SEGMENTS.iter().enumerate() {
                if !name.starts_with('w') {
                    refs[i].set_lr(b.lr() * 0.25).unwrap();
                }
            }
        }
        let mut bits = vec![0u16; flat.len()];
        for (i, (name, n)) in SEGMENTS.iter().enumerate() {
            let seg = flat.segment(name).unwrap().clone();
            let g: Vec<u16> = grads(&mut rng, *n)
                .iter()
                .map(|&g| round16(format, g))
                .collect();
            bits[seg.offset..seg.offset + n].copy_from_slice(&g);
            let g64: Vec<f64> = g.iter().map(|&b| f64::from(value16(format, b))).collect();
            refs[i].step(&mut p[i], &g64).unwrap();
            track_peak(&mut peaks[i], &p[i]);
        }
        lp.write_grad_bits(&bits).unwrap();
        opt.step().unwrap();
        let masters = flat.read_params().unwrap();
        for (i, (name, n)) in SEGMENTS.iter().enumerate() {
            let seg = flat.segment(name).unwrap().clone();
            let got = &masters[seg.offset..seg.offset + n];
            check_params(
                &format!("{format:?} {name}"),
                got,
                &p[i],
                &peaks[i],
                k,
                RTOL_PER_STEP,
            )
            .unwrap();
        }
        let want: Vec<u16> = masters.iter().map(|&v| round16(format, v)).collect();
        let got = lp.read_param_bits().unwrap();
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{format:?} step {k}: 16-bit param {i} is {:#06x}, master {} rounds to {:#06x}",
                got[i], masters[i], want[i]
            );
        }
    }
    for (i, (name, n)) in SEGMENTS.iter().enumerate() {
        let seg = flat.segment(name).unwrap().clone();
        for state in refs[i].state_names() {
            let got = opt.read_state_f32(state).unwrap()[seg.offset..seg.offset + n].to_vec();
            let want = refs[i].state(state).unwrap();
            let peak: Vec<f64> = want.iter().map(|x| x.abs()).collect();
            check_state(state, &got, want, &peak, 20, RTOL_PER_STEP).unwrap();
        }
    }
}

fn adam_pair() -> (OptimizerConfig, OptimizerConfig) {
    let decayed = AdamConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    (
        decayed.into(),
        AdamConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            betas: (0.8, 0.99),
            ..decayed
        }
        .into(),
    )
}

#[test]
fn groups_with_bf16_params_match_per_segment_references() {
    let (a, b) = adam_pair();
    groups_with_low_precision(LowFormat::Bf16, a, b);
}

#[test]
fn groups_with_f16_params_match_per_segment_references() {
    let (a, b) = adam_pair();
    groups_with_low_precision(LowFormat::F16, a, b);
    let momentum = |lr, wd| -> OptimizerConfig {
        SgdConfig {
            lr,
            momentum: 0.9,
            nesterov: true,
            weight_decay: wd,
            ..Default::default()
        }
        .into()
    };
    groups_with_low_precision(LowFormat::F16, momentum(0.05, 0.01), momentum(0.2, 0.0));
}

/// Everything at once: groups, bf16 params, bf16 state, stochastic rounding. The masters
/// follow the per-segment references (a loose bound: the precise bf16-state tolerance is
/// `tests/bf16_state.rs`'s; here the point is that every option takes effect together).
#[test]
fn groups_with_bf16_params_and_bf16_state() {
    let Some(ctx) = gpu() else { return };
    let (a, b) = adam_pair();
    let mut rng = Rng::new(29);
    let (flat, p0) = master(&ctx, &mut rng);
    let lp = LowPrecisionParams::from_master(&flat, LowFormat::Bf16).unwrap();
    let mut opt = GpuOptimizer::builder(&flat)
        .groups(&groups(a, b))
        .low_precision(&lp)
        .state_format(StateFormat::Bf16)
        .rounding(Rounding::Stochastic)
        .build()
        .unwrap();
    let mut refs: Vec<ReferenceOptimizer> = SEGMENTS
        .iter()
        .map(|(name, n)| ReferenceOptimizer::new(group_of(name, a, b), *n).unwrap())
        .collect();
    let mut p: Vec<Vec<f64>> = p0
        .iter()
        .map(|v| v.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let steps = 10;
    for _ in 0..steps {
        let mut bits = vec![0u16; flat.len()];
        for (i, (name, n)) in SEGMENTS.iter().enumerate() {
            let seg = flat.segment(name).unwrap().clone();
            let g: Vec<u16> = grads(&mut rng, *n)
                .iter()
                .map(|&g| round16(LowFormat::Bf16, g))
                .collect();
            bits[seg.offset..seg.offset + n].copy_from_slice(&g);
            let g64: Vec<f64> = g
                .iter()
                .map(|&b| f64::from(value16(LowFormat::Bf16, b)))
                .collect();
            refs[i].step(&mut p[i], &g64).unwrap();
        }
        lp.write_grad_bits(&bits).unwrap();
        opt.step().unwrap();
    }
    let masters = flat.read_params().unwrap();
    for (i, (name, n)) in SEGMENTS.iter().enumerate() {
        let seg = flat.segment(name).unwrap().clone();
        let lr = group_of(name, a, b).lr();
        for (j, (&got, &want)) in masters[seg.offset..seg.offset + n]
            .iter()
            .zip(&p[i])
            .enumerate()
        {
            // A quarter of Adam's movement (about lr per step): catches a group stepped
            // with another group's hyper-parameters (lrs 3x apart), while leaving room for
            // the bf16 state's error, which tests/bf16_state.rs bounds tightly.
            let bound = steps as f64 * lr * 0.25 + 1e-5 * want.abs();
            assert!(
                (f64::from(got) - want).abs() <= bound,
                "{name}[{j}]: {got} vs {want} (bound {bound})"
            );
        }
        // The group's hyper-parameters were applied: the decayed group moved differently.
        assert!(masters[seg.offset..seg.offset + n]
            .iter()
            .zip(&p0[i])
            .any(|(m, p)| m != p));
    }
}

fn invalid_combination(r: Result<GpuOptimizer>) -> String {
    match r {
        Err(e @ Error::InvalidCombination { .. }) => e.to_string(),
        Err(e) => panic!("expected InvalidCombination, got {e}"),
        Ok(_) => panic!("expected InvalidCombination, got an optimizer"),
    }
}

#[test]
fn impossible_combinations_are_typed_errors_naming_them() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[0.5; 64]).unwrap();
    let bf16 = LowPrecisionParams::from_master(&flat, LowFormat::Bf16).unwrap();
    let f16 = LowPrecisionParams::from_master(&flat, LowFormat::F16).unwrap();
    let adam = AdamConfig::default();

    let e = invalid_combination(GpuOptimizer::builder(&flat).build());
    assert!(e.contains("neither a config nor parameter groups"), "{e}");
    let e = invalid_combination(
        GpuOptimizer::builder(&flat)
            .config(SgdConfig::default())
            .state_format(StateFormat::Bf16)
            .build(),
    );
    assert!(e.contains("SGD") && e.contains("bf16 state"), "{e}");
    let e = invalid_combination(
        GpuOptimizer::builder(&flat)
            .config(adam)
            .rounding(Rounding::Stochastic)
            .build(),
    );
    assert!(e.contains("nothing stored in bf16"), "{e}");
    let e = invalid_combination(
        GpuOptimizer::builder(&flat)
            .config(adam)
            .low_precision(&f16)
            .rounding(Rounding::Stochastic)
            .build(),
    );
    assert!(e.contains("bf16 params only"), "{e}");
    let e = invalid_combination(
        GpuOptimizer::builder(&flat)
            .config(adam)
            .state_rounding(Rounding::Stochastic)
            .build(),
    );
    assert!(e.contains("StateFormat::Bf16"), "{e}");
    let other = FlatParams::from_slice(&ctx, &[0.5; 64]).unwrap();
    let e = invalid_combination(
        GpuOptimizer::builder(&other)
            .config(adam)
            .low_precision(&bf16)
            .build(),
    );
    assert!(e.contains("master weights"), "{e}");
    // The wrappers refuse what they refused before, with the same errors.
    invalid_combination(GpuOptimizer::new_low_precision(&f16, adam, true));
    invalid_combination(GpuOptimizer::with_bf16_state(
        &flat,
        Some((&f16, true)),
        adam,
        false,
    ));
    assert!(matches!(
        GpuOptimizer::builder(&flat).groups(&[]).build(),
        Err(Error::GroupCount { got: 0, .. })
    ));

    // What does go together builds: f16 params with stochastically rounded bf16 state, bf16
    // params rounded stochastically over f32 state, groups replaced by a config.
    GpuOptimizer::builder(&flat)
        .config(adam)
        .low_precision(&f16)
        .state_format(StateFormat::Bf16)
        .state_rounding(Rounding::Stochastic)
        .build()
        .unwrap();
    GpuOptimizer::builder(&flat)
        .config(adam)
        .low_precision(&bf16)
        .rounding(Rounding::Stochastic)
        .build()
        .unwrap();
    let opt = GpuOptimizer::builder(&flat)
        .groups(&[])
        .config(adam)
        .build()
        .unwrap();
    assert_eq!(opt.groups(), 1);
}

/// The builder and the shorthand constructors build the same optimizer: the same bits after
/// the same steps.
#[test]
fn the_constructors_are_the_builder() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(31);
    let p0 = params0(&mut rng, 1001);
    let g = grads(&mut rng, 1001);
    let config = NadamConfig::default();
    let a = FlatParams::from_slice(&ctx, &p0).unwrap();
    let b = FlatParams::from_slice(&ctx, &p0).unwrap();
    let mut x = GpuOptimizer::new(&a, config).unwrap();
    let mut y = GpuOptimizer::builder(&b).config(config).build().unwrap();
    for _ in 0..3 {
        a.write_grads(&g).unwrap();
        b.write_grads(&g).unwrap();
        x.step().unwrap();
        y.step().unwrap();
    }
    assert_eq!(a.read_params().unwrap(), b.read_params().unwrap());
    assert_eq!(x.host_state(), y.host_state());
}
