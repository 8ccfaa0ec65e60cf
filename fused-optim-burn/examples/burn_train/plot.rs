//! The PNG of one task's loss curves: each optimizer's per-step training loss (faint) and
//! its moving average over 10 steps.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::race::Report;

fn moving_average(v: &[f32], k: usize) -> Vec<(f64, f64)> {
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(k - 1);
            let w = &v[lo..=i];
            (
                i as f64,
                w.iter().map(|&x| f64::from(x)).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// Write `<out>/<task>_loss.png`: the two loss curves (top) and their per-step difference
/// |ours - Burn's| on a log scale (bottom); returns its path.
pub fn curves(out: &Path, r: &Report) -> Result<PathBuf, Box<dyn std::error::Error>> {
    // The font is compiled in (no system fonts needed); registering twice is harmless.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let path = out.join(format!("{}_loss.png", r.task));
    {
        let root = BitMapBackend::new(&path, (1000, 820)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(540);
        let all = r.burn_loss.iter().chain(&r.fused_loss).copied();
        let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let pad = 0.05 * (hi - lo).max(1e-6);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "{}: training loss, Burn AdamW vs fused-optim AdamW (same init, same batches)",
                    r.task
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..r.steps as f64, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .y_desc("cross-entropy loss")
            .draw()?;
        let series = [
            ("Burn AdamW", &r.burn_loss, RGBColor(220, 90, 40), 5),
            (
                "fused-optim-burn AdamW",
                &r.fused_loss,
                RGBColor(30, 90, 200),
                2,
            ),
        ];
        for (name, loss, color, width) in series {
            let raw = loss
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as f64, f64::from(l)));
            chart.draw_series(LineSeries::new(raw, color.mix(0.25)))?;
            chart
                .draw_series(LineSeries::new(
                    moving_average(loss, 10),
                    color.stroke_width(width),
                ))?
                .label(format!("{name} (10-step mean)"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        // The difference of the two runs per step (0 drawn at the floor).
        let floor = 1e-9;
        let diff: Vec<(f64, f64)> = r
            .burn_loss
            .iter()
            .zip(&r.fused_loss)
            .enumerate()
            .map(|(i, (&b, &f))| (i as f64, f64::from((f - b).abs()).max(floor)))
            .collect();
        let top_diff = diff.iter().map(|d| d.1).fold(floor * 10.0, f64::max) * 2.0;
        let mut lower = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..r.steps as f64, (floor..top_diff).log_scale())?;
        lower
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("step")
            .y_desc("|ours - Burn's| loss")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        lower.draw_series(LineSeries::new(diff, BLACK.stroke_width(1)))?;
        root.present()?;
    }
    Ok(path)
}
