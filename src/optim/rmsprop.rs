//! RMSprop (plain, centered, with momentum). Mirror of `shaders/rmsprop.wgsl`.

use super::sgd::sign;
use super::validate::non_negative;
use super::HostState;
use crate::error::Result;

/// RMSprop (PyTorch `torch.optim.RMSprop`).
///
/// ```text
/// g = -g if maximize;  g = g + weight_decay * p
/// v = alpha * v + (1 - alpha) * g * g
/// if centered: ga = ga + (1 - alpha) * (g - ga);  avg = sqrt(v - ga * ga) + eps
/// else:        avg = sqrt(v) + eps                 eps outside the sqrt
/// if momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
/// else:            p = p - lr * g / avg
/// ```
/// State: `square_avg` (0), `grad_avg` (0, centered), `momentum_buffer` (0, momentum > 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmspropConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant (default 0.99).
    pub alpha: f64,
    /// Added to the root (default 1e-8).
    pub eps: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalise by the estimated variance instead of the raw second moment (default false).
    pub centered: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RmspropConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl RmspropConfig {
    pub(crate) const NAME: &'static str = "RMSprop";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        non_negative(Self::NAME, "eps", self.eps)?;
        non_negative(Self::NAME, "momentum", self.momentum)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        non_negative(Self::NAME, "alpha", self.alpha)
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["square_avg"];
        if self.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if self.centered {
            names.push("grad_avg");
        }
        names
    }

    pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("CENTERED", f64::from(u8::from(self.centered))),
            ("HAS_MOMENTUM", f64::from(u8::from(self.momentum > 0.0))),
        ]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> RmspropHyper {
        RmspropHyper {
            lr: host.lr as f32,
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            momentum: self.momentum as f32,
            _pad: 0.0,
        }
    }
}

/// Per-step uniform of `shaders/rmsprop.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RmspropHyper {
    /// Learning rate of this step.
    pub lr: f32,
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// alpha.
    pub alpha: f32,
    /// 1 - alpha.
    pub one_minus_alpha: f32,
    /// eps.
    pub eps: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// Padding to 16 bytes.
    pub _pad: f32,
}
