//! The `Optimizer` trait: the same generic checks over every implementation (GPU, fast CPU,
//! f64 reference, and `AutoOptimizer` on both backends) through `&mut dyn Optimizer`: lr and
//! state round trips, checkpoint save → load into a fresh instance → identical next step,
//! cross-precision checkpoints, `LossScaler` over any optimizer, and `AutoOptimizer`
//! forwarding gradient options and checkpoints.

mod common;

use common::*;
use fused_optim::checkpoint::TensorValues;
use fused_optim::*;

/// A file in a folder of its own per test (tests run in parallel).
fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fused-optim-trait-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Gpu,
    Cpu,
    Reference,
    AutoCpu,
    AutoGpu,
}

/// Every implementation available here (the GPU ones only with an adapter).
fn kinds() -> Vec<Kind> {
    let mut k = vec![Kind::Cpu, Kind::Reference, Kind::AutoCpu];
    if gpu().is_some() {
        k.extend([Kind::Gpu, Kind::AutoGpu]);
    }
    k
}

/// One optimizer with the params it steps (a test harness: sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Subject {
    Gpu(FlatParams, Box<GpuOptimizer>),
    Cpu(Vec<f32>, CpuOptimizer),
    Reference(Vec<f64>, ReferenceOptimizer),
    Auto(AutoOptimizer),
}

impl Subject {
    fn new(kind: Kind, config: OptimizerConfig, p0: &[f64]) -> Subject {
        let p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
        let ctx = gpu();
        match kind {
            Kind::Gpu => {
                let flat = FlatParams::from_slice(ctx.as_ref().unwrap(), &p32).unwrap();
                let opt = GpuOptimizer::new(&flat, config).unwrap();
                Subject::Gpu(flat, Box::new(opt))
            }
            Kind::Cpu => Subject::Cpu(p32, CpuOptimizer::new(config, p0.len()).unwrap()),
            Kind::Reference => Subject::Reference(
                p0.to_vec(),
                ReferenceOptimizer::new(config, p0.len()).unwrap(),
            ),
            Kind::AutoCpu | Kind::AutoGpu => {
                let choice = if kind == Kind::AutoGpu {
                    BackendChoice::Gpu
                } else {
                    BackendChoice::Cpu
                };
                Subject::Auto(AutoOptimizer::new(ctx.as_ref(), &p32, config, choice).unwrap())
            }
        }
    }

    fn opt(&mut self) -> &mut dyn Optimizer {
        match self {
            Subject::Gpu(_, o) => o.as_mut(),
            Subject::Cpu(_, o) => o,
            Subject::Reference(_, o) => o,
            Subject::Auto(o) => o,
        }
    }

    /// Whether the state is kept in f32 (everything but the reference).
    fn f32_state(&self) -> bool {
        !matches!(self, Subject::Reference(..))
    }

    fn step(&mut self, g: &[f32]) -> Result<()> {
        match self {
            Subject::Gpu(flat, o) => {
                flat.write_grads(g)?;
                o.step()
            }
            Subject::Cpu(p, o) => o.step(p, g),
            Subject::Reference(p, o) => {
                let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                o.step(p, &g)
            }
            Subject::Auto(o) => {
                o.write_grads(g)?;
                o.step()
            }
        }
    }

    /// One step through `LossScaler::step`, which takes any `Optimizer` and the step.
    fn scaled_step(&mut self, scaler: &mut LossScaler, g: &[f32]) -> Result<bool> {
        match self {
            Subject::Gpu(flat, o) => {
                flat.write_grads(g)?;
                scaler.step(o.as_mut(), GpuOptimizer::step)
            }
            Subject::Cpu(p, o) => scaler.step(o, |o| o.step(p, g)),
            Subject::Reference(p, o) => {
                let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                scaler.step(o, |o| o.step(p, &g))
            }
            Subject::Auto(o) => {
                o.write_grads(g)?;
                scaler.step(o, AutoOptimizer::step)
            }
        }
    }

    fn params(&self) -> Vec<f64> {
        match self {
            Subject::Gpu(flat, _) => widen(&flat.read_params().unwrap()),
            Subject::Cpu(p, _) => widen(p),
            Subject::Reference(p, _) => p.clone(),
            Subject::Auto(o) => widen(&o.read_params().unwrap()),
        }
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Configs with three state tensors, a host scalar (NAdam's mu_product) and the
/// state-written flag (SGD's momentum buffer).
fn configs() -> Vec<OptimizerConfig> {
    vec![
        AdamConfig {
            amsgrad: true,
            weight_decay: 0.01,
            ..Default::default()
        }
        .into(),
        NadamConfig::default().into(),
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
    ]
}

const N: usize = 37;

fn inputs(seed: u64) -> (Vec<f64>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let p0 = widen(&params0(&mut rng, N));
    let gs = (0..5).map(|_| grads(&mut rng, N)).collect();
    (p0, gs)
}

/// lr and state round trips, with errors that change nothing.
fn lr_and_state_round_trip(opt: &mut dyn Optimizer, f32_state: bool, what: &str) {
    let names = opt.state_names();
    assert_eq!(names, opt.config().state_names(), "[{what}]");
    opt.set_lr(0.0625).unwrap();
    assert_eq!(opt.lr(), 0.0625, "[{what}]");
    assert_eq!(opt.host_state().lr, 0.0625, "[{what}]");
    assert!(opt.set_lr(-1.0).is_err(), "[{what}]");
    assert!(opt.set_lr(f64::NAN).is_err(), "[{what}]");
    assert_eq!(opt.lr(), 0.0625, "[{what}] a refused lr changes nothing");
    for (k, name) in names.iter().enumerate() {
        let values: Vec<f64> = (0..N).map(|i| 0.1 * (i as f64 + 1.0) + k as f64).collect();
        opt.load_state(name, &values).unwrap();
        let want: Vec<f64> = if f32_state {
            values.iter().map(|&x| f64::from(x as f32)).collect()
        } else {
            values.clone()
        };
        assert_eq!(
            bits(&opt.read_state(name).unwrap()),
            bits(&want),
            "[{what}] {name}"
        );
        // A wrong length or an unknown name is refused and changes nothing.
        assert!(opt.load_state(name, &values[1..]).is_err(), "[{what}]");
        assert_eq!(
            bits(&opt.read_state(name).unwrap()),
            bits(&want),
            "[{what}]"
        );
    }
    assert!(opt.read_state("no_such_state").is_err(), "[{what}]");
    assert!(
        opt.load_state("no_such_state", &[0.0; N]).is_err(),
        "[{what}]"
    );
    assert!(opt.is_training(), "[{what}]");
    assert_eq!(opt.grad_options(), GradOptions::default(), "[{what}]");
    assert_eq!(opt.last_grad_norm().unwrap(), None, "[{what}]");
    assert!(!opt.last_step_skipped().unwrap(), "[{what}]");
}

#[test]
fn lr_and_state_round_trip_on_every_implementation() {
    let (p0, _) = inputs(1);
    for config in configs() {
        for kind in kinds() {
            let mut s = Subject::new(kind, config, &p0);
            let f32_state = s.f32_state();
            lr_and_state_round_trip(s.opt(), f32_state, &format!("{kind:?} {}", config.name()));
        }
    }
}

/// Step `a` three times, save, load into a fresh instance `b` (built with another lr) over
/// the same params: the next step of both is identical (bit for bit; the reference's f64
/// exactly).
fn checkpoint_round_trip(kind: Kind, config: OptimizerConfig) {
    let what = format!("{kind:?} {}", config.name());
    let (p0, gs) = inputs(2);
    let mut a = Subject::new(kind, config, &p0);
    for g in &gs[..3] {
        a.step(g).unwrap();
    }
    let path = temp(&format!("{kind:?}-{}.safetensors", config.name()));
    a.opt().save_checkpoint(&path).unwrap();
    let mut b = Subject::new(kind, config.with_lr(config.lr() * 3.0), &a.params());
    b.opt().load_checkpoint(&path).unwrap();
    assert_eq!(b.opt().config(), a.opt().config(), "[{what}]");
    assert_eq!(b.opt().host_state(), a.opt().host_state(), "[{what}]");
    assert_eq!(b.opt().step_count(), 3, "[{what}]");
    for g in &gs[3..] {
        a.step(g).unwrap();
        b.step(g).unwrap();
        assert_eq!(bits(&b.params()), bits(&a.params()), "[{what}] params");
        for name in a.opt().state_names() {
            assert_eq!(
                bits(&b.opt().read_state(name).unwrap()),
                bits(&a.opt().read_state(name).unwrap()),
                "[{what}] {name}"
            );
        }
    }
    assert_eq!(b.opt().host_state(), a.opt().host_state(), "[{what}]");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn checkpoint_round_trip_gives_the_identical_next_step_on_every_implementation() {
    for config in configs() {
        for kind in kinds() {
            checkpoint_round_trip(kind, config);
        }
    }
}

/// The reference saves F64 tensors; f32 paths load them rounded to nearest f32, and the
/// reference loads f32 files widened exactly.
#[test]
fn checkpoints_cross_precisions() {
    let config: OptimizerConfig = NadamConfig::default().into();
    let (p0, gs) = inputs(3);
    let mut reference = Subject::new(Kind::Reference, config, &p0);
    let mut cpu = Subject::new(Kind::Cpu, config, &p0);
    for g in &gs {
        reference.step(g).unwrap();
        cpu.step(g).unwrap();
    }
    let f64_file = temp("reference.safetensors");
    let f32_file = temp("cpu.safetensors");
    reference.opt().save_checkpoint(&f64_file).unwrap();
    cpu.opt().save_checkpoint(&f32_file).unwrap();
    let saved = fused_optim::checkpoint::load(&f64_file).unwrap();
    assert!(saved
        .tensors
        .iter()
        .all(|(_, t)| matches!(t, TensorValues::F64(_))));
    assert!(fused_optim::checkpoint::load(&f32_file)
        .unwrap()
        .tensors
        .iter()
        .all(|(_, t)| matches!(t, TensorValues::F32(_))));

    // f64 → every f32 path: rounded to nearest f32, host scalars as saved.
    for kind in kinds().into_iter().filter(|k| *k != Kind::Reference) {
        let mut s = Subject::new(kind, config, &p0);
        s.opt().load_checkpoint(&f64_file).unwrap();
        assert_eq!(
            s.opt().host_state(),
            reference.opt().host_state(),
            "[{kind:?}]"
        );
        for name in config.state_names() {
            let want: Vec<f64> = reference
                .opt()
                .read_state(name)
                .unwrap()
                .iter()
                .map(|&x| f64::from(x as f32))
                .collect();
            assert_eq!(
                bits(&s.opt().read_state(name).unwrap()),
                bits(&want),
                "[{kind:?}]"
            );
        }
    }
    // f32 → the reference: widened exactly, then it steps as the f32 run's state says.
    let mut r = Subject::new(Kind::Reference, config, &p0);
    r.opt().load_checkpoint(&f32_file).unwrap();
    assert_eq!(r.opt().host_state(), cpu.opt().host_state());
    for name in config.state_names() {
        assert_eq!(
            bits(&r.opt().read_state(name).unwrap()),
            bits(&cpu.opt().read_state(name).unwrap())
        );
    }
    // A checkpoint of another kind is still refused, whatever its precision.
    let mut adam = Subject::new(Kind::Reference, AdamConfig::default().into(), &p0);
    let before = adam.opt().read_state("exp_avg").unwrap();
    assert!(matches!(
        adam.opt().load_checkpoint(&f64_file),
        Err(Error::Checkpoint { .. })
    ));
    assert_eq!(adam.opt().read_state("exp_avg").unwrap(), before);
    assert_eq!(adam.opt().step_count(), 0);
    std::fs::remove_file(&f64_file).unwrap();
    std::fs::remove_file(&f32_file).unwrap();
}

/// `LossScaler::step` on every implementation: a clean step unscaled by the scale, a step
/// with an inf gradient skipped (params and state untouched) with the scale backed off.
#[test]
fn loss_scaler_drives_every_implementation() {
    let config: OptimizerConfig = SgdConfig {
        lr: 0.125,
        momentum: 0.5,
        ..Default::default()
    }
    .into();
    for kind in kinds() {
        let mut s = Subject::new(kind, config, &[0.5; N]);
        let mut scaler = LossScaler::new(4.0).unwrap();
        // Gradient 0.25 scaled by 4: unscaled back to 0.25 (all exact in binary).
        assert!(
            !s.scaled_step(&mut scaler, &[1.0; N]).unwrap(),
            "[{kind:?}]"
        );
        assert_eq!(s.params(), vec![0.5 - 0.125 * 0.25; N], "[{kind:?}]");
        assert!(s.opt().grad_options().skip_nonfinite, "[{kind:?}]");
        assert_eq!(s.opt().grad_options().grad_scale, 0.25, "[{kind:?}]");
        let momentum = s.opt().read_state("momentum_buffer").unwrap();
        let mut g = vec![1.0f32; N];
        g[5] = f32::INFINITY;
        assert!(s.scaled_step(&mut scaler, &g).unwrap(), "[{kind:?}]");
        assert!(s.opt().last_step_skipped().unwrap(), "[{kind:?}]");
        assert_eq!(s.params(), vec![0.5 - 0.125 * 0.25; N], "[{kind:?}]");
        assert_eq!(s.opt().read_state("momentum_buffer").unwrap(), momentum);
        assert_eq!(scaler.scale(), 2.0, "[{kind:?}]");
        assert_eq!(s.opt().step_count(), 1, "[{kind:?}]");
        // The next clean step unscales by the backed-off scale: 0.5 * 0.5 = 0.25 again.
        assert!(
            !s.scaled_step(&mut scaler, &[0.5; N]).unwrap(),
            "[{kind:?}]"
        );
        assert_eq!(s.opt().grad_options().grad_scale, 0.5, "[{kind:?}]");
        assert_eq!(s.opt().step_count(), 2, "[{kind:?}]");
        assert_eq!((scaler.scale(), scaler.growth_tracker()), (2.0, 1));
    }
}

/// `AutoOptimizer` forwards gradient options (norm clipping, the norm read back, skipping)
/// and checkpoints to either backend; a checkpoint saved on one backend loads on the other.
#[test]
fn auto_optimizer_forwards_grad_options_and_checkpoints() {
    let config: OptimizerConfig = AdamConfig::default().into();
    let (p0, gs) = inputs(4);
    let clip = GradOptions {
        max_norm: Some(0.5),
        clip_value: Some(20.0),
        ..Default::default()
    };
    let mut reference = Subject::new(Kind::Reference, config, &p0);
    reference.opt().set_grad_options(clip).unwrap();
    reference.step(&gs[0]).unwrap();
    let want_norm = reference.opt().last_grad_norm().unwrap().unwrap();
    let autos: Vec<Kind> = kinds()
        .into_iter()
        .filter(|k| matches!(k, Kind::AutoCpu | Kind::AutoGpu))
        .collect();
    for &kind in &autos {
        let mut auto = Subject::new(kind, config, &p0);
        auto.opt().set_grad_options(clip).unwrap();
        assert_eq!(auto.opt().grad_options(), clip, "[{kind:?}]");
        assert!(auto
            .opt()
            .set_grad_options(GradOptions {
                max_norm: Some(-1.0),
                ..Default::default()
            })
            .is_err());
        assert_eq!(
            auto.opt().grad_options(),
            clip,
            "[{kind:?}] refused: unchanged"
        );
        auto.step(&gs[0]).unwrap();
        let norm = auto.opt().last_grad_norm().unwrap().unwrap();
        assert!(
            (norm - want_norm).abs() <= 1e-5 * want_norm,
            "[{kind:?}] {norm} {want_norm}"
        );
        for (name, got) in reference
            .opt()
            .state_names()
            .into_iter()
            .map(|n| (n, auto.opt().read_state(n).unwrap()))
        {
            let want = reference.opt().read_state(name).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-12, "[{kind:?}] {name}");
            }
        }
        // Skipping non-finite steps is forwarded too.
        auto.opt()
            .set_grad_options(GradOptions {
                skip_nonfinite: true,
                ..clip
            })
            .unwrap();
        let before = auto.params();
        let mut bad = gs[1].clone();
        bad[3] = f32::NAN;
        auto.step(&bad).unwrap();
        assert!(auto.opt().last_step_skipped().unwrap(), "[{kind:?}]");
        assert_eq!(bits(&auto.params()), bits(&before), "[{kind:?}]");
        assert_eq!(auto.opt().step_count(), 1, "[{kind:?}]");
    }
    // Checkpoints: save on each backend, load into a fresh instance of each backend.
    for &from in &autos {
        let mut a = Subject::new(from, config, &p0);
        for g in &gs[..3] {
            a.step(g).unwrap();
        }
        let path = temp(&format!("auto-{from:?}.safetensors"));
        a.opt().save_checkpoint(&path).unwrap();
        for &to in &autos {
            let mut b = Subject::new(to, config.with_lr(0.5), &a.params());
            b.opt().load_checkpoint(&path).unwrap();
            assert_eq!(
                b.opt().host_state(),
                a.opt().host_state(),
                "[{from:?} → {to:?}]"
            );
            for name in config.state_names() {
                assert_eq!(
                    bits(&b.opt().read_state(name).unwrap()),
                    bits(&a.opt().read_state(name).unwrap()),
                    "[{from:?} → {to:?}] {name}"
                );
            }
        }
        // The resumed run on the same backend takes the identical next step.
        let mut b = Subject::new(from, config.with_lr(0.5), &a.params());
        b.opt().load_checkpoint(&path).unwrap();
        a.step(&gs[3]).unwrap();
        b.step(&gs[3]).unwrap();
        assert_eq!(bits(&b.params()), bits(&a.params()), "[{from:?}]");
        // A refused file (another kind) changes nothing.
        let mut sgd = Subject::new(from, SgdConfig::default().into(), &p0);
        assert!(sgd.opt().load_checkpoint(&path).is_err());
        assert_eq!(sgd.opt().step_count(), 0);
        std::fs::remove_file(&path).unwrap();
    }
}
