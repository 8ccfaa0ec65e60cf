//! Trains real Burn models on Burn's wgpu device twice from the same initial weights: once
//! with Burn's own AdamW (`burn::optim::AdamWConfig`, a `ModuleOptimizer`) and once with
//! fused-optim-burn's `FusedOptimizer` (fused-optim's AdamW kernel, the same
//! hyper-parameters), alternating step by step on the same batches so both see the same
//! machine. Prints the loss curves side by side with a progress bar, the median time of the
//! whole training step (forward + backward + optimizer) and of the optimizer step alone for
//! both, and writes a PNG of the curves.
//!
//! Tasks:
//! - `mlp`: a 784-256-10 MLP (ReLU, cross-entropy) on MNIST-format idx files (`--mnist DIR`
//!   with the four standard files, plain or gzipped, read by fused-optim-tools' idx reader);
//!   without `--mnist` a small synthetic idx set (10 stroke-drawn classes) is generated into
//!   the output folder and read back through the same reader. Test accuracy at the end.
//! - `lm`: a character-level transformer language model (2 pre-norm layers, d = 128, 4
//!   heads, context 64) on `data/kjv_genesis_exodus.txt` (Genesis and Exodus, King James
//!   Version, public domain; shipped with the crate); held-out loss at the end.
//!
//! ```text
//! cargo run --release -p fused-optim-burn --example burn_train -- mlp
//! cargo run --release -p fused-optim-burn --example burn_train -- lm --steps 300
//! cargo run --release -p fused-optim-burn --example burn_train -- all --json
//! ```
//! With `--json` the last line of stdout is a JSON array with one object per task.

mod lm;
mod mlp;
mod plot;
mod race;
mod synthetic;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    Mlp,
    Lm,
    All,
}

#[derive(Parser)]
#[command(about = "Train Burn models with Burn's AdamW and with fused-optim-burn, side by side")]
struct Args {
    /// Which model to train.
    #[arg(value_enum, default_value = "all")]
    task: Task,
    /// Optimizer steps per optimizer (default: 300 for mlp, 200 for lm).
    #[arg(long)]
    steps: Option<usize>,
    /// Folder with the four MNIST idx files (train-images-idx3-ubyte, ...; .gz allowed).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Learning rate (default: 1e-3 for mlp, 3e-3 for lm).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the data order (and the synthetic data).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where the PNGs (and the synthetic idx set) go.
    #[arg(long, default_value = "target/burn_train")]
    out: PathBuf,
    /// Print a JSON array of the results as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar (logs, CI).
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (device, ctx) = fused_optim_burn::init_device()?;
    eprintln!("device: {}", ctx.describe());
    std::fs::create_dir_all(&args.out)?;
    let mut reports = Vec::new();
    if matches!(args.task, Task::Mlp | Task::All) {
        let report = mlp::run(&device, &ctx, args)?;
        reports.push(report);
    }
    if matches!(args.task, Task::Lm | Task::All) {
        let report = lm::run(&device, &ctx, args)?;
        reports.push(report);
    }
    for r in &reports {
        r.print();
    }
    if args.json {
        let rows: Vec<_> = reports.iter().map(race::Report::json).collect();
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}
