//! RAdam. Mirror of `shaders/radam.wgsl`.

use super::adam::{validate_adam_like, weight_decay_split};
use super::sgd::sign;
use super::HostState;
use crate::error::Result;

/// RAdam (PyTorch `torch.optim.RAdam`).
///
/// ```text
/// g = -g if maximize;  decoupled: p = p * (1 - lr * wd)  else g = g + wd * p
/// m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
/// rho_inf = 2 / (1 - b2) - 1;   rho_t = rho_inf - 2 t b2^t / bc2        host, f64
/// if rho_t > 5:
///     r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
///     p = p - lr * (m / bc1) * r * sqrt(bc2) / (sqrt(v) + eps)
/// else:
///     p = p - lr * (m / bc1)
/// ```
/// The branch depends only on t and is decided on the host.
/// State: `exp_avg`, `exp_avg_sq` (0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RadamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the uncorrected root (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decoupled weight decay as in AdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RadamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl RadamConfig {
    pub(crate) const NAME: &'static str = "RAdam";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(Self::NAME, self.lr, self.betas, self.eps, self.weight_decay)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> RadamHyper {
        let (b1, b2) = self.betas;
        let t = host.step as f64;
        let bc1 = 1.0 - b1.powi(host.step as i32);
        let bc2 = 1.0 - b2.powi(host.step as i32);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powi(host.step as i32) / bc2;
        let rectified = rho_t > 5.0;
        let adaptive = if rectified {
            let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            host.lr * r * bc2.sqrt() / bc1
        } else {
            0.0
        };
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        RadamHyper {
            grad_sign: sign(self.maximize),
            weight_decay: l2,
            decay_factor: decay,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: self.eps as f32,
            rectified: u32::from(rectified),
            plain_step_size: (host.lr / bc1) as f32,
            adaptive_step_size: adaptive as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/radam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RadamHyper {
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
    /// eps.
    pub eps: f32,
    /// 1 when rho_t > 5 (rectified, adaptive step), else 0.
    pub rectified: u32,
    /// lr / bc1 (unrectified branch).
    pub plain_step_size: f32,
    /// lr * r * sqrt(bc2) / bc1 (rectified branch).
    pub adaptive_step_size: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}
