//! Schedule-Free AdamW and Schedule-Free SGD (Defazio et al. 2024, "The Road Less
//! Scheduled"), as `schedulefree` 1.4.1 implements them (`AdamWScheduleFree`,
//! `SGDScheduleFree`). Mirror of `shaders/schedule_free.wgsl`.

use super::algorithm::{flag, Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::chunk::{grad_term, shaped};
use super::validate::{finite, non_negative};
use super::WordClass;
use crate::error::{Error, Result};

/// Slots of the host scalars (`HOST_SCALARS`).
const LR_MAX: usize = 0;
const WEIGHT_SUM: usize = 1;
const TRAIN_MODE: usize = 2;

/// Which Schedule-Free optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleFreeBase {
    /// `AdamWScheduleFree`: the gradient divided by the bias-corrected root of a second
    /// moment (no first moment).
    AdamW,
    /// `SGDScheduleFree`: the raw gradient.
    Sgd,
}

/// Schedule-Free AdamW / SGD: no learning-rate schedule; the params interpolate between an
/// SGD-style sequence z and its weighted average x. While training the params hold
/// y = (1 - beta) z + beta x; `set_train_mode(false)` (on [`GpuOptimizer`](crate::GpuOptimizer),
/// [`CpuOptimizer`](crate::CpuOptimizer) or [`ReferenceOptimizer`](crate::ReferenceOptimizer)) maps
/// them to x.
///
/// ```text
/// k = steps taken;  sched = (k + 1) / warmup_steps if k < warmup_steps else 1
/// lr_t = lr * sched;  lr_max = max(lr_max, lr_t)                               host, f64
/// weight = (k + 1)^r * lr_max^weight_lr_power;  weight_sum += weight
/// ckp1 = weight / weight_sum
/// AdamW: v = beta2 * v + (1 - beta2) * g^2;  g = g / (sqrt(v / (1 - beta2^(k+1))) + eps)
/// g = g + weight_decay * y                                                    (at y)
/// y = lerp(y, z, ckp1) + lr_t * (beta * (1 - ckp1) - 1) * g;   z = z - lr_t * g
/// eval: x = lerp(y, z, 1 - 1/beta);   train: y = lerp(x, z, 1 - beta)
/// ```
/// beta is `betas.0` (AdamW) or `momentum` (SGD). State: `z` (the params on the first step),
/// `exp_avg_sq` (AdamW, 0); host scalars `lr_max` (-1), `weight_sum` (0), `train_mode`.
/// Differences from the package: a new optimizer starts in training mode (the package
/// requires a `train()` call first, which at step 0 changes nothing), and hyper-parameters
/// are validated (beta in (0, 1), beta2 in [0, 1), the rest finite and >= 0 where the
/// formulas need it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleFreeConfig {
    /// AdamW or SGD.
    pub base: ScheduleFreeBase,
    /// Learning rate (defaults: AdamW 0.0025, SGD 1.0).
    pub lr: f64,
    /// beta (the interpolation y = (1 - beta) z + beta x): AdamW's `betas[0]` (0.9) or SGD's
    /// `momentum` (0.9).
    pub beta: f64,
    /// AdamW's `betas[1]` (0.999); unused by SGD.
    pub beta2: f64,
    /// AdamW's eps, outside the root (1e-8); unused by SGD.
    pub eps: f64,
    /// Weight decay added to the (normalised) gradient at y (default 0).
    pub weight_decay: f64,
    /// Linear warm-up steps (default 0).
    pub warmup_steps: u64,
    /// Exponent of the step in the averaging weight (default 0).
    pub r: f64,
    /// Exponent of lr_max in the averaging weight (default 2).
    pub weight_lr_power: f64,
}

impl Default for ScheduleFreeConfig {
    fn default() -> Self {
        Self::adamw()
    }
}

impl ScheduleFreeConfig {
    /// `AdamWScheduleFree`'s defaults.
    pub fn adamw() -> Self {
        Self {
            base: ScheduleFreeBase::AdamW,
            lr: 0.0025,
            beta: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }

    /// `SGDScheduleFree`'s defaults.
    pub fn sgd() -> Self {
        Self {
            base: ScheduleFreeBase::Sgd,
            lr: 1.0,
            ..Self::adamw()
        }
    }

    fn uniform(&self, host: &mut HostState) -> ScheduleFreeUniform {
        let k = (host.step - 1) as f64;
        let sched = if k < self.warmup_steps as f64 {
            (k + 1.0) / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr_t = host.lr * sched;
        let lr_max = host.scalars[LR_MAX].max(lr_t);
        host.scalars[LR_MAX] = lr_max;
        let weight = (k + 1.0).powf(self.r) * lr_max.powf(self.weight_lr_power);
        host.scalars[WEIGHT_SUM] += weight;
        let weight_sum = host.scalars[WEIGHT_SUM];
        let ckp1 = if weight_sum != 0.0 {
            weight / weight_sum
        } else {
            0.0
        };
        let bc2 = 1.0 - self.beta2.powf(k + 1.0);
        ScheduleFreeUniform {
            pass_kind: 0,
            first_step: u32::from(!host.state_written),
            lr: lr_t as f32,
            y_step: (lr_t * (self.beta * (1.0 - ckp1) - 1.0)) as f32,
            ckp1: ckp1 as f32,
            weight_decay: self.weight_decay as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: self.eps as f32,
            switch_weight: 0.0,
            _pad: 0.0,
        }
    }
}

/// Per-step uniform of `shaders/schedule_free.wgsl` (`struct StepUniform`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScheduleFreeUniform {
    /// 0: a step; 1: a train/eval switch (`p = p + switch_weight * (z - p)`).
    pub pass_kind: u32,
    /// 1 on the first step: z starts as a copy of the params.
    pub first_step: u32,
    /// lr_t, the warmed-up lr of this step.
    pub lr: f32,
    /// lr_t * (beta * (1 - ckp1) - 1), the factor of the gradient in y.
    pub y_step: f32,
    /// ckp1 = weight / weight_sum, the weight of z in y's interpolation.
    pub ckp1: f32,
    /// Weight decay (at y).
    pub weight_decay: f32,
    /// beta2 (AdamW).
    pub beta2: f32,
    /// 1 - beta2 (AdamW).
    pub one_minus_beta2: f32,
    /// 1 / (1 - beta2^(k+1)) (AdamW).
    pub inv_bc2: f32,
    /// eps (AdamW).
    pub eps: f32,
    /// The interpolation weight of a mode switch: 1 - 1/beta (to eval) or 1 - beta.
    pub switch_weight: f32,
    /// Padding to 16 bytes.
    pub _pad: f32,
}

impl Algorithm for ScheduleFreeConfig {
    type Uniform = ScheduleFreeUniform;
    const ID: &'static str = "schedule_free";
    const ELEMENTWISE: bool = true;
    const KERNEL: KernelSource = KernelSource {
        file: "schedule_free.wgsl",
        source: include_str!("../../shaders/schedule_free.wgsl"),
        slots: &["z", "exp_avg_sq"],
    };
    const CLASS_NAMES: &'static [&'static str] = &[
        "AdamWScheduleFree",
        "SGDScheduleFree",
        "AdamWScheduleFreeReference",
        "SGDScheduleFreeReference",
    ];
    const HOST_SCALARS: &'static [(&'static str, f64)] =
        &[("lr_max", -1.0), ("weight_sum", 0.0), ("train_mode", 1.0)];
    // The averaging weight depends on the lr history (lr_max): no device step counter.
    const WORD_CLASSES: Option<&'static [WordClass]> = None;

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        vec![
            (
                "sf_adamw",
                Self {
                    weight_decay: 0.01,
                    ..Self::adamw()
                },
            ),
            ("sf_sgd", Self::sgd()),
        ]
    }

    fn class_name(&self) -> &'static str {
        match self.base {
            ScheduleFreeBase::AdamW => "AdamWScheduleFree",
            ScheduleFreeBase::Sgd => "SGDScheduleFree",
        }
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn with_lr(self, lr: f64) -> Self {
        Self { lr, ..self }
    }

    fn validate(&self) -> Result<()> {
        let name = self.class_name();
        non_negative(name, "lr", self.lr)?;
        if !(self.beta > 0.0 && self.beta < 1.0) {
            return Err(Error::InvalidHyperParameter {
                optimizer: name,
                name: "beta",
                value: self.beta,
                requirement: "must be in (0, 1) (eval() divides by it)",
            });
        }
        super::validate::beta(name, "beta2", self.beta2)?;
        non_negative(name, "eps", self.eps)?;
        non_negative(name, "weight_decay", self.weight_decay)?;
        finite(name, "r", self.r)?;
        finite(name, "weight_lr_power", self.weight_lr_power)
    }

    fn state_names(&self) -> Vec<&'static str> {
        match self.base {
            ScheduleFreeBase::AdamW => vec!["z", "exp_avg_sq"],
            ScheduleFreeBase::Sgd => vec!["z"],
        }
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        // z is a copy of the params, made by the first step (`first_step`).
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(false, self.weight_decay, false)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![("ADAPTIVE", flag(self.base == ScheduleFreeBase::AdamW))]
    }

    fn begin_step(&self, host: &mut HostState) -> ScheduleFreeUniform {
        self.uniform(host)
    }

    fn check_step(&self, host: &HostState) -> Result<()> {
        if self.is_training(host) {
            Ok(())
        } else {
            Err(Error::WrongMode {
                optimizer: self.class_name(),
                reason: "a step in evaluation mode (the params hold x): switch to training \
                         mode first, as the package's train() does",
            })
        }
    }

    fn mode_switch(&self, host: &mut HostState, train: bool) -> Result<Option<Self::Uniform>> {
        if self.is_training(host) == train {
            return Ok(None);
        }
        host.scalars[TRAIN_MODE] = f64::from(u8::from(train));
        if !host.state_written {
            // No z yet: x = y = z = the params.
            return Ok(None);
        }
        let weight = if train {
            1.0 - self.beta
        } else {
            1.0 - 1.0 / self.beta
        };
        Ok(Some(ScheduleFreeUniform {
            pass_kind: 1,
            switch_weight: weight as f32,
            ..bytemuck::Zeroable::zeroed()
        }))
    }

    fn is_training(&self, host: &HostState) -> bool {
        host.scalars[TRAIN_MODE] != 0.0
    }

    fn to_hparams(&self) -> serde_json::Value {
        let mut h = serde_json::json!({"lr": self.lr, "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps, "r": self.r,
            "weight_lr_power": self.weight_lr_power});
        match self.base {
            ScheduleFreeBase::AdamW => {
                h["betas"] = serde_json::json!([self.beta, self.beta2]);
                h["eps"] = serde_json::json!(self.eps);
            }
            ScheduleFreeBase::Sgd => h["momentum"] = serde_json::json!(self.beta),
        }
        h
    }

    fn from_hparams(class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        // The package's bookkeeping entries of param_groups[0] (initial values) and
        // implementation switches.
        h.accept(&[
            "k",
            "weight_sum",
            "lr_max",
            "scheduled_lr",
            "train_mode",
            "foreach",
        ]);
        let adamw = class.starts_with("AdamW");
        if class.ends_with("Reference") && h.flag("decay_at_z", false)? {
            return Err("decay_at_z = true is not supported (decay is applied at y)".into());
        }
        let d = if adamw { Self::adamw() } else { Self::sgd() };
        let (beta, beta2) = if adamw {
            h.pair("betas", (d.beta, d.beta2))?
        } else {
            (h.num("momentum", d.beta)?, d.beta2)
        };
        Ok(Self {
            base: d.base,
            lr: h.num("lr", d.lr)?,
            beta,
            beta2,
            eps: if adamw { h.num("eps", d.eps)? } else { d.eps },
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            warmup_steps: h.uint("warmup_steps", d.warmup_steps)?,
            r: h.num("r", d.r)?,
            weight_lr_power: h.num("weight_lr_power", d.weight_lr_power)?,
        })
    }

    #[inline(always)]
    fn cpu_chunk(&self, u: &ScheduleFreeUniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        if u.pass_kind != 0 {
            let (n, w) = (p.len(), u.switch_weight);
            let z = &s[0][..n];
            for i in 0..n {
                p[i] += w * (z[i] - p[i]);
            }
            return;
        }
        let adaptive = self.base == ScheduleFreeBase::AdamW;
        shaped!(
            u.weight_decay,
            1.0,
            schedule_free_loop(u, adaptive, p, g, s)
        )
    }
}

/// The step's loop. On the first step z starts as a copy of the params (the kernel's
/// `z0 = p0`): copied into z before the loop rather than selected per element, so that the
/// loop reads z unconditionally and vectorises like the Adam loops (a per-element
/// `if first { p[i] } else { z[i] }`, a conditional load, kept it from vectorising: 29
/// instructions per element for AdamW against 3.4, `BENCHMARKS.md`).
#[inline(always)]
fn schedule_free_loop<const L2: bool, const DECAY: bool>(
    h: &ScheduleFreeUniform,
    adaptive: bool,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    let n = p.len();
    let g = &g[..n];
    let first = h.first_step != 0;
    match s {
        [z, v] if adaptive => {
            let (z, v) = (&mut z[..n], &mut v[..n]);
            if first {
                z.copy_from_slice(p);
            }
            for i in 0..n {
                let vi = h.beta2 * v[i] + h.one_minus_beta2 * g[i] * g[i];
                v[i] = vi;
                let d = g[i] / ((vi * h.inv_bc2).sqrt() + h.eps);
                let d = grad_term::<L2>(d, p[i], 1.0, h.weight_decay);
                let z0 = z[i];
                z[i] = z0 - h.lr * d;
                p[i] = p[i] + h.ckp1 * (z0 - p[i]) + h.y_step * d;
            }
        }
        [z, ..] => {
            let z = &mut z[..n];
            if first {
                z.copy_from_slice(p);
            }
            for i in 0..n {
                let d = grad_term::<L2>(g[i], p[i], 1.0, h.weight_decay);
                let z0 = z[i];
                z[i] = z0 - h.lr * d;
                p[i] = p[i] + h.ckp1 * (z0 - p[i]) + h.y_step * d;
            }
        }
        // Schedule-Free always has z.
        [] => unreachable!("Schedule-Free has the state z"),
    }
}
