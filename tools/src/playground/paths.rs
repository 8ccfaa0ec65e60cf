//! Optimisation paths on a 2-D test function: the parameter [x, y] lives in the optimizer
//! (on the GPU unless told otherwise); before each step the gradient is computed on the CPU
//! from the current parameters.

use super::functions::TestFunction;
use crate::error::Result;
use fused_optim::optim::*;
use fused_optim::GpuContext;
use fused_optim::{AutoOptimizer, BackendChoice};

/// The path of one run.
#[derive(Clone, Debug)]
pub struct PathRun {
    /// [x, y] before the first step and after every step.
    pub points: Vec<(f64, f64)>,
    /// f at each point.
    pub losses: Vec<f64>,
}

impl PathRun {
    /// The first step after which the loss is below `threshold`, if any.
    pub fn steps_to(&self, threshold: f64) -> Option<usize> {
        self.losses.iter().position(|&l| l < threshold)
    }
}

/// Minimise `function` from its start with `config` for `steps` steps.
pub fn run(
    ctx: Option<&GpuContext>,
    choice: BackendChoice,
    function: TestFunction,
    config: OptimizerConfig,
    steps: usize,
) -> Result<PathRun> {
    let (x0, y0) = function.start();
    let mut opt = AutoOptimizer::new(ctx, &[x0 as f32, y0 as f32], config, choice)?;
    let mut points = vec![(x0, y0)];
    let mut losses = vec![function.value(x0, y0)];
    let (mut x, mut y) = (x0, y0);
    for _ in 0..steps {
        let (gx, gy) = function.gradient(x, y);
        opt.write_grads(&[gx as f32, gy as f32])?;
        opt.step()?;
        let p = opt.read_params()?;
        (x, y) = (f64::from(p[0]), f64::from(p[1]));
        points.push((x, y));
        losses.push(function.value(x, y));
    }
    Ok(PathRun { points, losses })
}

/// The eight classic optimizers with learning rates that make each of them behave sensibly
/// on `function` from its start (name, config).
pub fn classic_optimizers(function: TestFunction) -> Vec<(&'static str, OptimizerConfig)> {
    // (sgd, momentum/nesterov, adagrad, rmsprop, adam/adamw, adadelta) learning rates.
    let (sgd, mom, adagrad, rms, adam, adadelta) = match function {
        TestFunction::Rosenbrock => (1.5e-3, 1e-3, 1.0, 1e-2, 0.1, 1.0),
        TestFunction::Himmelblau => (1e-2, 2e-3, 0.5, 5e-2, 0.1, 1.0),
        TestFunction::Bowl => (0.1, 0.02, 0.5, 5e-2, 0.1, 1.0),
    };
    vec![
        (
            "SGD",
            SgdConfig {
                lr: sgd,
                ..Default::default()
            }
            .into(),
        ),
        (
            "Momentum",
            SgdConfig {
                lr: mom,
                momentum: 0.9,
                ..Default::default()
            }
            .into(),
        ),
        (
            "Nesterov",
            SgdConfig {
                lr: mom,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            }
            .into(),
        ),
        (
            "AdaGrad",
            AdagradConfig {
                lr: adagrad,
                ..Default::default()
            }
            .into(),
        ),
        (
            "RMSprop",
            RmspropConfig {
                lr: rms,
                ..Default::default()
            }
            .into(),
        ),
        (
            "Adam",
            AdamConfig {
                lr: adam,
                ..Default::default()
            }
            .into(),
        ),
        (
            "AdamW",
            AdamConfig {
                lr: adam,
                ..AdamConfig::adamw()
            }
            .into(),
        ),
        (
            "Adadelta",
            AdadeltaConfig {
                lr: adadelta,
                ..Default::default()
            }
            .into(),
        ),
    ]
}

/// `config` with its learning rate replaced.
pub fn with_lr(config: OptimizerConfig, lr: f64) -> OptimizerConfig {
    config.with_lr(lr)
}
