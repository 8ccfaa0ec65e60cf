//! Linear regression (y = 4 + 3x + noise, 100 points) by full-batch gradient descent,
//! single-sample SGD and mini-batch SGD (32), with one loss plot showing their noise; then
//! logistic regression on two gaussian classes by mini-batch SGD, with its decision boundary.
//!
//! ```text
//! cargo run --release --example regression      # pictures in target/plots/
//! ```

use std::path::PathBuf;

use clap::Parser;
use fused_optim_tools::playground::data;
use fused_optim_tools::playground::regression::{
    fit_linear, fit_logistic, logistic_accuracy, Batching, Plan,
};
use plotters::prelude::*;

mod common;

#[derive(Parser)]
#[command(about = "Linear and logistic regression with SGD variants")]
struct Args {
    /// Epochs for linear regression.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Learning rate for linear regression.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
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

    let (x, y) = data::linear(100, 42);
    let mut series = Vec::new();
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>8}",
        "linear regression", "b", "w", "final MSE", "updates"
    );
    for (name, batching) in [
        ("full batch (GD)", Batching::Full),
        ("single sample (SGD)", Batching::Single),
        ("mini-batch 32", Batching::Mini(32)),
    ] {
        let run = fit_linear(
            ctx.as_ref(),
            choice,
            &x,
            &y,
            batching,
            Plan {
                lr: args.lr,
                epochs: args.epochs,
                seed: 7,
            },
        )?;
        println!(
            "{:<22} {:>8.3} {:>8.3} {:>10.4} {:>8}",
            name,
            run.params[0],
            run.params[1],
            run.losses.last().unwrap(),
            run.losses.len() - 1
        );
        // One point per update; SGD makes 100 updates per epoch, GD one: plot the first 400.
        series.push((
            name.to_string(),
            run.losses.iter().take(400).copied().collect(),
        ));
    }
    let path = common::out_path(&args.out, "regression_linear_loss.png");
    let root = BitMapBackend::new(&path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    common::log_lines(
        &root,
        "linear regression: MSE on all data after each update",
        "update",
        "MSE",
        &series,
        1e-3,
    );
    root.present().expect("write");
    println!("wrote {}", path.display());

    let (px, py) = data::two_gaussians(100, 3);
    let run = fit_logistic(
        ctx.as_ref(),
        choice,
        &px,
        &py,
        32,
        Plan {
            lr: 0.1,
            epochs: 100,
            seed: 5,
        },
    )?;
    let acc = logistic_accuracy(&run.params, &px, &py);
    println!(
        "logistic regression: w = ({:.3}, {:.3}), b = {:.3}, loss {:.4}, accuracy {:.1}%",
        run.params[0],
        run.params[1],
        run.params[2],
        run.losses.last().unwrap(),
        100.0 * acc
    );
    let path = common::out_path(&args.out, "regression_logistic.png");
    let root = BitMapBackend::new(&path, (800, 700)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("logistic regression: accuracy {:.1}%", 100.0 * acc),
            ("sans-serif", 22),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(-5.0..6.0, -5.0..6.0)
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("x1")
        .y_desc("x2")
        .draw()
        .expect("mesh");
    for (label, colour) in [(0.0, common::color(0)), (1.0, common::color(1))] {
        chart
            .draw_series(
                px.outer_iter()
                    .zip(py.iter())
                    .filter(|(_, &t)| t == label)
                    .map(|(r, _)| Circle::new((r[0], r[1]), 4, colour.filled())),
            )
            .expect("points")
            .label(format!("class {label}"))
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, colour.filled()));
    }
    // Boundary w0 x + w1 y + b = 0.
    let (w0, w1, b) = (run.params[0], run.params[1], run.params[2]);
    let line: Vec<(f64, f64)> = (0..=100)
        .map(|k| -5.0 + 11.0 * k as f64 / 100.0)
        .map(|x| (x, -(w0 * x + b) / w1))
        .filter(|(_, y)| (-5.0..=6.0).contains(y))
        .collect();
    chart
        .draw_series(LineSeries::new(line, BLACK.stroke_width(2)))
        .expect("boundary")
        .label("decision boundary")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .expect("legend");
    root.present().expect("write");
    println!("wrote {}", path.display());
    Ok(())
}
