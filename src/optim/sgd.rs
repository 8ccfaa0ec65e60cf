//! SGD with momentum, dampening, Nesterov, L2 weight decay and maximize.
//!
//! Mirror of `shaders/sgd.wgsl`.

use super::algorithm::{flag, sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::validate::{finite, non_negative};
use super::WordClass;
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

    fn uniform(&self, host: &HostState) -> SgdUniform {
        let first = !host.state_written;
        SgdUniform {
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

/// Per-step uniform of `shaders/sgd.wgsl` (`struct StepUniform`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdUniform {
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

impl Algorithm for SgdConfig {
    type Uniform = SgdUniform;
    const ID: &'static str = "sgd";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "sgd.wgsl",
        source: include_str!("../../shaders/sgd.wgsl"),
        slots: &["momentum_buffer"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["SGD"];
    // lr, sign, wd, buffer_keep, grad_into_buffer, momentum, pad x2
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, OfStep as T};
        Some(&[K, K, K, T, T, K, K, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![
            ("sgd", Self::default()),
            (
                "sgd_momentum",
                Self {
                    momentum: 0.9,
                    ..Self::default()
                },
            ),
        ]
    }

    fn class_name(&self) -> &'static str {
        Self::NAME
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn with_lr(self, lr: f64) -> Self {
        Self { lr, ..self }
    }

    fn validate(&self) -> Result<()> {
        SgdConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        if self.momentum != 0.0 {
            vec!["momentum_buffer"]
        } else {
            vec![]
        }
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, false)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("HAS_MOMENTUM", flag(self.momentum != 0.0)),
            ("NESTEROV", flag(self.nesterov)),
        ]
    }

    fn begin_step(&self, host: &mut HostState) -> SgdUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
            "weight_decay": self.weight_decay, "nesterov": self.nesterov, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            momentum: h.num("momentum", d.momentum)?,
            dampening: h.num("dampening", d.dampening)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            nesterov: h.flag("nesterov", d.nesterov)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &SgdUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        let momentum = self.momentum != 0.0;
        shaped!(
            u.weight_decay,
            1.0,
            sgd_loop(u, momentum, self.nesterov, p, g, s)
        )
    }
}

#[inline(always)]
fn sgd_loop<const L2: bool, const DECAY: bool>(
    h: &SgdUniform,
    has_momentum: bool,
    nesterov: bool,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    if !has_momentum {
        for i in 0..n {
            let d = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            p[i] -= h.lr * d;
        }
        return;
    }
    let buf = &mut s[0][..n];
    for i in 0..n {
        let d = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let b = h.buffer_keep * buf[i] + h.grad_into_buffer * d;
        buf[i] = b;
        let d = if nesterov { d + h.momentum * b } else { b };
        p[i] -= h.lr * d;
    }
}
