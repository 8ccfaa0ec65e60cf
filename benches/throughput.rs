//! Criterion: GPU-versus-CPU optimizer-step throughput with roofs, per optimizer and size.
//!
//! ids per optimizer and n: `cpu_reference`, `cpu_fast`, `gpu_step` (device-resident: submit
//! many steps, wait once), `gpu_roundtrip` (upload grads, step, read params back),
//! `gpu_roof`, `cpu_roof` (same access pattern, trivial arithmetic); per n: `gpu_copy`
//! (WGSL vec4 copy), `gpu_buffer_copy` (`copy_buffer_to_buffer`), `cpu_copy` (parallel
//! memcpy). Throughput is in minimal bytes (12 + 8 per state tensor per parameter; 8 for a
//! copy). GPU time comes from timestamp queries where the adapter has them.
//!
//! Optimizers that can keep bitsandbytes-style 8-bit state also get a group `<name>_8bit`
//! (`gpu_roof` and `cpu_roof` there are the 8-bit access pattern's roofs, throughput in
//! 12 + 2.03125 bytes per state tensor per parameter).
//!
//! `FUSED_OPTIM_BENCH_SIZES=16,20` (log2) narrows the sizes; criterion's filter narrows ids.

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::roofline::{
    benchmark_suite, cpu_copy, cpu_roof, cpu_roof8, gpu_buffer_copy, GpuRoof, GpuRoof8,
};
use fused_optim::*;

fn sizes() -> Vec<usize> {
    std::env::var("FUSED_OPTIM_BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|x| x.trim().parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![16, 20, 22, 24])
        .into_iter()
        .map(|l| 1usize << l)
        .collect()
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            x as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn wall(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let ctx = GpuContext::new().expect("an adapter (see README: running without a GPU)");
    let timer = GpuTimer::new(&ctx);
    eprintln!(
        "adapter: {}\nGPU time from {}",
        ctx.describe(),
        if timer.uses_timestamps() {
            "timestamp queries"
        } else {
            "wall clock around submit + wait"
        }
    );
    let gpu_time = |iters: u64, f: &mut dyn FnMut()| {
        timer.time(|| (0..iters).for_each(|_| f())).expect("timing")
    };

    for n in sizes() {
        let p0 = values(n, 1);
        // Grads at stagger slot 4: params (slot 0) and states (1-3) use the others.
        let g = StaggeredVec::from_slice(&values(n, 2), 4);
        let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
        flat.write_grads(&g).unwrap();

        let mut group = c.benchmark_group("copy");
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Bytes(8 * n as u64));
        let mut copy = GpuRoof::copy(&flat).unwrap();
        group.bench_function(BenchmarkId::new("gpu_copy", n), |b| {
            b.iter_custom(|iters| gpu_time(iters, &mut || copy.step()))
        });
        group.bench_function(BenchmarkId::new("gpu_buffer_copy", n), |b| {
            b.iter_custom(|iters| gpu_time(iters, &mut || gpu_buffer_copy(&flat)))
        });
        let mut dst = StaggeredVec::filled(n, 0.0, 0);
        group.bench_function(BenchmarkId::new("cpu_copy", n), |b| {
            b.iter_custom(|iters| wall(iters, || cpu_copy(&mut dst, &g)))
        });
        group.finish();
        drop(copy);

        for (name, config) in benchmark_suite() {
            let states = config.state_names().len();
            let mut group = c.benchmark_group(name);
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
            group.warm_up_time(Duration::from_millis(300));
            group.measurement_time(Duration::from_secs(2));
            group.throughput(Throughput::Bytes(
                config.minimal_bytes_per_param() * n as u64,
            ));
            flat.write_params(&p0).unwrap();
            flat.write_grads(&g).unwrap();

            let mut roof = GpuRoof::new(&flat, states).unwrap();
            group.bench_function(BenchmarkId::new("gpu_roof", n), |b| {
                b.iter_custom(|iters| gpu_time(iters, &mut || roof.step()))
            });
            drop(roof);
            flat.write_params(&p0).unwrap();
            let mut opt = GpuOptimizer::new(&flat, config).unwrap();
            group.bench_function(BenchmarkId::new("gpu_step", n), |b| {
                b.iter_custom(|iters| gpu_time(iters, &mut || opt.step().unwrap()))
            });
            group.bench_function(BenchmarkId::new("gpu_roundtrip", n), |b| {
                b.iter_custom(|iters| {
                    wall(iters, || {
                        flat.write_grads(&g).unwrap();
                        opt.step().unwrap();
                        std::hint::black_box(flat.read_params().unwrap());
                    })
                })
            });
            drop(opt);

            let mut p = StaggeredVec::from_slice(&p0, 0);
            let mut cpu_states: Vec<StaggeredVec> = (0..states)
                .map(|k| StaggeredVec::filled(n, 0.0, k + 1))
                .collect();
            group.bench_function(BenchmarkId::new("cpu_roof", n), |b| {
                b.iter_custom(|iters| wall(iters, || cpu_roof(&mut p, &g, &mut cpu_states)))
            });
            drop(cpu_states);
            let mut p = StaggeredVec::from_slice(&p0, 0);
            let mut fast = CpuOptimizer::new(config, n).unwrap();
            group.bench_function(BenchmarkId::new("cpu_fast", n), |b| {
                b.iter_custom(|iters| wall(iters, || fast.step(&mut p, &g).unwrap()))
            });
            drop(fast);
            let mut p64: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
            let mut reference = ReferenceOptimizer::new(config, n).unwrap();
            group.bench_function(BenchmarkId::new("cpu_reference", n), |b| {
                b.iter_custom(|iters| wall(iters, || reference.step(&mut p64, &g64).unwrap()))
            });
            group.finish();

            // The 8-bit variant (`<name>_8bit`, StateFormat::Blockwise8), where the algorithm
            // has one: GPU step against its own roof (GpuRoof8), the fast CPU path against
            // cpu_roof8.
            let eight_bit = match config {
                OptimizerConfig::Adam(a) => fused_optim::cpu::blockwise8::check_config(&a).is_ok(),
                other => fused_optim::cpu::blockwise8::check_config_1state(&other).is_ok(),
            };
            if !eight_bit {
                continue;
            }
            let q8 = StateFormat::Blockwise8 {
                min_size: fused_optim::cpu::blockwise8::DEFAULT_MIN_8BIT_SIZE,
            };
            let name8 = format!("{name}_8bit");
            let mut group = c.benchmark_group(name8.as_str());
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
            group.warm_up_time(Duration::from_millis(300));
            group.measurement_time(Duration::from_secs(2));
            group.throughput(Throughput::Bytes(
                (GpuRoof8::bytes_per_param(states) * n as f64) as u64,
            ));
            flat.write_params(&p0).unwrap();
            let mut roof = GpuRoof8::new(&flat, states).unwrap();
            group.bench_function(BenchmarkId::new("gpu_roof", n), |b| {
                b.iter_custom(|iters| gpu_time(iters, &mut || roof.step()))
            });
            drop(roof);
            flat.write_params(&p0).unwrap();
            let mut opt = GpuOptimizer::builder(&flat)
                .config(config)
                .state_format(q8)
                .build()
                .unwrap();
            group.bench_function(BenchmarkId::new("gpu_step", n), |b| {
                b.iter_custom(|iters| gpu_time(iters, &mut || opt.step().unwrap()))
            });
            drop(opt);
            let mut p = StaggeredVec::from_slice(&p0, 0);
            let (mut c1, mut c2) = (vec![0u8; n], vec![0u8; if states == 2 { n } else { 0 }]);
            let mut am = vec![0.0f32; 2 * n.div_ceil(256)];
            group.bench_function(BenchmarkId::new("cpu_roof", n), |b| {
                b.iter_custom(|iters| {
                    wall(iters, || cpu_roof8(&mut p, &g, &mut c1, &mut c2, &mut am))
                })
            });
            let mut p = StaggeredVec::from_slice(&p0, 0);
            let mut fast = CpuOptimizer::builder(config, n)
                .state_format(q8)
                .build()
                .unwrap();
            group.bench_function(BenchmarkId::new("cpu_fast", n), |b| {
                b.iter_custom(|iters| wall(iters, || fast.step(&mut p, &g).unwrap()))
            });
            group.finish();
        }
    }
}

// Criterion's own plots are off: plotters here is built with embedded-font rendering
// (ab_glyph, for the playground pictures) and has no system font for criterion's charts.
criterion_group! {
    name = throughput;
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(throughput);
