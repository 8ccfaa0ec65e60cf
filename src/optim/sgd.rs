//! SGD with momentum, dampening, Nesterov, L2 weight decay and maximize.
//!
//! Mirror of `shaders/sgd.wgsl`.

use super::validate::{finite, non_negative};
use super::HostState;
use crate::error::{Error, Result};

/// Stochastic gradient descent (PyTorch `torch.optim.SGD`).
///
/// ```text
/// g = -g                                   if maximize
/// g = g + weight_decay * p
/// if momentum != 0:
///     buf = g                              on the first step
///     buf = momentum * buf + (1 - dampening) * g   afterwards
///     g = g + momentum * buf               if nesterov, else g = buf
/// p = p - lr * g
/// ```
/// State: `momentum_buffer` (only when `momentum != 0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Dampening of the gradient entering the momentum buffer (default 0).
    pub dampening: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
    /// Maximize the objective instead (default false).
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

impl SgdConfig {
    pub(crate) const NAME: &'static str = "SGD";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        non_negative(Self::NAME, "momentum", self.momentum)?;
        finite(Self::NAME, "dampening", self.dampening)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::InvalidCombination {
                optimizer: Self::NAME,
                reason: "nesterov momentum requires a momentum > 0 and zero dampening",
            });
        }
        Ok(())
    }

    pub(crate) fn state_names(&self) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("HAS_MOMENTUM", f64::from(u8::from(self.momentum != 0.0))),
            ("NESTEROV", f64::from(u8::from(self.nesterov))),
        ]
    }

    pub(crate) fn hyper(&self, host: &HostState) -> SgdHyper {
        let first = !host.momentum_buffer_ready;
        SgdHyper {
            lr: host.lr as f32,
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            // On the first step the buffer is a copy of g: 0 * buf + 1 * g (the buffer starts
            // zeroed, so no stale value leaks in).
            buffer_keep: if first { 0.0 } else { self.momentum as f32 },
            grad_into_buffer: if first {
                1.0
            } else {
                (1.0 - self.dampening) as f32
            },
            momentum: self.momentum as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/sgd.wgsl` (`struct Hyper`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdHyper {
    /// Learning rate of this step.
    pub lr: f32,
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Factor on the old momentum buffer (0 on the first step).
    pub buffer_keep: f32,
    /// Factor on g entering the buffer: 1 - dampening (1 on the first step).
    pub grad_into_buffer: f32,
    /// Momentum factor (Nesterov look-ahead).
    pub momentum: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}

pub(crate) fn sign(maximize: bool) -> f32 {
    if maximize {
        -1.0
    } else {
        1.0
    }
}
