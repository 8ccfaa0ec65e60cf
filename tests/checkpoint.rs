//! Checkpoints: a save/load round trip gives the bit-identical next step on the same device
//! for every optimizer and option; broken or mismatched files are refused with typed errors
//! and change nothing.

mod cases;
mod common;

use common::*;
use fused_optim::*;

/// A file in a folder of its own per test (tests run in parallel).
fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fused-optim-ckpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Other hyper-parameters of the same kind and structure: another learning rate or
/// coefficient, and no weight decay and no maximize (whose arithmetic the kernel of this
/// instance then leaves out: loading a checkpoint that uses them must bring them back).
fn other_instance(config: OptimizerConfig) -> OptimizerConfig {
    let mut c = config;
    match &mut c {
        OptimizerConfig::Sgd(x) => {
            x.lr *= 3.0;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Adagrad(x) => {
            x.lr_decay += 0.5;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Rmsprop(x) => {
            x.alpha = 0.5;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Adam(x) => {
            x.betas = (0.5, 0.9);
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Lion(x) => {
            x.betas = (0.5, 0.9);
            x.weight_decay = 0.0;
        }
        OptimizerConfig::Muon(x) => {
            (x.momentum, x.nesterov) = (0.5, !x.nesterov);
            x.weight_decay = 0.0;
        }
        OptimizerConfig::ScheduleFree(x) => {
            (x.beta, x.warmup_steps) = (0.5, 7);
            x.weight_decay = 0.0;
        }
        OptimizerConfig::Adadelta(x) => {
            x.rho = 0.5;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Nadam(x) => {
            x.momentum_decay = 0.1;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Adamax(x) => {
            x.eps = 0.5;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Radam(x) => {
            x.lr *= 3.0;
            (x.weight_decay, x.maximize) = (0.0, false);
        }
        OptimizerConfig::Lamb(x) => {
            x.betas = (0.5, 0.9);
            (x.weight_decay, x.maximize, x.pre_norm) = (0.0, false, false);
        }
        OptimizerConfig::Adafactor(x) => {
            (x.beta2_decay, x.d) = (-0.5, 2.0);
            (x.weight_decay, x.maximize) = (0.0, false);
        }
    }
    c
}

#[test]
fn round_trip_gives_the_bit_identical_next_step() {
    let Some(ctx) = gpu() else { return };
    let n = 1027;
    for (desc, config) in cases::all() {
        let mut rng = Rng::new(31);
        let flat = FlatParams::from_slice(&ctx, &params0(&mut rng, n)).unwrap();
        let mut opt = GpuOptimizer::new(&flat, config).unwrap();
        for k in 1..=5 {
            opt.set_lr(config.lr() * cases::lr_factor(k)).unwrap();
            flat.write_grads(&grads(&mut rng, n)).unwrap();
            opt.step().unwrap();
        }
        let path = temp(&format!("{}.safetensors", desc.replace(' ', "_")));
        opt.save_checkpoint(&path).unwrap();
        let params_at_save = flat.read_params().unwrap();
        let g = grads(&mut rng, n);
        flat.write_grads(&g).unwrap();
        opt.step().unwrap();
        let want = flat.read_params().unwrap();

        // A fresh optimizer of the same structure but other hyper-parameters, on restored
        // params: the checkpoint brings state, step, lr and hyper-parameters back.
        let restored = FlatParams::from_slice(&ctx, &params_at_save).unwrap();
        let mut resumed = GpuOptimizer::new(&restored, other_instance(config)).unwrap();
        resumed.load_checkpoint(&path).unwrap();
        assert_eq!(resumed.step_count(), 5, "{desc}");
        assert_eq!(resumed.config(), &config, "{desc}");
        restored.write_grads(&g).unwrap();
        resumed.step().unwrap();
        let got = restored.read_params().unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "[{desc}] the resumed step differs"
        );
        for name in opt.state_names() {
            let (a, b) = (
                resumed.read_state_f32(name).unwrap(),
                opt.read_state_f32(name).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "[{desc}] {name}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn cpu_round_trip_and_cross_loading() {
    let n = 515;
    let config: OptimizerConfig = NadamConfig {
        decoupled_weight_decay: true,
        weight_decay: 0.1,
        ..Default::default()
    }
    .into();
    let mut rng = Rng::new(4);
    let mut p = params0(&mut rng, n);
    let mut cpu = CpuOptimizer::new(config, n).unwrap();
    for _ in 0..4 {
        cpu.step(&mut p, &grads(&mut rng, n)).unwrap();
    }
    let path = temp("cpu.safetensors");
    cpu.save_checkpoint(&path).unwrap();
    let g = grads(&mut rng, n);
    let mut p_resumed = p.clone();
    cpu.step(&mut p, &g).unwrap();
    let mut resumed = CpuOptimizer::new(config, n).unwrap();
    resumed.load_checkpoint(&path).unwrap();
    assert_eq!(resumed.step_count(), 4);
    let saved_exp_avg = resumed.state("exp_avg").unwrap().to_vec();
    resumed.step(&mut p_resumed, &g).unwrap();
    assert!(p
        .iter()
        .zip(&p_resumed)
        .all(|(a, b)| a.to_bits() == b.to_bits()));

    // The same file loads into the GPU optimizer, tensors bit for bit.
    if let Some(ctx) = gpu() {
        let flat = FlatParams::zeros(&ctx, n).unwrap();
        let mut opt = GpuOptimizer::new(&flat, config).unwrap();
        opt.load_checkpoint(&path).unwrap();
        assert_eq!(opt.step_count(), 4);
        let undone = resumed.host_state().scalars[0] / config_mu(&config, 5);
        assert!((opt.host_state().scalars[0] - undone).abs() <= 1e-15 * undone);
        assert_eq!(opt.read_state_f32("exp_avg").unwrap(), saved_exp_avg);
    }
    std::fs::remove_file(&path).unwrap();
}

/// NAdam's mu at step t (to undo one step of mu_product).
fn config_mu(config: &OptimizerConfig, t: u64) -> f64 {
    let OptimizerConfig::Nadam(c) = config else {
        unreachable!()
    };
    c.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * c.momentum_decay))
}

/// Each broken or mismatched file is refused with a typed error and nothing changes.
#[test]
fn broken_and_mismatched_checkpoints_are_refused_and_change_nothing() {
    let n = 99;
    let adam: OptimizerConfig = AdamConfig {
        amsgrad: true,
        ..Default::default()
    }
    .into();
    let mut rng = Rng::new(8);
    let mut p = params0(&mut rng, n);
    let mut source = CpuOptimizer::new(adam, n).unwrap();
    source.step(&mut p, &grads(&mut rng, n)).unwrap();
    let good = temp("good.safetensors");
    source.save_checkpoint(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // No temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(good.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());

    let mut cases: Vec<(&str, Vec<u8>, OptimizerConfig, usize)> = Vec::new();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    cases.push(("a flipped bit in the data", flipped, adam, n));
    cases.push(("truncated", bytes[..bytes.len() - 10].to_vec(), adam, n));
    cases.push(("truncated header", bytes[..6].to_vec(), adam, n));
    cases.push(("garbage", b"not a checkpoint at all".to_vec(), adam, n));
    cases.push((
        "another kind",
        bytes.clone(),
        SgdConfig {
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
        n,
    ));
    cases.push((
        "without amsgrad",
        bytes.clone(),
        AdamConfig::default().into(),
        n,
    ));
    cases.push(("another size", bytes.clone(), adam, n + 1));
    for (desc, content, config, size) in cases {
        let path = temp("broken.safetensors");
        std::fs::write(&path, &content).unwrap();
        let mut target = CpuOptimizer::new(config, size).unwrap();
        let mut q = vec![0.5f32; size];
        target.step(&mut q, &vec![0.25; size]).unwrap();
        let before_host = target.host_state();
        let before: Vec<Vec<f32>> = target
            .state_names()
            .iter()
            .map(|s| target.state(s).unwrap().to_vec())
            .collect();
        let err = target.load_checkpoint(&path).unwrap_err();
        assert!(matches!(err, Error::Checkpoint { .. }), "[{desc}] {err:?}");
        assert_eq!(target.host_state(), before_host, "[{desc}]");
        let after: Vec<Vec<f32>> = target
            .state_names()
            .iter()
            .map(|s| target.state(s).unwrap().to_vec())
            .collect();
        assert_eq!(after, before, "[{desc}]");
    }
    std::fs::remove_file(&good).unwrap();
}
