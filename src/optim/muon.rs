//! Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"), as
//! `torch.optim.Muon` (PyTorch 2.15) implements it: momentum, then Newton–Schulz
//! orthogonalisation of each 2-D tensor's update, a shape-dependent lr and decoupled weight
//! decay. A per-tensor algorithm (`ELEMENTWISE = false`) with a matrix transform between its
//! passes. Mirror of `shaders/muon.wgsl` and `shaders/muon_segmented.wgsl`; reference
//! `src/cpu/reference/muon.rs`.

use super::algorithm::{Algorithm, HostState, HparamReader, KernelSource, LaneOptions};
use super::validate::{non_negative, unit_interval};
use super::WordClass;
use super::{NewtonSchulz, NsArithmetic};
use crate::error::{Error, Result};
use crate::segments::{SegmentShape, SegmentTable};

/// How Muon scales the lr of an A x B matrix (torch's `adjust_lr_fn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MuonLrAdjust {
    /// `sqrt(max(1, A / B))` (torch's `None` / `"original"`, Keller Jordan's Muon).
    #[default]
    Original,
    /// `0.2 * sqrt(max(A, B))`: the update's RMS matches AdamW's (Moonshot's Muon).
    MatchRmsAdamw,
    /// `sqrt(A / B)` (torch's `"spectral_unclamped"`).
    SpectralUnclamped,
}

impl MuonLrAdjust {
    /// torch's name of the function (`None` for the default is written `"original"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::MatchRmsAdamw => "match_rms_adamw",
            Self::SpectralUnclamped => "spectral_unclamped",
        }
    }

    /// The lr ratio of a `rows` x `cols` matrix (f64, as torch computes it in Python).
    pub fn ratio(self, rows: usize, cols: usize) -> f64 {
        let (a, b) = (rows as f64, cols as f64);
        match self {
            Self::Original => (a / b).max(1.0).sqrt(),
            Self::MatchRmsAdamw => 0.2 * a.max(b).sqrt(),
            Self::SpectralUnclamped => (a / b).sqrt(),
        }
    }

    /// The code the GPU kernel reads (`MuonUniform::adjust`).
    fn code(self) -> f32 {
        match self {
            Self::Original => 0.0,
            Self::MatchRmsAdamw => 1.0,
            Self::SpectralUnclamped => 2.0,
        }
    }
}

/// Muon (`torch.optim.Muon`): momentum orthogonalised per 2-D tensor.
///
/// Per step (lr of the step), per tensor (every tensor must be 2-D, A x B):
/// ```text
/// buf = lerp(buf, g, 1 - mu)                   = mu * buf + (1 - mu) * g
/// u   = lerp(g, buf, mu) if nesterov, else buf
/// O   = NewtonSchulz(u)                        (ns_steps, ns_coefficients, eps)
/// p   = p * (1 - lr * wd)                      (the unadjusted lr)
/// p   = p - lr * ratio(A, B) * O               (ratio: adjust_lr_fn)
/// ```
/// State: `momentum_buffer` (starts at 0). torch runs Newton–Schulz in bfloat16 on the CPU;
/// this crate runs it in f32 by default (CPU: a GEMM crate; GPU: a tiled WGSL matmul) and its
/// f64 reference in f64, so results differ from torch's by bf16 rounding (a few percent of the
/// update per step; `../shared/golden2/README.md`). `ns.arithmetic =`
/// [`NsArithmetic::Bf16`] runs torch's bf16 arithmetic instead (fast CPU path; the reference
/// then emulates it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MuonConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decoupled weight decay, with the unadjusted lr (default 0.1).
    pub weight_decay: f64,
    /// Momentum mu (default 0.95).
    pub momentum: f64,
    /// Nesterov momentum (default true).
    pub nesterov: bool,
    /// The Newton–Schulz iteration: `ns_steps` (5), `ns_coefficients`
    /// (3.4445, -4.775, 2.0315) and `eps` (1e-7).
    pub ns: NewtonSchulz,
    /// The lr's shape ratio (default [`MuonLrAdjust::Original`]).
    pub adjust_lr: MuonLrAdjust,
}

impl Default for MuonConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns: NewtonSchulz {
                steps: 5,
                coefficients: (3.4445, -4.775, 2.0315),
                eps: 1e-7,
                arithmetic: NsArithmetic::F32,
            },
            adjust_lr: MuonLrAdjust::Original,
        }
    }
}

impl MuonConfig {
    const NAME: &'static str = "Muon";
}

/// Per-step uniform of `shaders/muon.wgsl` and `shaders/muon_segmented.wgsl`
/// (`struct StepUniform`); `adjusted_lr` is the segment's, set between the passes on the CPU
/// (the GPU computes it per segment from `lr` and `adjust`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MuonUniform {
    /// The step's lr.
    pub lr: f32,
    /// The decay factor 1 - lr * wd (computed in f64).
    pub decay: f32,
    /// mu.
    pub momentum: f32,
    /// 1 - mu (computed in f64), the buffer's lerp weight.
    pub one_minus_momentum: f32,
    /// 1 for Nesterov, else 0.
    pub nesterov: f32,
    /// The lr ratio: 0 original, 1 match_rms_adamw, 2 spectral_unclamped.
    pub adjust: f32,
    /// The segment's lr times its ratio (second pass; 0 in the first).
    pub adjusted_lr: f32,
    /// Padding to 16 bytes.
    pub pad: f32,
}

impl Algorithm for MuonConfig {
    type Uniform = MuonUniform;
    const ID: &'static str = "muon";
    const ELEMENTWISE: bool = false;
    const KERNEL: KernelSource = KernelSource {
        file: "muon.wgsl",
        source: include_str!("../../shaders/muon.wgsl"),
        slots: &["momentum_buffer"],
    };
    const CLASS_NAMES: &'static [&'static str] = &["Muon"];
    // The adjusted lr depends on the segment's shape: no device step counter.
    const WORD_CLASSES: Option<&'static [WordClass]> = None;
    const SEGMENTED_KERNEL: Option<KernelSource> = Some(KernelSource {
        file: "muon_segmented.wgsl",
        source: include_str!("../../shaders/muon_segmented.wgsl"),
        slots: &["momentum_buffer"],
    });

    fn benchmark_configs() -> Vec<(&'static str, Self)> {
        // Muon is measured as GFLOP/s of its matmuls beside its bytes by
        // `examples/muon.rs`, not against the suite's single-pass roofs.
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
        non_negative(Self::NAME, "weight_decay", self.weight_decay)?;
        unit_interval(Self::NAME, "momentum", self.momentum)?;
        non_negative(Self::NAME, "eps", self.ns.eps)?;
        let (a, b, c) = self.ns.coefficients;
        for (name, v) in [("ns_coefficients[0]", a), ("ns_coefficients[1]", b)] {
            super::validate::finite(Self::NAME, name, v)?;
        }
        super::validate::finite(Self::NAME, "ns_coefficients[2]", c)?;
        if self.ns.steps == 0 || self.ns.steps > 100 {
            return Err(Error::InvalidHyperParameter {
                optimizer: Self::NAME,
                name: "ns_steps",
                value: f64::from(self.ns.steps),
                requirement: "must be in 1..=100",
            });
        }
        Ok(())
    }

    fn state_names(&self) -> Vec<&'static str> {
        vec!["momentum_buffer"]
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

    fn begin_step(&self, host: &mut HostState) -> MuonUniform {
        MuonUniform {
            lr: host.lr as f32,
            decay: (1.0 - host.lr * self.weight_decay) as f32,
            momentum: self.momentum as f32,
            one_minus_momentum: (1.0 - self.momentum) as f32,
            nesterov: if self.nesterov { 1.0 } else { 0.0 },
            adjust: self.adjust_lr.code(),
            adjusted_lr: 0.0,
            pad: 0.0,
        }
    }

    fn to_hparams(&self) -> serde_json::Value {
        let (a, b, c) = self.ns.coefficients;
        serde_json::json!({"lr": self.lr, "weight_decay": self.weight_decay,
            "momentum": self.momentum, "nesterov": self.nesterov,
            "ns_coefficients": [a, b, c], "eps": self.ns.eps, "ns_steps": self.ns.steps,
            "adjust_lr_fn": self.adjust_lr.name(),
            "ns_arithmetic": self.ns.arithmetic.name()})
    }

    fn from_hparams(_class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String> {
        let d = Self::default();
        let adjust_lr = match h.text("adjust_lr_fn")?.as_deref() {
            None | Some("original") => MuonLrAdjust::Original,
            Some("match_rms_adamw") => MuonLrAdjust::MatchRmsAdamw,
            Some("spectral_unclamped") => MuonLrAdjust::SpectralUnclamped,
            Some(other) => return Err(format!("Muon: unknown `adjust_lr_fn` = {other:?}")),
        };
        let steps = h.uint("ns_steps", u64::from(d.ns.steps))?;
        // Not one of torch's options (its arithmetic is bf16): absent means f32, ours.
        let arithmetic = match h.text("ns_arithmetic")?.as_deref() {
            None => NsArithmetic::F32,
            Some(name) => NsArithmetic::from_name(name)
                .ok_or_else(|| format!("Muon: unknown `ns_arithmetic` = {name:?}"))?,
        };
        Ok(Self {
            lr: h.num("lr", d.lr)?,
            weight_decay: h.num("weight_decay", d.weight_decay)?,
            momentum: h.num("momentum", d.momentum)?,
            nesterov: h.flag("nesterov", d.nesterov)?,
            ns: NewtonSchulz {
                steps: u32::try_from(steps).map_err(|_| format!("Muon: `ns_steps` = {steps}"))?,
                coefficients: h.triple("ns_coefficients", d.ns.coefficients)?,
                eps: h.num("eps", d.ns.eps)?,
                arithmetic,
            },
            adjust_lr,
        })
    }

    fn check_segments(&self, table: &SegmentTable) -> Result<()> {
        for (k, s) in table.segments().iter().enumerate() {
            if s.rank() != 2 {
                return Err(Error::WrongRank {
                    optimizer: Self::NAME,
                    segment: format!("#{k} (elements {}..{})", s.start, s.end()),
                    shape: s.shape.clone(),
                    requirement: "Muon orthogonalises 2-D tensors only (train the others \
                                  with AdamW)",
                });
            }
        }
        Ok(())
    }

    fn matrix_transform(&self) -> Option<NewtonSchulz> {
        Some(self.ns)
    }

    /// The first pass: the momentum buffer, and the Newton–Schulz input into `work`.
    #[inline(always)]
    fn cpu_reduce_chunk(
        &self,
        u: &MuonUniform,
        _p: &[f32],
        g: &[f32],
        s: &mut [&mut [f32]],
        _sums: &mut [f64],
        work: &mut [f32],
    ) {
        let [buf] = s else {
            unreachable!("Muon has one state tensor")
        };
        let n = work.len();
        let (g, buf) = (&g[..n], &mut buf[..n]);
        let nesterov = u.nesterov != 0.0;
        for i in 0..n {
            let b = lerp(buf[i], g[i], u.one_minus_momentum);
            buf[i] = b;
            work[i] = if nesterov {
                lerp(g[i], b, u.momentum)
            } else {
                b
            };
        }
    }

    fn finish_segment(
        &self,
        u: &MuonUniform,
        segment: &SegmentShape,
        _sums: &[f64],
        _scalars: &mut [f64],
    ) -> MuonUniform {
        let ratio = self.adjust_lr.ratio(segment.rows(), segment.cols());
        MuonUniform {
            adjusted_lr: (f64::from(u.lr) * ratio) as f32,
            ..*u
        }
    }

    /// The second pass: `p = p * decay - adjusted_lr * O`, with `o` the orthogonalised
    /// update (given in place of the gradient).
    #[inline(always)]
    fn cpu_chunk(&self, u: &MuonUniform, p: &mut [f32], o: &[f32], _s: &mut [&mut [f32]]) {
        let o = &o[..p.len()];
        for (p, &o) in p.iter_mut().zip(o) {
            *p = *p * u.decay - u.adjusted_lr * o;
        }
    }
}

/// torch's `lerp(start, end, weight)` for one element: `start + weight * (end - start)` for
/// weight < 0.5, else `end - (end - start) * (1 - weight)` (the form that is exact at
/// weight = 1).
#[inline(always)]
pub(crate) fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}
