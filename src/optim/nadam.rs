//! NAdam. Mirror of `shaders/nadam.wgsl`.

use super::adam::{validate_adam_like, weight_decay_split};
use super::algorithm::{sign, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{decay, grad_term, shaped};
use super::validate::non_negative;
use super::WordClass;
use crate::error::Result;

/// Slot of `mu_product` in `HostState::scalars` (`HOST_SCALARS`).
const MU_PRODUCT: usize = 0;

/// NAdam (PyTorch `torch.optim.NAdam`).
///
/// ```text
/// g = -g if maximize;  decoupled: p = p * (1 - lr * wd)  else g = g + wd * p
/// mu      = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))         host, f64
/// mu_next = b1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
/// mu_product = mu_product * mu                                  host scalar state
/// m = m + (1 - b1) * (g - m);   v = b2 * v + (1 - b2) * g * g
/// denom = sqrt(v / bc2) + eps
/// p = p - lr * (1 - mu) / (1 - mu_product) * g / denom
/// p = p - lr * mu_next / (1 - mu_product * mu_next) * m / denom
/// ```
/// The f32 paths (kernel, fast CPU path) divide once: `inv = 1 / (sqrt(v) * inv_sqrt_bc2 +
/// eps)` with `inv_sqrt_bc2 = 1 / sqrt(bc2)` from the host in f64, then multiply by `inv`
/// (the same value up to rounding; three divisions cost lavapipe ~10% of this kernel).
///
/// State: `exp_avg`, `exp_avg_sq` (0), and the scalar `mu_product` (1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NadamConfig {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added after the root (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Momentum decay psi (default 4e-3).
    pub momentum_decay: f64,
    /// Decoupled weight decay as in AdamW (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective (default false).
    pub maximize: bool,
}

impl Default for NadamConfig {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

impl NadamConfig {
    pub(crate) const NAME: &'static str = "NAdam";

    /// Check every hyper-parameter as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        validate_adam_like(Self::NAME, self.lr, self.betas, self.eps, self.weight_decay)?;
        non_negative(Self::NAME, "momentum_decay", self.momentum_decay)
    }

    /// mu_t of the NAdam momentum schedule.
    pub(crate) fn mu(&self, t: u64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t as f64 * self.momentum_decay))
    }

    /// Called once per step, after the step counter was incremented: advances mu_product.
    fn advance(&self, host: &mut HostState) {
        host.scalars[MU_PRODUCT] *= self.mu(host.step);
    }

    fn uniform(&self, host: &HostState) -> NadamUniform {
        let (b1, b2) = self.betas;
        let t = host.step;
        let mu = self.mu(t);
        let mu_next = self.mu(t + 1);
        let bc2 = 1.0 - b2.powi(t as i32);
        let (l2, decay) =
            weight_decay_split(self.decoupled_weight_decay, self.weight_decay, host.lr);
        NadamUniform {
            grad_sign: sign(self.maximize),
            weight_decay: l2,
            decay_factor: decay,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.eps as f32,
            grad_coef: (host.lr * (1.0 - mu) / (1.0 - host.scalars[MU_PRODUCT])) as f32,
            avg_coef: (host.lr * mu_next / (1.0 - host.scalars[MU_PRODUCT] * mu_next)) as f32,
            _pad: [0.0; 2],
        }
    }
}

/// Per-step uniform of `shaders/nadam.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NadamUniform {
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
    /// 1 / sqrt(1 - beta2^t).
    pub inv_sqrt_bc2: f32,
    /// eps.
    pub eps: f32,
    /// lr * (1 - mu) / (1 - mu_product).
    pub grad_coef: f32,
    /// lr * mu_next / (1 - mu_product * mu_next).
    pub avg_coef: f32,
    /// Padding to 16 bytes.
    pub _pad: [f32; 2],
}

impl Algorithm for NadamConfig {
    type Uniform = NadamUniform;
    const ID: &'static str = "nadam";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "nadam.wgsl",
        source: include_str!("../../shaders/nadam.wgsl"),
        slots: &["exp_avg", "exp_avg_sq"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["NAdam"];
    const HOST_SCALARS: &'static [(&'static str, f64)] = &[("mu_product", 1.0)];
    const WORD_CLASSES: Option<&'static [WordClass]> = {
        use WordClass::{Keep as K, LrTimes as L, OfStep as T};
        // sign, wd, decay, 1-b1, b2, 1-b2, inv_sqrt_bc2, eps, grad_coef, avg_coef, pad x2
        Some(&[K, K, K, K, K, K, T, K, L, L, K, K])
    };

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![("nadam", Self::default())]
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
        NadamConfig::validate(self)
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

    fn begin_step(&self, host: &mut HostState) -> NadamUniform {
        self.advance(host);
        self.uniform(host)
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1], "eps": self.eps,
            "weight_decay": self.weight_decay, "momentum_decay": self.momentum_decay,
            "decoupled_weight_decay": self.decoupled_weight_decay, "maximize": self.maximize})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            eps: h.num("eps", d.eps)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            momentum_decay: h.num("momentum_decay", d.momentum_decay)?,
            decoupled_weight_decay: h.flag("decoupled_weight_decay", d.decoupled_weight_decay)?,
            maximize: h.flag("maximize", d.maximize)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &NadamUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        shaped!(u.weight_decay, u.decay_factor, nadam_loop(u, p, g, s))
    }
}

#[inline(always)]
fn nadam_loop<const L2: bool, const DECAY: bool>(
    h: &NadamUniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    let [m, v] = s else {
        unreachable!("NAdam has two states")
    };
    let (m, v) = (&mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
        let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
        let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        let inv = 1.0 / (vi.sqrt() * h.inv_sqrt_bc2 + h.eps);
        let mut pi = decay::<DECAY>(p[i], h.decay_factor);
        pi -= h.grad_coef * gi * inv;
        pi -= h.avg_coef * mi * inv;
        p[i] = pi;
    }
}
