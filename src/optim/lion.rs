//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as
//! `lion-pytorch` 0.2.5 implements it. Mirror of `shaders/lion.wgsl`.

use super::algorithm::{Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{decay, shaped};
use super::validate::{finite, require_positive, unit_interval};
use super::WordClass;
use crate::error::Result;

/// Lion (`lion_pytorch.Lion`): the sign of an interpolated momentum, with decoupled weight
/// decay.
///
/// ```text
/// p = p * (1 - lr * weight_decay)               (decoupled_weight_decay: 1 - lr / lr0 * wd)
/// c = beta1 * m + (1 - beta1) * g
/// p = p - lr * sign(c)                          sign(0) = 0: a zero update stays zero
/// m = beta2 * m + (1 - beta2) * g
/// ```
/// State: `exp_avg` (starts at 0). `lr0` is the constructor's lr (the package's `_init_lr`).
/// Like the package, there is no `maximize`; the constructor requires lr > 0 (a later lr of 0
/// is allowed) and betas in [0, 1]. Unlike the package, a non-finite weight decay is refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LionConfig {
    /// Learning rate (default 1e-4).
    pub lr: f64,
    /// (beta1, beta2): interpolation of the update, decay of the momentum (default
    /// (0.9, 0.99)).
    pub betas: (f64, f64),
    /// Decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// Scale the decay by lr / lr0 instead of lr (the package's `decoupled_weight_decay`,
    /// default false).
    pub decoupled_weight_decay: bool,
}

impl Default for LionConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }
}

impl LionConfig {
    const NAME: &'static str = "Lion";

    fn uniform(&self, host: &HostState) -> LionUniform {
        let (b1, b2) = self.betas;
        let decay_rate = if self.decoupled_weight_decay {
            host.lr / self.lr * self.weight_decay
        } else {
            host.lr * self.weight_decay
        };
        LionUniform {
            lr: host.lr as f32,
            decay_factor: (1.0 - decay_rate) as f32,
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/lion.wgsl` (`struct StepUniform`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LionUniform {
    /// Learning rate of this step.
    pub lr: f32,
    /// 1 - lr * weight_decay (or 1 - lr / lr0 * weight_decay).
    pub decay_factor: f32,
    /// beta1.
    pub beta1: f32,
    /// 1 - beta1.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2.
    pub one_minus_beta2: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}

impl Algorithm for LionConfig {
    type Uniform = LionUniform;
    const ID: &'static str = "lion";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "lion.wgsl",
        source: include_str!("../../shaders/lion.wgsl"),
        slots: &["exp_avg"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Lion"];
    // lr, decay_factor, b1, 1-b1, b2, 1-b2, pad x2: nothing depends on t.
    const WORD_CLASSES: Option<&'static [WordClass]> = Some(&[WordClass::Keep; 8]);

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![(
            "lion",
            Self {
                weight_decay: 0.01,
                ..Self::default()
            },
        )]
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
        require_positive(Self::NAME, "lr", self.lr)?;
        unit_interval(Self::NAME, "beta1", self.betas.0)?;
        unit_interval(Self::NAME, "beta2", self.betas.1)?;
        finite(Self::NAME, "weight_decay", self.weight_decay)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg"]
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(false, self.weight_decay, true)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> LionUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1],
            "weight_decay": self.weight_decay,
            "decoupled_weight_decay": self.decoupled_weight_decay})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        // `use_triton` selects the package's Triton kernel: the same update.
        h.accept(&["use_triton"]);
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            decoupled_weight_decay: h.flag("decoupled_weight_decay", d.decoupled_weight_decay)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &LionUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(0.0, u.decay_factor, lion_loop(u, p, g, s))
    }
}

/// WGSL's `sign`: -1, 0 or 1 (0 for ±0; NaN passes through as NaN).
#[inline(always)]
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

#[inline(always)]
fn lion_loop<const L2: bool, const DECAY: bool>(
    h: &LionUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let (g, m) = (&g[..n], &mut s[0][..n]);
    for i in 0..n {
        let c = h.beta1 * m[i] + h.one_minus_beta1 * g[i];
        m[i] = h.beta2 * m[i] + h.one_minus_beta2 * g[i];
        p[i] = decay::<DECAY>(p[i], h.decay_factor) - h.lr * sign(c);
    }
}
