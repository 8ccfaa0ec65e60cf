//! Adagrad. Mirror of `shaders/adagrad.wgsl`.

use super::sgd::sign;
use super::validate::non_negative;
use super::HostState;
use crate::error::Result;

/// Adagrad (PyTorch `torch.optim.Adagrad`).
///
/// ```text
/// g = -g if maximize;  g = g + weight_decay * p
/// clr = lr / (1 + (t - 1) * lr_decay)
/// sum = sum + g * g
/// p = p - clr * g / (sqrt(sum) + eps)          eps outside the sqrt
/// ```
/// State: `sum`, starting at `initial_accumulator_value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay per step (default 0).
    pub lr_decay: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Initial value of `sum` (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the square root (default 1e-10).
    pub eps: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl AdagradConfig {
    pub(crate) const NAME: &'static str = "Adagrad";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        non_negative(Self::NAME, "lr_decay", self.lr_decay)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        non_negative(
            Self::NAME,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        non_negative(Self::NAME, "eps", self.eps)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        vec!["sum"]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> AdagradHyper {
        let clr = host.lr / (1.0 + (host.step as f64 - 1.0) * self.lr_decay);
        AdagradHyper {
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            clr: clr as f32,
            eps: self.eps as f32,
        }
    }
}

/// Per-step uniform of `shaders/adagrad.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdagradHyper {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Decayed learning rate of this step.
    pub clr: f32,
    /// eps.
    pub eps: f32,
}
