//! Shared by the playground examples: command-line backend choice and plotting helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fused_optim::{BackendChoice, GpuContext};
use plotters::prelude::*;

/// Where the optimizer runs, from the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BackendArg {
    /// The WGSL kernels (the default: these examples exist to drive them).
    Gpu,
    /// The fast CPU path.
    Cpu,
    /// GPU on a real GPU, CPU on a software adapter.
    Auto,
}

/// The context (if any) and the choice for `AutoOptimizer`.
pub fn backend(arg: BackendArg) -> (Option<GpuContext>, BackendChoice) {
    let choice = match arg {
        BackendArg::Gpu => BackendChoice::Gpu,
        BackendArg::Cpu => BackendChoice::Cpu,
        BackendArg::Auto => BackendChoice::Auto,
    };
    let ctx = match choice {
        BackendChoice::Cpu => None,
        _ => match GpuContext::new() {
            Ok(c) => {
                eprintln!("adapter: {}", c.describe());
                Some(c)
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
    };
    (ctx, choice)
}

/// Register the embedded DejaVu Sans font (no system fonts needed).
pub fn register_font() {
    // Registering twice is harmless; the bytes are compiled in.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
}

/// Create the output folder and return `dir/name`.
pub fn out_path(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the plot folder");
    dir.join(name)
}

/// A palette of distinguishable colours.
pub fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// A log-scale line plot of several series (y values must be > 0; smaller values are
/// clamped to `floor`).
pub fn log_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<f64>)],
    floor: f64,
) where
    DB::ErrorType: 'static,
{
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let clamp = |v: f64| if v.is_finite() { v.max(floor) } else { floor };
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied().map(clamp))
        .fold(floor * 10.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..n, (floor..max * 2.0).log_scale())
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .expect("mesh");
    for (i, (name, values)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                values.iter().enumerate().map(|(k, &v)| (k, clamp(v))),
                c.stroke_width(2),
            ))
            .expect("series")
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .expect("legend");
}
