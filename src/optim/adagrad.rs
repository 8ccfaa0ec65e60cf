//! Adagrad. Mirror of `shaders/adagrad.wgsl`.

use super::algorithm::{sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::validate::non_negative;
use super::WordClass;
use crate::error::Result;

/// Adagrad (PyTorch `torch.optim.Adagrad`).
///
/// ```text
/// g = -g if maximize;  g = g + weight_decay * p
/// clr = lr / (1 + (t - 1) * lr_decay)
/// sum = sum + g * g
/// p = p - clr * g / (sqrt(sum) + eps)          eps outside the sqrt
/// ```
/// State: `sum`, starting at `initial_accumulator_value`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay per step (default 0).
    pub lr_decay: f64,
    /// L2 weight decay (default 0).
    pub weight_decay: f64,
    /// Initial value of `sum` (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the square root (default 1e-10).
    pub eps: f64,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

impl AdagradConfig {
    pub(crate) const NAME: &'static str = "Adagrad";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        non_negative(Self::NAME, "lr", self.lr)?;
        non_negative(Self::NAME, "lr_decay", self.lr_decay)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        non_negative(
            Self::NAME,
            "initial_accumulator_value",
            self.initial_accumulator_value,
        )?;
        non_negative(Self::NAME, "eps", self.eps)
    }

    fn uniform(&self, host: &HostState) -> AdagradUniform {
        let clr = host.lr / (1.0 + (host.step as f64 - 1.0) * self.lr_decay);
        AdagradUniform {
            grad_sign: sign(self.maximize),
            weight_decay: self.weight_decay as f32,
            clr: clr as f32,
            eps: self.eps as f32,
        }
    }
}

/// Per-step uniform of `shaders/adagrad.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdagradUniform {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Decayed learning rate of this step.
    pub clr: f32,
    /// eps.
    pub eps: f32,
}

impl Algorithm for AdagradConfig {
    type Uniform = AdagradUniform;
    const ID: &'static str = "adagrad";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "adagrad.wgsl",
        source: include_str!("../../shaders/adagrad.wgsl"),
        slots: &["sum"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Adagrad"];
    // sign, wd, clr, eps
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, LrTimes as L};
        Some(&[K, K, L, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![("adagrad", Self::default())]
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
        AdagradConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["sum"]
    }

    fn initial_state_value(&self, name: &str) -> f64 {
        match name {
            "sum" => self.initial_accumulator_value,
            _ => 0.0,
        }
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, false)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> AdagradUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
            "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps,
            "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            lr_decay: h.num("lr_decay", d.lr_decay)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            initial_accumulator_value: h
                .num("initial_accumulator_value", d.initial_accumulator_value)?,
            eps: h.num("eps", d.eps)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &AdagradUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(u.weight_decay, 1.0, adagrad_loop(u, p, g, s))
    }
}

#[inline(always)]
fn adagrad_loop<const L2: bool, const DECAY: bool>(
    h: &AdagradUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let (g, sum) = (&g[..n], &mut s[0][..n]);
    for i in 0..n {
        let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let si = sum[i] + gi * gi;
        sum[i] = si;
        p[i] -= h.clr * gi / (si.sqrt() + h.eps);
    }
}
