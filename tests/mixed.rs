//! Per-group algorithms (`fused_optim::mixed`): Muon on the hidden matrices and AdamW on
//! the rest of one model, interleaved in the flat vector (so no group is contiguous), with
//! binding-aligned segments whose padding is poisoned, an all-zero first gradient for one
//! matrix, an lr schedule over each group's own base lr; the fast CPU path and the GPU
//! against the f64 reference, the GPU groups against each algorithm run alone on its own
//! tensors (bit for bit), checkpoints across paths, and the typed errors.
//!
//! Tolerances: Muon elements as tests/muon.rs (the golden README's M3 metric with
//! C_NS = 1e-3 of the adjusted lr per step plus 1e-6 |p| for the stored f32 params: f32
//! against f64 Newton–Schulz); AdamW elements `check_params` (RTOL_PER_STEP = 1e-5 per step
//! of max(|p|, peak |p|, 1e-2)); state tensors `check_state` at 1e-5 per step.

mod common;

use common::*;
use fused_optim::mixed::{AlgorithmGroup, MixedCpuOptimizer, MixedGpuOptimizer, MixedReference};
use fused_optim::schedule::LrSchedule;
use fused_optim::*;

const STEPS: u64 = 8;
const POISON: f32 = f32::from_bits(0x7FC0_BEEF);
const C_NS: f64 = 1e-3;
const RTOL_STORE: f64 = 1e-6;

/// Segments 1, 3 and 5 are Muon's (3 spans several chunks and is all zero on step 1),
/// the others AdamW's.
fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![37, 11],
        vec![24, 17],
        vec![17],
        vec![130, 130],
        vec![5],
        vec![9, 23],
        vec![3],
    ]
}

const MUON_SEGMENTS: [usize; 3] = [1, 3, 5];

fn muon() -> MuonConfig {
    MuonConfig {
        weight_decay: 0.1,
        ..Default::default()
    }
}

fn adamw() -> AdamConfig {
    AdamConfig {
        lr: 3e-3,
        weight_decay: 0.05,
        ..AdamConfig::adamw()
    }
}

/// Muon on segments 1, 3, 5 and AdamW on the rest.
fn groups() -> Vec<AlgorithmGroup> {
    pair(muon().into(), adamw().into())
}

/// `first` on segments 1, 3, 5, `second` on the rest.
fn pair(first: OptimizerConfig, second: OptimizerConfig) -> Vec<AlgorithmGroup> {
    vec![
        AlgorithmGroup {
            segments: MUON_SEGMENTS.to_vec(),
            config: first,
        },
        AlgorithmGroup {
            segments: vec![0, 2, 4, 6],
            config: second,
        },
    ]
}

/// The pairs the numerical tests run: Muon + AdamW (the practice), LAMB + Lion (another
/// per-tensor algorithm with two state tensors beside another elementwise one), and two
/// LAMB groups with their own hyper-parameters (parameter groups of a per-tensor algorithm
/// on the GPU: `GpuOptimizer::with_groups` refuses them, a mixed optimizer of two groups
/// of one algorithm is how they run).
fn pairs() -> Vec<(&'static str, Vec<AlgorithmGroup>)> {
    let lamb = LambConfig {
        weight_decay: 0.01,
        ..Default::default()
    };
    let lamb_no_decay = LambConfig {
        lr: 3e-3,
        betas: (0.8, 0.99),
        weight_decay: 0.0,
        ..Default::default()
    };
    let lion = LionConfig {
        lr: 1e-3,
        weight_decay: 0.1,
        ..Default::default()
    };
    vec![
        ("muon+adamw", groups()),
        ("lamb+lion", pair(lamb.into(), lion.into())),
        ("lamb+lamb", pair(lamb.into(), lamb_no_decay.into())),
    ]
}

fn schedule() -> LrSchedule {
    LrSchedule::Step {
        step_size: 3,
        gamma: 0.5,
    }
}

/// The model on the device, binding-aligned, params p0 (segment values from `values`),
/// the padding of params and grads poisoned.
fn flat(ctx: &GpuContext, values: &[f32]) -> FlatParams {
    let mut b = FlatParams::builder().binding_aligned();
    let mut at = 0;
    for (k, s) in shapes().iter().enumerate() {
        let n: usize = s.iter().product();
        b = b.shaped(&format!("t{k}"), s, &values[at..at + n]);
        at += n;
    }
    let flat = b.build(ctx).unwrap();
    let mut p = flat.read_params().unwrap();
    for x in padding(flat.segment_table()) {
        p[x] = POISON;
    }
    flat.write_params(&p).unwrap();
    flat
}

/// The padding elements of a table.
fn padding(table: &SegmentTable) -> Vec<usize> {
    let mut covered = vec![false; table.len()];
    for s in table.segments() {
        covered[s.start..s.end()].iter_mut().for_each(|c| *c = true);
    }
    (0..table.len()).filter(|&i| !covered[i]).collect()
}

/// Which elements are Muon's, and each Muon element's lr unit (lr_max · ratio).
fn muon_units(table: &SegmentTable, groups: &[AlgorithmGroup]) -> Vec<Option<f64>> {
    let lr_max = (1..=STEPS)
        .map(|k| schedule().lr_at(muon().lr, k))
        .fold(0.0, f64::max);
    let mut units = vec![None; table.len()];
    if !matches!(groups[0].config, OptimizerConfig::Muon(_)) {
        return units;
    }
    for &k in &MUON_SEGMENTS {
        let s = &table.segments()[k];
        let unit = lr_max * muon().adjust_lr.ratio(s.shape[0], s.shape[1]);
        units[s.start..s.end()]
            .iter_mut()
            .for_each(|u| *u = Some(unit));
    }
    units
}

/// Compare every segment element after step k (see the module docs); the padding must still
/// be the poison.
fn check(
    label: &str,
    groups: &[AlgorithmGroup],
    table: &SegmentTable,
    got: &[f32],
    want: &[f64],
    peak: &[f64],
    k: u64,
) -> Result<f64, String> {
    let units = muon_units(table, groups);
    let pad = padding(table);
    for &i in &pad {
        if got[i].to_bits() != POISON.to_bits() {
            return Err(format!("{label}: padding element {i} written: {}", got[i]));
        }
    }
    let mut worst = 0.0f64;
    for s in table.segments() {
        for i in s.start..s.end() {
            let err = (f64::from(got[i]) - want[i]).abs();
            let bound = match units[i] {
                Some(unit) => k as f64 * (C_NS * unit + RTOL_STORE * want[i].abs()),
                None => RTOL_PER_STEP * k as f64 * want[i].abs().max(peak[i]).max(1e-2),
            };
            if !within(err, bound) {
                return Err(format!(
                    "{label}: element {i} after step {k}: got {} want {} (|err| {err:.3e} > \
                     {bound:.3e})",
                    got[i], want[i]
                ));
            }
            worst = worst.max(err / bound);
        }
    }
    Ok(worst)
}

fn values(rng: &mut Rng) -> Vec<f32> {
    let n: usize = shapes().iter().map(|s| s.iter().product::<usize>()).sum();
    params0(rng, n)
}

/// Gradients over the table (padding poisoned; segment 3 zero on step 1).
fn step_grads(rng: &mut Rng, table: &SegmentTable, k: u64) -> Vec<f32> {
    let mut g = vec![POISON; table.len()];
    let fresh = grads(rng, table.len());
    for (j, s) in table.segments().iter().enumerate() {
        for i in s.start..s.end() {
            g[i] = if k == 1 && j == 3 { 0.0 } else { fresh[i] };
        }
    }
    g
}

#[test]
fn cpu_and_gpu_match_the_reference() {
    let ctx = gpu();
    for (name, groups) in pairs() {
        match_reference(ctx.as_ref(), name, &groups, None);
    }
}

/// The global gradient-norm clip over both groups (max_norm far below the gradients' norm,
/// so every step clips): the same comparisons, and each step's norm on the CPU and the GPU
/// within 1e-5 (relative) of the reference's f64 norm of the f32 gradients.
#[test]
fn global_clip_matches_the_reference() {
    let ctx = gpu();
    // SGD's step is linear in the gradient: a clip computed but not applied fails it (Muon,
    // AdamW, LAMB and Lion are nearly scale-invariant).
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut rows = pairs();
    rows.push(("muon+sgd", pair(muon().into(), sgd.into())));
    for (name, groups) in rows {
        match_reference(ctx.as_ref(), &format!("{name} clipped"), &groups, Some(0.5));
    }
}

/// The clip changes the trajectory (so the test above can fail), and a max_norm above every
/// norm changes nothing (coef 1: bit-identical to no clip).
#[test]
fn global_clip_is_active_and_exact_when_idle() {
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let mut rng = Rng::new(0xC11F);
    let p0: Vec<f64> = values(&mut rng).iter().map(|&x| f64::from(x)).collect();
    let run = |max_norm: Option<f64>| {
        let mut opt = MixedReference::new(table.clone(), &groups()).unwrap();
        opt.set_max_grad_norm(max_norm).unwrap();
        let mut rng = Rng::new(7);
        let mut p = p0.clone();
        for k in 1..=3 {
            let g: Vec<f64> = step_grads(&mut rng, &table, k)
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            opt.step(&mut p, &g).unwrap();
        }
        (p, opt.last_grad_norm())
    };
    let (plain, none) = run(None);
    assert_eq!(none, None);
    let (idle, norm) = run(Some(1e30));
    assert!(norm.unwrap() > 1.0, "{norm:?}");
    assert_eq!(plain, idle);
    let (clipped, _) = run(Some(0.5));
    assert!(plain
        .iter()
        .zip(&clipped)
        .any(|(a, b)| (a - b).abs() > 1e-4));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut opt = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
        let e = opt.set_max_grad_norm(Some(bad)).unwrap_err();
        assert!(matches!(e, Error::InvalidHyperParameter { .. }), "{e}");
        assert_eq!(opt.max_grad_norm(), None);
    }
}

fn match_reference(
    ctx: Option<&GpuContext>,
    label: &str,
    groups: &[AlgorithmGroup],
    max_norm: Option<f64>,
) {
    let mut rng = Rng::new(0x000D_1CE5);
    let v = values(&mut rng);
    // The layout: the device's binding-aligned one, or (without an adapter) the same
    // padding computed here.
    let table = match ctx {
        Some(ctx) => flat(ctx, &v).segment_table().clone(),
        None => {
            let mut segs = Vec::new();
            let mut end = 0usize;
            for s in shapes() {
                let start = end.next_multiple_of(segments::BINDING_ALIGN);
                end = start + s.iter().product::<usize>();
                segs.push(SegmentShape { start, shape: s });
            }
            SegmentTable::new(end, segs).unwrap()
        }
    };
    assert!(!padding(&table).is_empty(), "the layout must have padding");
    let mut p0 = vec![POISON; table.len()];
    let mut at = 0;
    for s in table.segments() {
        p0[s.start..s.end()].copy_from_slice(&v[at..at + s.len()]);
        at += s.len();
    }
    let mut reference = MixedReference::new(table.clone(), groups).unwrap();
    let mut cpu = MixedCpuOptimizer::new(table.clone(), groups).unwrap();
    let mut gpu = ctx.map(|ctx| {
        let f = flat(ctx, &v);
        let mut opt = MixedGpuOptimizer::new(&f, groups).unwrap();
        opt.set_max_grad_norm(max_norm).unwrap();
        (f, opt)
    });
    reference.set_max_grad_norm(max_norm).unwrap();
    cpu.set_max_grad_norm(max_norm).unwrap();
    let mut p_ref: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
    let mut p_cpu = p0.clone();
    let mut peak: Vec<f64> = p_ref
        .iter()
        .map(|x| if x.is_nan() { 0.0 } else { x.abs() })
        .collect();
    let (mut worst_cpu, mut worst_gpu) = (0.0f64, 0.0f64);
    for k in 1..=STEPS {
        let g = step_grads(&mut rng, &table, k);
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
        for opt_schedule in [
            reference.set_schedule_epoch(&schedule(), k),
            cpu.set_schedule_epoch(&schedule(), k),
        ] {
            opt_schedule.unwrap();
        }
        reference.step(&mut p_ref, &g64).unwrap();
        for s in table.segments() {
            track_peak(&mut peak[s.range()], &p_ref[s.range()]);
        }
        cpu.step(&mut p_cpu, &g).unwrap();
        let norm_ref = reference.last_grad_norm();
        assert_eq!(norm_ref.is_some(), max_norm.is_some());
        let close = |got: Option<f64>, what: &str| {
            assert_eq!(
                got.is_some(),
                max_norm.is_some(),
                "{label} {what}: norm reported"
            );
            if let (Some(a), Some(b)) = (got, norm_ref) {
                assert!((a - b).abs() <= 1e-5 * b, "{label} {what} norm {a} vs {b}");
            }
        };
        close(cpu.last_grad_norm(), "cpu");
        worst_cpu = worst_cpu.max(
            check(
                &format!("{label} cpu"),
                groups,
                &table,
                &p_cpu,
                &p_ref,
                &peak,
                k,
            )
            .unwrap(),
        );
        if let Some((f, opt)) = &mut gpu {
            f.write_grads(&g).unwrap();
            opt.set_schedule_epoch(&schedule(), k).unwrap();
            opt.step().unwrap();
            close(opt.last_grad_norm().unwrap(), "gpu");
            let p = f.read_params().unwrap();
            if let Some(ctx) = ctx {
                // The gradients' padding is never read into the norm nor written.
                let gr =
                    fused_optim::gpu::buffer::read_f32(ctx, f.grads_buffer(), 0, f.len()).unwrap();
                for i in padding(&table) {
                    assert_eq!(
                        gr[i].to_bits(),
                        POISON.to_bits(),
                        "{label}: grad padding {i}"
                    );
                }
                // In place, as torch scales p.grad: g * min(1, max_norm / (norm + 1e-6)).
                if let (Some(m), Some(norm)) = (max_norm, norm_ref) {
                    let coef = (m / (norm + 1e-6)).min(1.0);
                    assert!(coef < 1.0, "{label}: the clip must be active");
                    for s in table.segments() {
                        for i in s.range() {
                            let want = f64::from(g[i]) * coef;
                            let err = (f64::from(gr[i]) - want).abs();
                            assert!(
                                err <= 1e-5 * want.abs() + 1e-30,
                                "{label}: clipped grad {i}: {} vs {want}",
                                gr[i]
                            );
                        }
                    }
                }
            }
            worst_gpu = worst_gpu.max(
                check(
                    &format!("{label} gpu"),
                    groups,
                    &table,
                    &p,
                    &p_ref,
                    &peak,
                    k,
                )
                .unwrap(),
            );
        }
    }
    println!("{label}: worst fraction of the bound: cpu {worst_cpu:.3}, gpu {worst_gpu:.3}");
    // Each group's state: its tensors only, back to back.
    for g in 0..2 {
        let len: usize = reference
            .group_segments(g)
            .unwrap()
            .iter()
            .map(|&k| table.segments()[k].len())
            .sum();
        for name in reference.group(g).unwrap().state_names() {
            let want = reference.group(g).unwrap().state(name).unwrap();
            assert_eq!(want.len(), len, "group {g} {name}: compact state");
            let peak: Vec<f64> = want.iter().map(|x| x.abs()).collect();
            check_state(
                &format!("{label} cpu group {g} {name}"),
                cpu.group(g).unwrap().state(name).unwrap(),
                want,
                &peak,
                STEPS,
                RTOL_PER_STEP,
            )
            .unwrap();
            if let Some((_, opt)) = &gpu {
                check_state(
                    &format!("{label} gpu group {g} {name}"),
                    &opt.group_state(g, name).unwrap(),
                    want,
                    &peak,
                    STEPS,
                    RTOL_PER_STEP,
                )
                .unwrap();
            }
        }
    }
    assert_eq!(cpu.step_count(), STEPS);
    if let Some((_, opt)) = &gpu {
        assert_eq!(opt.step_count(), STEPS);
    }
}

/// Each GPU group is bit-identical to its algorithm run alone on a model of only its
/// tensors: the subset chunk table, the compact state (Muon) and the tensor ranges (AdamW)
/// change nothing in the arithmetic.
#[test]
fn gpu_groups_equal_each_algorithm_alone() {
    let Some(ctx) = gpu() else { return };
    for (label, groups) in pairs() {
        groups_alone(&ctx, label, &groups);
    }
}

fn groups_alone(ctx: &GpuContext, label: &str, groups: &[AlgorithmGroup]) {
    let mut rng = Rng::new(0x5EED_0002);
    let v = values(&mut rng);
    let f = flat(ctx, &v);
    let table = f.segment_table().clone();
    let mut mixed = MixedGpuOptimizer::new(&f, groups).unwrap();
    let alone = |segments: &[usize], config: OptimizerConfig| {
        let mut b = FlatParams::builder();
        let mut at = 0;
        for (k, s) in shapes().iter().enumerate() {
            let n: usize = s.iter().product();
            if segments.contains(&k) {
                b = b.shaped(&format!("t{k}"), s, &v[at..at + n]);
            }
            at += n;
        }
        let p = b.build(ctx).unwrap();
        let opt = GpuOptimizer::new(&p, config).unwrap();
        (p, opt)
    };
    let mut solo = [
        alone(&groups[0].segments, groups[0].config),
        alone(&groups[1].segments, groups[1].config),
    ];
    for k in 1..=4 {
        let g = step_grads(&mut rng, &table, k);
        f.write_grads(&g).unwrap();
        mixed.step().unwrap();
        let p = f.read_params().unwrap();
        for (gi, (sp, sopt)) in solo.iter_mut().enumerate() {
            let picked: Vec<f32> = mixed
                .group_segments(gi)
                .unwrap()
                .iter()
                .flat_map(|&s| g[table.segments()[s].range()].to_vec())
                .collect();
            sp.write_grads(&picked).unwrap();
            sopt.step().unwrap();
            let want = sp.read_params().unwrap();
            let got: Vec<f32> = mixed
                .group_segments(gi)
                .unwrap()
                .iter()
                .flat_map(|&s| p[table.segments()[s].range()].to_vec())
                .collect();
            assert_bits(
                &got,
                &want[..got.len()],
                &format!("{label} group {gi} after step {k}"),
            );
            for name in sopt.state_names() {
                let s_want = sopt.read_state_f32(name).unwrap();
                let s_got = mixed.group_state(gi, name).unwrap();
                assert_eq!(s_got.len(), got.len(), "group {gi} {name}: compact");
                assert_bits(
                    &s_got,
                    &s_want[..got.len()],
                    &format!("{label} group {gi} {name} after step {k}"),
                );
            }
        }
    }
}

/// Bit-identical, or the first difference.
fn assert_bits(got: &[f32], want: &[f32], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{label}: element {i}: {} vs {}", got[i], want[i]);
    }
}

#[test]
fn checkpoints_cross_paths_and_refuse_other_groups() {
    let dir = std::env::temp_dir().join(format!("fused-optim-mixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = Rng::new(0xC4EC);
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let mut p = values(&mut rng);
    let mut cpu = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
    for k in 1..=3 {
        cpu.step(&mut p, &step_grads(&mut rng, &table, k)).unwrap();
    }
    cpu.save_checkpoint(&dir).unwrap();
    // A second save replaces the first generation's files.
    cpu.save_checkpoint(&dir).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["group0-2.safetensors", "group1-2.safetensors", "mixed.json"]
    );
    // CPU -> CPU: the same trajectory bit for bit.
    let mut resumed = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
    resumed.load_checkpoint(&dir).unwrap();
    assert_eq!(resumed.step_count(), 3);
    let g = step_grads(&mut rng, &table, 4);
    let (mut a, mut b) = (p.clone(), p.clone());
    cpu.step(&mut a, &g).unwrap();
    resumed.step(&mut b, &g).unwrap();
    assert_eq!(a, b);
    // A group file is an ordinary checkpoint of its algorithm over its tensors.
    let muon_shapes: Vec<Vec<usize>> = MUON_SEGMENTS.iter().map(|&k| shapes()[k].clone()).collect();
    let mut alone = CpuOptimizer::builder(
        muon(),
        muon_shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum(),
    )
    .shapes(&muon_shapes)
    .build()
    .unwrap();
    alone
        .load_checkpoint(&dir.join("group0-2.safetensors"))
        .unwrap();
    assert_eq!(alone.step_count(), 3);
    // Other groups: refused, nothing changes.
    let swapped = vec![
        AlgorithmGroup {
            segments: vec![1, 3],
            config: muon().into(),
        },
        AlgorithmGroup {
            segments: vec![0, 2, 4, 5, 6],
            config: adamw().into(),
        },
    ];
    let mut other = MixedCpuOptimizer::new(table.clone(), &swapped).unwrap();
    let before = other
        .group(0)
        .unwrap()
        .state("momentum_buffer")
        .unwrap()
        .to_vec();
    let e = other.load_checkpoint(&dir).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert_eq!(
        other.group(0).unwrap().state("momentum_buffer").unwrap(),
        &before[..]
    );
    assert_eq!(other.step_count(), 0);
    // A group file of another save (CRC mismatch) is refused before any group loads.
    let mut third = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
    let good = std::fs::read(dir.join("group1-2.safetensors")).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(dir.join("group1-2.safetensors"), &bad).unwrap();
    let e = third.load_checkpoint(&dir).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert_eq!(
        third.step_count(),
        0,
        "group 0 must not load when group 1 is refused"
    );
    std::fs::write(dir.join("group1-2.safetensors"), &good).unwrap();

    // CPU -> GPU -> CPU.
    if let Some(ctx) = gpu() {
        let mut b = FlatParams::builder().binding_aligned();
        let shapes = shapes();
        let mut at = 0;
        for (k, s) in shapes.iter().enumerate() {
            let len: usize = s.iter().product();
            b = b.shaped(&format!("t{k}"), s, &p[at..at + len]);
            at += len;
        }
        let f = b.build(&ctx).unwrap();
        let mut g_opt = MixedGpuOptimizer::new(&f, &groups()).unwrap();
        g_opt.load_checkpoint(&dir).unwrap();
        assert_eq!(g_opt.step_count(), 3);
        for gi in 0..2 {
            for name in cpu_state_names(&resumed, gi) {
                // `resumed` stepped once since; compare with a fresh load instead.
                let mut fresh = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
                fresh.load_checkpoint(&dir).unwrap();
                assert_eq!(
                    g_opt.group_state(gi, name).unwrap(),
                    fresh.group(gi).unwrap().state(name).unwrap(),
                    "group {gi} {name}"
                );
            }
        }
        let gdir = dir.join("from-gpu");
        g_opt.save_checkpoint(&gdir).unwrap();
        let mut back = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
        back.load_checkpoint(&gdir).unwrap();
        let mut fresh = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
        fresh.load_checkpoint(&dir).unwrap();
        for gi in 0..2 {
            for name in cpu_state_names(&back, gi) {
                assert_eq!(
                    back.group(gi).unwrap().state(name).unwrap(),
                    fresh.group(gi).unwrap().state(name).unwrap()
                );
            }
        }
        assert_eq!(back.step_count(), 3);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn cpu_state_names(opt: &MixedCpuOptimizer, g: usize) -> Vec<&'static str> {
    opt.group(g).unwrap().state_names()
}

#[test]
fn bad_groups_are_typed_errors() {
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let muon_on = |segments: Vec<usize>, rest: Vec<usize>| {
        vec![
            AlgorithmGroup {
                segments,
                config: muon().into(),
            },
            AlgorithmGroup {
                segments: rest,
                config: adamw().into(),
            },
        ]
    };
    let err =
        |groups: &[AlgorithmGroup]| MixedCpuOptimizer::new(table.clone(), groups).unwrap_err();
    // Muon on a 1-D tensor.
    let e = err(&muon_on(vec![1, 2, 3, 5], vec![0, 4, 6]));
    assert!(matches!(e, Error::WrongRank { .. }), "{e}");
    // A segment in two groups, in none, past the table.
    for (groups, reason) in [
        (muon_on(vec![1, 3, 5], vec![0, 1, 2, 4, 6]), "more than one"),
        (muon_on(vec![1, 3, 5], vec![0, 2, 4]), "no algorithm group"),
        (muon_on(vec![1, 3, 5, 9], vec![0, 2, 4, 6]), "past"),
    ] {
        match err(&groups) {
            Error::Segment { reason: r, .. } => assert!(r.contains(reason), "{r}"),
            other => panic!("{other}"),
        }
    }
    assert!(matches!(err(&[]), Error::Empty { .. }));
    // A group index past the groups.
    let mut ok = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
    for e in [
        ok.group(2).map(|_| ()).unwrap_err(),
        ok.group_mut(7).map(|_| ()).unwrap_err(),
        ok.group_segments(2).map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(e, Error::GroupIndex { groups: 2, .. }), "{e}");
    }
    assert!(matches!(
        err(&muon_on(vec![], vec![0, 1, 2, 3, 4, 5, 6])),
        Error::Empty { .. }
    ));
    // An invalid configuration.
    let mut bad = groups();
    bad[1].config = AdamConfig {
        lr: -1.0,
        ..adamw()
    }
    .into();
    assert!(
        matches!(err(&bad), Error::InvalidHyperParameter { .. }),
        "{}",
        err(&bad)
    );
    // Wrong lengths: nothing changes.
    let mut opt = MixedCpuOptimizer::new(table.clone(), &groups()).unwrap();
    let mut p = vec![1.0f32; table.len()];
    let e = opt.step(&mut p, &vec![0.0; table.len() - 1]).unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }));
    assert_eq!(opt.step_count(), 0);
    assert!(p.iter().all(|&x| x == 1.0));
    // On the GPU: an elementwise group over params that are not binding-aligned.
    if let Some(ctx) = gpu() {
        let mut b = FlatParams::builder();
        for (k, s) in shapes().iter().enumerate() {
            b = b.shaped(&format!("t{k}"), s, &vec![0.5; s.iter().product()]);
        }
        let f = b.build(&ctx).unwrap();
        let e = MixedGpuOptimizer::new(&f, &groups()).unwrap_err();
        match e {
            Error::TensorRange { tensor, reason } => {
                assert!(reason.contains("binding_aligned"), "{tensor}: {reason}")
            }
            other => panic!("{other}"),
        }
        // Muon alone over some segments needs no alignment, AdamW is the rest: still refused
        // for AdamW's unaligned tensors, and Muon on a 1-D one by its rank.
        let e = MixedGpuOptimizer::new(&f, &muon_on(vec![2], vec![0, 1, 3, 4, 5, 6])).unwrap_err();
        assert!(matches!(e, Error::WrongRank { .. }), "{e}");
    }
}

/// One per-tensor group over every segment of padded (binding-aligned) params: its state is
/// still its tensors back to back (no padding), and its checkpoint folder loads back on the
/// GPU and on the CPU.
#[test]
fn one_group_over_every_segment_keeps_compact_state() {
    let Some(ctx) = gpu() else { return };
    let matrices = [vec![24usize, 17], vec![9, 23]];
    let mut b = FlatParams::builder().binding_aligned();
    for (k, s) in matrices.iter().enumerate() {
        b = b.shaped(&format!("m{k}"), s, &vec![0.25; s.iter().product()]);
    }
    let f = b.build(&ctx).unwrap();
    let groups = vec![AlgorithmGroup {
        segments: vec![0, 1],
        config: muon().into(),
    }];
    let mut opt = MixedGpuOptimizer::new(&f, &groups).unwrap();
    f.write_grads(&vec![0.01; f.len()]).unwrap();
    opt.step().unwrap();
    let len = 24 * 17 + 9 * 23;
    assert!(f.len() > len, "the params must be padded");
    assert_eq!(opt.group_state(0, "momentum_buffer").unwrap().len(), len);
    let dir = std::env::temp_dir().join(format!("fused-optim-mixed1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    opt.save_checkpoint(&dir).unwrap();
    let mut again = MixedGpuOptimizer::new(&f, &groups).unwrap();
    again.load_checkpoint(&dir).unwrap();
    assert_eq!(again.step_count(), 1);
    let table = SegmentTable::contiguous(&matrices).unwrap();
    let mut cpu = MixedCpuOptimizer::new(table, &groups).unwrap();
    cpu.load_checkpoint(&dir).unwrap();
    assert_eq!(
        cpu.group(0).unwrap().state("momentum_buffer").unwrap(),
        &opt.group_state(0, "momentum_buffer").unwrap()[..]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A step refused by a later group (Schedule-Free in evaluation mode, `Error::WrongMode`)
/// changes nothing: the earlier AdamW group is not stepped either (params, state and step
/// count keep their bits), on the fast CPU path and the reference; after switching back to
/// training the same step works. On the GPU a group gets into evaluation mode only through a
/// checkpoint saved in it: loaded there, the step is refused the same way and nothing moves.
#[test]
fn a_step_refused_by_a_later_group_changes_nothing() {
    let sf: OptimizerConfig = ScheduleFreeConfig::default().into();
    let groups = pair(adamw().into(), sf);
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let mut rng = Rng::new(0x5F0E);
    let mut p = values(&mut rng);
    let mut cpu = MixedCpuOptimizer::new(table.clone(), &groups).unwrap();
    let mut reference = MixedReference::new(table.clone(), &groups).unwrap();
    let mut p64: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
    let g1 = step_grads(&mut rng, &table, 1);
    cpu.step(&mut p, &g1).unwrap();
    let g64: Vec<f64> = g1.iter().map(|&x| f64::from(x)).collect();
    reference.step(&mut p64, &g64).unwrap();
    // Group 1 to evaluation mode (its params are mapped in a scratch copy: only the mode
    // matters here).
    let sf_len: usize = [0usize, 2, 4, 6]
        .iter()
        .map(|&s| shapes()[s].iter().product::<usize>())
        .sum();
    let mut scratch = vec![0.5f32; sf_len];
    cpu.group_mut(1)
        .unwrap()
        .set_train_mode(&mut scratch, false)
        .unwrap();
    let mut scratch64 = vec![0.5f64; sf_len];
    reference
        .group_mut(1)
        .unwrap()
        .set_train_mode(&mut scratch64, false)
        .unwrap();

    let g2 = step_grads(&mut rng, &table, 2);
    let (p_before, m_before, v_before) = (
        p.clone(),
        cpu.group(0).unwrap().state("exp_avg").unwrap().to_vec(),
        cpu.group(0).unwrap().state("exp_avg_sq").unwrap().to_vec(),
    );
    let e = cpu.step(&mut p, &g2).unwrap_err();
    assert!(matches!(e, Error::WrongMode { .. }), "{e}");
    assert_eq!(cpu.step_count(), 1);
    assert_eq!(cpu.group(0).unwrap().step_count(), 1, "group 0 stepped");
    assert_eq!(p, p_before, "params changed by a refused step");
    assert_eq!(
        cpu.group(0).unwrap().state("exp_avg").unwrap(),
        &m_before[..]
    );
    assert_eq!(
        cpu.group(0).unwrap().state("exp_avg_sq").unwrap(),
        &v_before[..]
    );
    let p64_before = p64.clone();
    let g64: Vec<f64> = g2.iter().map(|&x| f64::from(x)).collect();
    let e = reference.step(&mut p64, &g64).unwrap_err();
    assert!(matches!(e, Error::WrongMode { .. }), "{e}");
    assert_eq!(reference.group(0).unwrap().step_count(), 1);
    assert_eq!(p64, p64_before);

    // The GPU: a checkpoint saved with group 1 in evaluation mode.
    let dir = std::env::temp_dir().join(format!("fused-optim-mixed-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cpu.save_checkpoint(&dir).unwrap();
    if let Some(ctx) = gpu() {
        let f = flat(&ctx, &p);
        let mut g_opt = MixedGpuOptimizer::new(&f, &groups).unwrap();
        // (It loads: the mode is part of the checkpoint's host state.)
        match g_opt.load_checkpoint(&dir) {
            Ok(()) => {
                let state_before = g_opt.group_state(0, "exp_avg").unwrap();
                let params_before = f.read_params().unwrap();
                let e = g_opt.step().unwrap_err();
                assert!(matches!(e, Error::WrongMode { .. }), "{e}");
                assert_eq!(g_opt.step_count(), 1);
                assert_eq!(g_opt.group_state(0, "exp_avg").unwrap(), state_before);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&f.read_params().unwrap()), bits(&params_before));
            }
            Err(e) => panic!("the GPU refused the evaluation-mode checkpoint: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Back to training: the same step goes through on both groups.
    cpu.group_mut(1)
        .unwrap()
        .set_train_mode(&mut scratch, true)
        .unwrap();
    cpu.step(&mut p, &g2).unwrap();
    assert_eq!(cpu.step_count(), 2);
    assert_ne!(p, p_before);
}

/// A GPU group over caller ranges (an elementwise algorithm) takes the checkpoint's
/// hyper-parameters, as the CPU paths and the per-tensor GPU groups do: a CPU save with
/// AdamW betas (0.8, 0.95) and weight decay 0.2, loaded into a GPU optimizer built with the
/// defaults, then three more steps on both with the same gradients, agree within the
/// AdamW tolerance of `check` (the GPU's own betas would move the params by ~1e-4 of lr
/// per step: caught, checked by running without the fix).
#[test]
fn a_gpu_group_over_ranges_takes_the_checkpoints_hyper_parameters() {
    let Some(ctx) = gpu() else { return };
    let lion: OptimizerConfig = LionConfig {
        lr: 1e-3,
        weight_decay: 0.1,
        ..Default::default()
    }
    .into();
    let filed = AdamConfig {
        lr: 3e-3,
        betas: (0.8, 0.95),
        weight_decay: 0.2,
        ..AdamConfig::adamw()
    };
    let file_groups = pair(filed.into(), lion);
    let table = SegmentTable::contiguous(&shapes()).unwrap();
    let mut rng = Rng::new(0xF11E);
    let mut p = values(&mut rng);
    let mut cpu = MixedCpuOptimizer::new(table.clone(), &file_groups).unwrap();
    for k in 1..=2 {
        cpu.step(&mut p, &step_grads(&mut rng, &table, k)).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fused-optim-mixed-hp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cpu.save_checkpoint(&dir).unwrap();

    let f = flat(&ctx, &p);
    let mut g_opt = MixedGpuOptimizer::new(&f, &pair(adamw().into(), lion)).unwrap();
    g_opt.load_checkpoint(&dir).unwrap();
    assert_eq!(g_opt.step_count(), 2);
    let mut peak: Vec<f64> = vec![0.0; table.len()];
    for k in 1..=3u64 {
        let g = step_grads(&mut rng, &table, k + 2);
        cpu.step(&mut p, &g).unwrap();
        // The device's layout has padding between segments: copy segment by segment.
        let dev_table = f.segment_table().clone();
        let mut g_dev = f.read_grads().unwrap();
        for (sc, sd) in table.segments().iter().zip(dev_table.segments()) {
            g_dev[sd.range()].copy_from_slice(&g[sc.range()]);
        }
        f.write_grads(&g_dev).unwrap();
        g_opt.step().unwrap();
        let want: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
        for (pk, w) in peak.iter_mut().zip(&want) {
            *pk = pk.max(w.abs());
        }
        let p_dev = f.read_params().unwrap();
        let mut got = vec![0.0f32; table.len()];
        for (sc, sd) in table.segments().iter().zip(dev_table.segments()) {
            got[sc.range()].copy_from_slice(&p_dev[sd.range()]);
        }
        check(
            "gpu after loading the file's AdamW",
            &file_groups,
            &table,
            &got,
            &want,
            &peak,
            k,
        )
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
