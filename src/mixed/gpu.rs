//! The mixed optimizer on the GPU: per group either a [`GpuOptimizer`] over the group's
//! segments (a per-tensor algorithm: its segmented kernel's chunk table lists only them, its
//! state holds only them) or a [`TensorOptimizer`] over the group's ranges of the params' and
//! gradients' buffers (an elementwise algorithm: the multi-tensor kernel, state only for
//! them). A step records every group into one command encoder: one submission.

use std::ops::Range;
use std::path::Path;

use super::plan::{plan, PlannedGroup};
use super::AlgorithmGroup;
use crate::checkpoint::{check_fits, check_host, OptimizerState, TensorValues};
use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::context::GpuContext;
use crate::gpu::optimizer::GpuOptimizer;
use crate::gpu::tensors::{BufferRange, TensorBinding, TensorOptimizer, TensorSpec};
use crate::optimizer::Optimizer;
use crate::schedule::LrSchedule;

/// How one group is stepped.
enum Member {
    /// An elementwise algorithm over the group's ranges of the params' buffers.
    Tensors(Box<TensorOptimizer>),
    /// A per-tensor algorithm over the group's segments.
    Segments(Box<GpuOptimizer>),
}

/// Per-group algorithms over one [`FlatParams`] (see the [module documentation](super)),
/// all groups in one submission per step.
///
/// The params must be built with
/// [`FlatParamsBuilder::binding_aligned`](crate::FlatParamsBuilder::binding_aligned) when a
/// group runs an elementwise algorithm: its kernel binds each tensor at its own offset.
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::mixed::{AlgorithmGroup, MixedGpuOptimizer};
/// use fused_optim::{AdamConfig, FlatParams, GpuContext, MuonConfig};
/// let ctx = GpuContext::new()?;
/// let params = FlatParams::builder()
///     .binding_aligned()
///     .shaped("embed", &[1000, 64], &vec![0.01; 64_000])
///     .shaped("hidden", &[64, 64], &vec![0.01; 4096])
///     .shaped("norm", &[64], &vec![1.0; 64])
///     .build(&ctx)?;
/// let groups = AlgorithmGroup::split(
///     params.segment_table(),
///     MuonConfig::default(),
///     AdamConfig::adamw(),
///     |k, shape| shape.len() == 2 && k != 0, // the embedding stays on AdamW
/// );
/// let mut opt = MixedGpuOptimizer::new(&params, &groups)?;
/// params.write_grads(&vec![0.001; params.len()])?;
/// opt.step()?; // one submission
/// # Ok(()) }
/// ```
pub struct MixedGpuOptimizer {
    ctx: GpuContext,
    params: FlatParams,
    groups: Vec<PlannedGroup>,
    members: Vec<Member>,
    base_lrs: Vec<f64>,
    /// The global gradient-norm clip, when set.
    clip: Option<super::clip::GpuClip>,
}

impl std::fmt::Debug for MixedGpuOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixedGpuOptimizer")
            .field("len", &self.params.len())
            .field("groups", &super::plan::summary(&self.groups))
            .finish()
    }
}

impl MixedGpuOptimizer {
    /// The groups over the segments of `params`. Fails as the groups' plan does (every
    /// segment in exactly one group, each algorithm accepting its tensors), with
    /// [`Error::TensorRange`] when an elementwise group's tensor does not start on
    /// the device's storage offset alignment (build the params binding-aligned), or as a
    /// group's optimizer does (a per-tensor algorithm's kernel limits).
    pub fn new(params: &FlatParams, groups: &[AlgorithmGroup]) -> Result<Self> {
        let ctx = params.context().clone();
        let planned = plan(params.segment_table(), groups)?;
        let align = u64::from(ctx.device().limits().min_storage_buffer_offset_alignment).max(16);
        let names: Vec<&str> = params.segments().iter().map(|s| s.name.as_str()).collect();
        let mut members = Vec::with_capacity(planned.len());
        for group in &planned {
            let member = if group.config.is_elementwise() {
                if let Some((&k, r)) = group
                    .members
                    .iter()
                    .zip(&group.ranges)
                    .find(|(_, r)| !(r.start as u64 * 4).is_multiple_of(align))
                {
                    return Err(Error::TensorRange {
                        tensor: names
                            .get(k)
                            .map_or_else(|| format!("#{k}"), |n| n.to_string()),
                        reason: format!(
                            "starts at element {}, not on the device's {align}-byte storage \
                             offset alignment, and its group ({}) runs an elementwise kernel \
                             that binds it there: build the params with \
                             FlatParamsBuilder::binding_aligned()",
                            r.start,
                            group.config.name()
                        ),
                    });
                }
                let specs: Vec<TensorSpec> = group
                    .members
                    .iter()
                    .zip(&group.ranges)
                    .map(|(&k, r)| TensorSpec {
                        name: names
                            .get(k)
                            .map_or_else(|| format!("#{k}"), |n| (*n).to_string()),
                        len: r.len(),
                        group: 0,
                    })
                    .collect();
                Member::Tensors(Box::new(TensorOptimizer::new(
                    &ctx,
                    &specs,
                    &[group.config],
                )?))
            } else {
                Member::Segments(Box::new(
                    GpuOptimizer::builder(params)
                        .config(group.config)
                        .members(group.members.clone())
                        .build()?,
                ))
            };
            members.push(member);
        }
        let base_lrs = planned
            .iter()
            .map(|g| g.config.initial_host_state().lr)
            .collect();
        Ok(Self {
            ctx,
            params: params.clone(),
            groups: planned,
            members,
            base_lrs,
            clip: None,
        })
    }

    /// One step of every group on the gradients in the params' grads buffer: all recorded
    /// into one encoder, one submission, nothing read back. Every group's own refusal (a
    /// Schedule-Free group in evaluation mode: [`Error::WrongMode`]) is checked before any
    /// group records anything, so such a step changes nothing; past that only a lost device
    /// fails it (nothing is submitted then).
    pub fn step(&mut self) -> Result<()> {
        let ctx = self.ctx.clone();
        ctx.submit_step("step", "fused-optim mixed step", |e| self.encode_step(e))
    }

    /// [`Self::step`] recorded into the caller's encoder (the caller submits).
    pub fn encode_step(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.ctx.check_alive("encode_step")?;
        for member in &self.members {
            match member {
                Member::Segments(opt) => opt.check_step()?,
                Member::Tensors(opt) => opt.check_step()?,
            }
        }
        if let Some(clip) = &self.clip {
            clip.encode(encoder);
        }
        let (pb, gb) = (self.params.params_buffer(), self.params.grads_buffer());
        for (group, member) in self.groups.iter().zip(&mut self.members) {
            match member {
                Member::Segments(opt) => opt.encode_step(encoder)?,
                Member::Tensors(opt) => {
                    let at = |buffer, r: &Range<usize>| BufferRange {
                        buffer,
                        byte_offset: r.start as u64 * 4,
                    };
                    let bindings: Vec<TensorBinding<'_>> = group
                        .ranges
                        .iter()
                        .map(|r| TensorBinding {
                            param: at(pb, r),
                            grad: at(gb, r),
                        })
                        .collect();
                    opt.encode_step(encoder, &bindings)?;
                }
            }
        }
        Ok(())
    }

    /// Clip the gradients of every group together by their global L2 norm at the start of
    /// each step (`torch.nn.utils.clip_grad_norm_(all params, max_norm)`: coef = min(1,
    /// max_norm / (norm + 1e-6))), in place in the params' grads buffer as torch scales
    /// `p.grad`, in the step's submission; `None` stops clipping. Builds its pipelines and
    /// tables here, not per step. [`Error::InvalidHyperParameter`] for a max_norm that is not
    /// finite and > 0; nothing changes then.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f64>) -> Result<()> {
        super::clip::check_max_norm(max_norm)?;
        self.clip = match max_norm {
            Some(m) => Some(super::clip::GpuClip::new(&self.params, m)?),
            None => None,
        };
        Ok(())
    }

    /// The global gradient norm of the last step (before clipping; reads back, waits),
    /// `None` without the global clip.
    pub fn last_grad_norm(&self) -> Result<Option<f64>> {
        self.clip.as_ref().map(|c| c.last_norm()).transpose()
    }

    /// The parameters.
    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    /// Number of algorithm groups.
    pub fn groups(&self) -> usize {
        self.members.len()
    }

    /// Group `g`'s segments (increasing indices into the segment table);
    /// [`Error::GroupIndex`] when `g >= groups()`.
    pub fn group_segments(&self, g: usize) -> Result<&[usize]> {
        self.member(g)?;
        Ok(&self.groups[g].members)
    }

    fn member(&self, g: usize) -> Result<&Member> {
        self.members.get(g).ok_or(Error::GroupIndex {
            index: g,
            groups: self.members.len(),
        })
    }

    /// Group `g`'s learning rate.
    pub fn group_lr(&self, g: usize) -> Result<f64> {
        Ok(match self.member(g)? {
            Member::Tensors(o) => o.lr(),
            Member::Segments(o) => o.lr(),
        })
    }

    /// Set group `g`'s learning rate (checked as its algorithm checks it).
    pub fn set_group_lr(&mut self, g: usize, lr: f64) -> Result<()> {
        self.member(g)?;
        match &mut self.members[g] {
            Member::Tensors(o) => o.set_lr(lr),
            Member::Segments(o) => o.set_lr(lr),
        }
    }

    /// Every group's lr from `schedule` at `epoch` over its configuration's lr, as
    /// [`MixedCpuOptimizer::set_schedule_epoch`](super::MixedCpuOptimizer::set_schedule_epoch).
    pub fn set_schedule_epoch(&mut self, schedule: &LrSchedule, epoch: u64) -> Result<()> {
        let lrs = super::plan::scheduled_lrs(&self.groups, &self.base_lrs, schedule, epoch)?;
        for (g, lr) in lrs.into_iter().enumerate() {
            self.set_group_lr(g, lr)?;
        }
        Ok(())
    }

    /// Steps taken (every group steps once per step).
    pub fn step_count(&self) -> u64 {
        match &self.members[0] {
            Member::Tensors(o) => o.step_count(),
            Member::Segments(o) => o.step_count(),
        }
    }

    /// Group `g`'s state tensor `name`, its tensors back to back in segment order (reads
    /// back; waits).
    pub fn group_state(&self, g: usize, name: &str) -> Result<Vec<f32>> {
        match self.member(g)? {
            Member::Segments(o) => o.read_state_f32(name),
            Member::Tensors(o) => {
                let mut out = Vec::with_capacity(self.groups[g].len());
                for t in 0..o.tensors() {
                    out.extend(o.read_tensor_state(name, t)?);
                }
                Ok(out)
            }
        }
    }

    /// Group `g`'s per-tensor scalar `name` (e.g. LAMB's `trust_ratio`), one per tensor of
    /// the group; `None` for an elementwise group or a name the algorithm does not report.
    pub fn group_segment_scalar(&self, g: usize, name: &str) -> Result<Option<Vec<f64>>> {
        match self.member(g)? {
            Member::Segments(o) => o.segment_scalar(name),
            Member::Tensors(_) => Ok(None),
        }
    }

    /// Save every group into the folder `dir`: `mixed.json` (format `fused-optim-mixed/1`:
    /// per group the algorithm, the segments, their shapes, the file and its CRC-32) and per
    /// group a standard [`checkpoint`](crate::checkpoint) of its algorithm over its tensors
    /// back to back (a new generation of files per save; the manifest is replaced
    /// atomically; the previous generation is removed after). Waits for submitted steps.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        super::checkpoint::save(dir, &self.groups, &|k, path| match &self.members[k] {
            Member::Segments(o) => o.save_checkpoint(path),
            Member::Tensors(o) => {
                let group = &self.groups[k];
                let tensors = o
                    .state_names()
                    .iter()
                    .map(|name| {
                        Ok((
                            name.to_string(),
                            TensorValues::F32(self.group_state(k, name)?),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                crate::checkpoint::save(
                    path,
                    &OptimizerState {
                        config: *o.config(),
                        host: o.host_states()[0],
                        n: group.len(),
                        tensors,
                        groups: Vec::new(),
                        shapes: group.shapes.clone(),
                    },
                )
            }
        })
    }

    /// Load a checkpoint folder written by any mixed optimizer with the same groups
    /// (algorithms, segments, shapes); everything is validated before any group changes.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let groups = &self.groups;
        let members = &mut self.members;
        super::checkpoint::load(dir, groups, &mut |k, path| match &mut members[k] {
            Member::Segments(o) => o.load_checkpoint(path),
            Member::Tensors(o) => {
                let group = &groups[k];
                let state = crate::checkpoint::load(path)?;
                check_fits(path, &state, &group.config, group.len(), &group.shapes)?;
                check_host(path, &state.config, &state.host)?;
                // The file's hyper-parameters, as the CPU paths and the per-tensor groups
                // take them (kernels built first: a failure changes nothing of this group).
                o.set_configs(&[state.config])?;
                for (name, values) in &state.tensors {
                    let values = values.to_f32();
                    let mut at = 0;
                    for (t, r) in group.ranges.iter().enumerate() {
                        o.write_tensor_state(name, t, &values[at..at + r.len()])?;
                        at += r.len();
                    }
                }
                o.set_host_states(&[state.host])
            }
        })
    }
}
