//! Portability of the kernels beyond lavapipe: every kernel in every variant a device can get
//! is parsed, validated and translated by naga to SPIR-V, MSL and HLSL (with its override
//! constants at both values); the variant a WebGPU device gets (`vec4<f32>` lanes, no f16, no
//! int64) validates with WebGPU's capabilities and binds at most 8 storage buffers; a variant
//! that does not fit a device's limits is refused with a typed error before any pipeline is
//! created; and on a device whose limit is lowered to 8 every plain optimizer still steps as
//! the f64 reference does.

mod common;

use common::*;
use fused_optim::gpu::shaders::{
    all_kernels, assemble_with, binding_counts, check_fits, required_bindings, BindingKind,
    BindingRole, LowPrecision, Variant,
};
use fused_optim::roofline::benchmark_suite;
use fused_optim::*;
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// WebGPU's default `maxStorageBuffersPerShaderStage`.
const WEBGPU_STORAGE_BUFFERS: u32 = 8;

/// The capabilities wgpu gives naga on a WebGPU-compliant device with no optional feature
/// (`wgpu_naga_bridge::features_to_naga_capabilities(Features::empty(),
/// DownlevelFlags::compliant())`): the f16 pack/unpack builtins of core WGSL and the
/// defaults; no `SHADER_INT64`, no `SHADER_FLOAT16`.
fn webgpu_capabilities() -> Capabilities {
    Capabilities::default() | Capabilities::SHADER_FLOAT16_IN_FLOAT32
}

/// What a device offering what `variant` needs gives naga.
fn capabilities_for(variant: &Variant) -> Capabilities {
    let mut c = webgpu_capabilities();
    if variant.u64_lanes {
        c |= Capabilities::SHADER_INT64;
    }
    if variant.uses_native_f16() {
        c |= Capabilities::SHADER_FLOAT16;
    }
    c
}

/// Every variant of a kernel with `slots` state slots: lanes f32/u64 × f16 packed/native ×
/// grouped or not × low precision off/f16/bf16 × f32/bf16 state × every subset of its slots
/// (native f16 only where it changes the module: with f16 params). bf16 state is offered by
/// the API for Adam/AdamW only; the accessors are the same for every kernel, so every kernel
/// is checked with it.
fn variants(slots: usize) -> Vec<Variant> {
    let mut out = Vec::new();
    for u64_lanes in [false, true] {
        for grouped in [false, true] {
            for low_precision in LowPrecision::ALL {
                for native_f16 in [false, true] {
                    if native_f16 && low_precision != LowPrecision::F16 {
                        continue;
                    }
                    for bf16_state in [false, true] {
                        for state_slots in 0..(1u8 << slots) {
                            out.push(Variant {
                                native_f16,
                                u64_lanes,
                                grouped,
                                low_precision,
                                bf16_state,
                                state_slots,
                                ..Variant::default()
                            });
                        }
                    }
                }
            }
        }
    }
    // Kernels over caller ranges (src/gpu/tensors/): f32 params and state only.
    for (grouped, u64_lanes) in [(false, false), (true, false), (false, true), (true, true)] {
        for grad_in_param in [false, true] {
            for state_slots in 0..(1u8 << slots) {
                out.push(Variant {
                    grouped,
                    u64_lanes,
                    state_slots,
                    external: true,
                    grad_in_param,
                    ..Variant::default()
                });
            }
        }
    }
    out
}

/// Every kernel: the optimizers (from `all_kernels`) and the roof and copy kernels.
fn kernels() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    let mut k: Vec<_> = all_kernels().collect();
    k.push((
        "roof.wgsl",
        include_str!("../shaders/roof.wgsl"),
        &["s0", "s1", "s2"],
    ));
    k.push(("copy.wgsl", include_str!("../shaders/copy.wgsl"), &[]));
    k
}

fn parse(name: &str, source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)))
}

/// The resource bindings the module declares: (binding, kind), sorted.
fn declared_bindings(m: &naga::Module) -> Vec<(u32, BindingKind)> {
    let mut b: Vec<(u32, BindingKind)> = m
        .global_variables
        .iter()
        .filter_map(|(_, g)| {
            let rb = g.binding.as_ref()?;
            assert_eq!(rb.group, 0, "{:?}: group", g.name);
            let kind = match g.space {
                naga::AddressSpace::Uniform => BindingKind::Uniform {
                    // Dynamic offsets are a layout property: the two per-step uniforms.
                    dynamic: rb.binding == 0 || rb.binding == 11,
                },
                naga::AddressSpace::Storage { access } => BindingKind::Storage {
                    read_only: !access.contains(naga::StorageAccess::STORE),
                },
                other => panic!("{:?}: unexpected address space {other:?}", g.name),
            };
            Some((rb.binding, kind))
        })
        .collect();
    b.sort_by_key(|x| x.0);
    b
}

/// Override values: every bool override at `on`, the launch shape as the library sets it,
/// `STATES` (roof) as many as the variant binds.
fn constants(m: &naga::Module, on: bool, variant: &Variant) -> naga::back::PipelineConstants {
    let mut c = naga::back::PipelineConstants::default();
    for (_, o) in m.overrides.iter() {
        let name = o.name.clone().expect("named override");
        let value = match name.as_str() {
            "WORKGROUP_SIZE" => 256.0,
            "VEC4_PER_INVOCATION" => 2.0,
            "STATES" => f64::from(variant.state_count()),
            _ => {
                let ty = &m.types[o.ty].inner;
                assert!(
                    matches!(
                        ty,
                        naga::TypeInner::Scalar(naga::Scalar {
                            kind: naga::ScalarKind::Bool,
                            ..
                        })
                    ),
                    "{name}: an override that is not a bool needs a value here"
                );
                f64::from(u8::from(on))
            }
        };
        c.insert(name, value);
    }
    c
}

/// Translate one module (overrides applied) to SPIR-V, MSL and HLSL.
fn translate(label: &str, module: &naga::Module, info: &naga::valid::ModuleInfo, v: &Variant) {
    let stage = naga::ShaderStage::Compute;
    naga::back::spv::write_vec(
        module,
        info,
        &naga::back::spv::Options::default(),
        Some(&naga::back::spv::PipelineOptions {
            shader_stage: stage,
            entry_point: "main".into(),
        }),
    )
    .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));
    // 64-bit integers need MSL 2.3; HLSL needs shader model 6.0 for them and 6.2 for f16.
    let msl_options = naga::back::msl::Options {
        lang_version: if v.u64_lanes { (2, 3) } else { (1, 2) },
        ..Default::default()
    };
    naga::back::msl::write_string(
        module,
        info,
        &msl_options,
        &naga::back::msl::PipelineOptions {
            entry_point: Some((stage, "main".into())),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));
    let hlsl_options = naga::back::hlsl::Options {
        shader_model: if v.uses_native_f16() {
            naga::back::hlsl::ShaderModel::V6_2
        } else if v.u64_lanes {
            naga::back::hlsl::ShaderModel::V6_0
        } else {
            naga::back::hlsl::ShaderModel::V5_1
        },
        ..Default::default()
    };
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((stage, "main".into())),
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
}

/// Every kernel × every variant: the module declares exactly the bindings the layout holds
/// (`required_bindings`), validates with the capabilities the variant needs and no fewer
/// (WebGPU's refuse u64 lanes and native f16), and translates to SPIR-V, MSL and HLSL with
/// every bool override off and on.
#[test]
fn every_variant_validates_and_translates() {
    let mut modules = 0;
    for (file, source, slots) in kernels() {
        for v in variants(slots.len()) {
            let label = format!("{file} ({})", v.describe());
            let full = assemble_with(source, slots, v);
            let m = parse(&label, &full);

            let want: Vec<(u32, BindingKind)> = required_bindings(&v)
                .iter()
                .map(|r| (r.binding(), r.kind()))
                .collect();
            assert_eq!(declared_bindings(&m), want, "{label}: declared bindings");

            let info = Validator::new(ValidationFlags::all(), capabilities_for(&v))
                .validate(&m)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&full)));
            let webgpu = Validator::new(ValidationFlags::all(), webgpu_capabilities()).validate(&m);
            let needs_more = v.u64_lanes || v.uses_native_f16();
            assert_eq!(
                webgpu.is_ok(),
                !needs_more,
                "{label}: validation with WebGPU's capabilities"
            );

            for on in [false, true] {
                let c = constants(&m, on, &v);
                let (m2, info2) = naga::back::pipeline_constants::process_overrides(
                    &m,
                    &info,
                    Some((naga::ShaderStage::Compute, "main")),
                    &c,
                )
                .unwrap_or_else(|e| panic!("{label}, overrides {on}: {e}"));
                translate(&format!("{label}, overrides {on}"), &m2, &info2, &v);
                modules += 1;
            }
        }
    }
    eprintln!("{modules} modules translated to SPIR-V, MSL and HLSL");
    assert!(modules > 1000);
}

/// The variant a WebGPU device gets for each kernel: `vec4<f32>` lanes, no native f16, no
/// int64. Its storage buffers per stage, plain and grouped, low precision or not, are at
/// most 8 (`maxStorageBuffersPerShaderStage`'s default); the table below is what they are.
#[test]
fn webgpu_variants_fit_eight_storage_buffers() {
    let mut over = Vec::new();
    let mut worst = 0;
    for (file, _, slots) in all_kernels() {
        for v in variants(slots.len()) {
            if v.u64_lanes || v.native_f16 {
                continue;
            }
            let storage = binding_counts(&v).storage;
            worst = worst.max(storage);
            if storage > WEBGPU_STORAGE_BUFFERS {
                over.push(format!("{file} ({}): {storage}", v.describe()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "variants over WebGPU's 8 storage buffers: {over:#?}"
    );
    // The largest: low precision (no f32 grad binding, two 16-bit ones) + groups + 3 states.
    assert_eq!(worst, 8);

    // A plain step: param, grad, its states, control.
    let plain = |states: usize| Variant::default().with_all_states(states);
    for (states, want) in [(0, 3), (1, 4), (2, 5), (3, 6)] {
        assert_eq!(
            binding_counts(&plain(states)).storage,
            want,
            "{states} states"
        );
        assert_eq!(binding_counts(&plain(states)).uniform, 2);
    }
    let adam = Variant::default().with_all_states(2);
    assert_eq!(
        required_bindings(&adam),
        vec![
            BindingRole::Hyper,
            BindingRole::Window,
            BindingRole::Param,
            BindingRole::Grad,
            BindingRole::State(0),
            BindingRole::State(1),
            BindingRole::Control,
        ]
    );
    let worst_variant = Variant {
        grouped: true,
        low_precision: LowPrecision::Bf16,
        ..Variant::default().with_all_states(3)
    };
    assert_eq!(binding_counts(&worst_variant).storage, 8);
    // bf16 state: the seed uniform is bound, the f32 state slots are not.
    let bf16 = Variant {
        bf16_state: true,
        ..Variant::default().with_all_states(3)
    };
    assert_eq!(binding_counts(&bf16).storage, 6);
    assert_eq!(binding_counts(&bf16).uniform, 3);
}

/// `check_fits` against limits: every variant fits WebGPU's default limits (features as the
/// variant needs), and one storage buffer fewer than it needs is refused with the typed error
/// naming the kernel, the count and the limit; missing features are refused too.
#[test]
fn check_fits_refuses_what_does_not_fit() {
    let webgpu = wgpu::Limits::default();
    assert_eq!(
        webgpu.max_storage_buffers_per_shader_stage,
        WEBGPU_STORAGE_BUFFERS
    );
    for (file, _, slots) in all_kernels() {
        for v in variants(slots.len()) {
            let mut features = wgpu::Features::empty();
            if v.u64_lanes {
                features |= wgpu::Features::SHADER_INT64;
            }
            if v.uses_native_f16() {
                features |= wgpu::Features::SHADER_F16;
            }
            check_fits(file, &v, &webgpu, features)
                .unwrap_or_else(|e| panic!("{file} ({}): {e}", v.describe()));
            let needs = binding_counts(&v).storage;
            let tight = wgpu::Limits {
                max_storage_buffers_per_shader_stage: needs - 1,
                ..webgpu.clone()
            };
            match check_fits(file, &v, &tight, features) {
                Err(Error::KernelDoesNotFit {
                    kernel,
                    needs: n,
                    limit,
                    what,
                }) => {
                    assert!(kernel.starts_with(file), "{kernel}");
                    assert_eq!((n, limit), (needs, needs - 1));
                    assert!(what.contains("max_storage_buffers_per_shader_stage"));
                }
                other => panic!("{file} ({}): {other:?}", v.describe()),
            }
            let uniforms = binding_counts(&v).uniform;
            let no_uniforms = wgpu::Limits {
                max_uniform_buffers_per_shader_stage: uniforms - 1,
                ..webgpu.clone()
            };
            assert!(matches!(
                check_fits(file, &v, &no_uniforms, features),
                Err(Error::KernelDoesNotFit { needs, .. }) if needs == uniforms
            ));
            if v.u64_lanes || v.uses_native_f16() {
                assert!(matches!(
                    check_fits(file, &v, &webgpu, wgpu::Features::empty()),
                    Err(Error::KernelNeedsFeature { .. })
                ));
            }
        }
    }
    let e = check_fits(
        "adam.wgsl",
        &Variant::default().with_all_states(3),
        &wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            ..wgpu::Limits::default()
        },
        wgpu::Features::empty(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel adam.wgsl (vec4<f32> lanes, 3 state tensors) does not fit this device: it needs \
         6 storage buffers per shader stage (max_storage_buffers_per_shader_stage), the device \
         allows 4"
    );
}

/// The storage-buffer counts the gradient-norm pass and the device step counter are checked
/// with are those their modules declare.
#[test]
fn norm_and_device_step_counts_match_their_modules() {
    use fused_optim::gpu::shaders::{
        with_grad_control, with_lanes, DEVICE_STEP_STORAGE_BUFFERS, NORM_STORAGE_BUFFERS,
    };
    let storage = |source: &str| {
        let m = parse("module", source);
        let s = declared_bindings(&m)
            .iter()
            .filter(|b| matches!(b.1, BindingKind::Storage { .. }))
            .count();
        s as u32
    };
    for u64_lanes in [false, true] {
        let norm = with_lanes(include_str!("../shaders/norm.wgsl"), u64_lanes);
        // One more in the module: the tensor table, bound only by `partial_sums_external`
        // (which binds no 16-bit gradients), so each entry point binds at most
        // NORM_STORAGE_BUFFERS.
        assert_eq!(storage(&norm), NORM_STORAGE_BUFFERS + 1);
    }
    let step = with_grad_control(include_str!("../shaders/device_step.wgsl"));
    assert_eq!(storage(&step), DEVICE_STEP_STORAGE_BUFFERS);
}

/// A device from the first adapter with `max_storage_buffers_per_shader_stage` lowered to
/// `storage` and no optional features (so `vec4<f32>` lanes, packed f16: what a WebGPU
/// device gets), or None (with the skip message) when there is no adapter.
fn limited_context(storage: u32) -> Option<GpuContext> {
    gpu()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .expect("an adapter (gpu() found one)");
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: storage,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("limited"),
        required_features: wgpu::Features::empty(),
        required_limits: limits,
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .expect("a device with lowered limits");
    assert_eq!(
        device.limits().max_storage_buffers_per_shader_stage,
        storage
    );
    Some(GpuContext::from_device(device, queue))
}

/// `steps` steps of `config` on the device and in the f64 reference, params compared after
/// every step (tests/parity.rs's tolerance).
fn steps_like_reference(ctx: &GpuContext, config: OptimizerConfig, n: usize) -> Result<(), String> {
    const STEPS: u64 = 5;
    let mut rng = Rng::new(7);
    let p0 = params0(&mut rng, n);
    let flat = FlatParams::from_slice(ctx, &p0).map_err(|e| e.to_string())?;
    let mut gpu = GpuOptimizer::new(&flat, config).map_err(|e| e.to_string())?;
    let mut reference = ReferenceOptimizer::new(config, n).map_err(|e| e.to_string())?;
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut peak: Vec<f64> = p_ref.iter().map(|x| x.abs()).collect();
    for k in 1..=STEPS {
        let g = grads(&mut rng, n);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        flat.write_grads(&g).map_err(|e| e.to_string())?;
        gpu.step().map_err(|e| e.to_string())?;
        reference
            .step(&mut p_ref, &g64)
            .map_err(|e| e.to_string())?;
        track_peak(&mut peak, &p_ref);
        let got = flat.read_params().map_err(|e| e.to_string())?;
        check_params("gpu", &got, &p_ref, &peak, k, RTOL_PER_STEP)?;
    }
    Ok(())
}

/// On a device limited to WebGPU's 8 storage buffers per stage, every optimizer (each
/// benchmark configuration: plain, momentum, centered, AMSGrad...) steps as the reference
/// does, and the heaviest variants the API builds (low precision with bf16 state and
/// AMSGrad, groups with AMSGrad) are accepted.
#[test]
fn every_optimizer_steps_on_eight_storage_buffers() {
    let Some(ctx) = limited_context(WEBGPU_STORAGE_BUFFERS) else {
        return;
    };
    for (name, config) in benchmark_suite() {
        steps_like_reference(&ctx, config, 1003).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let amsgrad = AdamConfig {
        amsgrad: true,
        ..Default::default()
    };
    let values = vec![0.25f32; 1000];
    let lp = LowPrecisionParams::new(&ctx, &values, LowFormat::Bf16).unwrap();
    let mut opt = GpuOptimizer::with_bf16_state(lp.master(), Some((&lp, true)), amsgrad, true)
        .expect("bf16 params + bf16 state + AMSGrad: 7 storage buffers");
    opt.step().unwrap();
    let lp16 = LowPrecisionParams::new(&ctx, &values, LowFormat::F16).unwrap();
    let mut opt = GpuOptimizer::new_low_precision(&lp16, amsgrad, false)
        .expect("f16 params + AMSGrad: 7 storage buffers");
    opt.step().unwrap();
    assert!(!opt.uses_shader_f16(), "no shader-f16 on this device");
    let params = FlatParams::builder()
        .lane_aligned()
        .array("w", &ndarray::Array1::from(vec![0.5f32; 64]))
        .array("b", &ndarray::Array1::from(vec![0.5f32; 8]))
        .build(&ctx)
        .unwrap();
    let mut opt = GpuOptimizer::with_groups(
        &params,
        &[
            ParamGroup {
                segments: vec!["w".into()],
                config: amsgrad.into(),
            },
            ParamGroup {
                segments: vec!["b".into()],
                config: AdamConfig {
                    weight_decay: 0.0,
                    ..amsgrad
                }
                .into(),
            },
        ],
    )
    .expect("groups + AMSGrad: 7 storage buffers");
    opt.step().unwrap();
    // The gradient-norm pass and the device step counter (5 storage buffers each).
    opt.set_grad_options(GradOptions {
        max_norm: Some(1.0),
        ..Default::default()
    })
    .unwrap();
    opt.set_device_loss_scaler(Some(LossScaler::default()))
        .unwrap();
    opt.step().unwrap();
    assert_eq!(opt.device_step_count().unwrap(), 2);
    ctx.wait().unwrap();
}

/// Below what a kernel needs (4 storage buffers per stage, WebGPU's compatibility mode),
/// building it returns the typed error, without a panic and without a device-side error,
/// while a kernel that fits still runs. Without `check_fits` the bind group layout would be
/// a wgpu validation error (the default handler panics).
#[test]
fn over_the_limit_is_a_typed_error() {
    let Some(ctx) = limited_context(4) else {
        return;
    };
    // Plain SGD: param, grad, control.
    steps_like_reference(&ctx, SgdConfig::default().into(), 257).unwrap();
    let params = FlatParams::from_slice(&ctx, &[0.5; 1000]).unwrap();
    match GpuOptimizer::new(&params, AdamConfig::default()) {
        Err(Error::KernelDoesNotFit {
            kernel,
            needs,
            limit,
            what,
        }) => {
            assert!(kernel.starts_with("adam.wgsl"), "{kernel}");
            assert_eq!((needs, limit), (5, 4));
            assert!(what.contains("max_storage_buffers_per_shader_stage"));
        }
        other => panic!("expected KernelDoesNotFit, got {other:?}"),
    }
    // SGD with momentum: 4, at the limit.
    GpuOptimizer::new(
        &params,
        SgdConfig {
            momentum: 0.9,
            ..Default::default()
        },
    )
    .expect("SGD with momentum fits 4 storage buffers");
    // The gradient-norm pass and the device step counter (5 storage buffers each) are
    // refused too, as errors, not panics.
    let mut sgd = GpuOptimizer::new(&params, SgdConfig::default()).unwrap();
    let norm = sgd.set_grad_options(GradOptions {
        max_norm: Some(1.0),
        ..Default::default()
    });
    assert!(
        matches!(norm, Err(Error::KernelDoesNotFit { ref kernel, needs: 5, limit: 4, .. }) if kernel == "norm.wgsl"),
        "{norm:?}"
    );
    let scaler = sgd.set_device_loss_scaler(Some(LossScaler::default()));
    assert!(
        matches!(scaler, Err(Error::KernelDoesNotFit { ref kernel, needs: 5, limit: 4, .. }) if kernel == "device_step.wgsl"),
        "{scaler:?}"
    );
    // Nothing changed: the plain step still runs.
    sgd.step().unwrap();
    assert!(matches!(
        GpuOptimizer::new(
            &params,
            RmspropConfig {
                centered: true,
                ..Default::default()
            }
        ),
        Err(Error::KernelDoesNotFit { needs: 5, .. })
    ));
    ctx.wait().unwrap();
}
