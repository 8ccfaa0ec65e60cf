//! An MLP (784-128-10, ReLU, softmax) trained on MNIST from the standard idx files (plain or
//! gzipped) with mini-batches and fused optimizer steps; a progress bar shows the running
//! loss and accuracy; test accuracy at the end.
//!
//! ```text
//! cargo run --release --example mnist -- path/to/mnist/   # the folder with the 4 idx files
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fused_optim::*;
use fused_optim_tools::playground::data::Rng;
use fused_optim_tools::playground::idx::load_mnist;
use fused_optim_tools::playground::mlp::{select_rows, Activation, Mlp, Targets};
use indicatif::{ProgressBar, ProgressStyle};

mod common;

#[derive(Parser)]
#[command(about = "Train an MLP on MNIST with fused optimizer steps")]
struct Args {
    /// Folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
    /// t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may end in .gz).
    path: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Hidden units.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Where the optimizer runs.
    #[arg(long, value_enum, default_value = "gpu")]
    backend: common::BackendArg,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(path) = args.path.clone() else {
        eprintln!(
            "usage: mnist PATH\n\nPATH is a folder with the four MNIST idx files (gzipped or not):\n  \
             train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte\n\
             They are published on Yann LeCun's MNIST page and mirrored by torchvision, TensorFlow \
             Datasets and Hugging Face (dataset `mnist`)."
        );
        return ExitCode::from(2);
    };
    match train(&args, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn train(args: &Args, path: &std::path::Path) -> fused_optim_tools::Result<()> {
    let data = load_mnist(path)?;
    println!(
        "MNIST: {} training and {} test images of {} pixels",
        data.train_images.nrows(),
        data.test_images.nrows(),
        data.train_images.ncols()
    );
    let (ctx, choice) = common::backend(args.backend);
    let mlp = Mlp::new(
        &[data.train_images.ncols(), args.hidden, 10],
        Activation::Relu,
    )?;
    let init = mlp.init(1);
    let mut opt = AutoOptimizer::new(
        ctx.as_ref(),
        &init,
        AdamConfig {
            lr: args.lr,
            ..Default::default()
        },
        choice,
    )?;
    println!(
        "{} parameters in one flat buffer; backend {:?}",
        mlp.num_params(),
        opt.backend()
    );
    let mut params: Vec<f64> = init.iter().map(|&v| f64::from(v)).collect();
    let targets = Targets::Classes(data.train_labels.clone());
    let n = data.train_images.nrows();
    let mut rng = Rng::new(7);
    for epoch in 1..=args.epochs {
        let order = rng.permutation(n);
        let bar = ProgressBar::new(n.div_ceil(args.batch) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} {bar:40} {pos}/{len} {msg} [{elapsed}<{eta}]",
            )
            .expect("template"),
        );
        bar.set_prefix(epoch.to_string());
        let (mut run_loss, mut run_acc) = (0.0, 0.0);
        for (k, rows) in order.chunks(args.batch).enumerate() {
            let xb = select_rows(&data.train_images, rows);
            let tb = targets.select(rows);
            let (loss, grad) = mlp.loss_and_grad(&params, &xb, &tb);
            let acc = mlp.accuracy(&params, &xb, &tb);
            let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
            opt.write_grads(&grad)?;
            opt.step()?;
            params = opt.read_params()?.iter().map(|&v| f64::from(v)).collect();
            // Exponential moving averages over ~100 batches.
            let w = if k == 0 { 1.0 } else { 0.01 };
            run_loss += w * (loss - run_loss);
            run_acc += w * (acc - run_acc);
            bar.set_message(format!("loss {run_loss:.4} acc {:.1}%", 100.0 * run_acc));
            bar.inc(1);
        }
        bar.finish();
    }
    let test = Targets::Classes(data.test_labels.clone());
    println!(
        "test accuracy: {:.2}% (loss {:.4})",
        100.0 * mlp.accuracy(&params, &data.test_images, &test),
        mlp.loss(&params, &data.test_images, &test)
    );
    Ok(())
}
