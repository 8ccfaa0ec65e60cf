//! Replay PyTorch golden trajectories (`optim-golden/1` JSON) through the CPU reference (f64,
//! against the float64 run) and the GPU kernels (f32, against the float32 run).
//!
//! ```text
//! cargo run --release --example golden -- ../shared/golden [more files or folders...]
//! ```
//! Prints one line per case starting with PASS or FAIL; exits 1 if any case fails.

use std::path::PathBuf;
use std::process::ExitCode;

use fused_optim::golden::{self, PathReport};
use fused_optim::GpuContext;

fn line(label: &str, r: &Result<PathReport, fused_optim::Error>) -> (bool, String) {
    match r {
        Ok(r) => (
            r.passed(),
            format!(
                "{label}: params abs {:.2e} rel {:.2e}, state abs {:.2e} rel {:.2e}{}",
                r.params_abs,
                r.params_rel,
                r.state_abs,
                r.state_rel,
                r.failure
                    .as_ref()
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => (false, format!("{label}: error: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if args.is_empty() {
        eprintln!("usage: golden PATH... (golden JSON files or folders of them)");
        return ExitCode::from(2);
    }
    let files = match golden::collect_files(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("adapter: {}", ctx.describe());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for file in files {
        let case = match golden::load(&file) {
            Ok(Some(c)) => c,
            Ok(None) => {
                println!(
                    "SKIP {} (not a golden case: another schema, or an index of cases)",
                    file.display()
                );
                skipped += 1;
                continue;
            }
            Err(e) => {
                println!("FAIL {} ({e})", file.display());
                failed += 1;
                continue;
            }
        };
        let (ok_ref, ref_line) = line("ref(f64)", &case.replay_reference());
        let (ok_gpu, gpu_line) = line("gpu(f32)", &case.replay_gpu(&ctx));
        let ok = ok_ref && ok_gpu;
        println!(
            "{} {:<32} {ref_line} | {gpu_line}",
            if ok { "PASS" } else { "FAIL" },
            case.name
        );
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("golden: {passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
