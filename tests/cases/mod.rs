//! The table of configurations every implementation is checked on: every optimizer with
//! every option, one row per (description, config).
#![allow(dead_code)]

use fused_optim::*;

pub fn all() -> Vec<(&'static str, OptimizerConfig)> {
    let sgd = SgdConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let adagrad = AdagradConfig::default();
    let rms = RmspropConfig::default();
    let adam = AdamConfig::default();
    let adamw = AdamConfig::adamw();
    let adadelta = AdadeltaConfig::default();
    let nadam = NadamConfig::default();
    let adamax = AdamaxConfig::default();
    let radam = RadamConfig::default();
    let lion = LionConfig::default();
    let sf_adamw = ScheduleFreeConfig::adamw();
    let sf_sgd = ScheduleFreeConfig::sgd();
    let lamb = LambConfig::default();
    vec![
        ("lamb default", lamb.into()),
        (
            "lamb decoupled wd clamp",
            LambConfig {
                weight_decay: 0.01,
                clamp: 0.5,
                ..lamb
            }
            .into(),
        ),
        (
            "lamb l2 wd maximize",
            LambConfig {
                weight_decay: 0.01,
                weight_decouple: false,
                maximize: true,
                ..lamb
            }
            .into(),
        ),
        (
            "lamb adam fixed decay no averaging",
            LambConfig {
                adam: true,
                weight_decay: 0.05,
                fixed_decay: true,
                grad_averaging: false,
                ..lamb
            }
            .into(),
        ),
        (
            "lamb pre_norm",
            LambConfig {
                pre_norm: true,
                max_grad_norm: 0.5,
                ..lamb
            }
            .into(),
        ),
        ("sgd plain", sgd.into()),
        (
            "sgd momentum",
            SgdConfig {
                momentum: 0.9,
                ..sgd
            }
            .into(),
        ),
        (
            "sgd momentum dampening",
            SgdConfig {
                momentum: 0.9,
                dampening: 0.3,
                ..sgd
            }
            .into(),
        ),
        (
            "sgd nesterov",
            SgdConfig {
                momentum: 0.9,
                nesterov: true,
                ..sgd
            }
            .into(),
        ),
        (
            "sgd wd",
            SgdConfig {
                weight_decay: 0.05,
                ..sgd
            }
            .into(),
        ),
        (
            "sgd momentum wd",
            SgdConfig {
                momentum: 0.8,
                weight_decay: 0.05,
                ..sgd
            }
            .into(),
        ),
        (
            "sgd maximize",
            SgdConfig {
                momentum: 0.9,
                maximize: true,
                ..sgd
            }
            .into(),
        ),
        ("adagrad default", adagrad.into()),
        (
            "adagrad lr_decay",
            AdagradConfig {
                lr_decay: 0.05,
                ..adagrad
            }
            .into(),
        ),
        (
            "adagrad wd",
            AdagradConfig {
                weight_decay: 0.05,
                ..adagrad
            }
            .into(),
        ),
        (
            "adagrad initial acc",
            AdagradConfig {
                initial_accumulator_value: 0.1,
                ..adagrad
            }
            .into(),
        ),
        (
            "adagrad eps",
            AdagradConfig {
                eps: 1e-2,
                ..adagrad
            }
            .into(),
        ),
        (
            "adagrad maximize",
            AdagradConfig {
                maximize: true,
                ..adagrad
            }
            .into(),
        ),
        ("rmsprop default", rms.into()),
        (
            "rmsprop alpha",
            RmspropConfig {
                alpha: 0.9,
                eps: 1e-4,
                ..rms
            }
            .into(),
        ),
        (
            "rmsprop centered",
            RmspropConfig {
                centered: true,
                ..rms
            }
            .into(),
        ),
        (
            "rmsprop momentum",
            RmspropConfig {
                momentum: 0.9,
                ..rms
            }
            .into(),
        ),
        (
            "rmsprop centered momentum",
            RmspropConfig {
                centered: true,
                momentum: 0.5,
                ..rms
            }
            .into(),
        ),
        // eps 1e-4: with L2 decay g = g + wd*p can cancel to ~1e-7 in f32, and at step 1
        // RMSprop divides by sqrt(0.01 g^2) + eps: eps = 1e-8 would amplify that rounding of g
        // (an f32 property, not a kernel error) past the tolerance.
        (
            "rmsprop wd",
            RmspropConfig {
                weight_decay: 0.05,
                eps: 1e-4,
                ..rms
            }
            .into(),
        ),
        (
            "rmsprop maximize",
            RmspropConfig {
                maximize: true,
                momentum: 0.5,
                ..rms
            }
            .into(),
        ),
        ("adam default", adam.into()),
        (
            "adam amsgrad",
            AdamConfig {
                amsgrad: true,
                ..adam
            }
            .into(),
        ),
        (
            "adam l2",
            AdamConfig {
                weight_decay: 0.05,
                ..adam
            }
            .into(),
        ),
        ("adam eps", AdamConfig { eps: 1e-3, ..adam }.into()),
        (
            "adam betas",
            AdamConfig {
                betas: (0.8, 0.99),
                ..adam
            }
            .into(),
        ),
        (
            "adam maximize",
            AdamConfig {
                maximize: true,
                ..adam
            }
            .into(),
        ),
        ("adamw default", adamw.into()),
        (
            "adamw amsgrad",
            AdamConfig {
                amsgrad: true,
                ..adamw
            }
            .into(),
        ),
        (
            "adamw wd",
            AdamConfig {
                weight_decay: 0.1,
                lr: 1e-2,
                ..adamw
            }
            .into(),
        ),
        (
            "adamw maximize",
            AdamConfig {
                maximize: true,
                ..adamw
            }
            .into(),
        ),
        ("adadelta default", adadelta.into()),
        (
            "adadelta rho eps",
            AdadeltaConfig {
                rho: 0.5,
                eps: 1e-4,
                ..adadelta
            }
            .into(),
        ),
        (
            "adadelta wd",
            AdadeltaConfig {
                weight_decay: 0.05,
                ..adadelta
            }
            .into(),
        ),
        (
            "adadelta maximize",
            AdadeltaConfig {
                maximize: true,
                ..adadelta
            }
            .into(),
        ),
        ("nadam default", nadam.into()),
        (
            "nadam l2",
            NadamConfig {
                weight_decay: 0.05,
                ..nadam
            }
            .into(),
        ),
        (
            "nadam decoupled",
            NadamConfig {
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..nadam
            }
            .into(),
        ),
        (
            "nadam momentum_decay",
            NadamConfig {
                momentum_decay: 1e-2,
                ..nadam
            }
            .into(),
        ),
        (
            "nadam maximize",
            NadamConfig {
                maximize: true,
                ..nadam
            }
            .into(),
        ),
        ("adamax default", adamax.into()),
        (
            "adamax wd",
            AdamaxConfig {
                weight_decay: 0.05,
                ..adamax
            }
            .into(),
        ),
        (
            "adamax eps",
            AdamaxConfig {
                eps: 1e-2,
                ..adamax
            }
            .into(),
        ),
        (
            "adamax maximize",
            AdamaxConfig {
                maximize: true,
                ..adamax
            }
            .into(),
        ),
        ("radam default", radam.into()),
        (
            "radam l2",
            RadamConfig {
                weight_decay: 0.05,
                ..radam
            }
            .into(),
        ),
        (
            "radam decoupled",
            RadamConfig {
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..radam
            }
            .into(),
        ),
        (
            "radam maximize",
            RadamConfig {
                maximize: true,
                ..radam
            }
            .into(),
        ),
        ("lion default", lion.into()),
        (
            "lion wd",
            LionConfig {
                lr: 3e-4,
                weight_decay: 0.1,
                ..lion
            }
            .into(),
        ),
        (
            "lion decoupled wd",
            LionConfig {
                lr: 3e-4,
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                betas: (0.8, 0.95),
            }
            .into(),
        ),
        ("schedule-free adamw default", sf_adamw.into()),
        (
            "schedule-free adamw warmup wd",
            ScheduleFreeConfig {
                lr: 0.01,
                warmup_steps: 5,
                weight_decay: 0.01,
                r: 0.5,
                ..sf_adamw
            }
            .into(),
        ),
        (
            "schedule-free sgd default",
            ScheduleFreeConfig { lr: 0.05, ..sf_sgd }.into(),
        ),
        (
            "schedule-free sgd warmup wd",
            ScheduleFreeConfig {
                lr: 0.05,
                warmup_steps: 5,
                weight_decay: 0.01,
                beta: 0.8,
                weight_lr_power: 1.0,
                ..sf_sgd
            }
            .into(),
        ),
    ]
}

/// The rows of Adafactor: every option, stepped on every path over a model of shaped
/// tensors (factored matrices, a batch of matrices, vectors) by tests/adafactor.rs (the
/// suites over `all()` use one 1-D vector and gradient options the per-tensor GPU path
/// refuses).
pub fn shaped() -> Vec<(&'static str, OptimizerConfig)> {
    let ada = AdafactorConfig::default();
    vec![
        ("adafactor default", ada.into()),
        (
            "adafactor wd 0.1 maximize",
            AdafactorConfig {
                weight_decay: 0.1,
                maximize: true,
                ..ada
            }
            .into(),
        ),
        (
            "adafactor lr 0.5 eps1 0.1 d 1.5",
            AdafactorConfig {
                lr: 0.5,
                eps1: Some(0.1),
                d: 1.5,
                ..ada
            }
            .into(),
        ),
        (
            "adafactor beta2_decay -0.5 eps2 0 wd 0.01",
            AdafactorConfig {
                beta2_decay: -0.5,
                eps2: 0.0,
                weight_decay: 0.01,
                ..ada
            }
            .into(),
        ),
    ]
}

/// Learning-rate multiplier before step k (1-based): warm, halved, zero (state still
/// advances, params must not move), doubled, back.
/// The rows of algorithms that take 2-D tensors only (Muon): every option, stepped over a
/// model of matrices by tests/muon.rs (the suites over `all()` use 1-D vectors).
pub fn matrix() -> Vec<(&'static str, OptimizerConfig)> {
    let muon = MuonConfig::default();
    vec![
        ("muon default", muon.into()),
        (
            "muon no nesterov lr 0.02",
            MuonConfig {
                lr: 0.02,
                nesterov: false,
                ..muon
            }
            .into(),
        ),
        (
            "muon match_rms_adamw wd 0.01",
            MuonConfig {
                lr: 0.01,
                weight_decay: 0.01,
                adjust_lr: MuonLrAdjust::MatchRmsAdamw,
                ..muon
            }
            .into(),
        ),
        (
            "muon spectral_unclamped no decay momentum 0.9",
            MuonConfig {
                weight_decay: 0.0,
                momentum: 0.9,
                adjust_lr: MuonLrAdjust::SpectralUnclamped,
                ..muon
            }
            .into(),
        ),
        (
            "muon 3 steps other coefficients eps",
            MuonConfig {
                ns: fused_optim::cpu::newton_schulz::NewtonSchulz {
                    steps: 3,
                    coefficients: (2.0, -1.5, 0.5),
                    eps: 1e-3,
                    ..Default::default()
                },
                ..muon
            }
            .into(),
        ),
    ]
}

pub fn lr_factor(k: u64) -> f64 {
    match k {
        1..=7 => 1.0,
        8..=11 => 0.5,
        12 => 0.0,
        13..=15 => 2.0,
        _ => 1.0,
    }
}
