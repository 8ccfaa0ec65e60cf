//! Per-group algorithms: one optimizer over a model whose tensors are split into groups, each
//! stepped by its own registered algorithm — the Muon practice of orthogonalising the hidden
//! 2-D matrices and training embeddings, heads and 1-D tensors with AdamW, or any other pair
//! (LAMB and Lion, ...).
//!
//! Every group is a complete optimizer of its algorithm over its own tensors, with its state
//! for those tensors only, back to back in segment order (no state for the other groups'
//! elements): on the CPU a [`CpuOptimizer`], in the reference a [`ReferenceOptimizer`], on the
//! GPU a [`GpuOptimizer`] over the group's segments (per-tensor algorithms) or a
//! [`TensorOptimizer`](crate::gpu::tensors::TensorOptimizer) over their ranges of the params'
//! buffers (elementwise ones). One step steps every group once; on the GPU all groups are
//! recorded into one command encoder and submitted once.
//!
//! | module | job |
//! |---|---|
//! | `plan` | checks the groups against the segment table (pure) |
//! | `slices` | [`MixedCpuOptimizer`] and [`MixedReference`] over the caller's slices |
//! | `gpu` | [`MixedGpuOptimizer`] over a [`FlatParams`](crate::FlatParams) |
//! | `checkpoint` | a checkpoint folder: one standard checkpoint per group and a manifest |
//! | `clip` | the global gradient-norm clip over every group (`set_max_grad_norm`) |
//!
//! Each group's learning rate, step count, state and host scalars are its own
//! (CPU paths: `group(g)`, `group_mut(g)`; GPU: `group_lr`, `set_group_lr`, `group_state`); [`MixedCpuOptimizer::set_schedule_epoch`] (and the same on
//! the other implementations) sets every group's lr from one [`LrSchedule`] over each group's
//! base lr. `set_max_grad_norm` clips the gradients of all groups together by their global
//! norm (`torch.nn.utils.clip_grad_norm_` over every parameter) before the groups step, on
//! every implementation. On the CPU paths, gradient options set on a group itself
//! (`group_mut(g)`) apply to that group's gradients only.
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::mixed::{AlgorithmGroup, MixedCpuOptimizer};
//! use fused_optim::{AdamConfig, MuonConfig, SegmentTable};
//! let shapes = vec![vec![100, 64], vec![64, 64], vec![64], vec![64, 10]];
//! let table = SegmentTable::contiguous(&shapes)?;
//! // Muon on the hidden matrix, AdamW on the embedding, the bias and the head.
//! let groups = [
//!     AlgorithmGroup { segments: vec![1], config: MuonConfig::default().into() },
//!     AlgorithmGroup { segments: vec![0, 2, 3], config: AdamConfig::adamw().into() },
//! ];
//! let mut opt = MixedCpuOptimizer::new(table, &groups)?;
//! let (mut params, grads) = (vec![0.1f32; 11_200], vec![0.01f32; 11_200]);
//! opt.step(&mut params, &grads)?;
//! # Ok(()) }
//! ```
//!
//! [`CpuOptimizer`]: crate::CpuOptimizer
//! [`ReferenceOptimizer`]: crate::ReferenceOptimizer
//! [`GpuOptimizer`]: crate::GpuOptimizer
//! [`LrSchedule`]: crate::schedule::LrSchedule

mod checkpoint;
mod clip;
mod gpu;
mod plan;
mod slices;

pub use gpu::MixedGpuOptimizer;
pub use slices::{MixedCpuOptimizer, MixedReference, MixedSlices, SliceOptimizer};

use crate::optim::OptimizerConfig;
use crate::segments::SegmentTable;

/// One algorithm over some of a model's tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct AlgorithmGroup {
    /// The tensors: indices into the segment table (any order). Every segment must be in
    /// exactly one group.
    pub segments: Vec<usize>,
    /// The algorithm and its hyper-parameters.
    pub config: OptimizerConfig,
}

impl AlgorithmGroup {
    /// Two groups from one rule: the segments of `table` for which `pick(index, shape)` holds
    /// get `picked`, the others `rest` (a group that would be empty is left out). E.g. Muon
    /// for the hidden matrices, AdamW for everything else:
    /// `AlgorithmGroup::split(&table, muon, adamw, |k, shape| shape.len() == 2 && k != 0)`.
    pub fn split(
        table: &SegmentTable,
        picked: impl Into<OptimizerConfig>,
        rest: impl Into<OptimizerConfig>,
        mut pick: impl FnMut(usize, &[usize]) -> bool,
    ) -> Vec<AlgorithmGroup> {
        let (mut yes, mut no) = (Vec::new(), Vec::new());
        for (k, s) in table.segments().iter().enumerate() {
            if pick(k, &s.shape) {
                yes.push(k);
            } else {
                no.push(k);
            }
        }
        [(yes, picked.into()), (no, rest.into())]
            .into_iter()
            .filter(|(segments, _)| !segments.is_empty())
            .map(|(segments, config)| AlgorithmGroup { segments, config })
            .collect()
    }
}
