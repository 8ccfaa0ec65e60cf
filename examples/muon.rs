//! The whole Muon step (momentum pass, Newton–Schulz of every 2-D tensor, update) on the
//! fast CPU path and on the device, as GFLOP/s of its Newton–Schulz matmuls over the step's
//! time, beside its elementwise bytes (28 per parameter: g, buf read and buf, u written in
//! the first pass; p, O read and p written in the last) and the Newton–Schulz share of the
//! step (the orthogonalisation alone, timed in the same rounds). Models: square matrices and
//! transformer-like mixes (`transformer_L_D`: L layers of q, k, v, o D x D and the MLP's
//! D x 4D and 4D x D). Each model is timed as the median of interleaved CPU / GPU rounds (GPU:
//! submit and wait).
//!
//! `cargo run --release --example muon -- [--cpu square_256,...] [--gpu square_256,...]
//! [--rounds 3] [--json]`
//!
//! Defaults: CPU square 256..2048 and `transformer_12_512`; GPU square 256 and 512 and
//! `transformer_2_256` (lavapipe runs WGSL at well under 1 GFLOP/s, so larger shapes take
//! minutes per step there; name them with `--gpu` on a real GPU).

use std::time::Instant;

use fused_optim::cpu::newton_schulz::{NewtonSchulz, NsWorkspace};
use fused_optim::gpu::newton_schulz::GpuNewtonSchulz;
use fused_optim::{CpuOptimizer, FlatParams, GpuContext, GpuOptimizer, MuonConfig};
use rayon::prelude::*;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(n: usize, scale: f32, step: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * step).fract() - 0.5) * scale)
        .collect()
}

struct Row {
    path: &'static str,
    model: String,
    matrices: usize,
    params: usize,
    flops: f64,
    step_s: f64,
    ns_s: f64,
}

fn time_cpu(model: &str, shapes: &[(usize, usize)], rounds: usize) -> fused_optim::Result<Row> {
    let ns = MuonConfig::default().ns;
    let dims: Vec<Vec<usize>> = shapes.iter().map(|&(r, c)| vec![r, c]).collect();
    let n: usize = shapes.iter().map(|(r, c)| r * c).sum();
    let mut opt = CpuOptimizer::builder(MuonConfig::default(), n)
        .shapes(&dims)
        .build()?;
    let (mut p, g) = (values(n, 2.0, 0.754_877_7), values(n, 2e-2, 0.618_034));
    opt.step(&mut p, &g)?; // warm-up: scratch sized
    let inputs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(r, c)| values(r * c, 2e-2, 0.618_034))
        .collect();
    let mut outs: Vec<Vec<f32>> = inputs.iter().map(|u| vec![0.0; u.len()]).collect();
    let (mut ts, mut tn) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        opt.step(&mut p, &g)?;
        ts.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        orthogonalize_all(&ns, &inputs, shapes, &mut outs)?;
        tn.push(t.elapsed().as_secs_f64());
    }
    Ok(Row {
        path: "cpu",
        model: model.into(),
        matrices: shapes.len(),
        params: n,
        flops: shapes.iter().map(|&(r, c)| ns.flops(r, c)).sum(),
        step_s: median(&mut ts),
        ns_s: median(&mut tn),
    })
}

/// Newton–Schulz of every matrix, in parallel over matrices (as the CPU Muon step does).
fn orthogonalize_all(
    ns: &NewtonSchulz,
    inputs: &[Vec<f32>],
    shapes: &[(usize, usize)],
    outs: &mut [Vec<f32>],
) -> fused_optim::Result<()> {
    outs.par_iter_mut()
        .zip(inputs.par_iter().zip(shapes))
        .try_for_each_init(NsWorkspace::default, |ws, (o, (u, &(r, c)))| {
            ns.orthogonalize(u, r, c, o, ws)
        })
}

fn time_gpu(
    ctx: &GpuContext,
    model: &str,
    shapes: &[(usize, usize)],
    rounds: usize,
) -> fused_optim::Result<Row> {
    let ns = MuonConfig::default().ns;
    let n: usize = shapes.iter().map(|(r, c)| r * c).sum();
    let p = values(n, 2.0, 0.754_877_7);
    let mut b = FlatParams::builder();
    let mut at = 0;
    for (k, &(r, c)) in shapes.iter().enumerate() {
        b = b.shaped(&format!("w{k}"), &[r, c], &p[at..at + r * c]);
        at += r * c;
    }
    let flat = b.build(ctx)?;
    flat.write_grads(&values(n, 2e-2, 0.618_034))?;
    let mut opt = GpuOptimizer::new(&flat, MuonConfig::default())?;
    opt.step()?;
    ctx.wait()?; // warm-up: pipelines compiled
    let batches: Vec<GpuNewtonSchulz> = GpuNewtonSchulz::split(shapes, ctx.max_binding_bytes())
        .into_iter()
        .map(|part| GpuNewtonSchulz::new(ctx, &part, &ns))
        .collect::<fused_optim::Result<_>>()?;
    let (mut ts, mut tn) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        opt.step()?;
        ctx.wait()?;
        ts.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for b in &batches {
            b.submit();
        }
        ctx.wait()?;
        tn.push(t.elapsed().as_secs_f64());
    }
    Ok(Row {
        path: "gpu",
        model: model.into(),
        matrices: shapes.len(),
        params: n,
        flops: shapes.iter().map(|&(r, c)| ns.flops(r, c)).sum(),
        step_s: median(&mut ts),
        ns_s: median(&mut tn),
    })
}

fn main() -> fused_optim::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        opt(name)
            .unwrap_or_else(|| default.into())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let cpu_models = list(
        "--cpu",
        "square_256,square_512,square_1024,square_2048,transformer_12_512",
    );
    let gpu_models = list("--gpu", "square_256,square_512,transformer_2_256");
    let rounds: usize = opt("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let json = args.iter().any(|a| a == "--json");
    let ctx = if gpu_models.is_empty() {
        None
    } else {
        Some(GpuContext::new()?)
    };
    if !json {
        println!(
            "adapter: {}; CPU: {} threads; median of {rounds} rounds",
            ctx.as_ref().map_or("none".into(), |c| c.describe()),
            rayon::current_num_threads()
        );
        println!(
            "{:<4} {:<20} {:>8} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10}",
            "path",
            "model",
            "matrices",
            "params",
            "GFLOP",
            "step ms",
            "GFLOP/s",
            "NS share",
            "elem GB"
        );
    }
    let mut rows = Vec::new();
    for (path, models) in [("cpu", &cpu_models), ("gpu", &gpu_models)] {
        for model in models {
            let Some(shapes) = fused_optim::roofline::muon_model_shapes(model) else {
                eprintln!("unknown model {model} (square_D or transformer_L_D)");
                std::process::exit(2);
            };
            let row = match (path, &ctx) {
                ("gpu", Some(ctx)) => time_gpu(ctx, model, &shapes, rounds)?,
                _ => time_cpu(model, &shapes, rounds)?,
            };
            if !json {
                println!(
                    "{:<4} {:<20} {:>8} {:>10} {:>10.2} {:>10.1} {:>10.2} {:>8.0}% {:>10.3}",
                    row.path,
                    row.model,
                    row.matrices,
                    row.params,
                    row.flops / 1e9,
                    row.step_s * 1e3,
                    row.flops / row.step_s / 1e9,
                    100.0 * row.ns_s / row.step_s,
                    28.0 * row.params as f64 / 1e9
                );
            }
            rows.push(row);
        }
    }
    if json {
        let objs: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"path\": \"{}\", \"model\": \"{}\", \"matrices\": {}, \"params\": {}, \
                     \"flops\": {}, \"step_s\": {}, \"ns_s\": {}, \"elementwise_bytes\": {}}}",
                    r.path,
                    r.model,
                    r.matrices,
                    r.params,
                    r.flops,
                    r.step_s,
                    r.ns_s,
                    28 * r.params
                )
            })
            .collect();
        println!("[{}]", objs.join(",\n "));
    }
    Ok(())
}
