//! NAdam. Mirror of `shaders/nadam.wgsl`.

use super::adam::{validate_adam_like, weight_decay_split};
use super::sgd::sign;
use super::validate::non_negative;
use super::HostState;
use crate::error::Result;

/// NAdam (PyTorch `torch.optim.NAdam`).
///
/// ```text
/// g = -g if maximize;  decoupled: p = p * (1 - lr * wd)  else g = g + wd * p
/// mu      = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))         host, f64
/// mu_next = b1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
/// mu_product = mu_product * mu                                  host scalar state
/// m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
/// denom = sqrt(v / bc2) + eps
/// p = p - lr * (1 - mu) / (1 - mu_product) * g / denom
/// p = p - lr * mu_next / (1 - mu_product * mu_next) * m / denom
/// ```
/// The f32 paths (kernel, fast CPU path) divide once: `inv = 1 / (sqrt(v) * inv_sqrt_bc2 +
/// eps)` with `inv_sqrt_bc2 = 1 / sqrt(bc2)` from the host in f64, then multiply by `inv`
/// (the same value up to rounding; three divisions cost lavapipe ~10% of this kernel).
///
/// State: `exp_avg`, `exp_avg_sq` (0), and the scalar `mu_product` (1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NadamConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added after the root (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Momentum decay psi (default 4e-3).
    pub momentum_decay: f64,
    /// Decoupled weight decay as in AdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for NadamConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl NadamConfig {
    pub(crate) const NAME: &'static str = "NAdam";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(Self::NAME, self.lr, self.betas, self.eps, self.weight_decay)?;
        non_negative(Self::NAME, "momentum_decay", self.momentum_decay)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    /// mu_t of the NAdam momentum schedule.
    pub(crate) fn mu(&self, t: u64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }

    /// Called once per step, after the step counter was incremented: advances mu_product.
    pub(crate) fn advance(&self, host: &mut HostState) {
        host.mu_product *= self.mu(host.step);
    }

    pub(crate) fn hyper(&self, host: &HostState) -> NadamHyper {
        let (b1, b2) = self.betas;
        let t = host.step;
        let mu = self.mu(t);
        let mu_next = self.mu(t + 1);
        let bc2 = 1.0 - b2.powi(t as i32);
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        NadamHyper {
            grad_sign: sign(self.maximize),
            weight_decay: l2,
            decay_factor: decay,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps as f32,
            grad_coef: (host.lr * (1.0 - mu) / (1.0 - host.mu_product)) as f32,
            avg_coef: (host.lr * mu_next / (1.0 - host.mu_product * mu_next)) as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/nadam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NadamHyper {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay (0 when decoupled).
    pub weight_decay: f32,
    /// 1 - lr * wd when decoupled, else 1.
    pub decay_factor: f32,
    /// 1 - beta1.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2.
    pub one_minus_beta2: f32,
    /// 1 / sqrt(1 - beta2^t).
    pub inv_sqrt_bc2: f32,
    /// eps.
    pub eps: f32,
    /// lr * (1 - mu) / (1 - mu_product).
    pub grad_coef: f32,
    /// lr * mu_next / (1 - mu_product * mu_next).
    pub avg_coef: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}
