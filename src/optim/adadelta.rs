//! Adadelta. Mirror of `shaders/adadelta.wgsl`.

use super::sgd::sign;
use super::validate::{non_negative, unit_interval};
use super::HostState;
use crate::error::Result;

/// Adadelta (PyTorch `torch.optim.Adadelta`).
///
/// ```text
/// g = -g if maximize;  g = g + weight_decay * p
/// v = rho * v + (1 - rho) * g * g
/// delta = sqrt(u + eps) / sqrt(v + eps) * g       eps inside both roots
///         (f32 paths: sqrt((u + eps) / (v + eps)) * g, one root fewer, equal up to rounding)
/// u = rho * u + (1 - rho) * delta * delta
/// p = p - lr * delta
/// ```
/// State: `square_avg` (v, 0) and `acc_delta` (u, 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdadeltaConfig {
    /// Scale of the applied delta (default 1.0).
    pub lr: f64,
    /// Decay of both running averages (default 0.9).
    pub rho: f64,
    /// Added inside both roots (default 1e-6).
    pub eps: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdadeltaConfig {
    pub(crate) const NAME: &'static str = "Adadelta";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        unit_interval(Self::NAME, "rho", self.rho)?;
        non_negative(Self::NAME, "eps", self.eps)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        vec!["square_avg", "acc_delta"]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> AdadeltaHyper {
        AdadeltaHyper {
            lr: host.lr as f32,
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/adadelta.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdadeltaHyper {
    /// Learning rate of this step.
    pub lr: f32,
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// rho.
    pub rho: f32,
    /// 1 - rho.
    pub one_minus_rho: f32,
    /// eps.
    pub eps: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}
