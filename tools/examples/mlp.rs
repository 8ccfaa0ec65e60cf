//! A 2-4-1 and a 2-16-1 MLP on XOR-like data (label = the signs of x and y differ): forward
//! and backward on the CPU with ndarray, all weights in one flat GPU buffer updated by one
//! fused step. A finite-difference gradient check runs first; then SGD+momentum, Nesterov,
//! RMSprop and Adam train each network and their loss curves go into one plot.
//!
//! ```text
//! cargo run --release --example mlp      # target/plots/mlp_loss.png
//! ```

use std::path::PathBuf;

use clap::Parser;
use fused_optim::*;
use fused_optim_tools::playground::data;
use fused_optim_tools::playground::mlp::{Activation, Mlp, Targets};
use plotters::prelude::*;

mod common;

#[derive(Parser)]
#[command(about = "Small MLPs on XOR-like data, trained by fused optimizer steps")]
struct Args {
    /// Full-batch training steps.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Folder for the pictures.
    #[arg(long, default_value = "target/plots")]
    out: PathBuf,
    /// Where the optimizer runs.
    #[arg(long, value_enum, default_value = "gpu")]
    backend: common::BackendArg,
}

fn main() -> fused_optim_tools::Result<()> {
    let args = Args::parse();
    common::register_font();
    let (ctx, choice) = common::backend(args.backend);
    let (x, y) = data::xor(256, 1);
    let targets = Targets::Binary(y);

    let mut series = Vec::new();
    for hidden in [4usize, 16] {
        let mlp = Mlp::new(&[2, hidden, 1], Activation::Tanh)?;
        let init = mlp.init(hidden as u64);
        let init64: Vec<f64> = init.iter().map(|&v| f64::from(v)).collect();
        let worst = mlp.gradient_check(&init64, &x, &targets);
        println!(
            "2-{hidden}-1: {} parameters; gradient check: max relative error {worst:.2e}",
            mlp.num_params()
        );
        assert!(
            worst < 1e-5,
            "the backward pass disagrees with finite differences"
        );
        for (name, config) in [
            (
                "SGD+momentum",
                OptimizerConfig::from(SgdConfig {
                    lr: 0.1,
                    momentum: 0.9,
                    ..Default::default()
                }),
            ),
            (
                "Nesterov",
                SgdConfig {
                    lr: 0.1,
                    momentum: 0.9,
                    nesterov: true,
                    ..Default::default()
                }
                .into(),
            ),
            (
                "RMSprop",
                RmspropConfig {
                    lr: 0.01,
                    ..Default::default()
                }
                .into(),
            ),
            (
                "Adam",
                AdamConfig {
                    lr: 0.02,
                    ..Default::default()
                }
                .into(),
            ),
        ] {
            let mut opt = AutoOptimizer::new(ctx.as_ref(), &init, config, choice)?;
            let mut losses = Vec::with_capacity(args.steps);
            let mut params = init64.clone();
            for _ in 0..args.steps {
                let (loss, grad) = mlp.loss_and_grad(&params, &x, &targets);
                losses.push(loss);
                let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
                opt.write_grads(&grad)?;
                opt.step()?;
                params = opt.read_params()?.iter().map(|&v| f64::from(v)).collect();
            }
            let acc = mlp.accuracy(&params, &x, &targets);
            println!(
                "  {name:<13} final loss {:.6e}  accuracy {:.1}%",
                mlp.loss(&params, &x, &targets),
                100.0 * acc
            );
            series.push((format!("2-{hidden}-1 {name}"), losses));
        }
    }
    let path = common::out_path(&args.out, "mlp_loss.png");
    let root = BitMapBackend::new(&path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    common::log_lines(
        &root,
        "XOR-like data: training loss (BCE)",
        "step",
        "loss",
        &series,
        1e-4,
    );
    root.present().expect("write");
    println!("wrote {}", path.display());
    Ok(())
}
