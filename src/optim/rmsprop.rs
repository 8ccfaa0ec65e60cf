//! RMSprop (plain, centered, with momentum). Mirror of `shaders/rmsprop.wgsl`.

use super::algorithm::{flag, sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::validate::non_negative;
use super::WordClass;
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

    fn uniform(&self, host: &HostState) -> RmspropUniform {
        RmspropUniform {
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
pub struct RmspropUniform {
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

impl Algorithm for RmspropConfig {
    type Uniform = RmspropUniform;
    const ID: &'static str = "rmsprop";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "rmsprop.wgsl",
        source: include_str!("../../shaders/rmsprop.wgsl"),
        slots: &["square_avg", "momentum_buffer", "grad_avg"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["RMSprop"];
    const WORD_CLASSES: Option<&'static [WordClass]> = Some(&[WordClass::Keep; 8]);

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![
            ("rmsprop", Self::default()),
            (
                "rmsprop_centered_momentum",
                Self {
                    centered: true,
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
        RmspropConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        let mut names = vec!["square_avg"];
        if self.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if self.centered {
            names.push("grad_avg");
        }
        names
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, false)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("CENTERED", flag(self.centered)),
            ("HAS_MOMENTUM", flag(self.momentum > 0.0)),
        ]
    }

    fn begin_step(&self, host: &mut HostState) -> RmspropUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "alpha": self.alpha, "eps": self.eps,
            "weight_decay": self.weight_decay, "momentum": self.momentum,
            "centered": self.centered, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            alpha: h.num("alpha", d.alpha)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            momentum: h.num("momentum", d.momentum)?,
            centered: h.flag("centered", d.centered)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &RmspropUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        let momentum = self.momentum > 0.0;
        shaped!(
            u.weight_decay,
            1.0,
            rmsprop_loop(u, self.centered, momentum, p, g, s)
        )
    }
}

#[inline(always)]
fn rmsprop_loop<const L2: bool, const DECAY: bool>(
    h: &RmspropUniform,
    centered: bool,
    has_momentum: bool,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    match (s, centered, has_momentum) {
        ([v], false, false) => {
            let v = &mut v[..n];
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                v[i] = vi;
                p[i] -= h.lr * gi / (vi.sqrt() + h.eps);
            }
        }
        ([v, ga], true, false) => {
            let (v, ga) = (&mut v[..n], &mut ga[..n]);
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                let a = ga[i] + h.one_minus_alpha * (gi - ga[i]);
                v[i] = vi;
                ga[i] = a;
                p[i] -= h.lr * gi / ((vi - a * a).sqrt() + h.eps);
            }
        }
        ([v, buf], false, true) => {
            let (v, buf) = (&mut v[..n], &mut buf[..n]);
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                v[i] = vi;
                let b = h.momentum * buf[i] + gi / (vi.sqrt() + h.eps);
                buf[i] = b;
                p[i] -= h.lr * b;
            }
        }
        ([v, buf, ga], true, true) => {
            let (v, buf, ga) = (&mut v[..n], &mut buf[..n], &mut ga[..n]);
            for i in 0..n {
                let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                let a = ga[i] + h.one_minus_alpha * (gi - ga[i]);
                v[i] = vi;
                ga[i] = a;
                let b = h.momentum * buf[i] + gi / ((vi - a * a).sqrt() + h.eps);
                buf[i] = b;
                p[i] -= h.lr * b;
            }
        }
        // The state tensors are the ones `state_names` lists for these options.
        _ => unreachable!("state count matches the RMSprop options"),
    }
}
