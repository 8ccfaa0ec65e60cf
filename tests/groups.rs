//! Parameter groups: segments with their own hyper-parameters, all updated by one dispatch
//! per step, against one f64 reference per segment; configuration errors.

mod common;

use common::*;
use fused_optim::*;

const SEGMENTS: [(&str, usize); 4] = [("w1", 257), ("b1", 3), ("w2", 1001), ("norm", 6)];

fn build(ctx: &GpuContext, rng: &mut Rng) -> (FlatParams, Vec<Vec<f32>>) {
    let mut b = FlatParams::builder().lane_aligned();
    let mut values = Vec::new();
    for (name, n) in SEGMENTS {
        let v = params0(rng, n);
        b = b.slice(name, &v);
        values.push(v);
    }
    (b.build(ctx).unwrap(), values)
}

fn run_groups(ctx: &GpuContext, a: OptimizerConfig, b: OptimizerConfig) {
    let mut rng = Rng::new(17);
    let (flat, p0) = build(ctx, &mut rng);
    let groups = [
        ParamGroup {
            segments: vec!["w1".into(), "w2".into()],
            config: a,
        },
        ParamGroup {
            segments: vec!["b1".into(), "norm".into()],
            config: b,
        },
    ];
    let mut opt = GpuOptimizer::with_groups(&flat, &groups).unwrap();
    assert_eq!(opt.groups(), 2);
    let group_of = |name: &str| if name.starts_with('w') { a } else { b };
    let mut refs: Vec<ReferenceOptimizer> = SEGMENTS
        .iter()
        .map(|(name, n)| ReferenceOptimizer::new(group_of(name), *n).unwrap())
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
            // Only group 1 changes its learning rate.
            opt.set_group_lr(1, b.lr() * 0.25).unwrap();
            for (i, (name, _)) in SEGMENTS.iter().enumerate() {
                if !name.starts_with('w') {
                    refs[i].set_lr(b.lr() * 0.25).unwrap();
                }
            }
        }
        for (i, (name, n)) in SEGMENTS.iter().enumerate() {
            let g = grads(&mut rng, *n);
            flat.write_segment_grads(name, &g).unwrap();
            refs[i]
                .step(
                    &mut p[i],
                    &g.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                )
                .unwrap();
            track_peak(&mut peaks[i], &p[i]);
        }
        opt.step().unwrap();
        for (i, (name, _)) in SEGMENTS.iter().enumerate() {
            let got: Vec<f32> = flat.read_segment(name).unwrap().iter().copied().collect();
            check_params(name, &got, &p[i], &peaks[i], k, RTOL_PER_STEP).unwrap();
        }
    }
    // States per segment, and the padding between aligned segments stays exactly 0.
    let all = flat.read_params().unwrap();
    for (i, (name, n)) in SEGMENTS.iter().enumerate() {
        let seg = flat.segment(name).unwrap().clone();
        for state in refs[i].state_names() {
            let got = opt.read_state_f32(state).unwrap()[seg.offset..seg.offset + n].to_vec();
            let want = refs[i].state(state).unwrap();
            let peak: Vec<f64> = want.iter().map(|x| x.abs()).collect();
            check_state(state, &got, want, &peak, 20, RTOL_PER_STEP).unwrap();
        }
        let end = seg.offset + n;
        let next = flat.segments().get(i + 1).map_or(flat.len(), |s| s.offset);
        assert!(
            all[end..next].iter().all(|&x| x == 0.0),
            "padding after {name}"
        );
    }
}

#[test]
fn groups_with_their_own_hyper_parameters_match_per_segment_references() {
    let Some(ctx) = gpu() else { return };
    let decayed = AdamConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    run_groups(
        &ctx,
        decayed.into(),
        AdamConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            betas: (0.8, 0.99),
            ..decayed
        }
        .into(),
    );
    // NAdam keeps a mu_product per group (different momentum_decay). Only the second group
    // maximizes and only the SGD group below decays: the kernel compiles an option in when
    // any group uses it.
    let nadam = NadamConfig::default();
    run_groups(
        &ctx,
        nadam.into(),
        NadamConfig {
            momentum_decay: 0.05,
            lr: 1e-2,
            maximize: true,
            ..nadam
        }
        .into(),
    );
    let sgd = SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..Default::default()
    };
    run_groups(
        &ctx,
        sgd.into(),
        SgdConfig {
            lr: 0.05,
            weight_decay: 0.1,
            dampening: 0.5,
            ..sgd
        }
        .into(),
    );
}

/// 4 KiB binding windows: the lane table is indexed from each window's first lane.
#[test]
fn groups_across_binding_windows() {
    let Some(ctx) = gpu_windowed(4096) else {
        return;
    };
    let adam = AdamConfig::default();
    run_groups(&ctx, adam.into(), AdamConfig { lr: 1e-2, ..adam }.into());
}

#[test]
fn group_configuration_errors_are_typed() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(1);
    let (flat, _) = build(&ctx, &mut rng);
    let adam: OptimizerConfig = AdamConfig::default().into();
    let g = |segs: &[&str], config: OptimizerConfig| ParamGroup {
        segments: segs.iter().map(|s| s.to_string()).collect(),
        config,
    };
    let all = ["w1", "b1", "w2", "norm"];
    let cases: Vec<(&str, Vec<ParamGroup>)> = vec![
        (
            "mixed kinds",
            vec![
                g(&["w1", "w2"], adam),
                g(&["b1", "norm"], SgdConfig::default().into()),
            ],
        ),
        (
            "amsgrad in one group only",
            vec![
                g(&["w1", "w2"], adam),
                g(
                    &["b1", "norm"],
                    AdamConfig {
                        amsgrad: true,
                        ..Default::default()
                    }
                    .into(),
                ),
            ],
        ),
        (
            "unknown segment",
            vec![g(&["w1", "w2", "b1", "norm", "nope"], adam)],
        ),
        ("unassigned segment", vec![g(&["w1", "w2", "b1"], adam)]),
        (
            "segment in two groups",
            vec![g(&all, adam), g(&["b1"], adam)],
        ),
        ("no groups", vec![]),
        ("too many groups", (0..9).map(|_| g(&all, adam)).collect()),
        (
            "invalid config",
            vec![g(
                &all,
                AdamConfig {
                    lr: -1.0,
                    ..Default::default()
                }
                .into(),
            )],
        ),
    ];
    for (desc, groups) in cases {
        assert!(GpuOptimizer::with_groups(&flat, &groups).is_err(), "{desc}");
    }
    // Segments that do not start on a lane: refused with the fix in the message.
    let unaligned = FlatParams::builder()
        .slice("a", &[1.0; 3])
        .slice("b", &[1.0; 5])
        .build(&ctx)
        .unwrap();
    let err = GpuOptimizer::with_groups(&unaligned, &[g(&["a", "b"], adam)]).unwrap_err();
    assert!(err.to_string().contains("lane_aligned"), "{err}");
}

/// A grouped optimizer's checkpoint keeps every group's hyper-parameters and host scalars:
/// the resumed next step is bit-identical; group layouts that differ are refused.
#[test]
fn grouped_checkpoints_round_trip_bit_identically() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(23);
    let (flat, _) = build(&ctx, &mut rng);
    let a: OptimizerConfig = NadamConfig {
        lr: 1e-2,
        ..Default::default()
    }
    .into();
    let b: OptimizerConfig = NadamConfig {
        momentum_decay: 0.05,
        ..Default::default()
    }
    .into();
    let groups = |a, b| {
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
    };
    let mut opt = GpuOptimizer::with_groups(&flat, &groups(a, b)).unwrap();
    for k in 0..4 {
        if k == 2 {
            opt.set_group_lr(1, 5e-3).unwrap();
        }
        flat.write_grads(&grads(&mut rng, flat.len())).unwrap();
        opt.step().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fused-optim-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grouped.safetensors");
    opt.save_checkpoint(&path).unwrap();
    let at_save = flat.read_params().unwrap();
    let g = grads(&mut rng, flat.len());
    flat.write_grads(&g).unwrap();
    opt.step().unwrap();
    let want = flat.read_params().unwrap();

    let restored = {
        let mut b = FlatParams::builder().lane_aligned();
        for (name, n) in SEGMENTS {
            b = b.slice(name, &vec![0.0; n]);
        }
        b.build(&ctx).unwrap()
    };
    restored.write_params(&at_save).unwrap();
    let fresh = NadamConfig::default().into();
    let mut resumed = GpuOptimizer::with_groups(&restored, &groups(fresh, fresh)).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    restored.write_grads(&g).unwrap();
    resumed.step().unwrap();
    let got = restored.read_params().unwrap();
    assert!(got
        .iter()
        .zip(&want)
        .all(|(x, y)| x.to_bits() == y.to_bits()));

    // Another grouping, or no groups at all: refused, nothing changes.
    let regrouped = [
        ParamGroup {
            segments: vec!["w1".into()],
            config: fresh,
        },
        ParamGroup {
            segments: vec!["b1".into(), "w2".into(), "norm".into()],
            config: fresh,
        },
    ];
    let mut other = GpuOptimizer::with_groups(&restored, &regrouped).unwrap();
    assert!(matches!(
        other.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    assert_eq!(other.step_count(), 0);
    let mut single = GpuOptimizer::new(&restored, fresh).unwrap();
    assert!(matches!(
        single.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    let mut cpu = CpuOptimizer::new(fresh, restored.len()).unwrap();
    assert!(matches!(
        cpu.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
