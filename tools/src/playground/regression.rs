//! Linear regression with full-batch, single-sample and mini-batch gradient descent, and
//! logistic regression with mini-batch SGD; the parameters live in the optimizer.

use ndarray::{Array1, Array2, Axis};

use super::data::Rng;
use crate::error::Result;
use fused_optim::GpuContext;
use fused_optim::SgdConfig;
use fused_optim::{AutoOptimizer, BackendChoice};

/// How many samples each update sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// All samples: gradient descent.
    Full,
    /// One sample: stochastic gradient descent.
    Single,
    /// A mini-batch of this many.
    Mini(usize),
}

/// Learning rate, passes over the data, and the seed of the shuffling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// SGD learning rate.
    pub lr: f64,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
}

/// Mean squared error of `b + w x` on the data.
pub fn mse(b: f64, w: f64, x: &Array1<f64>, y: &Array1<f64>) -> f64 {
    x.iter()
        .zip(y)
        .map(|(x, y)| (b + w * x - y).powi(2))
        .sum::<f64>()
        / x.len() as f64
}

/// A regression run: the full-data loss after every update, and the final parameters.
#[derive(Clone, Debug)]
pub struct RegressionRun {
    /// Loss on all the data, before the first update and after each one.
    pub losses: Vec<f64>,
    /// Final parameters.
    pub params: Vec<f64>,
}

/// Fit `y = b + w x` by SGD following `plan` over shuffled data.
pub fn fit_linear(
    ctx: Option<&GpuContext>,
    choice: BackendChoice,
    x: &Array1<f64>,
    y: &Array1<f64>,
    batching: Batching,
    plan: Plan,
) -> Result<RegressionRun> {
    let Plan { lr, epochs, seed } = plan;
    let n = x.len();
    let batch = match batching {
        Batching::Full => n,
        Batching::Single => 1,
        Batching::Mini(b) => b.clamp(1, n),
    };
    let mut opt = AutoOptimizer::new(
        ctx,
        &[0.0, 0.0],
        SgdConfig {
            lr,
            ..Default::default()
        },
        choice,
    )?;
    let mut rng = Rng::new(seed);
    let (mut b, mut w) = (0.0, 0.0);
    let mut losses = vec![mse(b, w, x, y)];
    for _ in 0..epochs {
        let order = rng.permutation(n);
        for chunk in order.chunks(batch) {
            let (mut gb, mut gw) = (0.0, 0.0);
            for &i in chunk {
                let err = b + w * x[i] - y[i];
                gb += 2.0 * err;
                gw += 2.0 * err * x[i];
            }
            let m = chunk.len() as f64;
            opt.write_grads(&[(gb / m) as f32, (gw / m) as f32])?;
            opt.step()?;
            let p = opt.read_params()?;
            (b, w) = (f64::from(p[0]), f64::from(p[1]));
            losses.push(mse(b, w, x, y));
        }
    }
    Ok(RegressionRun {
        losses,
        params: vec![b, w],
    })
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Binary cross-entropy of `sigmoid(w . x + b)` (params = [w0, w1, b]).
pub fn logistic_loss(params: &[f64], x: &Array2<f64>, y: &Array1<f64>) -> f64 {
    let eps = 1e-12;
    x.axis_iter(Axis(0))
        .zip(y)
        .map(|(row, &t)| {
            let p = sigmoid(params[0] * row[0] + params[1] * row[1] + params[2]);
            -(t * (p + eps).ln() + (1.0 - t) * (1.0 - p + eps).ln())
        })
        .sum::<f64>()
        / x.nrows() as f64
}

/// Fraction of points on the right side of the boundary `w . x + b = 0`.
pub fn logistic_accuracy(params: &[f64], x: &Array2<f64>, y: &Array1<f64>) -> f64 {
    let correct = x
        .axis_iter(Axis(0))
        .zip(y)
        .filter(|(row, &t)| {
            let z = params[0] * row[0] + params[1] * row[1] + params[2];
            (z > 0.0) == (t > 0.5)
        })
        .count();
    correct as f64 / x.nrows() as f64
}

/// Logistic regression by mini-batch SGD: params [w0, w1, b].
pub fn fit_logistic(
    ctx: Option<&GpuContext>,
    choice: BackendChoice,
    x: &Array2<f64>,
    y: &Array1<f64>,
    batch: usize,
    plan: Plan,
) -> Result<RegressionRun> {
    let Plan { lr, epochs, seed } = plan;
    let n = x.nrows();
    let mut opt = AutoOptimizer::new(
        ctx,
        &[0.0; 3],
        SgdConfig {
            lr,
            ..Default::default()
        },
        choice,
    )?;
    let mut rng = Rng::new(seed);
    let mut params = vec![0.0f64; 3];
    let mut losses = vec![logistic_loss(&params, x, y)];
    for _ in 0..epochs {
        let order = rng.permutation(n);
        for chunk in order.chunks(batch.clamp(1, n)) {
            let mut g = [0.0f64; 3];
            for &i in chunk {
                let z = params[0] * x[[i, 0]] + params[1] * x[[i, 1]] + params[2];
                let d = sigmoid(z) - y[i];
                g[0] += d * x[[i, 0]];
                g[1] += d * x[[i, 1]];
                g[2] += d;
            }
            let m = chunk.len() as f64;
            opt.write_grads(&g.map(|v| (v / m) as f32))?;
            opt.step()?;
            params = opt.read_params()?.iter().map(|&v| f64::from(v)).collect();
            losses.push(logistic_loss(&params, x, y));
        }
    }
    Ok(RegressionRun { losses, params })
}
