//! Muon and AdamW as one optimizer (`fused_optim::mixed`) on a transformer-like model in
//! model order: token and position embeddings, per layer two LayerNorms (weight and bias) and
//! the q, k, v, o (D x D) and MLP (D x 4D, 4D x D) matrices, a final LayerNorm and an untied
//! head (D x V). Muon steps the hidden matrices, AdamW everything else (the embeddings, the
//! head and the 1-D tensors), so neither group is contiguous in the flat vector.
//!
//! Timed as the median of interleaved rounds, per path: the mixed step against the same two
//! algorithms run as two separate optimizers over their own tensors (CPU: two contiguous
//! buffers, no gathering; GPU: two `FlatParams`, two submissions), with the Muon group's
//! Newton–Schulz GFLOP/s over the mixed step and the elementwise bytes of each group (AdamW
//! 28 per parameter, Muon 28: see `examples/muon.rs`).
//!
//! `cargo run --release --example mixed -- [--cpu transformer_12_512] [--gpu transformer_2_256]
//! [--vocab-cpu 8192] [--vocab-gpu 2048] [--rounds 3]`

use std::time::Instant;

use fused_optim::mixed::{AlgorithmGroup, MixedCpuOptimizer, MixedGpuOptimizer};
use fused_optim::{
    AdamConfig, CpuOptimizer, FlatParams, GpuContext, GpuOptimizer, MuonConfig, OptimizerConfig,
    SegmentTable,
};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(n: usize, scale: f32, step: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * step).fract() - 0.5) * scale)
        .collect()
}

/// The model's tensors in model order: (name, shape, on Muon).
fn model(name: &str, vocab: usize) -> Option<Vec<(String, Vec<usize>, bool)>> {
    let words: Vec<&str> = name.split('_').collect();
    let ["transformer", l, d] = words.as_slice() else {
        return None;
    };
    let (l, d): (usize, usize) = (l.parse().ok()?, d.parse().ok()?);
    let mut t = vec![
        ("tok_emb".to_string(), vec![vocab, d], false),
        ("pos_emb".to_string(), vec![1024, d], false),
    ];
    for i in 0..l {
        for ln in ["ln1", "ln2"] {
            t.push((format!("h{i}.{ln}.weight"), vec![d], false));
            t.push((format!("h{i}.{ln}.bias"), vec![d], false));
            if ln == "ln1" {
                for m in ["q", "k", "v", "o"] {
                    t.push((format!("h{i}.attn.{m}"), vec![d, d], true));
                }
            } else {
                t.push((format!("h{i}.mlp.fc"), vec![d, 4 * d], true));
                t.push((format!("h{i}.mlp.proj"), vec![4 * d, d], true));
            }
        }
    }
    t.push(("ln_f.weight".to_string(), vec![d], false));
    t.push(("ln_f.bias".to_string(), vec![d], false));
    t.push(("head".to_string(), vec![d, vocab], false));
    Some(t)
}

fn configs() -> (OptimizerConfig, OptimizerConfig) {
    (
        MuonConfig {
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        AdamConfig {
            lr: 3e-4,
            weight_decay: 0.1,
            ..AdamConfig::adamw()
        }
        .into(),
    )
}

fn groups(table: &SegmentTable, tensors: &[(String, Vec<usize>, bool)]) -> Vec<AlgorithmGroup> {
    let (muon, adamw) = configs();
    AlgorithmGroup::split(table, muon, adamw, |k, _| tensors[k].2)
}

struct Row {
    path: &'static str,
    model: String,
    muon_params: usize,
    adamw_params: usize,
    flops: f64,
    mixed_s: f64,
    separate_s: f64,
}

fn shapes_of(tensors: &[(String, Vec<usize>, bool)], muon: bool) -> Vec<Vec<usize>> {
    tensors
        .iter()
        .filter(|t| t.2 == muon)
        .map(|t| t.1.clone())
        .collect()
}

fn flops(tensors: &[(String, Vec<usize>, bool)]) -> f64 {
    let ns = MuonConfig::default().ns;
    tensors
        .iter()
        .filter(|t| t.2)
        .map(|t| ns.flops(t.1[0], t.1[1]))
        .sum()
}

fn time_cpu(
    name: &str,
    tensors: &[(String, Vec<usize>, bool)],
    rounds: usize,
) -> fused_optim::Result<Row> {
    let all: Vec<Vec<usize>> = tensors.iter().map(|t| t.1.clone()).collect();
    let table = SegmentTable::contiguous(&all)?;
    let n = table.len();
    let mut mixed = MixedCpuOptimizer::new(table.clone(), &groups(&table, tensors))?;
    let (mut p, g) = (values(n, 2.0, 0.754_877_7), values(n, 2e-2, 0.618_034));
    let (muon, adamw) = configs();
    let mut separate: Vec<(CpuOptimizer, Vec<f32>, Vec<f32>)> = [(muon, true), (adamw, false)]
        .into_iter()
        .map(|(config, on_muon)| {
            let shapes = shapes_of(tensors, on_muon);
            let len = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            let opt = CpuOptimizer::builder(config, len).shapes(&shapes).build()?;
            Ok((
                opt,
                values(len, 2.0, 0.754_877_7),
                values(len, 2e-2, 0.618_034),
            ))
        })
        .collect::<fused_optim::Result<_>>()?;
    mixed.step(&mut p, &g)?; // warm-up
    for (opt, sp, sg) in &mut separate {
        opt.step(sp, sg)?;
    }
    let (mut tm, mut ts) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        mixed.step(&mut p, &g)?;
        tm.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (opt, sp, sg) in &mut separate {
            opt.step(sp, sg)?;
        }
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(row("cpu", name, tensors, median(&mut tm), median(&mut ts)))
}

fn row(
    path: &'static str,
    name: &str,
    tensors: &[(String, Vec<usize>, bool)],
    mixed_s: f64,
    separate_s: f64,
) -> Row {
    let count = |muon: bool| -> usize {
        tensors
            .iter()
            .filter(|t| t.2 == muon)
            .map(|t| t.1.iter().product::<usize>())
            .sum()
    };
    Row {
        path,
        model: name.into(),
        muon_params: count(true),
        adamw_params: count(false),
        flops: flops(tensors),
        mixed_s,
        separate_s,
    }
}

fn flat(
    ctx: &GpuContext,
    tensors: &[&(String, Vec<usize>, bool)],
    aligned: bool,
) -> fused_optim::Result<FlatParams> {
    let mut b = FlatParams::builder();
    if aligned {
        b = b.binding_aligned();
    }
    for (name, shape, _) in tensors.iter().copied() {
        let n = shape.iter().product();
        b = b.shaped(name, shape, &values(n, 2.0, 0.754_877_7));
    }
    let f = b.build(ctx)?;
    f.write_grads(&values(f.len(), 2e-2, 0.618_034))?;
    Ok(f)
}

fn time_gpu(
    ctx: &GpuContext,
    name: &str,
    tensors: &[(String, Vec<usize>, bool)],
    rounds: usize,
) -> fused_optim::Result<Row> {
    let all: Vec<&(String, Vec<usize>, bool)> = tensors.iter().collect();
    let whole = flat(ctx, &all, true)?;
    let mut mixed = MixedGpuOptimizer::new(&whole, &groups(whole.segment_table(), tensors))?;
    let (muon, adamw) = configs();
    let mut separate: Vec<(FlatParams, GpuOptimizer)> = [(muon, true), (adamw, false)]
        .into_iter()
        .map(|(config, on_muon)| {
            let picked: Vec<&(String, Vec<usize>, bool)> =
                tensors.iter().filter(|t| t.2 == on_muon).collect();
            let f = flat(ctx, &picked, false)?;
            let opt = GpuOptimizer::new(&f, config)?;
            Ok((f, opt))
        })
        .collect::<fused_optim::Result<_>>()?;
    mixed.step()?;
    for (_, opt) in &mut separate {
        opt.step()?;
    }
    ctx.wait()?; // warm-up: pipelines compiled
    let (mut tm, mut ts) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        mixed.step()?;
        ctx.wait()?;
        tm.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (_, opt) in &mut separate {
            opt.step()?;
        }
        ctx.wait()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(row("gpu", name, tensors, median(&mut tm), median(&mut ts)))
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
    let cpu_models = list("--cpu", "transformer_12_512");
    let gpu_models = list("--gpu", "transformer_2_256");
    let vocab_cpu: usize = opt("--vocab-cpu")
        .and_then(|s| s.parse().ok())
        .unwrap_or(8192);
    let vocab_gpu: usize = opt("--vocab-gpu")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let rounds: usize = opt("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let ctx = if gpu_models.is_empty() {
        None
    } else {
        Some(GpuContext::new()?)
    };
    println!(
        "adapter: {}; CPU: {} threads; median of {rounds} interleaved rounds",
        ctx.as_ref().map_or("none".into(), |c| c.describe()),
        rayon::current_num_threads()
    );
    println!(
        "{:<4} {:<20} {:>10} {:>10} {:>11} {:>11} {:>9} {:>12} {:>12}",
        "path",
        "model",
        "Muon par.",
        "AdamW par.",
        "mixed ms",
        "separate ms",
        "sep/mixed",
        "NS GFLOP/s",
        "elem GB"
    );
    for (path, models, vocab) in [
        ("cpu", &cpu_models, vocab_cpu),
        ("gpu", &gpu_models, vocab_gpu),
    ] {
        for name in models {
            let Some(tensors) = model(name, vocab) else {
                eprintln!("unknown model {name} (transformer_L_D)");
                std::process::exit(2);
            };
            let r = match (path, &ctx) {
                ("gpu", Some(ctx)) => time_gpu(ctx, name, &tensors, rounds)?,
                _ => time_cpu(name, &tensors, rounds)?,
            };
            println!(
                "{:<4} {:<20} {:>10} {:>10} {:>11.1} {:>11.1} {:>9.3} {:>12.2} {:>12.3}",
                r.path,
                r.model,
                r.muon_params,
                r.adamw_params,
                r.mixed_s * 1e3,
                r.separate_s * 1e3,
                r.separate_s / r.mixed_s,
                r.flops / r.mixed_s / 1e9,
                28.0 * (r.muon_params + r.adamw_params) as f64 / 1e9
            );
        }
    }
    Ok(())
}
