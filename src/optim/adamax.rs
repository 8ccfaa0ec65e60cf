//! Adamax. Mirror of `shaders/adamax.wgsl`.

use super::adam::validate_adam_like;
use super::sgd::sign;
use super::HostState;
use crate::error::Result;

/// Adamax (PyTorch `torch.optim.Adamax`), Adam with the infinity norm.
///
/// ```text
/// g = -g if maximize;  g = g + weight_decay * p
/// m = m + (1 - b1) * (g - m)
/// u = max(b2 * u, |g| + eps)                  eps inside the max
/// p = p - (lr / (1 - b1^t)) * m / u
/// ```
/// State: `exp_avg` and `exp_inf` (u), both starting at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamaxConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to |g| (default 1e-8).
    pub eps: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdamaxConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdamaxConfig {
    pub(crate) const NAME: &'static str = "Adamax";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(Self::NAME, self.lr, self.betas, self.eps, self.weight_decay)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_inf"]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> AdamaxHyper {
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(host.step as i32);
        AdamaxHyper {
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            eps: self.eps as f32,
            step_size: (host.lr / bc1) as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/adamax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamaxHyper {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// 1 - beta1.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// eps.
    pub eps: f32,
    /// lr / (1 - beta1^t).
    pub step_size: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}
