//! GFLOP/s of Muon's Newton–Schulz orthogonalisation (5 steps, 3 matmuls each) on the fast
//! CPU path (`cpu::newton_schulz`: matrixmultiply's sgemm, matrices of a batch spread over
//! rayon's threads) and on the device (`gpu::newton_schulz`: batched tiled WGSL matmuls), for
//! square matrices and a transformer-like mix (12 layers of d = 512: q, k, v, o of 512 x 512,
//! MLP 512 x 2048 and 2048 x 512; 72 matrices). Each shape is timed as the median of
//! interleaved CPU / GPU rounds (GPU: submit and wait).
//!
//! `cargo run --release --example newton_schulz -- [--sizes 256,512,1024,2048] [--rounds 3] [--no-mix] [--json]`

use std::time::Instant;

use fused_optim::cpu::newton_schulz::{NewtonSchulz, NsWorkspace};
use fused_optim::gpu::newton_schulz::GpuNewtonSchulz;
use fused_optim::GpuContext;
use rayon::prelude::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> fused_optim::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let sizes: Vec<usize> = opt("--sizes")
        .unwrap_or_else(|| "256,512,1024,2048".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let rounds: usize = opt("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let json = args.iter().any(|a| a == "--json");
    let ns = NewtonSchulz::default();
    let ctx = GpuContext::new()?;
    let mut cases: Vec<(String, Vec<(usize, usize)>)> = sizes
        .iter()
        .map(|&d| (format!("square_{d}"), vec![(d, d)]))
        .collect();
    let mix = fused_optim::roofline::muon_model_shapes("transformer_12_512")
        .expect("a model name the library knows");
    if !args.iter().any(|a| a == "--no-mix") {
        cases.push(("transformer_12x512".into(), mix));
    }
    let mut records = Vec::new();
    if !json {
        println!(
            "adapter: {}; CPU: {} threads",
            ctx.describe(),
            rayon::current_num_threads()
        );
        println!(
            "{:<20} {:>8} {:>12} {:>12} {:>12}",
            "shape", "matrices", "GFLOP", "CPU GFLOP/s", "GPU GFLOP/s"
        );
    }
    for (name, shapes) in cases {
        let inputs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(r, c)| {
                (0..r * c)
                    .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 1e-2)
                    .collect()
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = inputs.iter().map(|u| vec![0.0; u.len()]).collect();
        let flops: f64 = shapes.iter().map(|&(r, c)| ns.flops(r, c)).sum();
        // Batches as large as one storage binding allows, submitted back to back.
        let mut gpus = Vec::new();
        let mut at = 0;
        for part in GpuNewtonSchulz::split(&shapes, ctx.max_binding_bytes()) {
            let gpu = GpuNewtonSchulz::new(&ctx, &part, &ns)?;
            let refs: Vec<&[f32]> = inputs[at..at + part.len()]
                .iter()
                .map(|v| v.as_slice())
                .collect();
            gpu.run(&refs)?; // upload + warm-up (pipeline compilation)
            at += part.len();
            gpus.push(gpu);
        }
        let (mut tc, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            outs.par_iter_mut()
                .zip(inputs.par_iter().zip(&shapes))
                .try_for_each_init(NsWorkspace::default, |ws, (o, (u, &(r, c)))| {
                    ns.orthogonalize(u, r, c, o, ws)
                })?;
            tc.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for gpu in &gpus {
                gpu.submit();
            }
            ctx.wait()?;
            tg.push(t.elapsed().as_secs_f64());
        }
        let (c, g) = (median(&mut tc), median(&mut tg));
        if !json {
            println!(
                "{name:<20} {:>8} {:>12.2} {:>12.2} {:>12.2}",
                shapes.len(),
                flops / 1e9,
                flops / c / 1e9,
                flops / g / 1e9
            );
        }
        records.push(format!(
            "{{\"shape\": \"{name}\", \"matrices\": {}, \"flops\": {flops}, \"cpu_s\": {c}, \"gpu_s\": {g}}}",
            shapes.len()
        ));
    }
    if json {
        println!("[{}]", records.join(",\n "));
    }
    Ok(())
}
