//! Per-tensor algorithms against their roofs: LAMB's step on the fast CPU path and on the
//! GPU, each beside a roof kernel with the same access pattern *including the second pass*
//! (`roofline::cpu_segmented_roof`, `roofline::GpuSegmentedRoof`: same segments, chunks,
//! threads or grids, same buffers read and written per pass, trivial arithmetic), and
//! Adafactor's on the fast CPU path beside its three-pass roof
//! (`roofline::cpu_factored_roof`: same tiles and bands) and on the GPU beside its five-pass
//! roof (`roofline::GpuFactoredRoof`: the same kernel tables and passes).
//!
//! ```text
//! cargo run --release --example structured                  # 2^22 as 16 x [512, 512]
//! cargo run --release --example structured -- --rounds 15 --tensors 64
//! ```
//! Measurement: `rounds` rounds, each timing a batch of steps of the optimizer and of its
//! roof back to back (interleaved, so a neighbour's load hits both), the figure is the
//! median over rounds of roof time / optimizer time (1 = at the roof).

use std::time::Instant;

use clap::Parser;
use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::roofline::{
    cpu_factored_roof, cpu_segmented_roof, GpuFactoredRoof, GpuSegmentedRoof,
};
use fused_optim::*;

#[derive(Parser)]
#[command(about = "LAMB and Adafactor against their multi-pass roofs")]
struct Args {
    /// log2 of the total element count.
    #[arg(long, default_value_t = 22)]
    log2: u32,
    /// Number of equal square tensors the elements are split into.
    #[arg(long, default_value_t = 16)]
    tensors: usize,
    /// Interleaved rounds (the median ratio is reported).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Steps per timed batch.
    #[arg(long, default_value_t = 5)]
    batch: usize,
    /// Skip the GPU.
    #[arg(long)]
    cpu_only: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = Args::parse();
    let n = 1usize << a.log2;
    let per = n / a.tensors;
    let side = (per as f64).sqrt() as usize;
    let shapes: Vec<Vec<usize>> = (0..a.tensors)
        .map(|k| {
            if side * side == per {
                vec![side, side]
            } else if k == 0 {
                vec![per + n % a.tensors]
            } else {
                vec![per]
            }
        })
        .collect();
    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let config = LambConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    println!(
        "LAMB, {n} elements in {} tensors of {:?}; {} rounds of {} steps, median of roof/opt",
        shapes.len(),
        shapes[0],
        a.rounds,
        a.batch
    );
    // CPU.
    let table = SegmentTable::contiguous(&shapes)?;
    let mut opt = CpuOptimizer::builder(config, n).shapes(&shapes).build()?;
    let mut p = StaggeredVec::filled(n, 0.5, 0);
    let g = StaggeredVec::filled(n, 1e-3, 4);
    let (mut rp, mut rm, mut rv) = (
        StaggeredVec::filled(n, 0.5, 0),
        StaggeredVec::filled(n, 0.0, 1),
        StaggeredVec::filled(n, 0.0, 2),
    );
    opt.step(&mut p, &g)?; // warm-up: page faults out of the timing
    cpu_segmented_roof(&table, &mut rp, &g, &mut rm, &mut rv);
    let mut ratios = Vec::new();
    let mut opt_s = Vec::new();
    for _ in 0..a.rounds {
        let t = Instant::now();
        for _ in 0..a.batch {
            opt.step(&mut p, &g)?;
        }
        let o = t.elapsed().as_secs_f64() / a.batch as f64;
        let t = Instant::now();
        for _ in 0..a.batch {
            std::hint::black_box(cpu_segmented_roof(&table, &mut rp, &g, &mut rm, &mut rv));
        }
        let r = t.elapsed().as_secs_f64() / a.batch as f64;
        ratios.push(r / o);
        opt_s.push(o);
    }
    let o = median(opt_s);
    println!(
        "cpu  lamb step {:8.3} ms  {:7.1} M params/s  roof/opt median {:.3}  (min {:.3}, max {:.3})",
        o * 1e3,
        n as f64 / o / 1e6,
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    // Adafactor on the same tensors against its three-pass roof (CPU only: no GPU kernel).
    let ada = AdafactorConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = CpuOptimizer::builder(ada, n).shapes(&shapes).build()?;
    let mut rp = StaggeredVec::filled(n, 0.5, 0);
    let mut scratch = Vec::new();
    opt.step(&mut p, &g)?;
    cpu_factored_roof(&table, &mut rp, &g, &mut scratch);
    let (mut ratios, mut opt_s) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        let t = Instant::now();
        for _ in 0..a.batch {
            opt.step(&mut p, &g)?;
        }
        let o = t.elapsed().as_secs_f64() / a.batch as f64;
        let t = Instant::now();
        for _ in 0..a.batch {
            std::hint::black_box(cpu_factored_roof(&table, &mut rp, &g, &mut scratch));
        }
        let r = t.elapsed().as_secs_f64() / a.batch as f64;
        ratios.push(r / o);
        opt_s.push(o);
    }
    let o = median(opt_s);
    println!(
        "cpu  adafactor step {:8.3} ms  {:7.1} M params/s  roof/opt median {:.3}  (min {:.3}, max {:.3})",
        o * 1e3,
        n as f64 / o / 1e6,
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    if a.cpu_only {
        return Ok(());
    }

    // GPU.
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.describe());
    let build = |ctx: &GpuContext| -> Result<FlatParams> {
        let mut b = FlatParams::builder();
        for (k, s) in shapes.iter().enumerate() {
            let len: usize = s.iter().product();
            b = b.shaped(&format!("t{k}"), s, &vec![0.5f32; len]);
        }
        b.build(ctx)
    };
    let flat = build(&ctx)?;
    flat.write_grads(&vec![1e-3f32; n])?;
    let roof_flat = build(&ctx)?;
    roof_flat.write_grads(&vec![1e-3f32; n])?;
    let mut gpu = GpuOptimizer::new(&flat, config)?;
    let mut roof = GpuSegmentedRoof::new(&roof_flat)?;
    gpu.step()?;
    roof.step();
    ctx.wait()?;
    let mut ratios = Vec::new();
    let mut opt_s = Vec::new();
    for _ in 0..a.rounds {
        let t = Instant::now();
        for _ in 0..a.batch {
            gpu.step()?;
        }
        ctx.wait()?;
        let o = t.elapsed().as_secs_f64() / a.batch as f64;
        let t = Instant::now();
        for _ in 0..a.batch {
            roof.step();
        }
        ctx.wait()?;
        let r = t.elapsed().as_secs_f64() / a.batch as f64;
        ratios.push(r / o);
        opt_s.push(o);
    }
    let o = median(opt_s);
    println!(
        "gpu  lamb step {:8.3} ms  {:7.1} M params/s  roof/opt median {:.3}  (min {:.3}, max {:.3})",
        o * 1e3,
        n as f64 / o / 1e6,
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    // Adafactor on the GPU against its five-pass roof.
    let flat = build(&ctx)?;
    flat.write_grads(&vec![1e-3f32; n])?;
    let roof_flat = build(&ctx)?;
    roof_flat.write_grads(&vec![1e-3f32; n])?;
    let mut gpu = GpuOptimizer::new(&flat, ada)?;
    let mut roof = GpuFactoredRoof::new(&roof_flat)?;
    gpu.step()?;
    roof.step();
    ctx.wait()?;
    let (mut ratios, mut opt_s) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        let t = Instant::now();
        for _ in 0..a.batch {
            gpu.step()?;
        }
        ctx.wait()?;
        let o = t.elapsed().as_secs_f64() / a.batch as f64;
        let t = Instant::now();
        for _ in 0..a.batch {
            roof.step();
        }
        ctx.wait()?;
        let r = t.elapsed().as_secs_f64() / a.batch as f64;
        ratios.push(r / o);
        opt_s.push(o);
    }
    let o = median(opt_s);
    println!(
        "gpu  adafactor step {:8.3} ms  {:7.1} M params/s  roof/opt median {:.3}  (min {:.3}, max {:.3})",
        o * 1e3,
        n as f64 / o / 1e6,
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    Ok(())
}
