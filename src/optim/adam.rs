//! Adam and AdamW (with AMSGrad). Mirror of `shaders/adam.wgsl`.

use super::sgd::sign;
use super::validate::{beta, non_negative};
use super::HostState;
use crate::error::Result;

/// Adam and AdamW (PyTorch `torch.optim.Adam` / `torch.optim.AdamW`).
///
/// ```text
/// g = -g if maximize
/// if decoupled_weight_decay (AdamW): p = p * (1 - lr * weight_decay)
/// else (Adam, L2):                   g = g + weight_decay * p
/// m = m + (1 - b1) * (g - m)
/// v = b2 * v + (1 - b2) * g * g
/// bc1 = 1 - b1^t;  bc2 = 1 - b2^t               host, f64
/// vv = max(vmax, v), stored as vmax  if amsgrad  else v
/// p = p - (lr / bc1) * m / (sqrt(vv) / sqrt(bc2) + eps)
/// ```
/// State: `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq` (amsgrad), all starting at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added after the bias-corrected root (default 1e-8).
    pub eps: f64,
    /// Weight decay (Adam default 0, AdamW default 1e-2).
    pub weight_decay: f64,
    /// Decoupled weight decay, i.e. AdamW (default false for Adam).
    pub decoupled_weight_decay: bool,
    /// AMSGrad: divide by the running maximum of the raw second moment (default false).
    pub amsgrad: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl AdamConfig {
    pub(crate) const NAME: &'static str = "Adam";

    /// PyTorch's `AdamW` defaults: Adam with decoupled weight decay 1e-2.
    pub fn adamw() -> Self {
        Self {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "AdamW"
        } else {
            Self::NAME
        }
    }

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(
            self.name(),
            self.lr,
            self.betas,
            self.eps,
            self.weight_decay,
        )
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["exp_avg", "exp_avg_sq"];
        if self.amsgrad {
            names.push("max_exp_avg_sq");
        }
        names
    }

    pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![("AMSGRAD", f64::from(u8::from(self.amsgrad)))]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> AdamHyper {
        let (b1, b2) = self.betas;
        let t = host.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        AdamHyper {
            grad_sign: sign(self.maximize),
            weight_decay: l2,
            decay_factor: decay,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            step_size: (host.lr / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps as f32,
            _pad: [0.0; 3],
        }
    }
}

/// Validation shared by Adam, AdamW, NAdam, Adamax and RAdam.
pub(crate) fn validate_adam_like(
    name: &'static str,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
) -> Result<()> {
    non_negative(name, "lr", lr)?;
    non_negative(name, "eps", eps)?;
    beta(name, "beta1", betas.0)?;
    beta(name, "beta2", betas.1)?;
    non_negative(name, "weight_decay", weight_decay)
}

/// `(l2, decay_factor)`: the L2 coefficient added to g and the factor p is multiplied by.
/// Exactly one of them is active; the other is the identity (0 or 1).
pub(crate) fn weight_decay_split(decoupled: bool, weight_decay: f64, lr: f64) -> (f32, f32) {
    if decoupled {
        (0.0, (1.0 - lr * weight_decay) as f32)
    } else {
        (weight_decay as f32, 1.0)
    }
}

/// Per-step uniform of `shaders/adam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamHyper {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay (0 for AdamW).
    pub weight_decay: f32,
    /// 1 - lr * weight_decay for AdamW, 1 for Adam.
    pub decay_factor: f32,
    /// 1 - beta1.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2.
    pub one_minus_beta2: f32,
    /// lr / (1 - beta1^t).
    pub step_size: f32,
    /// 1 / sqrt(1 - beta2^t).
    pub inv_sqrt_bc2: f32,
    /// eps.
    pub eps: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 3],
}
