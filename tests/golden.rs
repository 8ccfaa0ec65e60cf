//! Every golden file in ../shared/golden (PyTorch 2.15 trajectories), lattice and path cases,
//! through the f64 CPU reference (vs the float64 run, 1e-12 per step) and the GPU kernels (vs
//! the float32 run, 1e-5 per step): the tolerances the golden README gives and justifies.

mod common;

use std::path::PathBuf;

use fused_optim::golden;

fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden");
    assert!(dir.is_dir(), "golden data not found at {}", dir.display());
    dir
}

fn cases() -> Vec<golden::GoldenCase> {
    let files = golden::collect_files(&[golden_dir()]).unwrap();
    let cases: Vec<_> = files
        .iter()
        .filter_map(|f| golden::load(f).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // Both kinds are present and every optimizer is covered.
    assert!(cases.len() >= 40, "only {} golden cases found", cases.len());
    for opt in [
        "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "NAdam", "Adamax", "RAdam",
    ] {
        assert!(
            cases.iter().any(|c| c.optimizer == opt),
            "no golden case for {opt}"
        );
    }
    assert!(cases
        .iter()
        .any(|c| matches!(c.gradients, golden::Gradients::Path(_))));
    cases
}

#[test]
fn reference_reproduces_pytorch_float64() {
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|c| {
            let r = c.replay_reference().unwrap();
            r.failure.map(|f| format!("{}: {f}", c.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gpu_reproduces_pytorch_float32() {
    let Some(ctx) = common::gpu() else { return };
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|c| {
            let r = c.replay_gpu(&ctx).unwrap();
            r.failure.map(|f| format!("{}: {f}", c.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The replay is not vacuous: a golden case with its eps moved (Adam's eps placement is the
/// classic bug) fails.
#[test]
fn golden_check_catches_a_wrong_config() {
    let mut case = golden::load(&golden_dir().join("adam_eps.json"))
        .unwrap()
        .unwrap();
    if let fused_optim::OptimizerConfig::Adam(c) = &mut case.config {
        c.eps *= 1.5;
    }
    assert!(!case.replay_reference().unwrap().passed());
}

#[test]
fn index_json_is_skipped_not_failed() {
    assert!(golden::load(&golden_dir().join("index.json"))
        .unwrap()
        .is_none());
}
