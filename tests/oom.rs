//! Out of memory and limits (issue 13, part 4): buffers past `max_buffer_size` or
//! `max_storage_buffer_binding_size` and allocations that cannot be made fail with typed
//! errors, leave nothing half-built, and the context keeps working.

mod common;

use common::*;
use fused_optim::*;

/// A device on the adapter with small buffer limits (16 MiB buffers, 1 MiB storage
/// bindings), wrapped with `from_device`: the limits are the device's own, as wgpu checks
/// them.
fn small_limits_device() -> Option<GpuContext> {
    let _ = gpu()?; // skipped (or failed, with FUSED_OPTIM_REQUIRE_GPU=1) without an adapter
    pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .unwrap();
        let limits = wgpu::Limits {
            max_buffer_size: 16 << 20,
            max_storage_buffer_binding_size: 1 << 20,
            ..adapter.limits()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("small limits"),
                required_features: wgpu::Features::empty(),
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .unwrap();
        Some(GpuContext::from_device(device, queue))
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A small Adam run on `ctx`, compared bitwise with the same run on the shared context.
fn small_run_matches(ctx: &GpuContext, n: usize) {
    let mut rng = Rng::new(7);
    let p0 = params0(&mut rng, n);
    let g = grads(&mut rng, n);
    let run = |c: &GpuContext| {
        let params = FlatParams::from_slice(c, &p0).unwrap();
        let mut opt = GpuOptimizer::new(&params, AdamConfig::default()).unwrap();
        params.write_grads(&g).unwrap();
        for _ in 0..3 {
            opt.step().unwrap();
        }
        params.read_params().unwrap()
    };
    let want = run(&gpu().unwrap());
    assert_eq!(
        bits(&run(ctx)),
        bits(&want),
        "the context still steps correctly"
    );
}

#[test]
fn oom_flat_params_past_max_buffer_size_is_refused_and_the_context_still_works() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.device().limits().max_buffer_size;
    let n = (limit / 4 + 1) as usize;
    match FlatParams::zeros(&ctx, n) {
        Err(Error::BufferTooLarge {
            bytes, limit: l, ..
        }) => {
            assert!(bytes > l && l == limit);
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
    // A length whose byte count overflowed u64 once wrapped to a tiny buffer. Past 2^34
    // elements the element-count check (tests/index.rs) refuses it first.
    for n in [
        usize::MAX / 4,
        usize::MAX / 4 + 1,
        usize::MAX - 2,
        usize::MAX,
    ] {
        assert!(
            matches!(
                FlatParams::zeros(&ctx, n),
                Err(Error::BufferTooLarge { .. } | Error::TooManyElements { .. })
            ),
            "n = {n}"
        );
    }
    small_run_matches(&ctx, 1000);
}

#[test]
fn oom_device_limits_are_refused_with_typed_errors() {
    let Some(ctx) = small_limits_device() else {
        return;
    };
    let limits = ctx.device().limits();
    assert_eq!(limits.max_buffer_size, 16 << 20);
    assert_eq!(limits.max_storage_buffer_binding_size, 1 << 20);
    // Past max_buffer_size: params, and low-precision params bound whole.
    assert!(matches!(
        FlatParams::zeros(&ctx, (8 << 20) + 1),
        Err(Error::BufferTooLarge { .. })
    ));
    // f32 state is bound in 1 MiB windows: 4M elements (16 MiB buffers) work.
    let n = 4 << 20;
    let params = FlatParams::zeros(&ctx, n).unwrap();
    let opt = GpuOptimizer::new(&params, AdamConfig::default()).unwrap();
    assert_eq!(opt.windows(), 16);
    drop(opt);
    // Packed bf16 state is bound whole: 2M elements = 4 MiB > the 1 MiB binding limit. It
    // was a bind-group validation error (a panic of the default handler); now it is refused
    // before anything is allocated.
    let big = FlatParams::zeros(&ctx, 2 << 20).unwrap();
    match GpuOptimizer::with_bf16_state(&big, None, AdamConfig::default(), false) {
        Err(Error::BufferTooLarge { bytes, limit, .. }) => {
            assert_eq!((bytes, limit), (4 << 20, 1 << 20));
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
    // 16-bit params are bound whole too.
    assert!(matches!(
        LowPrecisionParams::from_master(&big, LowFormat::Bf16),
        Err(Error::BufferTooLarge { .. })
    ));
    // Nothing is left behind that breaks the device: a small optimizer steps exactly as on
    // the full-limits device, and the 4M-element one still steps.
    small_run_matches(&ctx, 1000);
    let mut opt = GpuOptimizer::new(&params, AdamConfig::default()).unwrap();
    params.write_grads(&vec![0.5; n]).unwrap();
    opt.step().unwrap();
    let p = params.read_params().unwrap();
    assert!(
        p.iter().all(|&x| x == p[0] && x < 0.0),
        "every window stepped"
    );
}

/// A refused build (a workgroup size past the device's limit) returns `Err`, and the
/// context it was refused on keeps working.
#[test]
fn oom_failed_build_leaves_nothing_half_built() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.device().limits().max_compute_invocations_per_workgroup;
    let bad = ctx.clone().with_context_options(ContextOptions {
        tuning: KernelTuning {
            workgroup_size: max * 2,
            vec4_per_invocation: 1,
        },
        ..Default::default()
    });
    let params = FlatParams::from_slice(&bad, &[0.5; 4096]).unwrap();
    let err = GpuOptimizer::new(&params, AdamConfig::default()).unwrap_err();
    eprintln!("refused: {err}");
    assert!(
        matches!(
            err,
            Error::InvalidLaunchOption { .. } | Error::Wgpu { .. } | Error::KernelDoesNotFit { .. }
        ),
        "{err:?}"
    );
    small_run_matches(&ctx, 1000);
}

#[test]
fn oom_cpu_state_that_cannot_be_allocated_is_a_typed_error() {
    // usize::MAX / 4 f32: the byte count passes isize::MAX (capacity overflow); 2^45 f32
    // (128 TiB): past the address space, the allocator refuses. Neither aborts.
    for n in [usize::MAX / 4, isize::MAX as usize / 4, 1 << 45] {
        match CpuOptimizer::new(AdamConfig::default(), n) {
            Err(Error::OutOfMemory { message, .. }) => eprintln!("CpuOptimizer n = {n}: {message}"),
            other => panic!("CpuOptimizer n = {n}: expected OutOfMemory, got {other:?}"),
        }
        match ReferenceOptimizer::new(AdamConfig::default(), n) {
            Err(Error::OutOfMemory { message, .. }) => {
                eprintln!("ReferenceOptimizer n = {n}: {message}")
            }
            other => panic!("ReferenceOptimizer n = {n}: expected OutOfMemory, got {other:?}"),
        }
    }
    // An algorithm without state allocates nothing and succeeds.
    assert!(CpuOptimizer::new(SgdConfig::default(), 1 << 45).is_ok());
    // And a normal one still works afterwards.
    let mut opt = CpuOptimizer::new(AdamConfig::default(), 8).unwrap();
    let mut p = vec![1.0; 8];
    opt.step(&mut p, &[0.5; 8]).unwrap();
    assert!(p.iter().all(|&x| x < 1.0));
}
