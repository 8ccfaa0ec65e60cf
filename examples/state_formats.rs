//! Time one fast-CPU Adam step with each state format (f32, bf16, bitsandbytes-style 8-bit)
//! at `n` parameters (default 2^24; first argument overrides): the median of 7 steps after 2
//! warm-up steps, and the state bytes per parameter.
//!
//! `cargo run --release --example state_formats -- 16777216`

use std::time::Instant;

use fused_optim::{AdamConfig, CpuOptimizer, StateFormat};

fn main() -> fused_optim::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 24);
    let g: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 1e-2)
        .collect();
    let mut base = None;
    for (label, format, bytes) in [
        ("f32", StateFormat::F32, 8.0),
        ("bf16", StateFormat::Bf16, 4.0),
        (
            "8-bit",
            StateFormat::Blockwise8 { min_size: 4096 },
            2.0 + 8.0 / 256.0,
        ),
    ] {
        let mut opt = CpuOptimizer::builder(AdamConfig::adamw(), n)
            .state_format(format)
            .build()?;
        let mut p = vec![0.1f32; n];
        let mut times = Vec::new();
        for k in 0..9 {
            let t = Instant::now();
            opt.step(&mut p, &g)?;
            if k >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let rel = base.map_or(1.0, |b: f64| med / b);
        base.get_or_insert(med);
        println!(
            "{label:>6}: {:8.2} ms/step, {:6.2} ns/param, {bytes:5.3} state bytes/param, {rel:.2}x the f32 time",
            med * 1e3,
            med * 1e9 / n as f64
        );
    }
    Ok(())
}
