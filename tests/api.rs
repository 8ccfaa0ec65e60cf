//! The host API: invalid input gives typed errors and changes nothing; segments, ndarray
//! views, caller-owned buffers, batching of steps, state read/load.

mod cases;
mod common;

use common::*;
use fused_optim::*;
use ndarray::{Array1, Array2};

/// (description, config, expected offending hyper-parameter name or None for a combination).
fn invalid_configs() -> Vec<(&'static str, OptimizerConfig, Option<&'static str>)> {
    vec![
        (
            "sgd negative lr",
            SgdConfig {
                lr: -0.1,
                ..Default::default()
            }
            .into(),
            Some("lr"),
        ),
        (
            "sgd NaN lr",
            SgdConfig {
                lr: f64::NAN,
                ..Default::default()
            }
            .into(),
            Some("lr"),
        ),
        (
            "sgd negative momentum",
            SgdConfig {
                momentum: -0.5,
                ..Default::default()
            }
            .into(),
            Some("momentum"),
        ),
        (
            "sgd negative wd",
            SgdConfig {
                weight_decay: -1e-2,
                ..Default::default()
            }
            .into(),
            Some("weight_decay"),
        ),
        (
            "sgd nesterov without momentum",
            SgdConfig {
                nesterov: true,
                ..Default::default()
            }
            .into(),
            None,
        ),
        (
            "sgd nesterov with dampening",
            SgdConfig {
                nesterov: true,
                momentum: 0.9,
                dampening: 0.1,
                ..Default::default()
            }
            .into(),
            None,
        ),
        (
            "adagrad negative lr_decay",
            AdagradConfig {
                lr_decay: -1.0,
                ..Default::default()
            }
            .into(),
            Some("lr_decay"),
        ),
        (
            "adagrad negative initial acc",
            AdagradConfig {
                initial_accumulator_value: -0.1,
                ..Default::default()
            }
            .into(),
            Some("initial_accumulator_value"),
        ),
        (
            "adagrad negative eps",
            AdagradConfig {
                eps: -1e-10,
                ..Default::default()
            }
            .into(),
            Some("eps"),
        ),
        (
            "rmsprop negative alpha",
            RmspropConfig {
                alpha: -0.1,
                ..Default::default()
            }
            .into(),
            Some("alpha"),
        ),
        (
            "rmsprop negative momentum",
            RmspropConfig {
                momentum: -0.9,
                ..Default::default()
            }
            .into(),
            Some("momentum"),
        ),
        (
            "adam beta1 = 1",
            AdamConfig {
                betas: (1.0, 0.999),
                ..Default::default()
            }
            .into(),
            Some("beta1"),
        ),
        (
            "adam beta2 negative",
            AdamConfig {
                betas: (0.9, -0.1),
                ..Default::default()
            }
            .into(),
            Some("beta2"),
        ),
        (
            "adam infinite eps",
            AdamConfig {
                eps: f64::INFINITY,
                ..Default::default()
            }
            .into(),
            Some("eps"),
        ),
        (
            "adamw negative wd",
            AdamConfig {
                weight_decay: -0.01,
                ..AdamConfig::adamw()
            }
            .into(),
            Some("weight_decay"),
        ),
        (
            "adadelta rho > 1",
            AdadeltaConfig {
                rho: 1.5,
                ..Default::default()
            }
            .into(),
            Some("rho"),
        ),
        (
            "nadam negative momentum_decay",
            NadamConfig {
                momentum_decay: -4e-3,
                ..Default::default()
            }
            .into(),
            Some("momentum_decay"),
        ),
        (
            "adamax beta1 > 1",
            AdamaxConfig {
                betas: (1.1, 0.999),
                ..Default::default()
            }
            .into(),
            Some("beta1"),
        ),
        (
            "radam negative lr",
            RadamConfig {
                lr: -1e-3,
                ..Default::default()
            }
            .into(),
            Some("lr"),
        ),
    ]
}

fn check_error(desc: &str, err: Error, expected: Option<&str>) {
    match (err, expected) {
        (Error::InvalidHyperParameter { name, .. }, Some(want)) => assert_eq!(name, want, "{desc}"),
        (Error::InvalidCombination { .. }, None) => {}
        (other, _) => panic!("{desc}: unexpected error {other:?}"),
    }
}

#[test]
fn invalid_configs_are_typed_errors_on_every_path() {
    for (desc, config, expected) in invalid_configs() {
        check_error(desc, config.validate().unwrap_err(), expected);
        check_error(desc, CpuOptimizer::new(config, 3).unwrap_err(), expected);
        check_error(
            desc,
            ReferenceOptimizer::new(config, 3).unwrap_err(),
            expected,
        );
    }
    // Every default config is valid.
    for (desc, config) in cases::all() {
        config.validate().unwrap_or_else(|e| panic!("{desc}: {e}"));
    }
}

#[test]
fn invalid_config_on_gpu_leaves_params_untouched() {
    let Some(ctx) = gpu() else { return };
    let p0 = vec![1.5f32, -2.0, 3.25];
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    for (desc, config, expected) in invalid_configs() {
        check_error(
            desc,
            GpuOptimizer::new(&flat, config).unwrap_err(),
            expected,
        );
    }
    assert_eq!(flat.read_params().unwrap(), p0);
}

#[test]
fn length_mismatch_changes_nothing() {
    let p0 = vec![1.0f32, 2.0, 3.0];
    let mut p = p0.clone();
    let mut cpu = CpuOptimizer::new(AdamConfig::default(), 3).unwrap();
    assert!(matches!(
        cpu.step(&mut p, &[0.1, 0.2]),
        Err(Error::LengthMismatch {
            expected: 3,
            got: 2,
            ..
        })
    ));
    assert_eq!(p, p0);
    assert_eq!(cpu.step_count(), 0);
    assert!(matches!(
        cpu.load_state("exp_avg", &[1.0]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(cpu.state("exp_avg").unwrap(), &[0.0, 0.0, 0.0]);

    let mut reference = ReferenceOptimizer::new(SgdConfig::default(), 3).unwrap();
    let mut p64 = vec![1.0f64, 2.0, 3.0];
    assert!(reference.step(&mut p64, &[1.0; 4]).is_err());
    assert_eq!(p64, vec![1.0, 2.0, 3.0]);
    assert_eq!(reference.step_count(), 0);

    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    let mut opt = GpuOptimizer::new(&flat, AdamConfig::default()).unwrap();
    flat.write_grads(&[0.5, 0.5, 0.5]).unwrap();
    assert!(matches!(
        flat.write_grads(&[9.0; 4]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        flat.write_params(&[9.0; 2]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(flat.read_grads().unwrap(), vec![0.5, 0.5, 0.5]);
    assert_eq!(flat.read_params().unwrap(), p0);
    assert!(matches!(
        opt.load_state("exp_avg", &[1.0; 2]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(opt.read_state_f32("exp_avg").unwrap(), vec![0.0; 3]);
    assert!(matches!(
        opt.read_state_f32("momentum_buffer"),
        Err(Error::UnknownState { .. })
    ));
    assert!(matches!(
        opt.set_lr(-1.0),
        Err(Error::InvalidHyperParameter { .. })
    ));
    assert_eq!(opt.lr(), 1e-3);
}

#[test]
fn empty_inputs_are_refused() {
    assert!(matches!(
        CpuOptimizer::new(SgdConfig::default(), 0),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        ReferenceOptimizer::new(SgdConfig::default(), 0),
        Err(Error::Empty { .. })
    ));
    let Some(ctx) = gpu() else { return };
    assert!(matches!(
        FlatParams::from_slice(&ctx, &[]),
        Err(Error::Empty { .. })
    ));
    let b = FlatParams::builder().slice("w", &[1.0]).slice("empty", &[]);
    assert!(matches!(b.build(&ctx), Err(Error::Segment { .. })));
    let b = FlatParams::builder().slice("w", &[1.0]).slice("w", &[2.0]);
    assert!(matches!(b.build(&ctx), Err(Error::Segment { .. })));
}

#[test]
fn buffers_past_device_limits_and_bad_caller_buffers_are_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.device().limits().max_buffer_size;
    let too_many = (limit / 4 + 1) as usize;
    assert!(matches!(
        FlatParams::zeros(&ctx, too_many),
        Err(Error::BufferTooLarge { .. })
    ));

    let make = |size, usage| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let rw =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    // 5 elements need 8 * 4 = 32 bytes (whole vec4 lanes).
    let err = FlatParams::from_buffers(&ctx, make(20, rw), make(32, rw), 5).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferTooSmall {
                needed: 32,
                got: 20,
                ..
            }
        ),
        "{err:?}"
    );
    let err = FlatParams::from_buffers(
        &ctx,
        make(32, rw),
        make(32, wgpu::BufferUsages::COPY_DST),
        5,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingUsage {
                usage: "STORAGE",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn no_adapter_message_says_how_to_get_one() {
    let msg = Error::NoAdapter {
        reason: "none".into(),
    }
    .to_string();
    assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
}

/// Named tensors of several shapes in one flat buffer, stepped by one dispatch, agree with
/// the reference on the concatenation; ndarray in and out.
#[test]
fn segments_and_ndarray_round_trip() {
    let Some(ctx) = gpu() else { return };
    let w = Array2::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f32 * 0.1 - 0.7);
    let b = Array1::from_vec(vec![0.25f32, -0.5, 0.75]);
    let flat = FlatParams::builder()
        .array("w", &w)
        .array("b", &b)
        .build(&ctx)
        .unwrap();
    assert_eq!(flat.len(), 18);
    assert_eq!(flat.segment("b").unwrap().offset, 15);
    assert_eq!(flat.read_segment("w").unwrap().shape(), &[3, 5]);
    assert_eq!(
        flat.read_segment("w")
            .unwrap()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap(),
        w
    );
    assert!(matches!(
        flat.read_segment("nope"),
        Err(Error::Segment { .. })
    ));

    let config = AdamConfig {
        lr: 0.1,
        ..AdamConfig::adamw()
    };
    let mut opt = GpuOptimizer::new(&flat, config).unwrap();
    let gw = Array2::from_shape_fn((3, 5), |(i, j)| ((i + 2 * j) as f32).sin());
    let gb = Array1::from_vec(vec![1.0f32, -2.0, 0.5]);
    flat.write_segment_grads_array("w", &gw).unwrap();
    flat.write_segment_grads_array("b", &gb).unwrap();
    assert!(flat.write_segment_grads_array("b", &gw).is_err());
    opt.step().unwrap();

    let mut p: Vec<f64> = w.iter().chain(b.iter()).map(|&x| f64::from(x)).collect();
    let g: Vec<f64> = gw.iter().chain(gb.iter()).map(|&x| f64::from(x)).collect();
    let peak: Vec<f64> = p.iter().map(|x| x.abs()).collect();
    let mut reference = ReferenceOptimizer::new(config, 18).unwrap();
    reference.step(&mut p, &g).unwrap();
    check_params(
        "segments",
        &flat.read_params().unwrap(),
        &p,
        &peak,
        1,
        RTOL_PER_STEP,
    )
    .unwrap();
}

/// Several steps recorded into one submission with encode_step give the same result as one
/// submission per step (each step has its own uniform slot).
#[test]
fn encode_step_batches_steps_in_one_submission() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    let p0 = params0(&mut rng, 1001);
    let g = grads(&mut rng, 1001);
    let config = AdamConfig::default();
    let a = FlatParams::from_slice(&ctx, &p0).unwrap();
    let b = FlatParams::from_slice(&ctx, &p0).unwrap();
    a.write_grads(&g).unwrap();
    b.write_grads(&g).unwrap();
    let mut opt_a = GpuOptimizer::new(&a, config).unwrap();
    let mut opt_b = GpuOptimizer::new(&b, config).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..5 {
        opt_a.encode_step(&mut encoder).unwrap();
    }
    ctx.queue().submit([encoder.finish()]);
    for _ in 0..5 {
        opt_b.step().unwrap();
    }
    assert_eq!(opt_a.step_count(), 5);
    assert_eq!(a.read_params().unwrap(), b.read_params().unwrap());
    assert_eq!(
        opt_a.read_state_f32("exp_avg_sq").unwrap(),
        opt_b.read_state_f32("exp_avg_sq").unwrap()
    );
}

#[test]
fn state_starts_as_pytorch_says_and_loads() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let cfg = AdagradConfig {
        initial_accumulator_value: 0.25,
        ..Default::default()
    };
    let mut opt = GpuOptimizer::new(&flat, cfg).unwrap();
    assert_eq!(opt.state_names(), &["sum"]);
    assert_eq!(opt.read_state_f32("sum").unwrap(), vec![0.25; 5]);
    opt.load_state("sum", &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!(
        opt.read_state_f32("sum").unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0]
    );
    // SGD: no state without momentum; with momentum the buffer appears.
    let sgd = GpuOptimizer::new(&flat, SgdConfig::default()).unwrap();
    assert!(sgd.state_names().is_empty());
    let sgd = GpuOptimizer::new(
        &flat,
        SgdConfig {
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sgd.state_names(), &["momentum_buffer"]);
}

/// A device the caller already owns, with its own buffers for params and grads.
#[test]
fn works_on_a_caller_device_and_buffers() {
    let Some(shared) = gpu() else { return };
    let ctx = GpuContext::from_device(shared.device().clone(), shared.queue().clone());
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let make = || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("caller"),
            size: 16,
            usage,
            mapped_at_creation: false,
        })
    };
    let (pb, gb) = (make(), make());
    ctx.queue()
        .write_buffer(&pb, 0, bytemuck::cast_slice(&[1.0f32, 2.0, 3.0]));
    ctx.queue()
        .write_buffer(&gb, 0, bytemuck::cast_slice(&[0.5f32, -0.5, 0.0]));
    let flat = FlatParams::from_buffers(&ctx, pb, gb, 3).unwrap();
    let mut opt = GpuOptimizer::new(
        &flat,
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    opt.step().unwrap();
    assert_eq!(flat.read_params().unwrap(), vec![0.95, 2.05, 3.0]);
}

/// The automatic choice runs the CPU path on a software adapter and the GPU kernels on a real
/// GPU; both backends behind the same API agree with the reference.
#[test]
fn auto_optimizer_chooses_and_both_backends_agree() {
    let ctx = gpu();
    let mut rng = Rng::new(11);
    let p0 = params0(&mut rng, 4099);
    let config = OptimizerConfig::from(RmspropConfig {
        momentum: 0.5,
        centered: true,
        ..Default::default()
    });
    let mut choices = vec![BackendChoice::Cpu, BackendChoice::Auto];
    if let Some(c) = &ctx {
        choices.push(BackendChoice::Gpu);
        let auto = AutoOptimizer::new(ctx.as_ref(), &p0, config, BackendChoice::Auto).unwrap();
        let software = c.is_software();
        assert_eq!(
            auto.backend(),
            if software { Backend::Cpu } else { Backend::Gpu }
        );
    }
    assert_eq!(BackendChoice::Auto.resolve(None).unwrap(), Backend::Cpu);
    assert!(matches!(
        BackendChoice::Gpu.resolve(None),
        Err(Error::NoAdapter { .. })
    ));
    for choice in choices {
        let mut opt = AutoOptimizer::new(ctx.as_ref(), &p0, config, choice).unwrap();
        let mut reference = ReferenceOptimizer::new(config, p0.len()).unwrap();
        let mut p: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
        let mut peak: Vec<f64> = p.iter().map(|x| x.abs()).collect();
        let mut grng = Rng::new(12);
        for k in 1..=5 {
            let g = grads(&mut grng, p0.len());
            opt.write_grads(&g).unwrap();
            opt.step().unwrap();
            let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
            reference.step(&mut p, &g64).unwrap();
            track_peak(&mut peak, &p);
            check_params(
                &format!("{choice:?}"),
                &opt.read_params().unwrap(),
                &p,
                &peak,
                k,
                RTOL_PER_STEP,
            )
            .unwrap();
        }
        assert!(opt.write_grads(&[1.0]).is_err());
        assert_eq!(opt.host_state().step, 5);
        assert_eq!(opt.read_state("grad_avg").unwrap().len(), p0.len());
    }
}

/// Launch options the device cannot run are typed errors at construction, not panics.
#[test]
fn invalid_launch_options_are_typed_errors() {
    let Some(shared) = gpu() else { return };
    let flat = FlatParams::from_slice(&shared, &[1.0; 100]).unwrap();
    for (tuning, cap) in [
        (
            KernelTuning {
                workgroup_size: 0,
                vec4_per_invocation: 2,
            },
            None,
        ),
        (
            KernelTuning {
                workgroup_size: 1 << 20,
                vec4_per_invocation: 2,
            },
            None,
        ),
        (
            KernelTuning {
                workgroup_size: 64,
                vec4_per_invocation: 0,
            },
            None,
        ),
        (KernelTuning::default(), Some(8)),
    ] {
        let ctx = shared.clone().with_context_options(ContextOptions {
            tuning,
            max_binding_bytes: cap,
            ..ContextOptions::default()
        });
        let flat_here = FlatParams::from_slice(&ctx, &[1.0; 100]).unwrap();
        assert!(
            matches!(
                GpuOptimizer::new(&flat_here, AdamConfig::default()),
                Err(Error::InvalidLaunchOption { .. })
            ),
            "{tuning:?} {cap:?}"
        );
    }
    assert_eq!(flat.read_params().unwrap(), vec![1.0; 100]);
}
