//! Replay golden trajectories through the CPU reference (f64, against the float64 run) and the
//! GPU kernels (f32, against the float32 run).
//!
//! ```text
//! cargo run --release --example golden -- golden/v1 [more files or folders...]
//! ```
//! Takes `optim-golden/1` and `optim-golden/2` files (`.json` or `.json.gz`) and folders of
//! them. Prints one line per file starting with PASS, FAIL or SKIP (`optim-golden/2` cases,
//! whose algorithms the library does not have yet, and files that are not cases), then
//! `N passed, M failed, K skipped`; exits 1 if any case fails.

use std::path::PathBuf;
use std::process::ExitCode;

use fused_optim::GpuContext;
use fused_optim_tools::golden::{self, Golden, PathReport};

fn line(label: &str, r: &Result<PathReport, fused_optim_tools::Error>) -> (bool, String) {
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

/// An `optim-golden/2` case through the reference, the fast CPU path and the GPU; `None`
/// when the library does not have the algorithm.
fn replay_v2(case: &golden::v2::Case2, ctx: &GpuContext) -> Option<(bool, String)> {
    use golden::replay2::{replay, Implementation};
    let mut ok = true;
    let mut parts = Vec::new();
    // The 8-bit cases have a float32 run only: their reference is the f32 oracle.
    let reference = if case.algorithm == "bnb8bit" {
        "oracle(f32)"
    } else {
        "ref(f64)"
    };
    for (label, which) in [
        (reference, Implementation::Reference),
        ("cpu(f32)", Implementation::CpuFast),
        ("gpu(f32)", Implementation::Gpu),
    ] {
        match replay(case, which, Some(ctx)) {
            Ok(None) if parts.is_empty() => return None,
            Ok(None) => parts.push(format!("{label} n/a")),
            Ok(Some(r)) => {
                ok &= r.passed();
                let worst = r.worst().map_or(0.0, |c| c.worst.ratio);
                parts.push(format!("{label} worst/tol {worst:.2e}"));
                for f in r.failures() {
                    parts.push(format!("[{label} {}: {:?}]", f.quantity, f.worst));
                }
            }
            Err(e) => {
                ok = false;
                parts.push(format!("{label} error: {e}"));
            }
        }
    }
    Some((ok, parts.join(" | ")))
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
    if files.is_empty() {
        eprintln!("no golden files found in {args:?}");
        return ExitCode::from(2);
    }
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
        let case = match golden::load_any(&file) {
            Ok(Golden::V1(c)) => c,
            Ok(Golden::V2(c)) => {
                match replay_v2(&c, &ctx) {
                    None => {
                        println!("SKIP {} ({}: not in the library yet)", c.name, c.algorithm);
                        skipped += 1;
                    }
                    Some((ok, text)) => {
                        println!("{} {:<32} {text}", if ok { "PASS" } else { "FAIL" }, c.name);
                        if ok {
                            passed += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                continue;
            }
            Ok(Golden::NotACase) => {
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
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
