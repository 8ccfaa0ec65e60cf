//! The mixed optimizer of the CPU paths: one sub-optimizer per algorithm group over the
//! caller's flat params and gradients. A group whose tensors are consecutive segments back to
//! back is stepped on its sub-slice in place; any other group is gathered into buffers
//! allocated once (params and gradients of its tensors), stepped, and its params scattered
//! back.

use std::path::Path;

use rayon::prelude::*;

use super::plan::{plan, PlannedGroup};
use super::AlgorithmGroup;
use crate::cpu::fast::CpuOptimizer;
use crate::cpu::reference::ReferenceOptimizer;
use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;
use crate::optimizer::Optimizer;
use crate::schedule::LrSchedule;
use crate::segments::SegmentTable;

/// An optimizer that steps caller slices of one element type: what [`MixedSlices`] is built
/// from ([`CpuOptimizer`] on f32, [`ReferenceOptimizer`] on f64).
pub trait SliceOptimizer: Optimizer + Sized {
    /// The element type of params and gradients.
    type Elem: Copy + Default + Send + Sync;

    /// `x` squared, in f64 (the global clip's norm).
    fn square(x: Self::Elem) -> f64;

    /// `x * coef`, rounded to the element type (the global clip's scaling).
    fn scaled(x: Self::Elem, coef: f64) -> Self::Elem;

    /// The optimizer of `config` over tensors of `shapes` back to back.
    fn over_shapes(config: OptimizerConfig, shapes: &[Vec<usize>]) -> Result<Self>;

    /// One step of `params` with `grads` (both the optimizer's length).
    fn step_slices(&mut self, params: &mut [Self::Elem], grads: &[Self::Elem]) -> Result<()>;

    /// Whether a step may be taken now (the algorithm's own refusal, e.g. Schedule-Free in
    /// evaluation mode), checked for every group before any group steps.
    fn check_slices_step(&self) -> Result<()>;
}

impl SliceOptimizer for CpuOptimizer {
    type Elem = f32;

    fn square(x: f32) -> f64 {
        f64::from(x) * f64::from(x)
    }

    fn scaled(x: f32, coef: f64) -> f32 {
        x * coef as f32
    }

    fn over_shapes(config: OptimizerConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let n = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        CpuOptimizer::builder(config, n).shapes(shapes).build()
    }

    fn step_slices(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        self.step(params, grads)
    }

    fn check_slices_step(&self) -> Result<()> {
        self.check_step()
    }
}

impl SliceOptimizer for ReferenceOptimizer {
    type Elem = f64;

    fn square(x: f64) -> f64 {
        x * x
    }

    fn scaled(x: f64, coef: f64) -> f64 {
        x * coef
    }

    fn over_shapes(config: OptimizerConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        ReferenceOptimizer::with_shapes(config, shapes)
    }

    fn step_slices(&mut self, params: &mut [f64], grads: &[f64]) -> Result<()> {
        self.step(params, grads)
    }

    fn check_slices_step(&self) -> Result<()> {
        self.check_step()
    }
}

/// Per-group algorithms over the caller's flat slices (see the [module
/// documentation](super)): [`MixedCpuOptimizer`] (the fast CPU path) and
/// [`MixedReference`] (the f64 oracle).
pub struct MixedSlices<O: SliceOptimizer> {
    table: SegmentTable,
    groups: Vec<PlannedGroup>,
    members: Vec<O>,
    base_lrs: Vec<f64>,
    /// Per group: its params and gradients gathered (empty for a contiguous group).
    gathered: Vec<Gathered<O::Elem>>,
    /// The global gradient-norm clip: its max_norm, the clipped gradients (allocated when
    /// set), the last step's norm.
    max_norm: Option<f64>,
    clipped: Vec<O::Elem>,
    last_norm: Option<f64>,
}

/// A group's params and gradients, gathered.
type Gathered<T> = (Vec<T>, Vec<T>);

/// Per-group algorithms on the fast CPU path (f32).
pub type MixedCpuOptimizer = MixedSlices<CpuOptimizer>;

/// Per-group algorithms in the f64 reference.
pub type MixedReference = MixedSlices<ReferenceOptimizer>;

impl<O: SliceOptimizer> std::fmt::Debug for MixedSlices<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedSlices")
            .field("len", &self.table.len())
            .field("groups", &super::plan::summary(&self.groups))
            .finish()
    }
}

impl<O: SliceOptimizer> MixedSlices<O> {
    /// The groups over the tensors of `table` (the layout of the flat params; padding
    /// between segments is left untouched). Fails as the groups' plan does (every segment in
    /// exactly one group, each algorithm accepting its tensors: [`Error::WrongRank`] for
    /// Muon on a 1-D tensor) or as a group's optimizer does; nothing is kept then.
    pub fn new(table: SegmentTable, groups: &[AlgorithmGroup]) -> Result<Self> {
        let groups = plan(&table, groups)?;
        let members = groups
            .iter()
            .map(|g| O::over_shapes(g.config, &g.shapes))
            .collect::<Result<Vec<O>>>()?;
        let gathered = groups
            .iter()
            .map(|g| match g.contiguous {
                Some(_) => (Vec::new(), Vec::new()),
                None => (
                    vec![O::Elem::default(); g.len()],
                    vec![O::Elem::default(); g.len()],
                ),
            })
            .collect();
        let base_lrs = members.iter().map(|m| m.lr()).collect();
        Ok(Self {
            table,
            groups,
            members,
            base_lrs,
            gathered,
            max_norm: None,
            clipped: Vec::new(),
            last_norm: None,
        })
    }

    /// One step of every group: `params` and `grads` are the whole flat vector (the table's
    /// length). [`Error::LengthMismatch`] when a length differs, and every group's own
    /// refusal (a Schedule-Free group in evaluation mode: [`Error::WrongMode`]), are
    /// returned before any group steps, so such a step changes nothing.
    pub fn step(&mut self, params: &mut [O::Elem], grads: &[O::Elem]) -> Result<()> {
        for (what, len) in [("params", params.len()), ("grads", grads.len())] {
            if len != self.table.len() {
                return Err(Error::LengthMismatch {
                    what,
                    expected: self.table.len(),
                    got: len,
                });
            }
        }
        for member in &self.members {
            member.check_slices_step()?;
        }
        let grads: &[O::Elem] = match self.max_norm {
            None => grads,
            Some(max_norm) => {
                let chunks = super::clip::clip_chunks(&self.table);
                let partials: Vec<f64> = chunks
                    .par_iter()
                    .map(|&(a, b)| grads[a..b].iter().map(|&x| O::square(x)).sum::<f64>())
                    .collect();
                let norm = partials.iter().sum::<f64>().sqrt();
                let coef = super::clip::clip_coef(max_norm, norm);
                let clipped = &mut self.clipped;
                for s in self.table.segments() {
                    for (c, &g) in clipped[s.range()].iter_mut().zip(&grads[s.range()]) {
                        *c = O::scaled(g, coef);
                    }
                }
                self.last_norm = Some(norm);
                &self.clipped
            }
        };
        for ((group, member), (p_buf, g_buf)) in self
            .groups
            .iter()
            .zip(&mut self.members)
            .zip(&mut self.gathered)
        {
            if let Some(r) = &group.contiguous {
                member.step_slices(&mut params[r.clone()], &grads[r.clone()])?;
                continue;
            }
            let mut at = 0;
            for r in &group.ranges {
                p_buf[at..at + r.len()].copy_from_slice(&params[r.clone()]);
                g_buf[at..at + r.len()].copy_from_slice(&grads[r.clone()]);
                at += r.len();
            }
            member.step_slices(p_buf, g_buf)?;
            let mut at = 0;
            for r in &group.ranges {
                params[r.clone()].copy_from_slice(&p_buf[at..at + r.len()]);
                at += r.len();
            }
        }
        Ok(())
    }

    /// Clip the gradients of every group together by their global L2 norm before each step
    /// (`torch.nn.utils.clip_grad_norm_(all params, max_norm)`: coef = min(1, max_norm /
    /// (norm + 1e-6)), see `clip.rs`), or stop clipping (`None`). The caller's gradients are
    /// not changed (the clipped ones go to a buffer allocated here). [`Error::InvalidHyperParameter`]
    /// for a max_norm that is not finite and > 0; nothing changes then.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) -> Result<()> {
        super::clip::check_max_norm(max_norm)?;
        self.clipped = match max_norm {
            Some(_) => vec![O::Elem::default(); self.table.len()],
            None => Vec::new(),
        };
        self.max_norm = max_norm;
        self.last_norm = None;
        Ok(())
    }

    /// The global clip's max_norm, if set.
    pub fn max_grad_norm(&self) -> Option<f64> {
        self.max_norm
    }

    /// The global gradient norm of the last step (before clipping), `None` without the
    /// global clip or before a step.
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_norm
    }

    /// The segment table the groups cover.
    pub fn segment_table(&self) -> &SegmentTable {
        &self.table
    }

    /// Number of algorithm groups.
    pub fn groups(&self) -> usize {
        self.members.len()
    }

    /// Group `g`'s optimizer: its lr, step count, host scalars and state (its tensors back
    /// to back, in segment order); [`Error::GroupIndex`] when `g >= groups()`.
    pub fn group(&self, g: usize) -> Result<&O> {
        let groups = self.members.len();
        self.members
            .get(g)
            .ok_or(Error::GroupIndex { index: g, groups })
    }

    /// Group `g`'s optimizer, to set its lr or gradient options (see the [module
    /// documentation](super)); [`Error::GroupIndex`] when `g >= groups()`.
    pub fn group_mut(&mut self, g: usize) -> Result<&mut O> {
        let groups = self.members.len();
        self.members
            .get_mut(g)
            .ok_or(Error::GroupIndex { index: g, groups })
    }

    /// Group `g`'s segments (increasing indices into the segment table);
    /// [`Error::GroupIndex`] when `g >= groups()`.
    pub fn group_segments(&self, g: usize) -> Result<&[usize]> {
        let groups = self.groups.len();
        self.groups
            .get(g)
            .map(|p| &p.members[..])
            .ok_or(Error::GroupIndex { index: g, groups })
    }

    /// Steps taken (group 0's count; every group steps once per step).
    pub fn step_count(&self) -> u64 {
        self.members[0].step_count()
    }

    /// Every group's lr from `schedule` at `epoch`, each over the lr its configuration was
    /// built with (`LrSchedule::lr_at(base, epoch)`). Checked for every group before any
    /// changes: on error nothing changes.
    pub fn set_schedule_epoch(&mut self, schedule: &LrSchedule, epoch: u64) -> Result<()> {
        let lrs = super::plan::scheduled_lrs(&self.groups, &self.base_lrs, schedule, epoch)?;
        for (member, lr) in self.members.iter_mut().zip(lrs) {
            member.set_lr(lr)?;
        }
        Ok(())
    }

    /// Save every group's state into the folder `dir` (see
    /// [`MixedGpuOptimizer::save_checkpoint`](super::MixedGpuOptimizer::save_checkpoint) for
    /// the layout; the files are interchangeable between the implementations).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        super::checkpoint::save(dir, &self.groups, &|k, path| {
            self.members[k].save_checkpoint(path)
        })
    }

    /// Load a checkpoint folder written by any mixed optimizer with the same groups (same
    /// algorithms, same segments, same shapes). Every group's file is validated before any
    /// group changes; on error nothing changes.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let members = &mut self.members;
        super::checkpoint::load(dir, &self.groups, &mut |k, path| {
            members[k].load_checkpoint(path)
        })
    }
}
