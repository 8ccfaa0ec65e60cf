//! The CPU reference: scalar, f64 inside, written to read like `SEMANTICS.md`. Every other
//! implementation (the WGSL kernels, the fast CPU path) is checked against it.
//!
//! It shares nothing with the other paths but the config types: the step-dependent scalars
//! (bias corrections, clr, mu, the RAdam rectifier) are recomputed here from the formulas.

use crate::error::{Error, Result};
use crate::gpu::gradients::GradOptions;
use crate::optim::{validate_lr, OptimizerConfig};

/// A plain f64 implementation of every optimizer, one element at a time.
#[derive(Clone, Debug)]
pub struct ReferenceOptimizer {
    config: OptimizerConfig,
    n: usize,
    step: u64,
    lr: f64,
    mu_product: f64,
    momentum_buffer_exists: bool,
    names: Vec<&'static str>,
    states: Vec<Vec<f64>>,
    grad_options: GradOptions,
    last_grad_norm: Option<f64>,
}

impl ReferenceOptimizer {
    /// A fresh optimizer over `n` parameters, state initialised as PyTorch does.
    pub fn new(config: impl Into<OptimizerConfig>, n: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if n == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        let names = config.state_names();
        let states = names
            .iter()
            .map(|name| vec![f64::from(config.initial_state_value(name)); n])
            .collect();
        Ok(Self {
            lr: config.lr(),
            config,
            n,
            step: 0,
            mu_product: 1.0,
            momentum_buffer_exists: false,
            names,
            states,
            grad_options: GradOptions::default(),
            last_grad_norm: None,
        })
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        validate_lr(self.config.name(), lr)?;
        self.lr = lr;
        Ok(())
    }

    /// Gradient pre-processing (unscale, clip by value, clip by global norm), as on the GPU.
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        self.grad_options = options;
        Ok(())
    }

    /// The global norm of the last step's gradients (with norm clipping on).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// NAdam's `mu_product` (1 for other optimizers).
    pub fn mu_product(&self) -> f64 {
        self.mu_product
    }

    /// One state tensor by PyTorch's name.
    pub fn state(&self, name: &str) -> Result<&[f64]> {
        Ok(&self.states[self.config.state_index(name)?])
    }

    /// Names of the state tensors.
    pub fn state_names(&self) -> &[&'static str] {
        &self.names
    }

    /// One step. `params` and `grads` must both have the optimizer's length.
    pub fn step(&mut self, params: &mut [f64], grads: &[f64]) -> Result<()> {
        for (what, len) in [("params", params.len()), ("grads", grads.len())] {
            if len != self.n {
                return Err(Error::LengthMismatch {
                    what,
                    expected: self.n,
                    got: len,
                });
            }
        }
        // Gradient pre-processing: g = clamp(g * scale, +-clip) * min(1, max_norm / (norm + 1e-6)).
        let o = self.grad_options;
        let clip = o.clip_value.unwrap_or(f64::INFINITY);
        let mut processed: Vec<f64> = grads
            .iter()
            .map(|&g| (g * o.grad_scale).clamp(-clip, clip))
            .collect();
        if let Some(max_norm) = o.max_norm {
            let norm = processed.iter().map(|g| g * g).sum::<f64>().sqrt();
            let coef = (max_norm / (norm + 1e-6)).min(1.0);
            processed.iter_mut().for_each(|g| *g *= coef);
            self.last_grad_norm = Some(norm);
        }
        let grads = &processed[..];
        self.step += 1;
        let t = self.step as f64;
        let ti = self.step as i32;
        let lr = self.lr;
        let st = &mut self.states;
        match self.config {
            OptimizerConfig::Sgd(c) => {
                let first = !self.momentum_buffer_exists;
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.weight_decay != 0.0 {
                        g += c.weight_decay * params[i];
                    }
                    if c.momentum != 0.0 {
                        let buf = &mut st[0][i];
                        *buf = if first {
                            g
                        } else {
                            c.momentum * *buf + (1.0 - c.dampening) * g
                        };
                        g = if c.nesterov {
                            g + c.momentum * *buf
                        } else {
                            *buf
                        };
                    }
                    params[i] -= lr * g;
                }
                self.momentum_buffer_exists = true;
            }
            OptimizerConfig::Adagrad(c) => {
                let clr = lr / (1.0 + (t - 1.0) * c.lr_decay);
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.weight_decay != 0.0 {
                        g += c.weight_decay * params[i];
                    }
                    st[0][i] += g * g;
                    params[i] -= clr * g / (st[0][i].sqrt() + c.eps);
                }
            }
            OptimizerConfig::Rmsprop(c) => {
                let has_momentum = c.momentum > 0.0;
                let (buf_k, ga_k) = match (has_momentum, c.centered) {
                    (true, true) => (1, 2),
                    (true, false) => (1, usize::MAX),
                    (false, true) => (usize::MAX, 1),
                    (false, false) => (usize::MAX, usize::MAX),
                };
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.weight_decay != 0.0 {
                        g += c.weight_decay * params[i];
                    }
                    st[0][i] = c.alpha * st[0][i] + (1.0 - c.alpha) * g * g;
                    let v = st[0][i];
                    let avg = if c.centered {
                        let ga = &mut st[ga_k][i];
                        *ga += (1.0 - c.alpha) * (g - *ga);
                        (v - *ga * *ga).sqrt() + c.eps
                    } else {
                        v.sqrt() + c.eps
                    };
                    if has_momentum {
                        let buf = &mut st[buf_k][i];
                        *buf = c.momentum * *buf + g / avg;
                        params[i] -= lr * *buf;
                    } else {
                        params[i] -= lr * g / avg;
                    }
                }
            }
            OptimizerConfig::Adam(c) => {
                let (b1, b2) = c.betas;
                let bc1 = 1.0 - b1.powi(ti);
                let bc2 = 1.0 - b2.powi(ti);
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.decoupled_weight_decay {
                        params[i] *= 1.0 - lr * c.weight_decay;
                    } else {
                        if c.weight_decay != 0.0 {
                            g += c.weight_decay * params[i];
                        }
                    }
                    st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
                    st[1][i] = b2 * st[1][i] + (1.0 - b2) * g * g;
                    let vv = if c.amsgrad {
                        st[2][i] = st[2][i].max(st[1][i]);
                        st[2][i]
                    } else {
                        st[1][i]
                    };
                    params[i] -= (lr / bc1) * st[0][i] / (vv.sqrt() / bc2.sqrt() + c.eps);
                }
            }
            OptimizerConfig::Adadelta(c) => {
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.weight_decay != 0.0 {
                        g += c.weight_decay * params[i];
                    }
                    st[0][i] = c.rho * st[0][i] + (1.0 - c.rho) * g * g;
                    let delta = (st[1][i] + c.eps).sqrt() / (st[0][i] + c.eps).sqrt() * g;
                    st[1][i] = c.rho * st[1][i] + (1.0 - c.rho) * delta * delta;
                    params[i] -= lr * delta;
                }
            }
            OptimizerConfig::Nadam(c) => {
                let (b1, b2) = c.betas;
                let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(t * c.momentum_decay));
                let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * c.momentum_decay));
                self.mu_product *= mu;
                let mp = self.mu_product;
                let bc2 = 1.0 - b2.powi(ti);
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.decoupled_weight_decay {
                        params[i] *= 1.0 - lr * c.weight_decay;
                    } else {
                        if c.weight_decay != 0.0 {
                            g += c.weight_decay * params[i];
                        }
                    }
                    st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
                    st[1][i] = b2 * st[1][i] + (1.0 - b2) * g * g;
                    let denom = (st[1][i] / bc2).sqrt() + c.eps;
                    params[i] -= lr * (1.0 - mu) / (1.0 - mp) * g / denom;
                    params[i] -= lr * mu_next / (1.0 - mp * mu_next) * st[0][i] / denom;
                }
            }
            OptimizerConfig::Adamax(c) => {
                let (b1, b2) = c.betas;
                let bc1 = 1.0 - b1.powi(ti);
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.weight_decay != 0.0 {
                        g += c.weight_decay * params[i];
                    }
                    st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
                    st[1][i] = (b2 * st[1][i]).max(g.abs() + c.eps);
                    params[i] -= (lr / bc1) * st[0][i] / st[1][i];
                }
            }
            OptimizerConfig::Radam(c) => {
                let (b1, b2) = c.betas;
                let bc1 = 1.0 - b1.powi(ti);
                let bc2 = 1.0 - b2.powi(ti);
                let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                let rho_t = rho_inf - 2.0 * t * b2.powi(ti) / bc2;
                for i in 0..self.n {
                    let mut g = if c.maximize { -grads[i] } else { grads[i] };
                    if c.decoupled_weight_decay {
                        params[i] *= 1.0 - lr * c.weight_decay;
                    } else {
                        if c.weight_decay != 0.0 {
                            g += c.weight_decay * params[i];
                        }
                    }
                    st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
                    st[1][i] = b2 * st[1][i] + (1.0 - b2) * g * g;
                    let m_hat = st[0][i] / bc1;
                    if rho_t > 5.0 {
                        let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                            .sqrt();
                        params[i] -= lr * m_hat * r * bc2.sqrt() / (st[1][i].sqrt() + c.eps);
                    } else {
                        params[i] -= lr * m_hat;
                    }
                }
            }
        }
        Ok(())
    }
}
