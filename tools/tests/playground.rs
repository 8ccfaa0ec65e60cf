//! The cores of the playground examples, a few steps each, with an outcome checked: Adam
//! reaches Rosenbrock's valley floor, regression losses fall, XOR reaches 100%, the idx
//! reader reads what it is given and refuses what is broken.

mod common;

use std::io::Write;

use fused_optim::*;
use fused_optim_tools::playground::data;
use fused_optim_tools::playground::functions::TestFunction;
use fused_optim_tools::playground::idx::{self, IdxArray};
use fused_optim_tools::playground::mlp::{Activation, Mlp, Targets};
use fused_optim_tools::playground::paths::{classic_optimizers, run};
use fused_optim_tools::playground::regression::{
    fit_linear, fit_logistic, logistic_accuracy, Batching, Plan,
};

/// The GPU when there is one (required in CI), else the CPU path with the same API.
fn backend() -> (Option<GpuContext>, BackendChoice) {
    match common::gpu() {
        Some(ctx) => (Some(ctx), BackendChoice::Gpu),
        None => (None, BackendChoice::Cpu),
    }
}

#[test]
fn adam_reaches_the_rosenbrock_valley_floor() {
    let (ctx, choice) = backend();
    let f = TestFunction::Rosenbrock;
    let (_, adam) = classic_optimizers(f)
        .into_iter()
        .find(|(n, _)| *n == "Adam")
        .unwrap();
    let r = run(ctx.as_ref(), choice, f, adam, 1000).unwrap();
    // After 300 steps: on the floor of the curved valley y = x^2, far below the start
    // (f = 72.5), still walking along it.
    let (x, y) = r.points[300];
    assert!(
        (y - x * x).abs() < 0.05,
        "({x}, {y}) is not on the valley floor"
    );
    assert!(r.losses[300] < r.losses[0] / 10.0);
    // After 1000 steps: near the minimum (1, 1).
    let (x, y) = *r.points.last().unwrap();
    assert!(
        (x - 1.0).hypot(y - 1.0) < 0.15 && r.losses[1000] < 1e-2,
        "({x}, {y})"
    );
}

#[test]
fn every_classic_optimizer_descends_on_every_function() {
    let (ctx, choice) = backend();
    for f in TestFunction::ALL {
        for (name, config) in classic_optimizers(f) {
            let r = run(ctx.as_ref(), choice, f, config, 150).unwrap();
            let last = *r.losses.last().unwrap();
            assert!(
                last.is_finite() && last < r.losses[0],
                "{name} on {f:?}: {} -> {last}",
                r.losses[0]
            );
        }
    }
}

#[test]
fn linear_regression_losses_fall_and_recover_the_line() {
    let (ctx, choice) = backend();
    let (x, y) = data::linear(100, 42);
    for batching in [Batching::Full, Batching::Single, Batching::Mini(32)] {
        let r = fit_linear(
            ctx.as_ref(),
            choice,
            &x,
            &y,
            batching,
            Plan {
                lr: 0.05,
                epochs: 30,
                seed: 7,
            },
        )
        .unwrap();
        let last = *r.losses.last().unwrap();
        assert!(
            last < r.losses[0] / 10.0,
            "{batching:?}: {} -> {last}",
            r.losses[0]
        );
        // The noise has variance 1, so a fitted line has MSE near 1.
        assert!(last < 1.6, "{batching:?}: final MSE {last}");
        assert!(
            (r.params[0] - 4.0).abs() < 0.8 && (r.params[1] - 3.0).abs() < 0.8,
            "{:?}",
            r.params
        );
    }
}

#[test]
fn logistic_regression_separates_two_gaussians() {
    let (ctx, choice) = backend();
    let (x, y) = data::two_gaussians(100, 3);
    let r = fit_logistic(
        ctx.as_ref(),
        choice,
        &x,
        &y,
        32,
        Plan {
            lr: 0.1,
            epochs: 20,
            seed: 5,
        },
    )
    .unwrap();
    assert!(r.losses.last().unwrap() < &(r.losses[0] * 0.5));
    assert!(logistic_accuracy(&r.params, &x, &y) > 0.9);
}

#[test]
fn mlp_learns_xor_to_100_percent() {
    let (ctx, choice) = backend();
    let (x, y) = data::xor(256, 1);
    let t = Targets::Binary(y);
    let mlp = Mlp::new(&[2, 16, 1], Activation::Tanh).unwrap();
    assert!(Mlp::new(&[2], Activation::Tanh).is_err());
    assert!(Mlp::new(&[2, 0, 1], Activation::Tanh).is_err());
    let init = mlp.init(16);
    let mut params: Vec<f64> = init.iter().map(|&v| f64::from(v)).collect();
    assert!(mlp.gradient_check(&params, &x, &t) < 1e-5);
    let mut opt = AutoOptimizer::new(
        ctx.as_ref(),
        &init,
        AdamConfig {
            lr: 0.02,
            ..Default::default()
        },
        choice,
    )
    .unwrap();
    let first = mlp.loss(&params, &x, &t);
    for _ in 0..600 {
        let (_, g) = mlp.loss_and_grad(&params, &x, &t);
        opt.write_grads(&g.iter().map(|&v| v as f32).collect::<Vec<_>>())
            .unwrap();
        opt.step().unwrap();
        params = opt
            .read_params()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
    }
    assert!(mlp.loss(&params, &x, &t) < first / 5.0);
    assert_eq!(mlp.accuracy(&params, &x, &t), 1.0);
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fused-optim-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn idx_reader_reads_plain_and_gzipped_files_and_refuses_broken_ones() {
    let dir = temp_dir("idx");
    let images = IdxArray {
        dims: vec![3, 2, 2],
        data: (0..12).map(|v| v * 20).collect(),
    };
    let labels = IdxArray {
        dims: vec![3],
        data: vec![7, 0, 9],
    };
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx::encode(&images)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&idx::encode(&labels)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx::encode(&images)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx::encode(&labels)).unwrap();

    assert_eq!(
        idx::read(&dir.join("train-images-idx3-ubyte")).unwrap(),
        images
    );
    assert_eq!(
        idx::read(&dir.join("train-labels-idx1-ubyte.gz")).unwrap(),
        labels
    );
    let m = idx::load_mnist(&dir).unwrap();
    assert_eq!(m.train_images.dim(), (3, 4));
    assert_eq!(m.train_images[[1, 0]], 80.0 / 255.0);
    assert_eq!(m.train_labels, vec![7, 0, 9]);

    // Truncated data, a wrong type byte, and garbage are typed errors.
    let mut truncated = idx::encode(&images);
    truncated.pop();
    assert!(idx::parse(&truncated)
        .unwrap_err()
        .contains("need 12 bytes"));
    let mut wrong_type = idx::encode(&labels);
    wrong_type[2] = 0x0D;
    assert!(idx::parse(&wrong_type).is_err());
    std::fs::write(dir.join("broken"), b"\x1f\x8bnot gzip").unwrap();
    assert!(matches!(
        idx::read(&dir.join("broken")),
        Err(fused_optim_tools::Error::Data { .. })
    ));
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
    assert!(matches!(
        idx::load_mnist(&dir),
        Err(fused_optim_tools::Error::Data { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
