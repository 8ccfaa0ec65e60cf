//! Criterion: fixed costs of a step.
//!
//! - `small/step_1024` vs `small/empty_submit`: a step of a tiny model against an empty
//!   submission + wait on the same adapter (a step should cost at most ~2x the empty one);
//!   `small/noop_dispatch`, one workgroup of an empty kernel + wait, is the floor under any
//!   step on that adapter;
//! - `model/one_tensor` vs `model/1000_tensors`: 2^22 parameters as one tensor or as 1000
//!   named segments of varied sizes (the flat buffer makes both one dispatch per step);
//! - `model/one_tensor_norm_clipped`, `model/one_tensor_unscaled_value_clipped`: the cost of
//!   the gradient pipeline (device-side global norm; unscale + clip by value);
//! - `model/one_tensor_device_loss_scaler`: mixed precision with no read-back (inf/NaN check,
//!   device step counter, device GradScaler update);
//! - `low_precision/adam_{bf16,bf16_stochastic,f16,f16_packed}`: 16-bit params and grads with
//!   f32 master weights and state, against their own minimal bytes (28 per parameter); f16
//!   with native `shader-f16` loads/stores where the device has it, and forced packed;
//! - `model/1000_tensors_2_groups`: the same tensors in two parameter groups (one dispatch,
//!   a lane-to-group table on the device).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fused_optim::*;

fn benches(c: &mut Criterion) {
    let ctx = GpuContext::new().expect("an adapter (see README: running without a GPU)");
    eprintln!("adapter: {}", ctx.describe());

    let mut group = c.benchmark_group("small");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("empty_submit", |b| {
        b.iter(|| {
            let encoder = ctx.device().create_command_encoder(&Default::default());
            ctx.queue().submit([encoder.finish()]);
            ctx.wait().unwrap();
        })
    });
    // The floor under any step: one compute pass dispatching one workgroup of a kernel that
    // does nothing, + wait.
    let noop = ctx
        .device()
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("no-op"),
            source: wgpu::ShaderSource::Wgsl("@compute @workgroup_size(64) fn main() {}".into()),
        });
    let noop = ctx
        .device()
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("no-op"),
            layout: None,
            module: &noop,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    group.bench_function("noop_dispatch", |b| {
        b.iter(|| {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&noop);
                pass.dispatch_workgroups(1, 1, 1);
            }
            ctx.queue().submit([encoder.finish()]);
            ctx.wait().unwrap();
        })
    });
    let flat = FlatParams::from_slice(&ctx, &vec![0.5f32; 1024]).unwrap();
    flat.write_grads(&vec![0.25f32; 1024]).unwrap();
    let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
    group.bench_function("step_1024", |b| {
        b.iter(|| {
            opt.step().unwrap();
            ctx.wait().unwrap();
        })
    });
    group.finish();

    let n = 1usize << 22;
    // Mixed-precision kernels against their own minimal bytes: f32 master r/w (8), 16-bit
    // grad read (2), 16-bit param write (2), Adam state r/w (16) = 28 bytes per parameter.
    let mut group = c.benchmark_group("low_precision");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(28 * n as u64));
    // adam_f16 uses native f16 where the device has shader-f16; adam_f16_packed forces
    // pack2x16float on the same device.
    let packed_ctx = ctx.clone().with_context_options(ContextOptions {
        packed_f16_only: true,
        ..*ctx.options()
    });
    for (name, format, stochastic, on) in [
        ("adam_bf16", LowFormat::Bf16, false, &ctx),
        ("adam_bf16_stochastic", LowFormat::Bf16, true, &ctx),
        ("adam_f16", LowFormat::F16, false, &ctx),
        ("adam_f16_packed", LowFormat::F16, false, &packed_ctx),
    ] {
        let lp = LowPrecisionParams::new(on, &vec![0.5f32; n], format).unwrap();
        lp.write_grad_bits(&vec![format.round(0.01); n]).unwrap();
        let mut opt =
            GpuOptimizer::new_low_precision(&lp, AdamConfig::default(), stochastic).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                (0..iters).for_each(|_| opt.step().unwrap());
                ctx.wait().unwrap();
                start.elapsed()
            })
        });
    }
    // bf16 Adam state with f32 params: 8 + 4 + 8 = 20 bytes per parameter.
    group.throughput(Throughput::Bytes(20 * n as u64));
    let flat = FlatParams::from_slice(&ctx, &vec![0.5f32; n]).unwrap();
    flat.write_grads(&vec![0.01f32; n]).unwrap();
    let mut opt = GpuOptimizer::with_bf16_state(&flat, None, AdamConfig::default(), false).unwrap();
    group.bench_function("adam_bf16_state", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    drop(opt);
    drop(flat);
    group.finish();

    let mut group = c.benchmark_group("model");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(28 * n as u64));
    let one = FlatParams::from_slice(&ctx, &vec![0.5f32; n]).unwrap();
    let mut opt_one = GpuOptimizer::new(&one, AdamConfig::default()).unwrap();
    group.bench_function("one_tensor", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_one.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    drop(opt_one);
    // The same step with clip_grad_norm_ on the device (two reduction passes added to the
    // same submission) and with unscaling + clipping by value (no extra pass).
    let mut opt_clip = GpuOptimizer::new(&one, AdamConfig::default()).unwrap();
    opt_clip
        .set_grad_options(GradOptions {
            max_norm: Some(1.0),
            ..Default::default()
        })
        .unwrap();
    group.bench_function("one_tensor_norm_clipped", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_clip.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    opt_clip
        .set_grad_options(GradOptions {
            grad_scale: 1.0 / 1024.0,
            clip_value: Some(1.0),
            max_norm: None,
            skip_nonfinite: false,
        })
        .unwrap();
    group.bench_function("one_tensor_unscaled_value_clipped", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_clip.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    // Mixed precision with everything on the device: unscale by the device loss scale,
    // inf/NaN check (the norm pass), device step count, GradScaler update (2 tiny passes).
    opt_clip.set_grad_options(GradOptions::default()).unwrap();
    opt_clip
        .set_device_loss_scaler(Some(LossScaler::default()))
        .unwrap();
    group.bench_function("one_tensor_device_loss_scaler", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_clip.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    drop(opt_clip);
    drop(one);
    // 1000 tensors of varied sizes (a weight-and-bias mix) summing to exactly 2^22.
    let mut sizes: Vec<usize> = (0..1000)
        .map(|i| if i % 2 == 0 { 4_000 + 7 * i } else { 37 + i })
        .collect();
    let used: usize = sizes[..999].iter().sum();
    sizes[999] = n - used;
    let mut builder = FlatParams::builder();
    for (i, &s) in sizes.iter().enumerate() {
        builder = builder.slice(&format!("t{i}"), &vec![0.5f32; s]);
    }
    let many = builder.build(&ctx).unwrap();
    assert_eq!(many.len(), n);
    let mut opt_many = GpuOptimizer::new(&many, AdamConfig::default()).unwrap();
    // The same 1000 tensors in two parameter groups (weights with decay, the rest without):
    // one dispatch, each vec4 lane looks its group up in a table (+1 byte per parameter).
    let aligned = {
        let mut b = FlatParams::builder().lane_aligned();
        for (i, &s) in sizes.iter().enumerate() {
            b = b.slice(&format!("t{i}"), &vec![0.5f32; s]);
        }
        b.build(&ctx).unwrap()
    };
    let decayed = AdamConfig {
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    let names = |parity: usize| -> Vec<String> {
        (0..1000)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("t{i}"))
            .collect()
    };
    let mut opt_groups = GpuOptimizer::with_groups(
        &aligned,
        &[
            ParamGroup {
                segments: names(0),
                config: decayed.into(),
            },
            ParamGroup {
                segments: names(1),
                config: AdamConfig {
                    weight_decay: 0.0,
                    ..decayed
                }
                .into(),
            },
        ],
    )
    .unwrap();
    group.bench_function("1000_tensors_2_groups", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_groups.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    group.bench_function("1000_tensors", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            (0..iters).for_each(|_| opt_many.step().unwrap());
            ctx.wait().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

// Criterion's own plots are off: plotters here is built with embedded-font rendering
// (ab_glyph, for the playground pictures) and has no system font for criterion's charts.
criterion_group! {
    name = overheads;
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(overheads);
