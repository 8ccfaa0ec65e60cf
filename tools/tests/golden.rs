//! Every golden file in golden/v1 (PyTorch 2.15 trajectories, copied gzip-compressed from
//! ../shared/golden; golden/README.md), lattice and path cases,
//! through the f64 CPU reference (vs the float64 run, 1e-12 per step) and the GPU kernels (vs
//! the float32 run, 1e-5 per step): the tolerances the golden README gives and justifies.

mod common;

use std::path::PathBuf;

use fused_optim_tools::golden;

fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../golden/v1");
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
    let mut case = golden::load(&golden_dir().join("adam_eps.json.gz"))
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

/// The in-repo copies are read compressed, and a plain `.json` of the same case gives the same
/// case (the loader's two forms agree).
#[test]
fn compressed_and_plain_files_load_alike() {
    let gz = golden_dir().join("path_bowl_adam.json.gz");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()),
        &mut text,
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("fused-optim-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("path_bowl_adam.json");
    std::fs::write(&plain, &text).unwrap();
    let a = golden::load(&gz).unwrap().unwrap();
    let b = golden::load(&plain).unwrap().unwrap();
    assert_eq!(a.name, "path_bowl_adam");
    assert_eq!(
        (a.params0.clone(), a.expected_f64.params.clone()),
        (b.params0.clone(), b.expected_f64.params.clone())
    );
    // A folder with both forms lists both, plus nothing that is not JSON.
    std::fs::write(dir.join("notes.txt"), "not a case").unwrap();
    std::fs::copy(&gz, dir.join("path_bowl_adam.json.gz")).unwrap();
    let files = golden::collect_files(std::slice::from_ref(&dir)).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["path_bowl_adam.json", "path_bowl_adam.json.gz"]);
    // A corrupt gzip file is a typed error, not a panic.
    let bad = dir.join("bad.json.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        golden::load(&bad),
        Err(fused_optim_tools::Error::Golden { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every case file of the folder is there in compressed form only, and the folder's README
/// and index are plain.
#[test]
fn repository_copy_is_complete() {
    let files = golden::collect_files(&[golden_dir()]).unwrap();
    let plain: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(plain, [&golden_dir().join("index.json")]);
    assert!(golden_dir().join("README.md").is_file());
    let index = golden::read_json(&golden_dir().join("index.json")).unwrap();
    let listed = index["cases"].as_array().unwrap().len();
    assert_eq!(files.len(), listed + 1, "index.json lists {listed} cases");
}
