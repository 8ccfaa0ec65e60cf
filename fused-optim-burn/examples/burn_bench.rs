//! Optimizer step time on model-shaped parameter sets, on Burn's wgpu device (fusion on):
//! Burn's own Adam (`burn::optim::AdamConfig`, a `ModuleOptimizer`), fused-optim-burn's
//! `FusedOptimizer` (Adam, the same hyper-parameters) over the same module, and fused-optim's
//! flat-buffer kernel (`GpuOptimizer` on one `FlatParams`) with the same parameter count.
//! The three are measured alternately (Burn, fused, flat, Burn, ...), each step followed by a
//! full wait, and each figure is the median over the repetitions; the ratios are medians of
//! the per-round ratios (the machine is shared: single timings are noisy).
//!
//! Models: `gpt2_small` (GPT-2's 148 tensors: 12 layers, d = 768 by default, vocab 50257,
//! context 1024: 124M parameters) and `many_small` (1000 tensors of 500..1600 elements,
//! ~1M parameters).
//!
//! ```text
//! cargo run --release -p fused-optim-burn --example burn_bench -- --json
//! cargo run --release -p fused-optim-burn --example burn_bench -- --model many_small --reps 15
//! ```
//! With `--json` stdout holds only a JSON array, one object per model with `model`,
//! `tensors`, `params`, `burn_adam_step_s`, `fused_step_s`, `flat_step_s` (median seconds per
//! optimizer step) and the medians of the per-round ratios.

use std::time::Instant;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use fused_optim::{AdamConfig, FlatParams, GpuOptimizer};
use fused_optim_burn::{init_device, FusedOptimizer};

struct Args {
    model: String,
    d: usize,
    reps: usize,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        model: "all".into(),
        d: 768,
        reps: 7,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--model" => a.model = it.next().expect("--model NAME"),
            "--d" => a.d = it.next().and_then(|s| s.parse().ok()).expect("--d N"),
            "--reps" => a.reps = it.next().and_then(|s| s.parse().ok()).expect("--reps N"),
            other => {
                eprintln!("unknown argument {other}: --json --model gpt2_small|many_small|all --d N --reps N");
                std::process::exit(2);
            }
        }
    }
    a
}

/// GPT-2's parameter tensors: embeddings, 12 per layer, final norm.
fn gpt2(d: usize, layers: usize, vocab: usize, ctx_len: usize) -> Vec<usize> {
    let mut t = vec![vocab * d, ctx_len * d];
    for _ in 0..layers {
        t.extend([
            d,
            d,
            d * 3 * d,
            3 * d,
            d * d,
            d,
            d,
            d,
            d * 4 * d,
            4 * d,
            4 * d * d,
            d,
        ]);
    }
    t.extend([d, d]);
    t
}

fn many_small() -> Vec<usize> {
    (0..1000).map(|k| 500 + (k * 37) % 1101).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type Model = Vec<Param<Tensor<1>>>;

fn grads_of(model: &Model, grads: &[Tensor<1>]) -> GradientsParams {
    let mut g = GradientsParams::new();
    for (p, t) in model.iter().zip(grads) {
        g.register(p.id, t.clone());
    }
    g
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let (device, ctx): (Device, _) = init_device()?;
    let models: Vec<(&str, Vec<usize>)> = [
        ("gpt2_small", gpt2(args.d, 12, 50257, 1024)),
        ("many_small", many_small()),
    ]
    .into_iter()
    .filter(|(name, _)| args.model == "all" || args.model == *name)
    .collect();
    let mut rows = Vec::new();
    for (name, lens) in models {
        let n: usize = lens.iter().sum();
        let lr = 1e-3;
        // Parameters live on the autodiff device (as in training: Burn's ModuleOptimizer needs
        // it), gradients on the inner device.
        let ad = device.clone().autodiff();
        let mut burn_model: Model = lens
            .iter()
            .map(|&len| Param::from_tensor(Tensor::<1>::full([len], 0.5, &ad)))
            .collect();
        let mut our_model: Model = lens
            .iter()
            .map(|&len| Param::from_tensor(Tensor::<1>::full([len], 0.5, &ad)))
            .collect();
        let grads: Vec<Tensor<1>> = lens
            .iter()
            .map(|&len| Tensor::<1>::full([len], 1e-3, &device))
            .collect();
        let mut burn_adam = burn::optim::AdamConfig::new().with_epsilon(1e-8).init();
        let mut fused = FusedOptimizer::new(
            &ctx,
            AdamConfig {
                lr,
                eps: 1e-8,
                ..AdamConfig::default()
            },
        );
        let flat = FlatParams::zeros(&ctx, n)?;
        flat.write_grads(&vec![1e-3f32; n])?;
        let mut flat_adam = GpuOptimizer::new(&flat, AdamConfig::default())?;
        // Warm-up: pipelines, Burn's autotune and fusion caches, the optimizer states.
        for _ in 0..2 {
            let g = grads_of(&burn_model, &grads);
            burn_model = burn_adam.step(lr, burn_model, g);
            device.sync()?;
            let g = grads_of(&our_model, &grads);
            our_model = fused.step(lr, our_model, g)?;
            ctx.wait()?;
            flat_adam.step()?;
            ctx.wait()?;
        }
        let (mut tb, mut tf, mut tl) = (Vec::new(), Vec::new(), Vec::new());
        let (mut burn_over_fused, mut flat_over_fused) = (Vec::new(), Vec::new());
        for _ in 0..args.reps {
            let g = grads_of(&burn_model, &grads);
            let t0 = Instant::now();
            burn_model = burn_adam.step(lr, burn_model, g);
            device.sync()?;
            let b = t0.elapsed().as_secs_f64();
            let g = grads_of(&our_model, &grads);
            let t1 = Instant::now();
            our_model = fused.step(lr, our_model, g)?;
            ctx.wait()?;
            let f = t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            flat_adam.step()?;
            ctx.wait()?;
            let l = t2.elapsed().as_secs_f64();
            tb.push(b);
            tf.push(f);
            tl.push(l);
            burn_over_fused.push(b / f);
            flat_over_fused.push(l / f);
        }
        let row = serde_json::json!({
            "model": name,
            "d": if name == "gpt2_small" { Some(args.d) } else { None },
            "tensors": lens.len(),
            "params": n,
            "burn_adam_step_s": median(tb),
            "fused_step_s": median(tf),
            "flat_step_s": median(tl),
            "burn_over_fused": median(burn_over_fused),
            "flat_over_fused": median(flat_over_fused),
            "reps": args.reps,
        });
        if !args.json {
            eprintln!("{row}");
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        eprintln!(
            "burn_over_fused: Burn's Adam step time over ours (targets: >= 1.5 gpt2_small, >= 10 \
             many_small); flat_over_fused: the flat kernel's over ours (target >= 0.9); {}",
            ctx.describe()
        );
    }
    Ok(())
}
