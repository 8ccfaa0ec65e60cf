//! Optimizer configurations (PyTorch defaults and validation) and the host-side, per-step
//! scalars every implementation (GPU kernel, fast CPU path) is fed with.
//!
//! Each algorithm lives in its own file, next to the `#[repr(C)]` mirror of its WGSL uniform.

mod adadelta;
mod adagrad;
mod adam;
mod adamax;
mod nadam;
mod radam;
mod rmsprop;
mod sgd;
pub(crate) mod validate;

pub use adadelta::{AdadeltaConfig, AdadeltaHyper};
pub use adagrad::{AdagradConfig, AdagradHyper};
pub use adam::{AdamConfig, AdamHyper};
pub use adamax::{AdamaxConfig, AdamaxHyper};
pub use nadam::{NadamConfig, NadamHyper};
pub use radam::{RadamConfig, RadamHyper};
pub use rmsprop::{RmspropConfig, RmspropHyper};
pub use sgd::{SgdConfig, SgdHyper};

use crate::error::{Error, Result};

/// Any optimizer of the crate, with its hyper-parameters.
///
/// Build one from a specific config with `.into()`:
/// `OptimizerConfig::from(AdamConfig::default())`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// [`SgdConfig`].
    Sgd(SgdConfig),
    /// [`AdagradConfig`].
    Adagrad(AdagradConfig),
    /// [`RmspropConfig`].
    Rmsprop(RmspropConfig),
    /// [`AdamConfig`] (Adam, AdamW, AMSGrad).
    Adam(AdamConfig),
    /// [`AdadeltaConfig`].
    Adadelta(AdadeltaConfig),
    /// [`NadamConfig`].
    Nadam(NadamConfig),
    /// [`AdamaxConfig`].
    Adamax(AdamaxConfig),
    /// [`RadamConfig`].
    Radam(RadamConfig),
}

macro_rules! impl_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for OptimizerConfig {
            fn from(c: $ty) -> Self {
                OptimizerConfig::$variant(c)
            }
        }
    )*};
}
impl_from!(
    Sgd(SgdConfig),
    Adagrad(AdagradConfig),
    Rmsprop(RmspropConfig),
    Adam(AdamConfig),
    Adadelta(AdadeltaConfig),
    Nadam(NadamConfig),
    Adamax(AdamaxConfig),
    Radam(RadamConfig)
);

/// The scalar part of an optimizer's state, kept on the host: the step counter (PyTorch's
/// `step`), the current learning rate, NAdam's `mu_product`, and whether SGD's momentum
/// buffer exists yet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostState {
    /// Steps taken so far (PyTorch's `step`); the next step uses `step + 1`.
    pub step: u64,
    /// Learning rate for the next step.
    pub lr: f64,
    /// NAdam's running product of mu (1 before the first step).
    pub mu_product: f64,
    /// SGD: false until the momentum buffer has been created (first step: buffer = g).
    pub momentum_buffer_ready: bool,
}

impl HostState {
    /// The state before the first step.
    pub fn new(lr: f64) -> Self {
        Self {
            step: 0,
            lr,
            mu_product: 1.0,
            momentum_buffer_ready: false,
        }
    }
}

/// The per-step uniform of one kernel, typed.
#[derive(Clone, Copy, Debug)]
pub enum Hyper {
    /// SGD.
    Sgd(SgdHyper),
    /// Adagrad.
    Adagrad(AdagradHyper),
    /// RMSprop.
    Rmsprop(RmspropHyper),
    /// Adam / AdamW.
    Adam(AdamHyper),
    /// Adadelta.
    Adadelta(AdadeltaHyper),
    /// NAdam.
    Nadam(NadamHyper),
    /// Adamax.
    Adamax(AdamaxHyper),
    /// RAdam.
    Radam(RadamHyper),
}

impl Hyper {
    /// The bytes written to the uniform buffer.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Hyper::Sgd(h) => bytemuck::bytes_of(h),
            Hyper::Adagrad(h) => bytemuck::bytes_of(h),
            Hyper::Rmsprop(h) => bytemuck::bytes_of(h),
            Hyper::Adam(h) => bytemuck::bytes_of(h),
            Hyper::Adadelta(h) => bytemuck::bytes_of(h),
            Hyper::Nadam(h) => bytemuck::bytes_of(h),
            Hyper::Adamax(h) => bytemuck::bytes_of(h),
            Hyper::Radam(h) => bytemuck::bytes_of(h),
        }
    }
}

/// How one 32-bit word of a per-step uniform depends on the step number `t`, for the
/// device-side step counter (`shaders/device_step.wgsl`), which completes the uniform on the
/// device once it knows `t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WordClass {
    /// Independent of `t`: the host's value is used as is.
    Keep = 0,
    /// `lr * f(t)`: the host writes `lr`, the step table `f(t)`, the device multiplies (f32).
    LrTimes = 1,
    /// `f(t)`, independent of `lr`: taken from the step table.
    OfStep = 2,
}

impl Hyper {
    /// Class of every word of this uniform (see [`WordClass`]).
    pub fn word_classes(&self) -> &'static [WordClass] {
        use WordClass::{Keep as K, LrTimes as L, OfStep as T};
        match self {
            // lr, sign, wd, buffer_keep, grad_into_buffer, momentum, pad x2
            Hyper::Sgd(_) => &[K, K, K, T, T, K, K, K],
            // sign, wd, clr, eps
            Hyper::Adagrad(_) => &[K, K, L, K],
            Hyper::Rmsprop(_) => &[K; 8],
            // sign, wd, decay, 1-b1, b2, 1-b2, step_size, inv_sqrt_bc2, eps, pad x3
            Hyper::Adam(_) => &[K, K, K, K, K, K, L, T, K, K, K, K],
            Hyper::Adadelta(_) => &[K; 8],
            // sign, wd, decay, 1-b1, b2, 1-b2, inv_sqrt_bc2, eps, grad_coef, avg_coef, pad x2
            Hyper::Nadam(_) => &[K, K, K, K, K, K, T, K, L, L, K, K],
            // sign, wd, 1-b1, b2, eps, step_size, pad x2
            Hyper::Adamax(_) => &[K, K, K, K, K, L, K, K],
            // sign, wd, decay, 1-b1, b2, 1-b2, eps, rectified, plain, adaptive, pad x2
            Hyper::Radam(_) => &[K, K, K, K, K, K, K, T, L, L, K, K],
        }
    }
}

/// Size in bytes of the largest per-step uniform.
pub const MAX_HYPER_BYTES: u64 = 48;

impl OptimizerConfig {
    /// PyTorch's class name (`"AdamW"` for Adam with decoupled weight decay).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd(_) => SgdConfig::NAME,
            Self::Adagrad(_) => AdagradConfig::NAME,
            Self::Rmsprop(_) => RmspropConfig::NAME,
            Self::Adam(c) => c.name(),
            Self::Adadelta(_) => AdadeltaConfig::NAME,
            Self::Nadam(_) => NadamConfig::NAME,
            Self::Adamax(_) => AdamaxConfig::NAME,
            Self::Radam(_) => RadamConfig::NAME,
        }
    }

    /// Check the hyper-parameters; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Sgd(c) => c.validate(),
            Self::Adagrad(c) => c.validate(),
            Self::Rmsprop(c) => c.validate(),
            Self::Adam(c) => c.validate(),
            Self::Adadelta(c) => c.validate(),
            Self::Nadam(c) => c.validate(),
            Self::Adamax(c) => c.validate(),
            Self::Radam(c) => c.validate(),
        }
    }

    /// The options of this configuration that cost arithmetic in every lane of a kernel:
    /// (maximize, L2 weight decay added to the gradient, decoupled decay of the params).
    /// A kernel leaves out the arithmetic of an option no parameter group uses
    /// ([`crate::gpu::kernel::Specialization`]).
    pub(crate) fn lane_options(&self) -> (bool, bool, bool) {
        let (maximize, weight_decay, decoupled) = match self {
            Self::Sgd(c) => (c.maximize, c.weight_decay, false),
            Self::Adagrad(c) => (c.maximize, c.weight_decay, false),
            Self::Rmsprop(c) => (c.maximize, c.weight_decay, false),
            Self::Adam(c) => (c.maximize, c.weight_decay, c.decoupled_weight_decay),
            Self::Adadelta(c) => (c.maximize, c.weight_decay, false),
            Self::Nadam(c) => (c.maximize, c.weight_decay, c.decoupled_weight_decay),
            Self::Adamax(c) => (c.maximize, c.weight_decay, false),
            Self::Radam(c) => (c.maximize, c.weight_decay, c.decoupled_weight_decay),
        };
        let decays = weight_decay != 0.0;
        (maximize, decays && !decoupled, decays && decoupled)
    }

    /// The initial learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd(c) => c.lr,
            Self::Adagrad(c) => c.lr,
            Self::Rmsprop(c) => c.lr,
            Self::Adam(c) => c.lr,
            Self::Adadelta(c) => c.lr,
            Self::Nadam(c) => c.lr,
            Self::Adamax(c) => c.lr,
            Self::Radam(c) => c.lr,
        }
    }

    /// Per-element state tensors this configuration has, by PyTorch's names, in the order the
    /// kernels bind them.
    pub fn state_names(&self) -> Vec<&'static str> {
        match self {
            Self::Sgd(c) => c.state_names(),
            Self::Adagrad(c) => c.state_names(),
            Self::Rmsprop(c) => c.state_names(),
            Self::Adam(c) => c.state_names(),
            Self::Adadelta(c) => c.state_names(),
            Self::Nadam(c) => c.state_names(),
            Self::Adamax(c) => c.state_names(),
            Self::Radam(c) => c.state_names(),
        }
    }

    /// Initial value of a state tensor (Adagrad's `sum` starts at
    /// `initial_accumulator_value`; everything else at 0).
    pub fn initial_state_value(&self, name: &str) -> f32 {
        match (self, name) {
            (Self::Adagrad(c), "sum") => c.initial_accumulator_value as f32,
            _ => 0.0,
        }
    }

    /// Index of a state tensor in [`Self::state_names`], or a typed error.
    pub fn state_index(&self, name: &str) -> Result<usize> {
        let names = self.state_names();
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::UnknownState {
                optimizer: self.name(),
                name: name.to_string(),
                known: names.join(", "),
            })
    }

    /// Minimal bytes moved per parameter per step: p, g read; p written; each state read and
    /// written once (f32).
    pub fn minimal_bytes_per_param(&self) -> u64 {
        12 + 8 * self.state_names().len() as u64
    }

    /// Pipeline-overridable constants of the kernel for this configuration (structural
    /// flags only; everything numeric is in the per-step uniform).
    pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
        match self {
            Self::Sgd(c) => c.overrides(),
            Self::Rmsprop(c) => c.overrides(),
            Self::Adam(c) => c.overrides(),
            _ => vec![],
        }
    }

    /// Starts a step: increments the step counter, advances host scalar state (NAdam's
    /// `mu_product`) and returns the step's uniform, computed in f64 and rounded to f32.
    pub fn begin_step(&self, host: &mut HostState) -> Hyper {
        host.step += 1;
        if let Self::Nadam(c) = self {
            c.advance(host);
        }
        match self {
            Self::Sgd(c) => Hyper::Sgd(c.hyper(host)),
            Self::Adagrad(c) => Hyper::Adagrad(c.hyper(host)),
            Self::Rmsprop(c) => Hyper::Rmsprop(c.hyper(host)),
            Self::Adam(c) => Hyper::Adam(c.hyper(host)),
            Self::Adadelta(c) => Hyper::Adadelta(c.hyper(host)),
            Self::Nadam(c) => Hyper::Nadam(c.hyper(host)),
            Self::Adamax(c) => Hyper::Adamax(c.hyper(host)),
            Self::Radam(c) => Hyper::Radam(c.hyper(host)),
        }
    }

    /// The hyper-parameters under PyTorch's names (as in `param_groups[0]`), the inverse of
    /// [`crate::golden::config_from_hparams`].
    pub fn hparams(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Sgd(c) => json!({"lr": c.lr, "momentum": c.momentum, "dampening": c.dampening,
                "weight_decay": c.weight_decay, "nesterov": c.nesterov, "maximize": c.maximize}),
            Self::Adagrad(c) => {
                json!({"lr": c.lr, "lr_decay": c.lr_decay, "weight_decay": c.weight_decay,
                "initial_accumulator_value": c.initial_accumulator_value, "eps": c.eps, "maximize": c.maximize})
            }
            Self::Rmsprop(c) => {
                json!({"lr": c.lr, "alpha": c.alpha, "eps": c.eps, "weight_decay": c.weight_decay,
                "momentum": c.momentum, "centered": c.centered, "maximize": c.maximize})
            }
            Self::Adam(c) => json!({"lr": c.lr, "betas": [c.betas.0, c.betas.1], "eps": c.eps,
                "weight_decay": c.weight_decay, "amsgrad": c.amsgrad, "maximize": c.maximize,
                "decoupled_weight_decay": c.decoupled_weight_decay}),
            Self::Adadelta(c) => {
                json!({"lr": c.lr, "rho": c.rho, "eps": c.eps, "weight_decay": c.weight_decay,
                "maximize": c.maximize})
            }
            Self::Nadam(c) => json!({"lr": c.lr, "betas": [c.betas.0, c.betas.1], "eps": c.eps,
                "weight_decay": c.weight_decay, "momentum_decay": c.momentum_decay,
                "decoupled_weight_decay": c.decoupled_weight_decay, "maximize": c.maximize}),
            Self::Adamax(c) => json!({"lr": c.lr, "betas": [c.betas.0, c.betas.1], "eps": c.eps,
                "weight_decay": c.weight_decay, "maximize": c.maximize}),
            Self::Radam(c) => json!({"lr": c.lr, "betas": [c.betas.0, c.betas.1], "eps": c.eps,
                "weight_decay": c.weight_decay, "decoupled_weight_decay": c.decoupled_weight_decay,
                "maximize": c.maximize}),
        }
    }

    /// Ends a step whose kernel has been issued.
    pub fn end_step(&self, host: &mut HostState) {
        host.momentum_buffer_ready = true;
    }
}

/// Checks a learning rate given to `set_lr`.
pub(crate) fn validate_lr(optimizer: &'static str, lr: f64) -> Result<()> {
    validate::non_negative(optimizer, "lr", lr)
}
