//! Per-tensor algorithms and the segment table: LAMB on the GPU (two-pass segmented
//! kernel) and on the fast CPU path against the f64 reference over a model of several
//! tensors with shapes (odd sizes, a tensor spanning several GPU and CPU chunks, a
//! zero-initialised tensor, a tensor with an all-zero first gradient, mixed magnitudes, the
//! params' padding poisoned), every LAMB row of tests/cases; the per-tensor scalars; and the
//! typed errors: shapes that do not match lengths, tables that do not cover the buffer,
//! checkpoints of other shapes, options the GPU's per-tensor path does not have.
//! Tolerance: `common::RTOL_PER_STEP` (1e-5 per step; see there), the same for the
//! per-tensor scalars (relative, per step).

mod cases;
mod common;

use common::*;
use fused_optim::gpu::buffer::read_f32;
use fused_optim::*;

const STEPS: u64 = 20;
const POISON: f32 = f32::from_bits(0x7FC0_BEEF);

/// 71 510 elements (not a multiple of 4: the last lane has 2 padding elements).
fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![37, 29],
        vec![29],
        vec![1],
        vec![5, 7, 3],
        vec![301],
        vec![70_001],
    ]
}

fn lens() -> Vec<usize> {
    shapes().iter().map(|s| s.iter().product()).collect()
}

fn offsets() -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    lens()
        .into_iter()
        .map(|l| {
            let r = start..start + l;
            start += l;
            r
        })
        .collect()
}

/// Params: the mixed pattern, tensor 4 all zero (LAMB's weight norm 0: trust 1).
fn model_params(rng: &mut Rng) -> Vec<f32> {
    let n: usize = lens().iter().sum();
    let mut p = params0(rng, n);
    p[offsets()[4].clone()].iter_mut().for_each(|x| *x = 0.0);
    p
}

/// Gradients: the mixed pattern, tensor 1 all zero on step 1 (LAMB's update norm 0).
fn model_grads(rng: &mut Rng, k: u64) -> Vec<f32> {
    let n: usize = lens().iter().sum();
    let mut g = grads(rng, n);
    if k == 1 {
        g[offsets()[1].clone()].iter_mut().for_each(|x| *x = 0.0);
    }
    g
}

fn lamb_rows() -> Vec<(&'static str, OptimizerConfig)> {
    let rows: Vec<_> = cases::all()
        .into_iter()
        .filter(|(_, c)| !c.is_elementwise())
        .collect();
    assert!(rows.len() >= 5, "the LAMB rows of tests/cases");
    rows
}

/// Relative agreement of per-tensor scalars.
fn check_scalars(label: &str, got: &[f64], want: &[f64], k: u64) -> Result<(), String> {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = RTOL_PER_STEP * k as f64 * w.abs().max(1e-30);
        if (g - w).abs() > bound {
            return Err(format!("{label}[{i}] after step {k}: got {g} want {w}"));
        }
    }
    Ok(())
}

fn run_row(ctx: Option<&GpuContext>, desc: &str, config: OptimizerConfig) -> Result<(), String> {
    run_row_with(
        ctx,
        desc,
        config,
        GradOptions::default(),
        GradOptions::default(),
    )
}

/// `run_row` with gradient options: `options` on the reference and the CPU path,
/// `gpu_options` on the GPU (the same, except to show that a difference is caught).
fn run_row_with(
    ctx: Option<&GpuContext>,
    desc: &str,
    config: OptimizerConfig,
    options: GradOptions,
    gpu_options: GradOptions,
) -> Result<(), String> {
    let mut rng = Rng::new(0x1A3B);
    let p0 = model_params(&mut rng);
    let n = p0.len();
    let mut reference = ReferenceOptimizer::with_shapes(config, &shapes()).unwrap();
    let mut cpu = CpuOptimizer::builder(config, n)
        .shapes(&shapes())
        .build()
        .unwrap();
    reference.set_grad_options(options).unwrap();
    cpu.set_grad_options(options).unwrap();
    let gpu = match ctx {
        Some(ctx) => {
            let mut b = FlatParams::builder();
            for (k, (shape, r)) in shapes().iter().zip(offsets()).enumerate() {
                b = b.shaped(&format!("t{k}"), shape, &p0[r]);
            }
            let flat = b.build(ctx).unwrap();
            // Poison the last lane's padding of params and grads.
            for buffer in [flat.params_buffer(), flat.grads_buffer()] {
                ctx.queue()
                    .write_buffer(buffer, n as u64 * 4, bytemuck::cast_slice(&[POISON; 2]));
            }
            let mut opt = GpuOptimizer::new(&flat, config).unwrap();
            opt.set_grad_options(gpu_options).unwrap();
            Some((flat, opt))
        }
        None => None,
    };
    let mut gpu = gpu;
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut p_cpu = p0.clone();
    let mut peak: Vec<f64> = p_ref.iter().map(|x| x.abs()).collect();
    let mut state_peaks = StatePeaks::new(&reference);
    for k in 1..=STEPS {
        let g = model_grads(&mut rng, k);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        let lr = config.lr() * cases::lr_factor(k);
        reference.set_lr(lr).unwrap();
        reference.step(&mut p_ref, &g64).unwrap();
        track_peak(&mut peak, &p_ref);
        state_peaks.track(&reference);
        cpu.set_lr(lr).unwrap();
        cpu.step(&mut p_cpu, &g).unwrap();
        check_params(
            &format!("{desc} cpu"),
            &p_cpu,
            &p_ref,
            &peak,
            k,
            RTOL_PER_STEP,
        )?;
        for name in ["weight_norm", "adam_norm", "trust_ratio"] {
            let want = reference.segment_scalar(name).unwrap();
            check_scalars(
                &format!("{desc} cpu {name}"),
                &cpu.segment_scalar(name).unwrap(),
                &want,
                k,
            )?;
            assert_eq!(want.len(), shapes().len());
        }
        if let Some((flat, opt)) = &mut gpu {
            opt.set_lr(lr).unwrap();
            flat.write_grads(&g).unwrap();
            opt.step().unwrap();
            let got = flat.read_params().unwrap();
            check_params(
                &format!("{desc} gpu"),
                &got,
                &p_ref,
                &peak,
                k,
                RTOL_PER_STEP,
            )?;
            for name in ["weight_norm", "adam_norm", "trust_ratio"] {
                let want = reference.segment_scalar(name).unwrap();
                let got = opt.segment_scalar(name).unwrap().unwrap();
                check_scalars(&format!("{desc} gpu {name}"), &got, &want, k)?;
            }
            let flags = opt.segment_scalar("nonfinite").unwrap().unwrap();
            assert!(flags.iter().all(|&f| f == 0.0), "{desc}: {flags:?}");
        }
    }
    for (name, peak) in reference.state_names().iter().zip(&state_peaks.0) {
        let want = reference.state(name).unwrap();
        check_state(
            &format!("{desc} cpu {name}"),
            cpu.state(name).unwrap(),
            want,
            peak,
            STEPS,
            RTOL_PER_STEP,
        )?;
        if let Some((_, opt)) = &gpu {
            let got = opt.read_state_f32(name).unwrap();
            check_state(
                &format!("{desc} gpu {name}"),
                &got,
                want,
                peak,
                STEPS,
                RTOL_PER_STEP,
            )?;
        }
    }
    if let (Some(ctx), Some((flat, _))) = (ctx, &gpu) {
        for buffer in [flat.params_buffer(), flat.grads_buffer()] {
            let tail = read_f32(ctx, buffer, n, 2).unwrap();
            if tail.iter().any(|x| x.to_bits() != POISON.to_bits()) {
                return Err(format!("{desc}: padding past n was written: {tail:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn lamb_matches_the_reference_on_every_path_over_shaped_tensors() {
    let ctx = gpu();
    let mut failures = Vec::new();
    for (desc, config) in lamb_rows() {
        if let Err(e) = run_row(ctx.as_ref(), desc, config) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Unscaling, clipping by value and clipping by the global norm on every path (the GPU's
/// per-tensor kernel reads every gradient through the gradient pipeline; the norm pass runs
/// in the same submission), every LAMB row, against the reference with the same options;
/// the same tolerance. Not vacuous: the GPU without the options fails the comparison.
#[test]
fn lamb_takes_gradient_options_on_every_path() {
    let ctx = gpu();
    // The model's gradients: |g| up to ~100, norm ~ 1e3: the value clip bites on the
    // largest elements, the norm clip on every step.
    let options = GradOptions {
        grad_scale: 0.5,
        clip_value: Some(2.0),
        max_norm: Some(1.0),
        skip_nonfinite: false,
    };
    let mut failures = Vec::new();
    for (desc, config) in lamb_rows() {
        if let Err(e) = run_row_with(ctx.as_ref(), desc, config, options, options) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if let Some(ctx) = &ctx {
        let (desc, config) = lamb_rows()[0];
        for wrong in [
            GradOptions::default(),
            GradOptions {
                max_norm: None,
                ..options
            },
            GradOptions {
                clip_value: None,
                ..options
            },
        ] {
            let e = run_row_with(Some(ctx), desc, config, options, wrong);
            assert!(
                e.as_ref().is_err_and(|e| e.contains(" gpu")),
                "GPU options {wrong:?} against {options:?} passed: {e:?}"
            );
        }
    }
}

/// Not vacuous: the trust ratio is per tensor. Treating the model as one flat tensor (the
/// reference over one segment) moves the CPU path's result far outside the tolerance.
#[test]
fn the_trust_ratio_is_per_tensor() {
    let config: OptimizerConfig = LambConfig::default().into();
    let mut rng = Rng::new(7);
    let p0 = model_params(&mut rng);
    let g = model_grads(&mut rng, 2);
    let n = p0.len();
    let mut flat_ref = ReferenceOptimizer::new(config, n).unwrap();
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    flat_ref
        .step(
            &mut p_ref,
            &g.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
        )
        .unwrap();
    let mut cpu = CpuOptimizer::builder(config, n)
        .shapes(&shapes())
        .build()
        .unwrap();
    let mut p = p0.clone();
    cpu.step(&mut p, &g).unwrap();
    let peak: Vec<f64> = p0.iter().map(|&x| f64::from(x).abs()).collect();
    assert!(check_params("per-tensor vs flat", &p, &p_ref, &peak, 1, RTOL_PER_STEP).is_err());
}

/// A non-finite gradient in one tensor flags that segment only (the GPU's finish pass).
#[test]
fn a_non_finite_partial_flags_its_segment() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(9);
    let p0 = model_params(&mut rng);
    let mut b = FlatParams::builder();
    for (k, (shape, r)) in shapes().iter().zip(offsets()).enumerate() {
        b = b.shaped(&format!("t{k}"), shape, &p0[r]);
    }
    let flat = b.build(&ctx).unwrap();
    let mut opt = GpuOptimizer::new(&flat, LambConfig::default()).unwrap();
    let mut g = model_grads(&mut rng, 2);
    g[offsets()[3].start + 5] = f32::INFINITY;
    flat.write_grads(&g).unwrap();
    opt.step().unwrap();
    let flags = opt.segment_scalar("nonfinite").unwrap().unwrap();
    assert_eq!(flags, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn segment_tables_that_do_not_describe_the_buffer_are_typed_errors() {
    let seg = |start, shape: &[usize]| SegmentShape {
        start,
        shape: shape.to_vec(),
    };
    // Overlap, a gap of 4 or more, past the end, uncovered tail, empty segment, no segments.
    for (segments, len) in [
        (vec![seg(0, &[3, 4]), seg(10, &[5])], 15),
        (vec![seg(0, &[3]), seg(7, &[5])], 12),
        (vec![seg(0, &[3, 4]), seg(12, &[5])], 16),
        (vec![seg(0, &[3, 4])], 20),
    ] {
        let e = SegmentTable::new(len, segments.clone()).unwrap_err();
        assert!(matches!(e, Error::SegmentTable { .. }), "{segments:?}: {e}");
    }
    assert!(matches!(
        SegmentTable::new(4, vec![seg(0, &[0, 4])]),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        SegmentTable::new(4, vec![]),
        Err(Error::Empty { .. })
    ));
    // Binding padding: fewer than 64 elements before a start on a multiple of 64 is
    // allowed, 64 or more is not, nor 4 or more before any other start.
    let t = SegmentTable::new(130, vec![seg(0, &[2, 2]), seg(64, &[66])]).unwrap();
    assert_eq!(t.segments()[1].start, 64);
    for (segments, len) in [
        (vec![seg(0, &[2, 2]), seg(68, &[62])], 130),
        (vec![seg(0, &[2, 2]), seg(128, &[2])], 130),
        (vec![seg(0, &[60]), seg(65, &[65])], 130),
    ] {
        let e = SegmentTable::new(len, segments.clone()).unwrap_err();
        assert!(matches!(e, Error::SegmentTable { .. }), "{segments:?}: {e}");
    }
    // Lane padding (fewer than 4 elements) is allowed.
    let t = SegmentTable::new(16, vec![seg(0, &[3]), seg(4, &[2, 5]), seg(15, &[1])]).unwrap();
    assert_eq!(t.shapes(), vec![vec![3], vec![2, 5], vec![1]]);
    let d = t.device_entries().unwrap();
    assert_eq!(
        d[1],
        DeviceSegment {
            start: 4,
            len: 10,
            rows: 2,
            cols: 5
        }
    );
    // The CPU builder: shapes that do not sum to n.
    let e = CpuOptimizer::builder(LambConfig::default(), 100)
        .shapes(&[vec![3, 3], vec![7]])
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::SegmentTable { .. }), "{e}");
}

#[test]
fn shapes_that_do_not_match_their_values_are_typed_errors() {
    let Some(ctx) = gpu() else { return };
    let e = FlatParams::builder()
        .slice("a", &[1.0; 5])
        .shaped("w", &[3, 4], &[0.5; 11])
        .build(&ctx)
        .unwrap_err();
    match e {
        Error::ShapeMismatch {
            segment,
            shape,
            product,
            len,
        } => assert_eq!(
            (segment.as_str(), shape, product, len),
            ("w", vec![3, 4], 12, 11)
        ),
        other => panic!("{other}"),
    }
    // The table reaches the params (and the device copy has one entry per segment).
    let flat = FlatParams::builder()
        .lane_aligned()
        .slice("a", &[1.0; 5])
        .shaped("w", &[3, 4], &[0.5; 12])
        .build(&ctx)
        .unwrap();
    let t = flat.segment_table();
    assert_eq!(t.shapes(), vec![vec![5], vec![3, 4]]);
    assert_eq!(t.segments()[1].start, 8);
    assert_eq!(flat.segment_table_buffer().size(), 2 * 16);
}

#[test]
fn checkpoints_record_shapes_and_refuse_other_shapes() {
    let dir = std::env::temp_dir().join(format!("fused-optim-structured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lamb.safetensors");
    let mut rng = Rng::new(5);
    let n: usize = lens().iter().sum();
    let mut cpu = CpuOptimizer::builder(LambConfig::default(), n)
        .shapes(&shapes())
        .build()
        .unwrap();
    let mut p = model_params(&mut rng);
    cpu.step(&mut p, &model_grads(&mut rng, 1)).unwrap();
    cpu.save_checkpoint(&path).unwrap();
    assert_eq!(checkpoint::load(&path).unwrap().shapes, shapes());
    // Same shapes: loads, and the next step is bit-identical.
    let mut again = CpuOptimizer::builder(LambConfig::default(), n)
        .shapes(&shapes())
        .build()
        .unwrap();
    again.load_checkpoint(&path).unwrap();
    let g = model_grads(&mut rng, 2);
    let mut p2 = p.clone();
    cpu.step(&mut p, &g).unwrap();
    again.step(&mut p2, &g).unwrap();
    assert_eq!(p, p2);
    // Other shapes over the same n: refused, nothing changed.
    let mut other_shapes = shapes();
    other_shapes[0] = vec![29, 37];
    let mut other = CpuOptimizer::builder(LambConfig::default(), n)
        .shapes(&other_shapes)
        .build()
        .unwrap();
    let e = other.load_checkpoint(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert_eq!(other.step_count(), 0);
    let mut reference =
        ReferenceOptimizer::with_shapes(LambConfig::default(), &other_shapes).unwrap();
    assert!(matches!(
        reference.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_gpu_refuses_what_its_per_tensor_path_lacks() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::builder()
        .lane_aligned()
        .shaped("w", &[3, 4], &[0.5; 12])
        .slice("b", &[0.1; 3])
        .build(&ctx)
        .unwrap();
    let groups = vec![
        ParamGroup {
            segments: vec!["w".into()],
            config: LambConfig::default().into(),
        },
        ParamGroup {
            segments: vec!["b".into()],
            config: LambConfig {
                lr: 0.1,
                ..Default::default()
            }
            .into(),
        },
    ];
    assert!(matches!(
        GpuOptimizer::with_groups(&flat, &groups),
        Err(Error::Unsupported { .. })
    ));
    let mut opt = GpuOptimizer::new(&flat, LambConfig::default()).unwrap();
    // Skipping non-finite steps needs the device's step counter, which the per-tensor
    // kernels do not read: refused, nothing changed.
    let skip = GradOptions {
        skip_nonfinite: true,
        ..Default::default()
    };
    assert!(matches!(
        opt.set_grad_options(skip),
        Err(Error::Unsupported { .. })
    ));
    assert_eq!(opt.grad_options(), GradOptions::default());
    // Norm clipping over tensors with padding between them (the norm pass would count it).
    let padded = FlatParams::builder()
        .lane_aligned()
        .shaped("w", &[3, 3], &[0.5; 9])
        .slice("b", &[0.1; 3])
        .build(&ctx)
        .unwrap();
    let mut padded_opt = GpuOptimizer::new(&padded, LambConfig::default()).unwrap();
    let clip = GradOptions {
        max_norm: Some(1.0),
        ..Default::default()
    };
    assert!(matches!(
        padded_opt.set_grad_options(clip),
        Err(Error::Unsupported { .. })
    ));
    assert_eq!(padded_opt.grad_options(), GradOptions::default());
    let value_clip = GradOptions {
        clip_value: Some(1.0),
        ..Default::default()
    };
    padded_opt.set_grad_options(value_clip).unwrap();
    assert_eq!(padded_opt.grad_options(), value_clip);
    // Checkpoints on the GPU carry the shapes too.
    let dir =
        std::env::temp_dir().join(format!("fused-optim-structured-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lamb.safetensors");
    opt.step().unwrap();
    opt.save_checkpoint(&path).unwrap();
    assert_eq!(
        checkpoint::load(&path).unwrap().shapes,
        vec![vec![3, 4], vec![3]]
    );
    std::fs::remove_dir_all(&dir).ok();
}
