//! The async entry points the web needs (device creation from an adapter, every read-back),
//! natively: they give exactly what the blocking API gives (which is built on them), and
//! errors stay typed.

mod common;

use fused_optim::gpu::buffer::{read_bytes_async, read_f32_async};
use fused_optim::{AdamConfig, ContextOptions, Error, FlatParams, GpuContext, GpuOptimizer};

#[test]
fn async_read_backs_equal_the_blocking_ones() {
    let Some(ctx) = common::gpu() else { return };
    let p0: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
    let g: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos()).collect();
    let flat = FlatParams::builder()
        .slice("w", &p0[..1000])
        .slice("b", &p0[1000..])
        .build(&ctx)
        .unwrap();
    let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
    for _ in 0..3 {
        flat.write_grads(&g).unwrap();
        opt.step().unwrap();
    }
    pollster::block_on(async {
        ctx.wait_async().await.unwrap();
        let params = flat.read_params_async().await.unwrap();
        assert_eq!(params, flat.read_params().unwrap());
        assert_ne!(params, p0, "the steps changed the params");
        assert_eq!(flat.read_grads_async().await.unwrap(), g);
        assert_eq!(
            flat.read_segment_values_async("b").await.unwrap(),
            flat.read_segment_values("b").unwrap()
        );
        assert_eq!(
            flat.read_segment_async("w").await.unwrap(),
            flat.read_segment("w").unwrap()
        );
        for name in ["exp_avg", "exp_avg_sq"] {
            assert_eq!(
                opt.read_state_f32_async(name).await.unwrap(),
                opt.read_state_f32(name).unwrap()
            );
        }
        assert_eq!(opt.device_step_count_async().await.unwrap(), 3);
        opt.check_finite_gradients_async().await.unwrap();
        let part = read_f32_async(&ctx, flat.params_buffer(), 10, 5)
            .await
            .unwrap();
        assert_eq!(part, params[10..15]);
        let bytes = read_bytes_async(&ctx, flat.params_buffer(), 0, 0)
            .await
            .unwrap();
        assert!(bytes.is_empty());
        // Typed errors, not panics.
        assert!(matches!(
            opt.read_state_f32_async("no_such_state").await,
            Err(Error::UnknownState { .. })
        ));
        assert!(matches!(
            flat.read_segment_values_async("no_such_segment").await,
            Err(Error::Segment { .. })
        ));
    });
}

#[test]
fn a_context_from_an_adapter_runs_the_kernels() {
    let Some(shared) = common::gpu() else { return };
    let wanted = shared.adapter_info().unwrap().name.clone();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapter = adapters
        .into_iter()
        .find(|a| a.get_info().name == wanted)
        .expect("the shared context's adapter is listed");
    let ctx = pollster::block_on(GpuContext::from_adapter(
        &adapter,
        ContextOptions::default(),
    ))
    .unwrap();
    assert_eq!(ctx.adapter_info().unwrap().name, wanted);
    // The adapter's own limits were requested, not WebGPU's defaults.
    assert_eq!(
        ctx.device().limits().max_storage_buffers_per_shader_stage,
        adapter.limits().max_storage_buffers_per_shader_stage
    );
    let flat = FlatParams::from_slice(&ctx, &[1.0, 2.0]).unwrap();
    flat.write_grads(&[1.0, -1.0]).unwrap();
    let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
    opt.step().unwrap();
    // Adam's first step moves each parameter by lr against the gradient's sign.
    let p = pollster::block_on(flat.read_params_async()).unwrap();
    assert!(
        (p[0] - 0.999).abs() < 1e-6 && (p[1] - 2.001).abs() < 1e-6,
        "{p:?}"
    );
}
