//! Adam and AdamW (with AMSGrad). Mirror of `shaders/adam.wgsl`.

use super::algorithm::{flag, sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{decay, grad_term, shaped};
use super::validate::{beta, non_negative};
use super::WordClass;
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

    fn class(&self) -> &'static str {
        if self.decoupled_weight_decay {
            "AdamW"
        } else {
            Self::NAME
        }
    }

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(
            self.class(),
            self.lr,
            self.betas,
            self.eps,
            self.weight_decay,
        )
    }

    fn uniform(&self, host: &HostState) -> AdamUniform {
        let (b1, b2) = self.betas;
        let t = host.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        AdamUniform {
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
pub struct AdamUniform {
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

impl Algorithm for AdamConfig {
    type Uniform = AdamUniform;
    const ID: &'static str = "adam";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "adam.wgsl",
        source: include_str!("../../shaders/adam.wgsl"),
        slots: &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Adam", "AdamW"];
    // sign, wd, decay, 1-b1, b2, 1-b2, step_size, inv_sqrt_bc2, eps, pad x3
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, LrTimes as L, OfStep as T};
        Some(&[K, K, K, K, K, K, L, T, K, K, K, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![
            ("adam", Self::default()),
            ("adamw", Self::adamw()),
            (
                "amsgrad",
                Self {
                    amsgrad: true,
                    ..Self::default()
                },
            ),
        ]
    }

    fn class_name(&self) -> &'static str {
        self.class()
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn with_lr(self, lr: f64) -> Self {
        Self { lr, ..self }
    }

    fn validate(&self) -> Result<()> {
        AdamConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["exp_avg", "exp_avg_sq"];
        if self.amsgrad {
            names.push("max_exp_avg_sq");
        }
        names
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(
            self.maximize,
            self.weight_decay,
            self.decoupled_weight_decay,
        )
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![("AMSGRAD", flag(self.amsgrad))]
    }

    fn begin_step(&self, host: &mut HostState) -> AdamUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "amsgrad": self.amsgrad, "maximize": self.maximize,
            "decoupled_weight_decay": self.decoupled_weight_decay})
    }

    fn from_hparams(class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = if class == "AdamW" {
            Self::adamw()
        } else {
            Self::default()
        };
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            // torch.optim.AdamW is always decoupled (its `decoupled_weight_decay` entry may
            // read false or be absent).
            decoupled_weight_decay: h.flag("decoupled_weight_decay", d.decoupled_weight_decay)?
                || class == "AdamW",
            amsgrad: h.flag("amsgrad", d.amsgrad)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &AdamUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(
            u.weight_decay,
            u.decay_factor,
            adam_loop(u, self.amsgrad, p, g, s)
        )
    }
}

#[inline(always)]
fn adam_loop<const L2: bool, const DECAY: bool>(
    h: &AdamUniform,
    amsgrad: bool,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    match s {
        [m, v] if !amsgrad => {
            let (m, v) = (&mut m[..n], &mut v[..n]);
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
                let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
                m[i] = mi;
                v[i] = vi;
                let denom = vi.sqrt() * h.inv_sqrt_bc2 + h.eps;
                p[i] = decay::<DECAY>(p[i], h.decay_factor) - h.step_size * mi / denom;
            }
        }
        [m, v, vmax] => {
            let (m, v, vmax) = (&mut m[..n], &mut v[..n], &mut vmax[..n]);
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
                let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
                m[i] = mi;
                v[i] = vi;
                let vv = vmax[i].max(vi);
                vmax[i] = vv;
                let denom = vv.sqrt() * h.inv_sqrt_bc2 + h.eps;
                p[i] = decay::<DECAY>(p[i], h.decay_factor) - h.step_size * mi / denom;
            }
        }
        // The state tensors are the ones `state_names` lists for these options.
        _ => unreachable!("state count matches the Adam options"),
    }
}
