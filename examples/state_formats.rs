//! Time one fast-CPU AdamW step with each state format (f32, bf16, bitsandbytes-style
//! 8-bit) and each SIMD level this CPU has (SSE2, AVX2, AVX-512), interleaved: every round
//! runs every (format, level) pair for a few steps, and each pair is reported as its median
//! time and the median over rounds of its ratio to the f32 step at the best level *of the
//! same round*, so that host drift between minutes cancels. Also the bytes each format
//! moves per parameter (read + written) per step.
//!
//! `cargo run --release --example state_formats -- [n (default 2^24)] [rounds (default 7)] [only]`

use std::time::Instant;

use fused_optim::cpu::simd::{set_simd_level, SimdLevel};
use fused_optim::{AdamConfig, CpuOptimizer, StateFormat};

/// Seconds on the clock the run measures with: wall time, or with `STATE_FORMATS_CLOCK=cpu`
/// the process's CPU time (for single-threaded runs, `RAYON_NUM_THREADS=1`, on a shared
/// machine: the time the step computed, without the time other processes held the core).
fn now() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    static CPU: OnceLock<bool> = OnceLock::new();
    if *CPU.get_or_init(|| std::env::var("STATE_FORMATS_CLOCK").as_deref() == Ok("cpu")) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> fused_optim::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1 << 24);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    // Optional: only the formats whose label contains this (f32 at the best level always runs).
    let only = args.next().unwrap_or_default();
    let g: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 1e-2)
        .collect();
    let best = SimdLevel::detected();
    let levels: Vec<SimdLevel> = SimdLevel::ALL.into_iter().filter(|&l| l <= best).collect();
    // (label, format, bytes moved per parameter: p read + written, g read, state read + written)
    let formats = [
        ("f32", StateFormat::F32, 8.0 + 4.0 + 16.0),
        ("bf16", StateFormat::Bf16, 8.0 + 4.0 + 8.0),
        (
            "8-bit",
            StateFormat::Blockwise8 { min_size: 4096 },
            8.0 + 4.0 + 4.0 + 16.0 / 256.0,
        ),
    ];
    let mut runs = Vec::new();
    for &(label, format, bytes) in &formats {
        for &level in &levels {
            let wanted = label.contains(only.as_str()) || (label == "f32" && level == best);
            if !wanted {
                continue;
            }
            let opt = CpuOptimizer::builder(AdamConfig::adamw(), n)
                .state_format(format)
                .build()?;
            runs.push((label, level, bytes, opt, vec![0.1f32; n], Vec::new()));
        }
    }
    // Warm-up: state pages touched, first step's state writes done.
    for run in runs.iter_mut() {
        set_simd_level(run.1);
        for _ in 0..2 {
            run.3.step(&mut run.4, &g)?;
        }
    }
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let reference = runs
        .iter()
        .position(|r| r.0 == "f32" && r.1 == best)
        .expect("the f32 run at the best level");
    for _ in 0..rounds {
        let mut this_round = Vec::with_capacity(runs.len());
        for run in runs.iter_mut() {
            set_simd_level(run.1);
            let mut times = Vec::new();
            for _ in 0..3 {
                let t = now();
                run.3.step(&mut run.4, &g)?;
                times.push(now() - t);
            }
            let m = median(&mut times);
            run.5.push(m);
            this_round.push(m);
        }
        for (r, &t) in ratios.iter_mut().zip(&this_round) {
            r.push(t / this_round[reference]);
        }
    }
    set_simd_level(best);
    println!(
        "n = {n}, {rounds} interleaved rounds of 3 steps, {} rayon threads",
        rayon::current_num_threads()
    );
    println!(
        "format  simd     ms/step  ns/param  GB/s  bytes/param  time / f32 at {}",
        best.name()
    );
    for (run, r) in runs.iter_mut().zip(ratios.iter_mut()) {
        let t = median(&mut run.5);
        println!(
            "{:<6}  {:<6} {:9.2} {:9.3} {:5.1} {:12.3}  {:.3}",
            run.0,
            run.1.name(),
            t * 1e3,
            t * 1e9 / n as f64,
            run.2 * n as f64 / t / 1e9,
            run.2,
            median(r)
        );
    }
    Ok(())
}
