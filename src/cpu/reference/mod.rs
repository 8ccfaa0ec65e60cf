//! The CPU reference: scalar, f64 inside, written to read like `SEMANTICS.md`. Every other
//! implementation (the WGSL kernels, the fast CPU path) is checked against it.
//!
//! It shares nothing with the other paths but the config types: the step-dependent scalars
//! (bias corrections, clr, mu, the RAdam rectifier) are recomputed here from the formulas.

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod lion;
mod nadam;
mod radam;
mod rmsprop;
mod schedule_free;
mod sgd;

use crate::error::{Error, Result};
use crate::grads::GradOptions;
use crate::optim::{with_algorithm, Algorithm, HostState, OptimizerConfig, MAX_HOST_SCALARS};

impl OptimizerConfig {
    /// One step of the f64 reference.
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        with_algorithm!(self, c => ReferenceStep::reference_step(c, r, params, grads, states))
    }

    /// The reference's train/eval switch.
    fn reference_mode_switch(
        &self,
        r: &mut ReferenceScalars,
        train: bool,
        params: &mut [f64],
        states: &mut [Vec<f64>],
    ) -> Result<()> {
        with_algorithm!(self, c => ReferenceStep::reference_mode_switch(c, r, train, params, states))
    }
}

/// The scalars of one reference step: the step number, the lr, whether the state has been
/// written before, and the algorithm's own scalars (NAdam's `mu_product`, ...), all f64 and
/// kept by the reference itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceScalars {
    /// The step being taken (1 on the first step).
    pub t: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Whether an earlier step (or a state load) has written the state tensors.
    pub state_written: bool,
    /// The algorithm's own scalars, in the order of `Algorithm::HOST_SCALARS`.
    pub own: [f64; MAX_HOST_SCALARS],
}

/// The f64 reference step of one algorithm, in `src/cpu/reference/<name>.rs`: written from
/// the reference implementation's formulas, one element at a time, sharing no arithmetic
/// with the uniform or the fast loops it checks. Every registered algorithm implements it
/// (the registry does not compile otherwise).
pub trait ReferenceStep: Algorithm {
    /// One step over every element; `states` are in `state_names` order.
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    );

    /// The train/eval mode switch of algorithms that have modes (to training when
    /// `train`); [`Error::Unsupported`] (the default) for the others.
    fn reference_mode_switch(
        &self,
        r: &mut ReferenceScalars,
        train: bool,
        params: &mut [f64],
        states: &mut [Vec<f64>],
    ) -> Result<()> {
        let _ = (r, train, params, states);
        Err(Error::Unsupported {
            optimizer: self.class_name(),
            feature: "train/eval modes",
        })
    }
}

/// A plain f64 implementation of every optimizer, one element at a time.
#[derive(Clone, Debug)]
pub struct ReferenceOptimizer {
    config: OptimizerConfig,
    n: usize,
    lr: f64,
    scalars: ReferenceScalars,
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
            .map(|name| vec![config.initial_state_value(name); n])
            .collect();
        let mut own = [0.0; MAX_HOST_SCALARS];
        for (slot, (_, initial)) in own.iter_mut().zip(config.host_scalars()) {
            *slot = *initial;
        }
        Ok(Self {
            lr: config.lr(),
            config,
            n,
            scalars: ReferenceScalars {
                t: 0,
                lr: config.lr(),
                state_written: false,
                own,
            },
            names,
            states,
            grad_options: GradOptions::default(),
            last_grad_norm: None,
        })
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.validate_lr(lr)?;
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
        self.scalars.t
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// One of the algorithm's host scalars by name (NAdam's `"mu_product"`), in f64.
    pub fn host_scalar(&self, name: &str) -> Option<f64> {
        self.config
            .host_scalars()
            .iter()
            .position(|(n, _)| *n == name)
            .map(|k| self.scalars.own[k])
    }

    /// NAdam's `mu_product` (1 for other optimizers).
    pub fn mu_product(&self) -> f64 {
        self.host_scalar("mu_product").unwrap_or(1.0)
    }

    /// The host scalars in the form the other implementations report them.
    pub fn host_state(&self) -> HostState {
        let mut h = HostState::new(self.lr, self.config.host_scalars());
        h.step = self.scalars.t;
        h.state_written = self.scalars.state_written;
        h.scalars = self.scalars.own;
        h
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`) or
    /// evaluation mode over `params`; [`Error::Unsupported`] for algorithms without modes.
    pub fn set_train_mode(&mut self, params: &mut [f64], train: bool) -> Result<()> {
        if params.len() != self.n {
            return Err(Error::LengthMismatch {
                what: "params",
                expected: self.n,
                got: params.len(),
            });
        }
        self.config
            .reference_mode_switch(&mut self.scalars, train, params, &mut self.states)
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
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
        self.config.check_step(&self.host_state())?;
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
        self.scalars.t += 1;
        self.scalars.lr = self.lr;
        self.config
            .reference_step(&mut self.scalars, params, grads, &mut self.states);
        self.scalars.state_written = true;
        Ok(())
    }
}
