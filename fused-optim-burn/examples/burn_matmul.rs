//! Muon's Newton–Schulz matmuls on one adapter, side by side: fused-optim's batched tiled
//! WGSL matmul (`gpu::newton_schulz::GpuNewtonSchulz`: 5 steps of A = X Xᵀ,
//! B = b A + c A A, X = a X + B X over every matrix of the batch, plus its norm and
//! transpose passes) against the same iteration written with Burn 0.22's tensor ops
//! (`matmul`, `transpose`, scalar multiply, add: Burn's own matmul kernels on its wgpu
//! device, fusion on), on the same wgpu device (fused-optim's context is Burn's device).
//! GFLOP/s = the iteration's 2·multiply-adds (`NewtonSchulz::flops`) over the wall time of
//! one orthogonalisation of all matrices, submit + wait, median over interleaved rounds
//! (Burn, ours, Burn, ...). The Burn side starts from inputs already divided by their
//! Frobenius norm (so its loop, which leaves the norm out, stays finite): it does slightly
//! less work than ours.
//!
//! ```text
//! cargo run --release -p fused-optim-burn --example burn_matmul -- [--models square_128,square_256,square_512,transformer_2_256] [--rounds 3] [--json]
//! ```

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use fused_optim::cpu::newton_schulz::NewtonSchulz;
use fused_optim::gpu::newton_schulz::GpuNewtonSchulz;
use fused_optim_burn::init_device;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The row-major input of a matrix, divided by its Frobenius norm.
fn input(rows: usize, cols: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 1e-2)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// Burn's Newton–Schulz of one matrix (X r x c with r <= c: wide matrices as they are, tall
/// ones transposed, as torch and fused-optim do).
fn burn_ns(x: Tensor<2>, ns: &NewtonSchulz) -> Tensor<2> {
    let (a, b, c) = ns.coefficients;
    let (a, b, c) = (a as f32, b as f32, c as f32);
    let mut x = x;
    for _ in 0..ns.steps {
        let gram = x.clone().matmul(x.clone().transpose());
        let poly = gram.clone().mul_scalar(b) + gram.clone().matmul(gram).mul_scalar(c);
        x = x.clone().mul_scalar(a) + poly.matmul(x);
    }
    x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let models: Vec<String> = opt("--models")
        .unwrap_or_else(|| "square_128,square_256,square_512,transformer_2_256".into())
        .split(',')
        .map(String::from)
        .collect();
    let rounds: usize = opt("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
    let json = args.iter().any(|a| a == "--json");
    let (device, ctx): (Device, _) = init_device()?;
    let ns = NewtonSchulz::default();
    let mut rows = Vec::new();
    for model in &models {
        let Some(shapes) = fused_optim::roofline::muon_model_shapes(model) else {
            eprintln!("unknown model {model}: square_D or transformer_L_D");
            std::process::exit(2);
        };
        let flops: f64 = shapes.iter().map(|&(r, c)| ns.flops(r, c)).sum();
        let inputs: Vec<Vec<f32>> = shapes.iter().map(|&(r, c)| input(r, c)).collect();
        // Ours: batches as large as one binding allows.
        let mut ours = Vec::new();
        let mut at = 0;
        for part in GpuNewtonSchulz::split(&shapes, ctx.max_binding_bytes()) {
            let batch = GpuNewtonSchulz::new(&ctx, &part, &ns)?;
            let refs: Vec<&[f32]> = inputs[at..at + part.len()]
                .iter()
                .map(Vec::as_slice)
                .collect();
            batch.run(&refs)?; // upload + warm-up
            at += part.len();
            ours.push(batch);
        }
        // Burn: the same matrices as tensors on its device (r <= c orientation).
        let tensors: Vec<Tensor<2>> = shapes
            .iter()
            .zip(&inputs)
            .map(|(&(r, c), v)| {
                let t = Tensor::<2>::from_data(TensorData::new(v.clone(), [r, c]), &device);
                if r > c {
                    t.transpose()
                } else {
                    t
                }
            })
            .collect();
        let run_burn = || -> Result<(), Box<dyn std::error::Error>> {
            let outs: Vec<Tensor<2>> = tensors.iter().map(|t| burn_ns(t.clone(), &ns)).collect();
            device.sync()?;
            drop(outs);
            Ok(())
        };
        run_burn()?; // warm-up: autotune, pipelines
        let (mut tb, mut to, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            run_burn()?;
            let b = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for batch in &ours {
                batch.submit();
            }
            ctx.wait()?;
            let o = t.elapsed().as_secs_f64();
            tb.push(b);
            to.push(o);
            ratio.push(b / o);
        }
        let (b, o) = (median(tb), median(to));
        let row = serde_json::json!({
            "model": model,
            "matrices": shapes.len(),
            "flops": flops,
            "burn_s": b,
            "ours_s": o,
            "burn_gflops": flops / b / 1e9,
            "ours_gflops": flops / o / 1e9,
            "ours_over_burn_speed": median(ratio),
            "rounds": rounds,
        });
        if !json {
            println!(
                "{model:<20} {:>3} matrices {:>8.2} GFLOP: Burn {:>7.2} GFLOP/s, fused-optim {:>7.2} GFLOP/s ({:.2}x)",
                shapes.len(),
                flops / 1e9,
                flops / b / 1e9,
                flops / o / 1e9,
                row["ours_over_burn_speed"].as_f64().unwrap_or(f64::NAN)
            );
        }
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("adapter: {}", ctx.describe());
    }
    Ok(())
}
