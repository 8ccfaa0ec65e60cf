//! The library's block-wise 8-bit Adam/AdamW (`StateFormat::Blockwise8`) against the
//! bitsandbytes 0.50.2 cases of `golden/v2` (`adam8bit_default`, `adamw8bit_default`,
//! `adam8bit_min_size_default`; CPU backend, float32 run only): the maps equal the files'
//! `qmap1`/`qmap2` bit for bit; quantising `prequant_last_step` gives the final codes and
//! absmax bit for bit; the oracle and the fast path replay every trajectory within M1 1e-5
//! (the README's tolerance for a LUT-faithful kernel) and end with the same codes as
//! bitsandbytes (the README measured 0 differing codes for such a kernel; this test
//! requires 0), the same absmax within the state metric, and for the 32-bit tensors of
//! `adam8bit_min_size_default` bitsandbytes' f32 `state1`/`state2`. A 1% change of the lr
//! fails every case, and the drift from fp32 Adam stays within the README's 0.5·k·lr. The
//! GPU's 8-bit kernel replays every case too, with the fast path's bits.

mod common;

use std::path::PathBuf;

use fused_optim::cpu::blockwise8::dynamic_map;
use fused_optim::{AdamConfig, CpuOptimizer, Optimizer, StateFormat};
use fused_optim_tools::golden::bnb8::{self, prequant_checks, Which};
use fused_optim_tools::golden::replay2::{replay, Implementation};
use fused_optim_tools::golden::v2::{self, Case2, Dtype, StateValue};

fn case(name: &str) -> Case2 {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../golden/v2")
        .join(format!("{name}.json.gz"));
    v2::load(&f).unwrap().unwrap()
}

const CASES: [&str; 3] = [
    "adam8bit_default",
    "adamw8bit_default",
    "adam8bit_min_size_default",
];

#[test]
fn maps_equal_the_files_qmaps() {
    for name in CASES {
        let c = case(name);
        let run = c.run(Dtype::F32).unwrap();
        let mut seen = 0;
        for state in run.final_state.values() {
            for (key, signed) in [("qmap1", true), ("qmap2", false)] {
                if let Some(StateValue::Tensor { data, .. }) = state.get(key) {
                    let ours = dynamic_map(signed);
                    for (i, (&a, &b)) in ours.iter().zip(data).enumerate() {
                        assert_eq!(a.to_bits(), (b as f32).to_bits(), "{name} {key}[{i}]");
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 2, "{name}: no maps");
    }
}

#[test]
fn quantising_prequant_gives_the_final_codes_bit_for_bit() {
    for name in ["adam8bit_default", "adamw8bit_default"] {
        let c = case(name);
        let checks = prequant_checks(&c).unwrap();
        // state1, absmax1, state2, absmax2 of every tensor.
        assert_eq!(checks.len(), 4 * c.tensors.len(), "{name}");
        for ch in &checks {
            assert!(ch.passed(), "{name} {}: {:?}", ch.quantity, ch.worst);
        }
    }
}

#[test]
fn oracle_and_fast_path_replay_every_case() {
    for name in CASES {
        let c = case(name);
        for which in [Which::Oracle, Which::Fast] {
            let (report, codes) = bnb8::replay(&c, which).unwrap();
            eprintln!(
                "{which:?} {report} | codes equal {} differ {}",
                codes.equal, codes.differ
            );
            assert!(report.passed(), "{which:?}: {report}");
            // Params per tensor + every final-state key of the file.
            let keys: usize = c
                .run(Dtype::F32)
                .unwrap()
                .final_state
                .values()
                .map(|s| s.len())
                .sum();
            assert!(report.checks.len() >= c.tensors.len() + keys, "{name}");
            assert!(codes.equal > 0, "{name}: no codes compared");
            assert_eq!(codes.differ, 0, "{name} {which:?}");
        }
        // Through the replay2 entry point the golden example uses.
        assert!(replay(&c, Implementation::Reference, None)
            .unwrap()
            .unwrap()
            .passed());
        assert!(replay(&c, Implementation::CpuFast, None)
            .unwrap()
            .unwrap()
            .passed());
        // The GPU needs a context: a typed error without one, never a silent n/a.
        assert!(replay(&c, Implementation::Gpu, None).is_err());
    }
}

#[test]
fn gpu_replays_every_case_with_no_differing_code() {
    let Some(ctx) = common::gpu() else { return };
    for name in CASES {
        let c = case(name);
        let (report, codes) = bnb8::replay_gpu(&c, &ctx).unwrap();
        eprintln!(
            "gpu {name} {report} | codes equal {} differ {}",
            codes.equal, codes.differ
        );
        assert!(report.passed(), "gpu {name}: {report}");
        assert!(codes.equal > 0, "{name}: no codes compared");
        assert_eq!(codes.differ, 0, "{name} gpu");
        // The GPU's final state is the fast CPU path's, bit for bit (params too).
        let (fast, fast_codes) = bnb8::replay(&c, Which::Fast).unwrap();
        assert_eq!(fast_codes, codes, "{name}");
        assert_eq!(fast.checks.len(), report.checks.len(), "{name}");
        for (a, b) in fast.checks.iter().zip(&report.checks) {
            assert_eq!(a.quantity, b.quantity);
            assert_eq!(
                a.worst.ratio.to_bits(),
                b.worst.ratio.to_bits(),
                "{name} {}",
                a.quantity
            );
        }
        assert!(replay(&c, Implementation::Gpu, Some(&ctx))
            .unwrap()
            .unwrap()
            .passed());
    }
}

#[test]
fn min_size_case_keeps_f32_state_for_small_tensors() {
    let c = case("adam8bit_min_size_default");
    let (config, min_size) = bnb8::config_of(&c).unwrap();
    assert_eq!(min_size, 4096);
    let lens: Vec<usize> = c.tensors.iter().map(|t| t.numel).collect();
    let opt = CpuOptimizer::builder(config, lens.iter().sum())
        .segments(&lens)
        .state_format(StateFormat::Blockwise8 { min_size })
        .build()
        .unwrap();
    let kinds: Vec<bool> = opt
        .blockwise8_state()
        .unwrap()
        .segments()
        .iter()
        .map(|s| {
            matches!(
                s,
                fused_optim::cpu::blockwise8::SegmentState::Quantized { .. }
            )
        })
        .collect();
    assert_eq!(kinds, [true, false, false], "emb 8-bit, w1 and b1 32-bit");
    let run = c.run(Dtype::F32).unwrap();
    assert!(matches!(
        run.final_state["w1"]["state1"],
        StateValue::Tensor { ref dtype, .. } if dtype == "float32"
    ));
}

#[test]
fn a_one_percent_lr_change_fails_every_case() {
    for name in CASES {
        let mut c = case(name);
        let lr = c.hparams["lr"].as_f64().unwrap();
        c.hparams["lr"] = serde_json::json!(lr * 1.01);
        c.lr_per_step.iter_mut().for_each(|x| *x *= 1.01);
        for which in [Which::Oracle, Which::Fast] {
            let (report, _) = bnb8::replay(&c, which).unwrap();
            assert!(!report.passed(), "{name} {which:?}: {report}");
        }
    }
}

#[test]
fn unsupported_bnb_options_are_refused() {
    let mut c = case("adam8bit_default");
    c.instance_attributes.as_mut().unwrap()["args.max_unorm"] = serde_json::json!(1.0);
    assert!(bnb8::replay(&c, Which::Fast).is_err());
    let mut c = case("adam8bit_default");
    c.hparams["alpha"] = serde_json::json!(5.0);
    assert!(bnb8::replay(&c, Which::Oracle).is_err());
}

/// The drift of the 8-bit trajectory from fp32 Adam (the library's f32 AdamW with the same
/// decoupled decay) per step, against the file's `fp32_drift` (bitsandbytes vs torch) and the
/// README's target 0.5·k·lr.
#[test]
fn drift_from_fp32_adam_is_within_half_an_lr_per_step() {
    for name in CASES {
        let c = case(name);
        let (config, min_size) = bnb8::config_of(&c).unwrap();
        let lens: Vec<usize> = c.tensors.iter().map(|t| t.numel).collect();
        let n: usize = lens.iter().sum();
        let mut q8 = CpuOptimizer::builder(config, n)
            .segments(&lens)
            .state_format(StateFormat::Blockwise8 { min_size })
            .build()
            .unwrap();
        let fp32_config = AdamConfig {
            decoupled_weight_decay: true,
            ..config
        };
        let mut fp = CpuOptimizer::new(fp32_config, n).unwrap();
        let p0: Vec<f32> = c.flat_params0().iter().map(|&x| x as f32).collect();
        let (mut p8, mut pf) = (p0.clone(), p0);
        let file_drift = c.run(Dtype::F32).unwrap().extra.as_ref().unwrap()["fp32_drift"]
            ["max_abs_diff_per_step"]
            .clone();
        let mut worst: f64 = 0.0;
        for k in 1..=c.steps {
            let g: Vec<f32> = c.flat_grads(k).unwrap().iter().map(|&x| x as f32).collect();
            let lr = c.lr_per_step[k - 1];
            q8.set_lr(lr).unwrap();
            fp.set_lr(lr).unwrap();
            q8.step(&mut p8, &g).unwrap();
            fp.step(&mut pf, &g).unwrap();
            let d = p8
                .iter()
                .zip(&pf)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0.0, f64::max);
            worst = worst.max(d / (k as f64 * c.lr_unit()));
            assert!(
                d <= 0.5 * k as f64 * c.lr_unit(),
                "{name} step {k}: drift {d:e}"
            );
        }
        eprintln!(
            "{name}: max drift / (k lr) = {worst:.3}; file's fp32_drift (last step) {}",
            file_drift
                .as_array()
                .and_then(|a| a.last())
                .map_or("?".into(), |v| v.to_string())
        );
    }
}
