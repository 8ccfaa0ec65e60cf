//! Learning-rate schedules against values worked out by hand from PyTorch's
//! `lr_scheduler` documentation (not from the code under test), and against the optimizer:
//! changing lr through a schedule never rebuilds anything and takes effect the next step.

mod common;

use fused_optim::schedule::{Anneal, LrSchedule, Scheduler};
use fused_optim::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
}

fn lrs(s: &LrSchedule, base: f64, epochs: u64) -> Vec<f64> {
    (0..epochs).map(|e| s.lr_at(base, e)).collect()
}

#[test]
fn step_multistep_exponential_constant() {
    // StepLR(step_size=3, gamma=0.1) from 1.0: 1,1,1,0.1,0.1,0.1,0.01
    let s = LrSchedule::Step {
        step_size: 3,
        gamma: 0.1,
    };
    let want = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01];
    for (g, w) in lrs(&s, 1.0, 7).iter().zip(want) {
        assert!(close(*g, w), "{g} vs {w}");
    }
    // MultiStepLR(milestones=[2, 5], gamma=0.5) from 0.8: 0.8,0.8,0.4,0.4,0.4,0.2
    let s = LrSchedule::MultiStep {
        milestones: vec![2, 5],
        gamma: 0.5,
    };
    for (g, w) in lrs(&s, 0.8, 6).iter().zip([0.8, 0.8, 0.4, 0.4, 0.4, 0.2]) {
        assert!(close(*g, w));
    }
    let s = LrSchedule::Exponential { gamma: 0.9 };
    assert!(close(s.lr_at(2.0, 3), 2.0 * 0.729));
    // ConstantLR(factor=1/3, total_iters=2): base/3 for epochs 0 and 1, then base.
    let s = LrSchedule::ConstantFactor {
        factor: 1.0 / 3.0,
        total_iters: 2,
    };
    assert!(close(s.lr_at(0.3, 1), 0.1) && close(s.lr_at(0.3, 2), 0.3));
    assert_eq!(LrSchedule::Constant.lr_at(0.25, 1000), 0.25);
}

#[test]
fn cosine_annealing_and_warm_restarts() {
    let s = LrSchedule::CosineAnnealing {
        t_max: 10,
        eta_min: 0.01,
    };
    assert!(close(s.lr_at(1.0, 0), 1.0));
    assert!(close(s.lr_at(1.0, 5), 0.505)); // midpoint: (base + eta_min) / 2
    assert!(close(s.lr_at(1.0, 10), 0.01));
    // T_0 = 10, T_mult = 2: restarts at 10 and 30; at 20 the second cycle is half-way.
    let s = LrSchedule::CosineWarmRestarts {
        t_0: 10,
        t_mult: 2,
        eta_min: 0.0,
    };
    assert!(close(s.lr_at(1.0, 10), 1.0) && close(s.lr_at(1.0, 30), 1.0));
    assert!(close(s.lr_at(1.0, 20), 0.5));
    assert!(close(s.lr_at(1.0, 5), 0.5));
    assert!(s.lr_at(1.0, 29) < 0.01);
    let s = LrSchedule::CosineWarmRestarts {
        t_0: 4,
        t_mult: 1,
        eta_min: 0.0,
    };
    assert!(close(s.lr_at(1.0, 8), 1.0) && close(s.lr_at(1.0, 10), 0.5));
}

#[test]
fn linear_warmup_then_cosine() {
    // LinearLR(start_factor=0.25, total_iters=4): 0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0
    let s = LrSchedule::Linear {
        start_factor: 0.25,
        end_factor: 1.0,
        total_iters: 4,
    };
    for (g, w) in lrs(&s, 1.0, 6)
        .iter()
        .zip([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    {
        assert!(close(*g, w), "{g} vs {w}");
    }
    let seq = LrSchedule::Sequential {
        schedules: vec![
            s,
            LrSchedule::CosineAnnealing {
                t_max: 8,
                eta_min: 0.0,
            },
        ],
        milestones: vec![4],
    };
    assert!(close(seq.lr_at(2.0, 0), 0.5));
    assert!(close(seq.lr_at(2.0, 4), 2.0)); // the cosine restarts its own count at 0
    assert!(close(seq.lr_at(2.0, 8), 1.0)); // cosine at 4 of 8: half
    assert!(close(seq.lr_at(2.0, 12), 0.0));
}

#[test]
fn one_cycle_matches_its_definition() {
    // OneCycleLR(max_lr=1, total_steps=100): starts at 1/25, peaks at step 0.3*100-1 = 29,
    // ends at 1/25/1e4 on step 99.
    let s = LrSchedule::one_cycle(1.0, 100);
    assert!(close(s.lr_at(0.0, 0), 0.04));
    assert!(close(s.lr_at(0.0, 29), 1.0));
    assert!(close(s.lr_at(0.0, 99), 0.04 / 1e4));
    // Half-way up the cosine warm phase: (0.04 + 1) / 2.
    assert!(close(s.lr_at(0.0, 29), 1.0) && (s.lr_at(0.0, 14) - 0.52).abs() < 0.03);
    let lin = LrSchedule::OneCycle {
        max_lr: 1.0,
        total_steps: 11,
        pct_start: 0.5,
        anneal: Anneal::Linear,
        div_factor: 10.0,
        final_div_factor: 1.0,
    };
    // peak at 0.5*11-1 = 4.5: step 2 is (2/4.5) of the way from 0.1 to 1.
    assert!(close(lin.lr_at(0.0, 2), 0.1 + 0.9 * 2.0 / 4.5));
}

#[test]
fn invalid_schedules_are_typed_errors() {
    for s in [
        LrSchedule::Step {
            step_size: 0,
            gamma: 0.1,
        },
        LrSchedule::CosineAnnealing {
            t_max: 0,
            eta_min: 0.0,
        },
        LrSchedule::Linear {
            start_factor: 0.0,
            end_factor: 1.0,
            total_iters: 3,
        },
        LrSchedule::one_cycle(1.0, 1),
        LrSchedule::Sequential {
            schedules: vec![LrSchedule::Constant],
            milestones: vec![3],
        },
        LrSchedule::MultiStep {
            milestones: vec![5, 2],
            gamma: 0.1,
        },
    ] {
        assert!(matches!(
            Scheduler::new(s, 0.1),
            Err(Error::InvalidHyperParameter { .. })
        ));
    }
}

/// A schedule drives the GPU optimizer: each step uses the lr set before it, with no
/// rebuild, and the result matches the reference fed the same lrs.
#[test]
fn scheduler_drives_the_optimizer() {
    let Some(ctx) = common::gpu() else { return };
    let mut rng = common::Rng::new(3);
    let p0 = common::params0(&mut rng, 1000);
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    let config = AdamConfig {
        lr: 0.05,
        ..Default::default()
    };
    let mut opt = GpuOptimizer::new(&flat, config).unwrap();
    let mut reference = ReferenceOptimizer::new(config, 1000).unwrap();
    let mut sched = Scheduler::new(LrSchedule::one_cycle(0.05, 12), 0.05).unwrap();
    let mut p: Vec<f64> = p0.iter().map(|&v| f64::from(v)).collect();
    let mut peak: Vec<f64> = p.iter().map(|v| v.abs()).collect();
    for k in 1..=12 {
        opt.set_lr(sched.lr()).unwrap();
        reference.set_lr(sched.lr()).unwrap();
        let g = common::grads(&mut rng, 1000);
        flat.write_grads(&g).unwrap();
        opt.step().unwrap();
        reference
            .step(&mut p, &g.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
            .unwrap();
        common::track_peak(&mut peak, &p);
        sched.step();
        common::check_params(
            "scheduled",
            &flat.read_params().unwrap(),
            &p,
            &peak,
            k,
            common::RTOL_PER_STEP,
        )
        .unwrap();
    }
    assert_eq!(sched.epoch(), 12);
}
