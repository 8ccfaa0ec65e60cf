//! The main job: GPU-versus-CPU optimizer-step throughput, each figure beside the roof
//! measured in the same run on the same device.
//!
//! ```text
//! cargo run --release --example throughput             # compact table, 2^20 and 2^22 (~1 min)
//! cargo run --release --example throughput -- --full   # the sweep 2^16..2^24, every id (5-7 min)
//! cargo run --release --example throughput -- --json   # stdout: one JSON array of records
//! ```
//! The default run times the fused GPU step and the fast CPU path, each against its roof,
//! with 250 ms measurements, and prints per optimizer and size their M params/s and fraction
//! of roof (under a minute after the build on a 2-core lavapipe/llvmpipe machine).
//! `--quick` is the same run with 150 ms measurements (about half a minute). `--full` is the
//! sweep: 2^16..2^24, 600 ms measurements, the copy kernels, the round trip through the host
//! and the f64 reference, with GB/s and roof GB/s. `--json` prints every record (all four
//! ids) of the sizes run, at the default, `--quick` or `--full` length; `--log2-sizes`
//! replaces the sizes of any of them.
//!
//! The roof of an optimizer is a kernel with its exact access pattern (same buffers read and
//! written, same vector width and elements per invocation) and trivial arithmetic: the
//! fraction of roof is the figure that carries across machines.

use std::time::{Duration, Instant};

use clap::Parser;
use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::roofline::{
    benchmark_suite, cpu_copy, cpu_roof, cpu_roof8, gpu_buffer_copy, GpuRoof, GpuRoof8,
};
use fused_optim::*;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(about = "Optimizer-step throughput: fused GPU kernels vs CPU, against measured roofs")]
struct Args {
    /// As the default run with 150 ms measurements instead of 250 ms (about half a minute).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full sweep: 2^16..2^24, 600 ms measurements, copies, round trip, f64 reference.
    #[arg(long)]
    full: bool,
    /// Print only a JSON array of records on stdout.
    #[arg(long)]
    json: bool,
    /// Only optimizers whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// log2 of the sizes to run (default 20,22; --full: 16,20,22,24).
    #[arg(long, value_delimiter = ',')]
    log2_sizes: Option<Vec<u32>>,
    /// Kernel workgroup size (default: the library's).
    #[arg(long)]
    workgroup_size: Option<u32>,
    /// vec4 lanes per invocation (default: the library's).
    #[arg(long)]
    vec4_per_invocation: Option<u32>,
    /// How kernels move their lanes: auto (u64 on CPU adapters with shader-int64), f32, u64.
    #[arg(long, default_value = "auto")]
    lanes: String,
}

/// Batch length (steps) for which one batch takes about `target / 5`, after a warm-up step
/// (first-use costs such as page faults and pipeline compilation stay out).
fn calibrate(target: Duration, batch: &mut impl FnMut(usize)) -> usize {
    batch(1);
    let mut k = 1;
    loop {
        let t = Instant::now();
        batch(k);
        if t.elapsed() * 5 >= target || k >= 1 << 14 {
            return k;
        }
        k *= 2;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(k: usize, batch: &mut impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    batch(k);
    t.elapsed().as_secs_f64() / k as f64
}

/// Seconds per step: median of 5 batches, the batch length calibrated to ~target/5.
fn measure(target: Duration, mut batch: impl FnMut(usize)) -> f64 {
    let k = calibrate(target, &mut batch);
    median((0..5).map(|_| timed(k, &mut batch)).collect())
}

/// Alternating batches of a kernel and its roof (roof, kernel, roof, kernel, ...).
const PAIRS: usize = 9;

/// A kernel and its roof measured alternately, `PAIRS` batches each. Each roof batch and the
/// kernel batch right after it form a pair that saw the same machine state, so the fraction
/// of roof is the median of the per-pair ratios, which cancels the drift between pairs (a
/// roof measured against itself this way gives 1.00, where the ratio of the two medians was
/// off by up to 3% on this machine). Returns (kernel seconds per step, the median of the
/// kernel batches; roof seconds per step, that time times the median pair ratio, so that
/// kernel time / roof time is the paired fraction).
fn measure_against_roof(
    target: Duration,
    mut kernel: impl FnMut(usize),
    mut roof: impl FnMut(usize),
) -> (f64, f64) {
    // Batches of about target / PAIRS: the pair costs the time of one 5-batch `measure` each.
    let batch_target = target * 5 / PAIRS as u32;
    let (kk, kr) = (
        calibrate(batch_target, &mut kernel),
        calibrate(batch_target, &mut roof),
    );
    let (mut kernel_times, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let r = timed(kr, &mut roof);
        let k = timed(kk, &mut kernel);
        kernel_times.push(k);
        ratios.push(r / k);
    }
    let kernel_seconds = median(kernel_times);
    (kernel_seconds, kernel_seconds * median(ratios))
}

/// The adapter and how the kernels move their lanes on it.
fn adapter_line(ctx: &GpuContext) -> String {
    let lanes = if ctx.uses_u64_lanes() {
        "2 x u64"
    } else {
        "vec4<f32>"
    };
    format!("adapter: {} (lanes moved as {lanes})", ctx.describe())
}

/// When wgpu fell back to Mesa's software GL (llvmpipe), how to get the Vulkan driver.
fn gl_fallback_hint(ctx: &GpuContext) -> Option<&'static str> {
    let info = ctx.adapter_info()?;
    (info.backend == wgpu::Backend::Gl && info.device_type == wgpu::DeviceType::Cpu).then_some(
        "GL fallback; Vulkan driver: apt-get install mesa-vulkan-drivers (Debian/Ubuntu), \
         WGPU_BACKEND=vulkan",
    )
}

struct Record {
    optimizer: String,
    imp: &'static str,
    n: usize,
    seconds: f64,
    bytes_per_param: f64,
    roof_seconds: f64,
}

impl Record {
    fn gbps(&self) -> f64 {
        self.n as f64 * self.bytes_per_param / self.seconds / 1e9
    }
    fn roof_gbps(&self) -> f64 {
        self.n as f64 * self.bytes_per_param / self.roof_seconds / 1e9
    }
    fn json(&self) -> String {
        format!(
            "{{\"optimizer\":\"{}\",\"impl\":\"{}\",\"n\":{},\"seconds_per_step\":{:e},\"gbps\":{:.4},\"roof_gbps\":{:.4}}}",
            self.optimizer,
            self.imp,
            self.n,
            self.seconds,
            self.gbps(),
            self.roof_gbps()
        )
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn main() -> Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    let mut tuning = KernelTuning::default();
    tuning.workgroup_size = args.workgroup_size.unwrap_or(tuning.workgroup_size);
    tuning.vec4_per_invocation = args
        .vec4_per_invocation
        .unwrap_or(tuning.vec4_per_invocation);
    let lane_transport = match args.lanes.as_str() {
        "auto" => LaneTransport::Auto,
        "f32" => LaneTransport::F32x4,
        "u64" => LaneTransport::U64x2,
        other => {
            eprintln!("--lanes must be auto, f32 or u64, not {other}");
            std::process::exit(2);
        }
    };
    let ctx = GpuContext::with_options(ContextOptions {
        tuning,
        lane_transport,
        ..ContextOptions::default()
    })?;
    // The round trip and the f64 reference are in the JSON records and the full table, the
    // copy kernels in the full table only: the compact table skips their measurement.
    let every_id = args.full || args.json;
    let copies_wanted = args.full && !args.json;
    let target = Duration::from_millis(match (args.full, args.quick) {
        (true, _) => 600,
        (false, true) => 150,
        (false, false) => 250,
    });
    let sizes: Vec<usize> = args
        .log2_sizes
        .clone()
        .unwrap_or(if args.full {
            vec![16, 20, 22, 24]
        } else {
            vec![20, 22]
        })
        .into_iter()
        .map(|l| 1usize << l)
        .collect();
    let suite: Vec<_> = benchmark_suite()
        .into_iter()
        .filter(|(name, _)| args.only.as_ref().is_none_or(|o| name.contains(o.as_str())))
        .collect();
    // The header, once: on stdout with the tables, on stderr when stdout is JSON.
    let header = |line: &str| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    header(&adapter_line(&ctx));
    if let Some(hint) = gl_fallback_hint(&ctx) {
        header(hint);
    }
    header(&format!(
        "CPU: {} threads (rayon); kernel tuning {:?}",
        rayon::current_num_threads(),
        ctx.options().tuning
    ));

    // The 8-bit variants (`<name>_8bit`) of the suite's optimizers that can keep 8-bit state.
    let suite8: Vec<(String, OptimizerConfig)> = suite
        .iter()
        .filter(|(_, c)| match c {
            OptimizerConfig::Adam(a) => fused_optim::cpu::blockwise8::check_config(a).is_ok(),
            other => fused_optim::cpu::blockwise8::check_config_1state(other).is_ok(),
        })
        .map(|(name, c)| (format!("{name}_8bit"), *c))
        .collect();
    let per_size = suite.len() + suite8.len() + usize::from(copies_wanted);
    let mut vs_f32: Vec<(String, usize, f64, f64, f64)> = Vec::new();
    let bar = ProgressBar::new((sizes.len() * per_size) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let mut records = Vec::new();
    let mut copies = Vec::new();
    for &n in &sizes {
        let p0 = values(n, 1);
        // Grads at stagger slot 4: params (slot 0) and states (1-3) use the others.
        let g = StaggeredVec::from_slice(&values(n, 2), 4);
        let flat = FlatParams::from_slice(&ctx, &p0)?;
        flat.write_grads(&g)?;

        if copies_wanted {
            bar.set_message(format!("copies n = {n}"));
            let mut copy_kernel = GpuRoof::copy(&flat)?;
            let gpu_copy = measure(target, |k| {
                (0..k).for_each(|_| copy_kernel.step());
                ctx.wait().unwrap();
            });
            let gpu_buffer = measure(target, |k| {
                (0..k).for_each(|_| gpu_buffer_copy(&flat));
                ctx.wait().unwrap();
            });
            let mut dst = StaggeredVec::filled(n, 0.0, 0);
            let cpu_c = measure(target, |k| (0..k).for_each(|_| cpu_copy(&mut dst, &g)));
            copies.push((n, gpu_copy, gpu_buffer, cpu_c));
            drop(copy_kernel);
            bar.inc(1);
        }

        for (name, config) in &suite {
            bar.set_message(format!("{name} n = {n}"));
            let states = config.state_names().len();
            let bytes = config.minimal_bytes_per_param();
            flat.write_params(&p0)?;
            flat.write_grads(&g)?;

            // The roof runs on its own copy of the params (its states are its own too), so
            // the optimizer's params are not disturbed between alternating batches.
            let roof_params = FlatParams::from_slice(&ctx, &p0)?;
            roof_params.write_grads(&g)?;
            let mut roof = GpuRoof::new(&roof_params, states)?;
            let mut opt = GpuOptimizer::new(&flat, *config)?;
            let (gpu_step, gpu_roof) = measure_against_roof(
                target,
                |k| {
                    (0..k).for_each(|_| opt.step().unwrap());
                    ctx.wait().unwrap();
                },
                |k| {
                    (0..k).for_each(|_| roof.step());
                    ctx.wait().unwrap();
                },
            );
            drop(roof);
            drop(roof_params);
            let gpu_roundtrip = every_id.then(|| {
                measure(target, |k| {
                    for _ in 0..k {
                        flat.write_grads(&g).unwrap();
                        opt.step().unwrap();
                        std::hint::black_box(flat.read_params().unwrap());
                    }
                })
            });
            drop(opt);

            let mut cpu_states: Vec<StaggeredVec> = (0..states)
                .map(|k| StaggeredVec::filled(n, 0.0, k + 1))
                .collect();
            let mut p_roof = StaggeredVec::from_slice(&p0, 0);
            let mut p = StaggeredVec::from_slice(&p0, 0);
            let mut fast = CpuOptimizer::new(*config, n)?;
            let (cpu_fast, cpu_r) = measure_against_roof(
                target,
                |k| (0..k).for_each(|_| fast.step(&mut p, &g).unwrap()),
                |k| (0..k).for_each(|_| cpu_roof(&mut p_roof, &g, &mut cpu_states)),
            );
            drop(cpu_states);
            drop(p_roof);
            drop(fast);
            let cpu_ref = if every_id {
                let mut p64: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
                let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                let mut reference = ReferenceOptimizer::new(*config, n)?;
                Some(measure(target / 3, |k| {
                    (0..k).for_each(|_| reference.step(&mut p64, &g64).unwrap());
                }))
            } else {
                None
            };

            for (imp, seconds, roof_seconds) in [
                ("gpu_step", Some(gpu_step), gpu_roof),
                ("gpu_roundtrip", gpu_roundtrip, gpu_roof),
                ("cpu_fast", Some(cpu_fast), cpu_r),
                ("cpu_reference", cpu_ref, cpu_r),
            ] {
                let Some(seconds) = seconds else { continue };
                records.push(Record {
                    optimizer: name.to_string(),
                    imp,
                    n,
                    seconds,
                    bytes_per_param: bytes as f64,
                    roof_seconds,
                });
            }
            bar.inc(1);
        }

        for (name, config) in &suite8 {
            bar.set_message(format!("{name} n = {n}"));
            let q8 = StateFormat::Blockwise8 {
                min_size: fused_optim::cpu::blockwise8::DEFAULT_MIN_8BIT_SIZE,
            };
            flat.write_params(&p0)?;
            flat.write_grads(&g)?;
            let roof_params = FlatParams::from_slice(&ctx, &p0)?;
            roof_params.write_grads(&g)?;
            let states8 = config.state_names().len();
            let bytes8 = GpuRoof8::bytes_per_param(states8);
            let mut roof = GpuRoof8::new(&roof_params, states8)?;
            let mut opt = GpuOptimizer::builder(&flat)
                .config(*config)
                .state_format(q8)
                .build()?;
            let (gpu_step, gpu_roof) = measure_against_roof(
                target,
                |k| {
                    (0..k).for_each(|_| opt.step().unwrap());
                    ctx.wait().unwrap();
                },
                |k| {
                    (0..k).for_each(|_| roof.step());
                    ctx.wait().unwrap();
                },
            );
            drop(roof);
            // The target: the 8-bit step against the fp32 fused step of the same config,
            // interleaved the same way (the f32 optimizer on its own params).
            let mut opt32 = GpuOptimizer::new(&roof_params, *config)?;
            let (t8, t32) = measure_against_roof(
                target,
                |k| {
                    (0..k).for_each(|_| opt.step().unwrap());
                    ctx.wait().unwrap();
                },
                |k| {
                    (0..k).for_each(|_| opt32.step().unwrap());
                    ctx.wait().unwrap();
                },
            );
            drop(opt32);
            drop(roof_params);
            drop(opt);

            let mut p = StaggeredVec::from_slice(&p0, 0);
            let mut p_roof = StaggeredVec::from_slice(&p0, 0);
            let mut c1 = vec![0u8; n];
            let mut c2 = vec![0u8; if states8 == 2 { n } else { 0 }];
            let mut am = vec![0.0f32; 2 * n.div_ceil(256)];
            let mut fast = CpuOptimizer::builder(*config, n).state_format(q8).build()?;
            let (cpu_fast, cpu_r) = measure_against_roof(
                target,
                |k| (0..k).for_each(|_| fast.step(&mut p, &g).unwrap()),
                |k| (0..k).for_each(|_| cpu_roof8(&mut p_roof, &g, &mut c1, &mut c2, &mut am)),
            );
            let mut fast32 = CpuOptimizer::new(*config, n)?;
            let mut p32 = StaggeredVec::from_slice(&p0, 0);
            let (c8, c32) = measure_against_roof(
                target,
                |k| (0..k).for_each(|_| fast.step(&mut p, &g).unwrap()),
                |k| (0..k).for_each(|_| fast32.step(&mut p32, &g).unwrap()),
            );
            drop(fast);
            drop(fast32);
            vs_f32.push((name.clone(), n, t8 / t32, c8 / c32, bytes8));
            for (imp, seconds, roof_seconds) in [
                ("gpu_step", gpu_step, gpu_roof),
                ("cpu_fast", cpu_fast, cpu_r),
            ] {
                records.push(Record {
                    optimizer: name.clone(),
                    imp,
                    n,
                    seconds,
                    bytes_per_param: bytes8,
                    roof_seconds,
                });
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    if args.json {
        let mut body: Vec<String> = records.iter().map(Record::json).collect();
        body.extend(vs_f32.iter().map(|(name, n, gpu, cpu, _)| {
            format!(
                "{{\"optimizer\":\"{name}\",\"impl\":\"step_time_vs_f32\",\"n\":{n},\"gpu\":{gpu:.4},\"cpu_fast\":{cpu:.4}}}"
            )
        }));
        println!("[{}]", body.join(",\n"));
        return Ok(());
    }
    if args.full {
        full_tables(&copies, &records);
    } else {
        compact_table(&records);
    }
    if !vs_f32.is_empty() {
        println!("8-bit state (bitsandbytes-style block-wise, min_size 4096): step time / fp32 step time");
        println!("(interleaved batches, median of pair ratios; target on the GPU <= 0.70)");
        println!(
            "{:<26} {:>5}  {:>9} {:>9} {:>11}",
            "optimizer", "n", "GPU", "CPU fast", "bytes/param"
        );
        for (name, n, gpu, cpu, bytes) in &vs_f32 {
            println!(
                "{:<26} {:>5}  {:>8.2}x {:>8.2}x {:>11.4}",
                name,
                format!("2^{}", n.trailing_zeros()),
                gpu,
                cpu,
                bytes
            );
        }
        println!();
    }
    println!(
        "of roof = roof time / time, the median of roof/kernel batch pairs timed alternately:"
    );
    println!("1.00 means as fast as the memory traffic allows");
    println!("measured in {:.0} s", started.elapsed().as_secs_f64());
    if !args.full {
        println!(
            "--full: the sweep 2^16..2^24 with GB/s, copies, round trip, f64 reference (5-7 min)"
        );
    }
    Ok(())
}

/// The default output: per optimizer and size, the GPU step and the fast CPU path, each in
/// M params/s and as a paired fraction of its roof (fits in 80 columns).
fn compact_table(records: &[Record]) {
    let find = |r: &Record, imp: &str| {
        records
            .iter()
            .find(|o| o.optimizer == r.optimizer && o.n == r.n && o.imp == imp)
    };
    println!(
        "\n{:<26} {:>5}  {:-^19}  {:-^19}",
        "", "", " GPU step ", " CPU fast "
    );
    println!(
        "{:<26} {:>5}  {:>10} {:>8}  {:>10} {:>8}  {:>7}",
        "optimizer", "n", "Mparam/s", "of roof", "Mparam/s", "of roof", "GPU/CPU"
    );
    for gpu in records.iter().filter(|r| r.imp == "gpu_step") {
        let Some(cpu) = find(gpu, "cpu_fast") else {
            continue;
        };
        let mps = |r: &Record| r.n as f64 / r.seconds / 1e6;
        println!(
            "{:<26} {:>5}  {:>10.1} {:>8.2}  {:>10.1} {:>8.2}  {:>6.2}x",
            gpu.optimizer,
            format!("2^{}", gpu.n.trailing_zeros()),
            mps(gpu),
            gpu.roof_seconds / gpu.seconds,
            mps(cpu),
            cpu.roof_seconds / cpu.seconds,
            cpu.seconds / gpu.seconds
        );
    }
    println!();
}

/// The `--full` output: the copy kernels, then every id with GB/s and roof GB/s.
fn full_tables(copies: &[(usize, f64, f64, f64)], records: &[Record]) {
    println!("\ncopies (8 bytes per element moved):");
    println!(
        "{:>10} {:>16} {:>22} {:>14}",
        "n", "gpu_copy GB/s", "copy_buffer GB/s", "cpu_copy GB/s"
    );
    for (n, a, b, c) in copies {
        let gb = |s: f64| *n as f64 * 8.0 / s / 1e9;
        println!("{n:>10} {:>16.2} {:>22.2} {:>14.2}", gb(*a), gb(*b), gb(*c));
    }
    println!(
        "\n{:<26} {:>9} {:<14} {:>10} {:>10} {:>8} {:>9} {:>7} {:>9}",
        "optimizer", "n", "impl", "ms/step", "Mparam/s", "GB/s", "roof GB/s", "of roof", "gpu/cpu"
    );
    for r in records {
        let cpu_fast = records
            .iter()
            .find(|o| o.optimizer == r.optimizer && o.n == r.n && o.imp == "cpu_fast")
            .map(|o| o.seconds)
            .unwrap_or(f64::NAN);
        let speedup = if r.imp.starts_with("gpu") {
            format!("{:.2}x", cpu_fast / r.seconds)
        } else {
            String::new()
        };
        println!(
            "{:<26} {:>9} {:<14} {:>10.3} {:>10.1} {:>8.2} {:>9.2} {:>7.2} {:>9}",
            r.optimizer,
            r.n,
            r.imp,
            r.seconds * 1e3,
            r.n as f64 / r.seconds / 1e6,
            r.gbps(),
            r.roof_gbps(),
            r.roof_seconds / r.seconds,
            speedup
        );
    }
    println!(
        "\nbytes per parameter = minimal traffic: 12 (p, g read; p written) + 8 per state tensor; \
         8-bit state (`_8bit`): 12 + per state 2 code bytes + 8/256 of absmax (Adam 16.0625, \
         Lion and SGD 14.03125)"
    );
}
