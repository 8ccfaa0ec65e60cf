//! LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"), as
//! `pytorch_optimizer.Lamb` 4.1.0 implements it (`rectify=False`): a per-tensor algorithm
//! (`ELEMENTWISE = false`) in two passes, Apex FusedLAMB's shape. Mirror of
//! `shaders/lamb.wgsl`; reference `src/cpu/reference/lamb.rs`.

use super::algorithm::{Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::validate::{beta, non_negative, require_positive};
use super::WordClass;
use crate::error::Result;
use crate::segments::SegmentShape;

/// LAMB (`pytorch_optimizer.Lamb`): Adam-style moments, scaled per tensor by a trust ratio.
///
/// Per step (t from 1, lr of the step), over all tensors first
/// ```text
/// pre_norm:  s = min(1, max_grad_norm / (sqrt(sum_tensors ||g||^2) + eps)); g = g * s
/// ```
/// then per tensor
/// ```text
/// g = -g                                        if maximize
/// p = p * (1 - lr * wd)                         weight_decouple (fixed_decay: 1 - wd)
/// m = beta1 * m + beta3 * g                     beta3 = 1 - beta1 (grad_averaging) or 1
/// v = beta2 * v + (1 - beta2) * g^2
/// r = m / (sqrt(v) + eps)                       no bias correction of v
/// r = r + wd * p                                if not weight_decouple
/// weight_norm = min(||p||, clamp); adam_norm = ||r||
/// trust = weight_norm / (adam_norm + eps)       if both norms != 0, else 1
/// p = p - lr / (1 - beta1^t) * trust' * r       trust' = 1 if adam, else trust
/// ```
/// State: `exp_avg`, `exp_avg_sq` (both start at 0); per tensor, the last step's
/// `weight_norm`, `adam_norm`, `trust_ratio` (the computed one, also with `adam`).
/// Two passes per tensor: the first updates m and v and sums `||p||^2` and `||r||^2` per
/// chunk into fixed slots; the second recomputes r from the stored m, v and applies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LambConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// (beta1, beta2) (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decoupled decay `p * (1 - lr * wd)` before the norms (default true); false adds
    /// `wd * p` to the update inside the trust ratio.
    pub weight_decouple: bool,
    /// With `weight_decouple`: the factor is `1 - wd`, not `1 - lr * wd` (default false).
    pub fixed_decay: bool,
    /// `beta3 = 1 - beta1` (default true); false: `beta3 = 1`.
    pub grad_averaging: bool,
    /// The global gradient-norm bound of `pre_norm` (default 1; 0 disables the scaling).
    pub max_grad_norm: f64,
    /// Apply a trust ratio of 1 (default false; the computed ratio is still reported).
    pub adam: bool,
    /// Added to `sqrt(v)` and to the trust ratio's denominator (default 1e-6).
    pub eps: f64,
    /// Scale all gradients by `min(1, max_grad_norm / (||g|| + eps))` first (default false).
    pub pre_norm: bool,
    /// Maximize instead of minimize (default false).
    pub maximize: bool,
    /// The upper bound of the weight norm (default 10).
    pub clamp: f64,
}

impl Default for LambConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            weight_decouple: true,
            fixed_decay: false,
            grad_averaging: true,
            max_grad_norm: 1.0,
            adam: false,
            eps: 1e-6,
            pre_norm: false,
            maximize: false,
            clamp: 10.0,
        }
    }
}

impl LambConfig {
    const NAME: &'static str = "Lamb";
}

/// [`LambUniform::flags`] bit: decoupled decay (`decay` is the factor; else the L2 rate).
pub const LAMB_DECOUPLED: u32 = 1;
/// [`LambUniform::flags`] bit: apply a trust ratio of 1 (`adam`).
pub const LAMB_ADAM: u32 = 2;
/// [`LambUniform::flags`] bit: the global gradient-norm scaling (`pre_norm`).
pub const LAMB_PRE_NORM: u32 = 4;

/// Per-step uniform of `shaders/lamb.wgsl` and `shaders/lamb_segmented.wgsl`
/// (`struct StepUniform`); `trust` is the segment's applied trust ratio, set between the
/// passes on the CPU (the GPU keeps it in its work buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LambUniform {
    /// -1 when maximizing, else 1 (times the global gradient scale on the CPU with
    /// `pre_norm`).
    pub grad_sign: f32,
    /// With [`LAMB_DECOUPLED`]: the decay factor 1 - lr * wd (1 - wd with fixed_decay);
    /// without: the L2 rate wd added to r.
    pub decay: f32,
    /// [`LAMB_DECOUPLED`] | [`LAMB_ADAM`] | [`LAMB_PRE_NORM`], as an exact f32 integer.
    pub flags: f32,
    /// beta1.
    pub beta1: f32,
    /// beta3: 1 - beta1 or 1.
    pub beta3: f32,
    /// beta2.
    pub beta2: f32,
    /// 1 - beta2.
    pub one_minus_beta2: f32,
    /// eps.
    pub eps: f32,
    /// lr / (1 - beta1^t), computed in f64.
    pub step_size: f32,
    /// The applied trust ratio of the segment (1 in the first pass).
    pub trust: f32,
    /// The weight norm's upper bound.
    pub clamp: f32,
    /// `pre_norm`'s bound on the global gradient norm.
    pub max_grad_norm: f32,
}

impl LambUniform {
    /// Whether the decay is decoupled (`decay` is a factor).
    #[inline(always)]
    pub fn decoupled(&self) -> bool {
        (self.flags as u32) & LAMB_DECOUPLED != 0
    }
}

/// First-pass sums: ||p||^2 (after decoupled decay) and ||r||^2.
const SUMS: usize = 2;

impl Algorithm for LambConfig {
    type Uniform = LambUniform;
    const ID: &'static str = "lamb";
    const ELEMENTWISE: bool = false;
    const KERNEL: KernelSource = KernelSource {
        file: "lamb.wgsl",
        source: include_str!("../../shaders/lamb.wgsl"),
        slots: &["exp_avg", "exp_avg_sq"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Lamb"];
    // The trust ratio comes from a reduction, not from t: no device step counter.
    const WORD_CLASSES: Option<&'static [WordClass]> = None;
    const SEGMENTED_KERNEL: Option<KernelSource> = Some(KernelSource {
        file: "lamb_segmented.wgsl",
        source: include_str!("../../shaders/lamb_segmented.wgsl"),
        slots: &["exp_avg", "exp_avg_sq"],
    });
    const SEGMENT_SUMS: usize = SUMS;
    const SEGMENT_SCALARS: &'static [&'static str] = &["weight_norm", "adam_norm", "trust_ratio"];

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        // The suite's roofs are single-pass; LAMB is measured against its two-pass roofs
        // (same passes, chunks and buffers) by `examples/structured.rs`.
        vec![]
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
        non_negative(Self::NAME, "lr", self.lr)?;
        beta(Self::NAME, "beta1", self.betas.0)?;
        beta(Self::NAME, "beta2", self.betas.1)?;
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        non_negative(Self::NAME, "eps", self.eps)?;
        non_negative(Self::NAME, "max_grad_norm", self.max_grad_norm)?;
        require_positive(Self::NAME, "clamp", self.clamp)
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["exp_avg", "exp_avg_sq"]
    }

    fn initial_state_value(&self, _name: &str) -> f64 {
        0.0
    }

    fn lane_options(&self) -> LaneOptions {
        LaneOptions::of(self.maximize, self.weight_decay, self.weight_decouple)
    }

    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    fn begin_step(&self, host: &mut HostState) -> LambUniform {
        let (b1, b2) = self.betas;
        let t = host.step as i32;
        let decay = match (self.weight_decouple, self.fixed_decay) {
            (false, _) => self.weight_decay,
            (true, false) => 1.0 - host.lr * self.weight_decay,
            (true, true) => 1.0 - self.weight_decay,
        };
        let flags = u32::from(self.weight_decouple) * LAMB_DECOUPLED
            + u32::from(self.adam) * LAMB_ADAM
            + u32::from(self.global_grad_clip().is_some()) * LAMB_PRE_NORM;
        LambUniform {
            grad_sign: super::algorithm::sign(self.maximize),
            decay: decay as f32,
            flags: flags as f32,
            beta1: b1 as f32,
            beta3: if self.grad_averaging { 1.0 - b1 } else { 1.0 } as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: self.eps as f32,
            step_size: (host.lr / (1.0 - b1.powi(t))) as f32,
            trust: 1.0,
            clamp: self.clamp as f32,
            max_grad_norm: self.max_grad_norm as f32,
        }
    }

    fn to_hparams(&self) -> serde_json::Value {
        serde_json::json!({"lr": self.lr, "betas": [self.betas.0, self.betas.1],
            "weight_decay": self.weight_decay, "weight_decouple": self.weight_decouple,
            "fixed_decay": self.fixed_decay, "rectify": false,
            "grad_averaging": self.grad_averaging, "max_grad_norm": self.max_grad_norm,
            "adam": self.adam, "eps": self.eps, "pre_norm": self.pre_norm,
            "maximize": self.maximize, "clamp": self.clamp})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        if h.flag("rectify", false)? {
            return Err(
                "Lamb: `rectify = true` (RAdam-style rectification) is not supported".into(),
            );
        }
        // Only read with rectify = true.
        h.accept(&["degenerated_to_sgd", "n_sma_threshold"]);
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            betas: h.pair("betas", d.betas)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            weight_decouple: h.flag("weight_decouple", d.weight_decouple)?,
            fixed_decay: h.flag("fixed_decay", d.fixed_decay)?,
            grad_averaging: h.flag("grad_averaging", d.grad_averaging)?,
            max_grad_norm: h.num("max_grad_norm", d.max_grad_norm)?,
            adam: h.flag("adam", d.adam)?,
            eps: h.num("eps", d.eps)?,
            pre_norm: h.flag("pre_norm", d.pre_norm)?,
            maximize: h.flag("maximize", d.maximize)?,
            clamp: h.num("clamp", d.clamp)?,
        })
    }

    fn with_grad_scale(&self, u: &LambUniform, scale: f32) -> LambUniform {
        // g * s, then the sign: the same bits as scaling g first.
        LambUniform {
            grad_sign: u.grad_sign * scale,
            ..*u
        }
    }

    fn global_grad_clip(&self) -> Option<(f64, f64)> {
        (self.pre_norm && self.max_grad_norm > 0.0).then_some((self.max_grad_norm, self.eps))
    }

    fn check_segments(&self, table: &crate::segments::SegmentTable) -> Result<()> {
        // Any shape: the trust ratio is over the whole tensor.
        let _ = table;
        Ok(())
    }

    #[inline(always)]
    fn cpu_reduce_chunk(
        &self,
        u: &LambUniform,
        p: &[f32],
        g: &[f32],
        s: &mut [&mut [f32]],
        sums: &mut [f64],
        _work: &mut [f32],
    ) {
        let n = p.len();
        let (g, [m, v]) = (&g[..n], s) else {
            unreachable!("LAMB has two state tensors")
        };
        let (m, v) = (&mut m[..n], &mut v[..n]);
        // L = 16 independent f64 accumulators per sum (element i goes to lane i % L), so that
        // the loop vectorises: one serial f64 chain made the pass compute-bound (8 lanes were
        // measured 7% slower). Added in lane order at the end: deterministic.
        const L: usize = 16;
        let decoupled = u.decoupled();
        let (mut pp, mut rr) = ([0.0f64; L], [0.0f64; L]);
        let whole = n - n % L;
        let (p, m, v, g) = (&p[..n], &mut m[..n], &mut v[..n], &g[..n]);
        // Fixed-size blocks (no bounds checks inside), so that the loop vectorises.
        let blocks = p[..whole]
            .chunks_exact(L)
            .zip(g[..whole].chunks_exact(L))
            .zip(m[..whole].chunks_exact_mut(L))
            .zip(v[..whole].chunks_exact_mut(L));
        for (((p8, g8), m8), v8) in blocks {
            let (p8, g8): (&[f32; L], &[f32; L]) =
                (p8.try_into().expect("L"), g8.try_into().expect("L"));
            let (m8, v8): (&mut [f32; L], &mut [f32; L]) =
                (m8.try_into().expect("L"), v8.try_into().expect("L"));
            // Local copies (no aliasing between the state slices for the vectoriser to fear),
            // one operation over all L lanes at a time: the same operations per element, in
            // the same order, as the remainder loop below.
            let (pv, gv, mut mv, mut vv) = (*p8, *g8, *m8, *v8);
            let (mut pd, mut r) = ([0.0f32; L], [0.0f32; L]);
            for lane in 0..L {
                let gi = gv[lane] * u.grad_sign;
                mv[lane] = u.beta1 * mv[lane] + u.beta3 * gi;
                vv[lane] = u.beta2 * vv[lane] + u.one_minus_beta2 * gi * gi;
                (pd[lane], r[lane]) = lamb_update(u, decoupled, pv[lane], mv[lane], vv[lane]);
            }
            (*m8, *v8) = (mv, vv);
            for lane in 0..L {
                pp[lane] += f64::from(pd[lane]) * f64::from(pd[lane]);
                rr[lane] += f64::from(r[lane]) * f64::from(r[lane]);
            }
        }
        for i in whole..n {
            let gi = g[i] * u.grad_sign;
            m[i] = u.beta1 * m[i] + u.beta3 * gi;
            v[i] = u.beta2 * v[i] + u.one_minus_beta2 * gi * gi;
            let (pd, r) = lamb_update(u, decoupled, p[i], m[i], v[i]);
            pp[i % L] += f64::from(pd) * f64::from(pd);
            rr[i % L] += f64::from(r) * f64::from(r);
        }
        sums[0] += pp.iter().sum::<f64>();
        sums[1] += rr.iter().sum::<f64>();
    }

    fn finish_segment(
        &self,
        u: &LambUniform,
        _segment: &SegmentShape,
        sums: &[f64],
        scalars: &mut [f64],
    ) -> LambUniform {
        let weight_norm = sums[0].sqrt().min(self.clamp);
        let adam_norm = sums[1].sqrt();
        let trust = if weight_norm != 0.0 && adam_norm != 0.0 {
            weight_norm / (adam_norm + self.eps)
        } else {
            1.0
        };
        scalars[..3].copy_from_slice(&[weight_norm, adam_norm, trust]);
        LambUniform {
            trust: if self.adam { 1.0 } else { trust as f32 },
            ..*u
        }
    }

    /// The second pass: `p = p * decay - step_size * trust * r` with r from the updated m, v.
    #[inline(always)]
    fn cpu_chunk(&self, u: &LambUniform, p: &mut [f32], _g: &[f32], s: &mut [&mut [f32]]) {
        let n = p.len();
        let [m, v] = s else {
            unreachable!("LAMB has two state tensors")
        };
        let (m, v) = (&m[..n], &v[..n]);
        let scale = u.step_size * u.trust;
        let decoupled = u.decoupled();
        for i in 0..n {
            let (pd, r) = lamb_update(u, decoupled, p[i], m[i], v[i]);
            p[i] = pd - scale * r;
        }
    }
}

/// The decayed param and the update r of one element (both passes compute the same bits).
#[inline(always)]
fn lamb_update(u: &LambUniform, decoupled: bool, p: f32, m: f32, v: f32) -> (f32, f32) {
    let r = m / (v.sqrt() + u.eps);
    if decoupled {
        (p * u.decay, r)
    } else {
        (p, r + u.decay * p)
    }
}
