//! RAdam. Mirror of `shaders/radam.wgsl`.

use super::adam::{validate_adam_like, weight_decay_split};
use super::algorithm::{sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{decay, grad_term, shaped};
use super::WordClass;
use crate::error::Result;

/// RAdam (PyTorch `torch.optim.RAdam`).
///
/// ```text
/// g = -g if maximize;  decoupled: p = p * (1 - lr * wd)  else g = g + wd * p
/// m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
/// rho_inf = 2 / (1 - b2) - 1;   rho_t = rho_inf - 2 t b2^t / bc2        host, f64
/// if rho_t > 5:
///     r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
///     p = p - lr * (m / bc1) * r * sqrt(bc2) / (sqrt(v) + eps)
/// else:
///     p = p - lr * (m / bc1)
/// ```
/// The branch depends only on t and is decided on the host.
/// State: `exp_avg`, `exp_avg_sq` (0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RadamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the uncorrected root (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decoupled weight decay as in AdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for RadamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl RadamConfig {
    pub(crate) const NAME: &'static str = "RAdam";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(Self::NAME, self.lr, self.betas, self.eps, self.weight_decay)
    }

    fn uniform(&self, host: &HostState) -> RadamUniform {
        let (b1, b2) = self.betas;
        let t = host.step as f64;
        let bc1 = 1.0 - b1.powi(host.step as i32);
        let bc2 = 1.0 - b2.powi(host.step as i32);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powi(host.step as i32) / bc2;
        let rectified = rho_t > 5.0;
        let adaptive = if rectified {
            let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            host.lr * r * bc2.sqrt() / bc1
        } else {
            0.0
        };
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        RadamUniform {
            grad_sign: sign(self.maximize),
            weight_decay: l2,
            decay_factor: decay,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: self.eps as f32,
            rectified: u32::from(rectified),
            plain_step_size: (host.lr / bc1) as f32,
            adaptive_step_size: adaptive as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/radam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RadamUniform {
    /// -1 when maximizing, else 1.
    pub grad_sign: f32,
    /// L2 weight decay (0 when decoupled).
    pub weight_decay: f32,
    /// 1 - lr * wd when decoupled, else 1.
    pub decay_factor: f32,
    /// 1 - beta1.
    pub one_minus_beta1: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2.
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// 1 when rho_t > 5 (rectified, adaptive step), else 0.
    pub rectified: u32,
    /// lr / bc1 (unrectified branch).
    pub plain_step_size: f32,
    /// lr * r * sqrt(bc2) / bc1 (rectified branch).
    pub adaptive_step_size: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}

impl Algorithm for RadamConfig {
    type Uniform = RadamUniform;
    const ID: &'static str = "radam";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "radam.wgsl",
        source: include_str!("../../shaders/radam.wgsl"),
        slots: &["exp_avg", "exp_avg_sq"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["RAdam"];
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, LrTimes as L, OfStep as T};
        // sign, wd, decay, 1-b1, b2, 1-b2, eps, rectified, plain, adaptive, pad x2
        Some(&[K, K, K, K, K, K, K, T, L, L, K, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![("radam", Self::default())]
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
        RadamConfig::validate(self)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
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
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> RadamUniform {
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "decoupled_weight_decay": self.decoupled_weight_decay,
            "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            decoupled_weight_decay: h.flag("decoupled_weight_decay", d.decoupled_weight_decay)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &RadamUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(u.weight_decay, u.decay_factor, radam_loop(u, p, g, s))
    }
}

#[inline(always)]
fn radam_loop<const L2: bool, const DECAY: bool>(
    h: &RadamUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    let [m, v] = s else {
        unreachable!("RAdam has two states")
    };
    let (m, v) = (&mut m[..n], &mut v[..n]);
    let rectified = h.rectified != 0;
    for i in 0..n {
        let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
        let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let pi = decay::<DECAY>(p[i], h.decay_factor);
        p[i] = if rectified {
            pi - h.adaptive_step_size * mi / (vi.sqrt() + h.eps)
        } else {
            pi - h.plain_step_size * mi
        };
    }
}
