//! Optimisation paths of SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW and Adadelta
//! on Rosenbrock, Himmelblau and an elongated bowl, driven by the library's GPU optimizers.
//!
//! ```text
//! cargo run --release --example paths                        # PNG + SVG in target/plots/
//! cargo run --release --example paths -- --steps 2000 --lr Adam=0.05 --lr SGD=0.002
//! ```

use std::path::PathBuf;

use clap::Parser;
use fused_optim_tools::playground::functions::TestFunction;
use fused_optim_tools::playground::paths::{classic_optimizers, run, with_lr, PathRun};
use plotters::prelude::*;

mod common;

#[derive(Parser)]
#[command(about = "Optimizer paths on 2-D test functions, drawn as contour plots")]
struct Args {
    /// Steps per run.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Override a learning rate for every function: NAME=LR (e.g. Adam=0.05). Repeatable.
    #[arg(long = "lr", value_parser = parse_lr)]
    lrs: Vec<(String, f64)>,
    /// Folder for the pictures.
    #[arg(long, default_value = "target/plots")]
    out: PathBuf,
    /// Where the optimizer runs.
    #[arg(long, value_enum, default_value = "gpu")]
    backend: common::BackendArg,
}

fn parse_lr(s: &str) -> Result<(String, f64), String> {
    let (name, lr) = s.split_once('=').ok_or("expected NAME=LR")?;
    Ok((name.to_string(), lr.parse().map_err(|e| format!("{e}"))?))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    f: TestFunction,
    runs: &[(&str, PathRun)],
    cells: usize,
) where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).expect("fill");
    let ((x0, x1), (y0, y1)) = f.plot_range();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{} from {:?}", f.name(), f.start()),
            ("sans-serif", 24),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(x0..x1, y0..y1)
        .expect("chart");
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x")
        .y_desc("y")
        .draw()
        .expect("mesh");
    // Filled contours: log(1 + f) quantised into bands, light to dark.
    let (dx, dy) = ((x1 - x0) / cells as f64, (y1 - y0) / cells as f64);
    let level = |x: f64, y: f64| (1.0 + f.value(x, y)).ln();
    let max = (0..cells * cells)
        .map(|k| level(x0 + (k % cells) as f64 * dx, y0 + (k / cells) as f64 * dy))
        .fold(0.0, f64::max);
    let bands = 16.0;
    chart
        .draw_series((0..cells * cells).map(|k| {
            let (x, y) = (x0 + (k % cells) as f64 * dx, y0 + (k / cells) as f64 * dy);
            let band = (level(x + dx / 2.0, y + dy / 2.0) / max * bands).floor() / bands;
            let shade = (255.0 - 150.0 * band) as u8;
            Rectangle::new(
                [(x, y), (x + dx, y + dy)],
                RGBColor(shade, shade, 255).filled(),
            )
        }))
        .expect("contours");
    for (i, (name, run)) in runs.iter().enumerate() {
        let c = common::color(i);
        let inside = run
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(inside, c.stroke_width(2)))
            .expect("path")
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    let start = f.start();
    chart
        .draw_series([Circle::new(start, 7, BLACK.filled())])
        .expect("start")
        .label("start")
        .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.filled()));
    chart
        .draw_series(
            f.minima()
                .into_iter()
                .map(|m| Cross::new(m, 9, RED.stroke_width(3))),
        )
        .expect("minima")
        .label("minimum")
        .legend(|(x, y)| Cross::new((x + 9, y), 6, RED.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .expect("legend");
    root.present().expect("write the picture");
}

fn main() -> fused_optim_tools::Result<()> {
    let args = Args::parse();
    common::register_font();
    let (ctx, choice) = common::backend(args.backend);
    println!(
        "{:<11} {:<9} {:>10} {:>22} {:>12} {:>14}",
        "function", "optimizer", "lr", "final point", "final loss", "steps to 1e-3"
    );
    for f in TestFunction::ALL {
        let mut runs = Vec::new();
        for (name, config) in classic_optimizers(f) {
            let config = match args.lrs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, lr)) => with_lr(config, *lr),
                None => config,
            };
            let r = run(ctx.as_ref(), choice, f, config, args.steps)?;
            let (x, y) = *r.points.last().expect("points");
            println!(
                "{:<11} {:<9} {:>10.1e} {:>22} {:>12.3e} {:>14}",
                f.name(),
                name,
                config.lr(),
                format!("({x:.4}, {y:.4})"),
                r.losses.last().copied().unwrap_or(f64::NAN),
                r.steps_to(1e-3)
                    .map_or("never".to_string(), |s| s.to_string())
            );
            runs.push((name, r));
        }
        let png = common::out_path(&args.out, &format!("paths_{}.png", f.name()));
        draw(
            BitMapBackend::new(&png, (900, 700)).into_drawing_area(),
            f,
            &runs,
            220,
        );
        let svg = common::out_path(&args.out, &format!("paths_{}.svg", f.name()));
        draw(
            SVGBackend::new(&svg, (900, 700)).into_drawing_area(),
            f,
            &runs,
            90,
        );
        let losses = common::out_path(&args.out, &format!("loss_{}.png", f.name()));
        let root = BitMapBackend::new(&losses, (900, 600)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let series: Vec<(String, Vec<f64>)> = runs
            .iter()
            .map(|(n, r)| (n.to_string(), r.losses.clone()))
            .collect();
        common::log_lines(
            &root,
            &format!("loss on {}", f.name()),
            "step",
            "f(x, y)",
            &series,
            1e-12,
        );
        root.present().expect("write the picture");
        println!(
            "wrote {}, {}, {}",
            png.display(),
            svg.display(),
            losses.display()
        );
    }
    Ok(())
}
