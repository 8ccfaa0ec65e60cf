//! Adamax. Mirror of `shaders/adamax.wgsl`.

use super::adam::validate_adam_like;
use super::algorithm::{sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::WordClass;
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

    fn uniform(&self, host: &HostState) -> AdamaxUniform {
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(host.step as i32);
        AdamaxUniform {
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
pub struct AdamaxUniform {
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

impl Algorithm for AdamaxConfig {
    type Uniform = AdamaxUniform;
    const ID: &'static str = "adamax";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "adamax.wgsl",
        source: include_str!("../../shaders/adamax.wgsl"),
        slots: &["exp_avg", "exp_inf"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Adamax"];
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, LrTimes as L};
        // sign, wd, 1-b1, b2, eps, step_size, pad x2
        Some(&[K, K, K, K, K, L, K, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![("adamax", Self::default())]
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
        AdamaxConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_inf"]
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, false)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> AdamaxUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &AdamaxUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(u.weight_decay, 1.0, adamax_loop(u, p, g, s))
    }
}

#[inline(always)]
fn adamax_loop<const L2: bool, const DECAY: bool>(
    h: &AdamaxUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    let [m, u] = s else {
        unreachable!("Adamax has two states")
    };
    let (m, u) = (&mut m[..n], &mut u[..n]);
    for i in 0..n {
        let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
        let ui = (h.beta2 * u[i]).max(gi.abs() + h.eps);
        m[i] = mi;
        u[i] = ui;
        p[i] -= h.step_size * mi / ui;
    }
}
