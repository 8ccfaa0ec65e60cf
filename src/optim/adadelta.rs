//! Adadelta. Mirror of `shaders/adadelta.wgsl`.

use super::algorithm::{sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::validate::{non_negative, unit_interval};
use super::WordClass;
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

    fn uniform(&self, host: &HostState) -> AdadeltaUniform {
        AdadeltaUniform {
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
pub struct AdadeltaUniform {
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

impl Algorithm for AdadeltaConfig {
    type Uniform = AdadeltaUniform;
    const ID: &'static str = "adadelta";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "adadelta.wgsl",
        source: include_str!("../../shaders/adadelta.wgsl"),
        slots: &["square_avg", "acc_delta"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Adadelta"];
    const WORD_CLASSES: Option<&'static [WordClass]> = Some(&[WordClass::Keep; 8]);

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![("adadelta", Self::default())]
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
        AdadeltaConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["square_avg", "acc_delta"]
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

    fn begin_step(&self, host: &mut HostState) -> AdadeltaUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "rho": self.rho, "eps": self.eps,
            "weight_decay": self.weight_decay, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            rho: h.num("rho", d.rho)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &AdadeltaUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(u.weight_decay, 1.0, adadelta_loop(u, p, g, s))
    }
}

#[inline(always)]
fn adadelta_loop<const L2: bool, const DECAY: bool>(
    h: &AdadeltaUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    let [v, u] = s else {
        unreachable!("Adadelta has two states")
    };
    let (v, u) = (&mut v[..n], &mut u[..n]);
    for i in 0..n {
        let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let vi = h.rho * v[i] + h.one_minus_rho * gi * gi;
        let delta = ((u[i] + h.eps) / (vi + h.eps)).sqrt() * gi;
        u[i] = h.rho * u[i] + h.one_minus_rho * delta * delta;
        v[i] = vi;
        p[i] -= h.lr * delta;
    }
}
