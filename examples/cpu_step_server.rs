//! A timing server for interleaved comparisons (`scripts/pytorch_compare.py`): keeps one
//! fast-CPU optimizer of the benchmark suite alive and times batches of its steps on
//! request, so that the driver can alternate batches of fused-optim and of a peer (PyTorch,
//! bitsandbytes) minutes- and seconds-apart drift cancelling in per-pair ratios.
//!
//! Protocol (one request per line on stdin, one answer per line on stdout):
//! - `setup NAME LOG2 FORMAT`: an optimizer of `benchmark_suite()` named `NAME` over 2^LOG2
//!   parameters with state `f32`, `bf16` or `8bit` (bitsandbytes-style, min size 4096);
//!   answers `ok` or `err MESSAGE`. Two warm-up steps run.
//! - `setup muon MODEL ARITHMETIC`: `torch.optim.Muon`'s defaults over the 2-D tensors of
//!   `MODEL`: `square_D` (one D x D matrix) or `transformer_L_D` (L layers of q, k, v, o
//!   D x D and the MLP's D x 4D and 4D x D), each tensor a segment of its own; Newton-Schulz
//!   in `f32` (our default) or `bf16` (torch's CPU arithmetic, `NsArithmetic::Bf16`).
//! - `time K`: runs K steps, answers the wall seconds of all K.
//! - `quit`.
//!
//! `cargo build --release --example cpu_step_server`

use std::io::{BufRead, Write};
use std::time::Instant;

use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::roofline::benchmark_suite;
use fused_optim::{CpuOptimizer, StateFormat};

struct Run {
    opt: CpuOptimizer,
    params: StaggeredVec,
    grads: StaggeredVec,
}

fn setup_muon(model: &str, arithmetic: &str) -> Result<Run, String> {
    let arithmetic = fused_optim::NsArithmetic::from_name(arithmetic)
        .ok_or_else(|| format!("unknown Newton-Schulz arithmetic {arithmetic}"))?;
    let shapes: Vec<Vec<usize>> = fused_optim::roofline::muon_model_shapes(model)
        .ok_or_else(|| format!("unknown Muon model {model}"))?
        .into_iter()
        .map(|(r, c)| vec![r, c])
        .collect();
    let n: usize = shapes.iter().map(|s| s[0] * s[1]).sum();
    let mut config = fused_optim::MuonConfig::default();
    config.ns.arithmetic = arithmetic;
    let opt = CpuOptimizer::builder(config, n)
        .shapes(&shapes)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(warm(opt, n))
}

/// Params of order 1 and gradients of order 1e-2 in staggered huge pages, two warm-up
/// steps.
fn warm(opt: CpuOptimizer, n: usize) -> Run {
    let params: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.754_877_7).fract() - 0.5) * 2.0)
        .collect();
    let grads: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2e-2)
        .collect();
    let mut run = Run {
        opt,
        params: StaggeredVec::from_slice(&params, 0),
        grads: StaggeredVec::from_slice(&grads, 4),
    };
    for _ in 0..2 {
        // A warm-up step of a model that was built cannot fail.
        let _ = run.opt.step(&mut run.params, &run.grads);
    }
    run
}

fn setup(name: &str, log2: u32, format: &str) -> Result<Run, String> {
    let config = benchmark_suite()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c)
        .ok_or_else(|| format!("no optimizer {name} in the suite"))?;
    if log2 > 30 {
        return Err(format!("2^{log2} parameters is too many"));
    }
    let n = 1usize << log2;
    let format = match format {
        "f32" => StateFormat::F32,
        "bf16" => StateFormat::Bf16,
        "8bit" => StateFormat::Blockwise8 { min_size: 4096 },
        other => return Err(format!("unknown state format {other}")),
    };
    let opt = CpuOptimizer::builder(config, n)
        .state_format(format)
        .build()
        .map_err(|e| e.to_string())?;
    // Parameters of order 1 and gradients of order 1e-2, as the PyTorch side draws them; in
    // huge pages at staggered addresses (`StaggeredVec`, as the throughput example holds
    // them), as PyTorch's tensors are under THP_MEM_ALLOC_ENABLE=1.
    let params: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.754_877_7).fract() - 0.5) * 2.0)
        .collect();
    let grads: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2e-2)
        .collect();
    let (params, grads) = (
        StaggeredVec::from_slice(&params, 0),
        StaggeredVec::from_slice(&grads, 4),
    );
    let mut run = Run { opt, params, grads };
    for _ in 0..2 {
        run.opt
            .step(&mut run.params, &run.grads)
            .map_err(|e| e.to_string())?;
    }
    Ok(run)
}

fn main() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut run: Option<Run> = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["setup", "muon", model, arithmetic] => {
                run = None;
                match setup_muon(model, arithmetic) {
                    Ok(r) => {
                        run = Some(r);
                        "ok".to_string()
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            ["setup", name, log2, format] => {
                run = None;
                match log2.parse::<u32>() {
                    Ok(l) => match setup(name, l, format) {
                        Ok(r) => {
                            run = Some(r);
                            "ok".to_string()
                        }
                        Err(e) => format!("err {e}"),
                    },
                    Err(_) => format!("err bad log2 {log2}"),
                }
            }
            ["time", k] => match (run.as_mut(), k.parse::<u32>()) {
                (Some(r), Ok(k)) => {
                    let t = Instant::now();
                    let mut failed = None;
                    for _ in 0..k {
                        if let Err(e) = r.opt.step(&mut r.params, &r.grads) {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                    match failed {
                        None => format!("{:.9}", t.elapsed().as_secs_f64()),
                        Some(e) => format!("err {e}"),
                    }
                }
                (None, _) => "err no setup".to_string(),
                (_, Err(_)) => format!("err bad count {k}"),
            },
            ["quit"] => break,
            _ => format!("err unknown request {line:?}"),
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}
