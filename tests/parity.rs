//! GPU kernels and the fast CPU path against the f64 CPU reference: every optimizer with
//! every option, params after every step and every state tensor at the end, odd sizes, lr
//! changed mid-run, padding poisoned. Tolerance: see `common::RTOL_PER_STEP`.

mod cases;
mod common;

use common::*;
use fused_optim::gpu::buffer::{flat_bytes, read_f32};
use fused_optim::*;

const STEPS: u64 = 20;
const POISON: f32 = f32::from_bits(0x7FC0_BEEF); // a NaN: any leak into a live lane shows

/// Buffers the test owns, filled with POISON everywhere, then the first `n` params written.
fn poisoned_params(ctx: &GpuContext, p0: &[f32]) -> FlatParams {
    let bytes = flat_bytes(p0.len()) + 64; // padding lane + slack past it
    let make = |label| {
        let b = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue().write_buffer(
            &b,
            0,
            bytemuck::cast_slice(&vec![POISON; bytes as usize / 4]),
        );
        b
    };
    let flat = FlatParams::from_buffers(ctx, make("params"), make("grads"), p0.len()).unwrap();
    flat.write_params(p0).unwrap();
    flat
}

/// Runs `gpu_config` on the GPU and `ref_config` in the reference on the same inputs and
/// compares. Returns the first disagreement.
pub fn gpu_vs_reference(
    ctx: &GpuContext,
    gpu_config: OptimizerConfig,
    ref_config: OptimizerConfig,
    n: usize,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let p0 = params0(&mut rng, n);
    let flat = poisoned_params(ctx, &p0);
    let mut gpu = GpuOptimizer::new(&flat, gpu_config).map_err(|e| e.to_string())?;
    let mut reference = ReferenceOptimizer::new(ref_config, n).unwrap();
    let mut state_peaks = StatePeaks::new(&reference);
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut peak: Vec<f64> = p_ref.iter().map(|x| x.abs()).collect();
    let lr0 = ref_config.lr();
    for k in 1..=STEPS {
        let g = grads(&mut rng, n);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let lr = lr0 * cases::lr_factor(k);
        gpu.set_lr(gpu_config.lr() * cases::lr_factor(k)).unwrap();
        reference.set_lr(lr).unwrap();
        flat.write_grads(&g).unwrap();
        gpu.step().unwrap();
        reference.step(&mut p_ref, &g64).unwrap();
        track_peak(&mut peak, &p_ref);
        state_peaks.track(&reference);
        let got = flat.read_params().unwrap();
        check_params("gpu", &got, &p_ref, &peak, k, RTOL_PER_STEP)?;
    }
    for (name, peak) in reference.state_names().iter().zip(&state_peaks.0) {
        let got = gpu.read_state_f32(name).unwrap();
        check_state(
            name,
            &got,
            reference.state(name).unwrap(),
            peak,
            STEPS,
            RTOL_PER_STEP,
        )?;
    }
    if gpu.step_count() != STEPS {
        return Err(format!("step count {} != {STEPS}", gpu.step_count()));
    }
    // Nothing was written past n: the padding still holds the poison bits.
    let padded = flat_bytes(n) as usize / 4 + 16;
    for (what, buffer) in [
        ("params", flat.params_buffer()),
        ("grads", flat.grads_buffer()),
    ] {
        let all = read_f32(ctx, buffer, 0, padded).unwrap();
        if let Some(i) = (n..padded).find(|&i| all[i].to_bits() != POISON.to_bits()) {
            return Err(format!("{what}[{i}] past n = {n} was written: {}", all[i]));
        }
    }
    Ok(())
}

fn run_all_sizes(ctx: &GpuContext, sizes: &[usize]) {
    let mut failures = Vec::new();
    for (desc, config) in cases::all() {
        for &n in sizes {
            if !config.is_elementwise() && flat_bytes(n) > ctx.max_binding_bytes() {
                // Per-tensor kernels bind the params whole (no binding windows): past the
                // binding limit the GPU refuses them with a typed error, checked here.
                let flat = FlatParams::zeros(ctx, n).unwrap();
                match GpuOptimizer::new(&flat, config) {
                    Err(Error::BufferTooLarge { .. }) => continue,
                    other => {
                        failures.push(format!("[{desc}, n = {n}] not refused: {other:?}"));
                        continue;
                    }
                }
            }
            if let Err(e) = gpu_vs_reference(ctx, config, config, n, 1000 + n as u64) {
                failures.push(format!("[{desc}, n = {n}] {e}\n    config: {config:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gpu_matches_reference_small_sizes() {
    let Some(ctx) = gpu() else { return };
    run_all_sizes(&ctx, &[1, 3, 255, 257]);
}

/// Both lane transports on the same device: the default (u64 lanes on lavapipe, which has
/// shader-int64 and is a CPU adapter) and vec4<f32> forced.
#[test]
fn gpu_matches_reference_with_either_lane_transport() {
    let Some(ctx) = gpu() else { return };
    let info = ctx.adapter_info().cloned();
    let cpu_with_int64 = info.is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
        && ctx
            .device()
            .features()
            .contains(wgpu::Features::SHADER_INT64);
    assert_eq!(ctx.uses_u64_lanes(), cpu_with_int64);
    if !cpu_with_int64 {
        eprintln!("NOTE: this adapter is not a CPU adapter with shader-int64: u64 lanes forced");
    }
    for transport in [LaneTransport::F32x4, LaneTransport::U64x2] {
        let forced = ctx.clone().with_context_options(ContextOptions {
            lane_transport: transport,
            ..*ctx.options()
        });
        run_all_sizes(&forced, &[3, 257, 10_001]);
    }
}

#[test]
fn gpu_matches_reference_100003() {
    let Some(ctx) = gpu() else { return };
    run_all_sizes(&ctx, &[100_003]);
}

/// Binding windows capped at 64 KiB: 100_003 elements span 7 windows, so every kernel runs
/// with several dispatches at aligned offsets and a ragged last window.
#[test]
fn gpu_matches_reference_across_binding_windows() {
    let Some(ctx) = gpu_windowed(64 << 10) else {
        return;
    };
    let flat = FlatParams::zeros(&ctx, 100_003).unwrap();
    let opt = GpuOptimizer::new(&flat, SgdConfig::default()).unwrap();
    assert_eq!(opt.windows(), 7);
    run_all_sizes(&ctx, &[100_003, 16_387]);
}

/// The comparator is not vacuous: a 1% change of one hyper-parameter on the GPU side is
/// caught for every optimizer.
#[test]
fn comparator_catches_one_percent_hyper_parameter_change() {
    let Some(ctx) = gpu() else { return };
    for (desc, config) in cases::all() {
        let mut perturbed = config;
        match &mut perturbed {
            OptimizerConfig::Sgd(c) => c.lr *= 1.01,
            OptimizerConfig::Adagrad(c) => c.lr *= 1.01,
            OptimizerConfig::Rmsprop(c) => c.alpha = 1.0 - (1.0 - c.alpha) * 1.01,
            OptimizerConfig::Adam(c) => c.betas.0 = 1.0 - (1.0 - c.betas.0) * 1.01,
            OptimizerConfig::Adadelta(c) => c.rho = 1.0 - (1.0 - c.rho) * 1.01,
            OptimizerConfig::Nadam(c) => c.lr *= 1.01,
            OptimizerConfig::Adamax(c) => c.lr *= 1.01,
            OptimizerConfig::Radam(c) => c.lr *= 1.01,
            OptimizerConfig::Lion(c) => c.betas.0 = 1.0 - (1.0 - c.betas.0) * 1.01,
            OptimizerConfig::ScheduleFree(c) => c.lr *= 1.01,
            OptimizerConfig::Lamb(c) => c.lr *= 1.01,
            // Muon needs 2-D tensors: its rows are in cases::matrix() (tests/muon.rs).
            OptimizerConfig::Muon(c) => c.lr *= 1.01,
            // Its rows are in cases::shaped() (tests/adafactor.rs).
            OptimizerConfig::Adafactor(c) => c.lr *= 1.01,
        }
        let result = gpu_vs_reference(&ctx, perturbed, config, 257, 7);
        assert!(result.is_err(), "[{desc}] a 1% change went unnoticed");
    }
}

/// The fast CPU path against the reference, same table and tolerance.
#[test]
fn cpu_fast_matches_reference() {
    let mut failures = Vec::new();
    for (desc, config) in cases::all() {
        for &n in &[1usize, 3, 257, 100_003] {
            let mut rng = Rng::new(77 + n as u64);
            let p0 = params0(&mut rng, n);
            let mut p = p0.clone();
            let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
            let mut peak: Vec<f64> = p_ref.iter().map(|x| x.abs()).collect();
            let mut fast = CpuOptimizer::new(config, n).unwrap();
            let mut reference = ReferenceOptimizer::new(config, n).unwrap();
            let mut state_peaks = StatePeaks::new(&reference);
            let mut result = Ok(());
            for k in 1..=STEPS {
                let g = grads(&mut rng, n);
                let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                let lr = config.lr() * cases::lr_factor(k);
                fast.set_lr(lr).unwrap();
                reference.set_lr(lr).unwrap();
                fast.step(&mut p, &g).unwrap();
                reference.step(&mut p_ref, &g64).unwrap();
                track_peak(&mut peak, &p_ref);
                state_peaks.track(&reference);
                result = result.and(check_params(
                    "cpu_fast",
                    &p,
                    &p_ref,
                    &peak,
                    k,
                    RTOL_PER_STEP,
                ));
            }
            for (name, peak) in reference.state_names().iter().zip(&state_peaks.0) {
                result = result.and(check_state(
                    name,
                    fast.state(name).unwrap(),
                    reference.state(name).unwrap(),
                    peak,
                    STEPS,
                    RTOL_PER_STEP,
                ));
            }
            if let Err(e) = result {
                failures.push(format!("[{desc}, n = {n}] {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// PyTorch adds `weight_decay * p` only when weight_decay != 0, so an infinite parameter
/// stays infinite (`0 * inf` would make it NaN). The GPU kernels, the fast CPU path and the
/// reference must all keep it, with its sign, for every optimizer of the suite (PyTorch's
/// defaults: no L2 decay; AdamW's decoupled factor leaves inf as inf). Finite elements are
/// checked against the reference as everywhere else.
#[test]
fn infinite_params_stay_infinite_without_weight_decay() {
    let Some(ctx) = gpu() else { return };
    let n = 1001;
    let infinite = [
        (0, f32::INFINITY),
        (517, f32::NEG_INFINITY),
        (1000, f32::INFINITY),
    ];
    let mut failures = Vec::new();
    for (name, config) in fused_optim::roofline::benchmark_suite() {
        if matches!(config, OptimizerConfig::ScheduleFree(_)) {
            // schedulefree's lerp(y, z, c) turns y = z = inf into NaN (inf - inf), in the
            // package as here: nothing to keep.
            continue;
        }
        let mut rng = Rng::new(4242);
        let mut p0 = params0(&mut rng, n);
        for &(i, x) in &infinite {
            p0[i] = x;
        }
        let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
        let mut gpu_opt = GpuOptimizer::new(&flat, config).unwrap();
        let mut fast = CpuOptimizer::new(config, n).unwrap();
        let mut p_fast = p0.clone();
        let mut run = ReferenceRun::new(config, &p0);
        for _ in 0..3 {
            let g = grads(&mut rng, n);
            flat.write_grads(&g).unwrap();
            gpu_opt.step().unwrap();
            fast.step(&mut p_fast, &g).unwrap();
            run.step(&g);
        }
        let p_gpu = flat.read_params().unwrap();
        for &(i, x) in &infinite {
            let want = f64::from(x);
            if run.p[i] != want {
                failures.push(format!("{name}: reference p[{i}] = {}", run.p[i]));
            }
            for (imp, got) in [("gpu", p_gpu[i]), ("cpu_fast", p_fast[i])] {
                if got != x {
                    failures.push(format!("{name}: {imp} p[{i}] = {got}, want {x}"));
                }
            }
        }
        let finite: Vec<usize> = (0..n).filter(|i| p0[*i].is_finite()).collect();
        let pick = |v: &[f32]| finite.iter().map(|&i| v[i]).collect::<Vec<f32>>();
        let want: Vec<f64> = finite.iter().map(|&i| run.p[i]).collect();
        let peak: Vec<f64> = finite.iter().map(|&i| run.peak[i]).collect();
        for (imp, got) in [("gpu", pick(&p_gpu)), ("cpu_fast", pick(&p_fast))] {
            if let Err(e) = check_params(imp, &got, &want, &peak, 3, RTOL_PER_STEP) {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every registered algorithm has rows in the table (tests/cases), so a new algorithm
/// without test rows fails here.
#[test]
fn every_registered_algorithm_has_test_rows() {
    let mut rows = cases::all();
    rows.extend(cases::matrix());
    rows.extend(cases::shaped());
    for id in OptimizerConfig::IDS {
        assert!(
            rows.iter().any(|(_, c)| c.id() == *id),
            "algorithm `{id}` has no rows in tests/cases/mod.rs"
        );
    }
    for (desc, c) in cases::all()
        .into_iter()
        .chain(cases::matrix())
        .chain(cases::shaped())
    {
        assert!(c.runs_on_gpu(), "{desc} has no GPU path");
    }
    // `matrix()` is for algorithms that refuse 1-D vectors only.
    for (desc, c) in cases::matrix() {
        assert!(
            CpuOptimizer::new(c, 12).is_err(),
            "{desc} accepts a vector: put it in all()"
        );
    }
}
