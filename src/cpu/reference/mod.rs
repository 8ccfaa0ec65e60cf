//! The CPU reference: scalar, f64 inside, written to read like `SEMANTICS.md`. Every other
//! implementation (the WGSL kernels, the fast CPU path) is checked against it.
//!
//! It shares nothing with the other paths but the config types: the step-dependent scalars
//! (bias corrections, clr, mu, the RAdam rectifier) are recomputed here from the formulas.

mod adadelta;
mod adafactor;
mod adagrad;
mod adam;
mod adamax;
pub mod blockwise8;
pub mod blockwise8_1state;
mod lamb;
mod lion;
mod muon;
mod nadam;
pub mod newton_schulz;
mod radam;
mod rmsprop;
mod schedule_free;
mod sgd;

use std::path::Path;

use crate::checkpoint::TensorValues;
use crate::error::{Error, Result};
use crate::grads::GradOptions;
use crate::optim::{
    with_algorithm, Algorithm, HostState, OptimizerConfig, StateLayout, MAX_HOST_SCALARS,
};
use crate::optimizer::Optimizer;
use crate::segments::{SegmentShape, SegmentTable};

impl OptimizerConfig {
    /// One step of the f64 reference.
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        with_algorithm!(self, c => ReferenceStep::reference_step(c, r, params, grads, states))
    }

    /// One per-tensor reference step over one segment (algorithms with
    /// `ELEMENTWISE = false`).
    fn reference_segment_step(
        &self,
        r: &ReferenceScalars,
        segment: &SegmentShape,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [&mut [f64]],
        scalars: &mut [f64],
    ) -> Result<()> {
        with_algorithm!(self, c => ReferenceStep::reference_segment_step(c, r, segment, params, grads, states, scalars))
    }

    /// The reference's train/eval switch.
    fn reference_mode_switch(
        &self,
        r: &mut ReferenceScalars,
        train: bool,
        params: &mut [f64],
        states: &mut [Vec<f64>],
    ) -> Result<()> {
        with_algorithm!(self, c => ReferenceStep::reference_mode_switch(c, r, train, params, states))
    }
}

/// The scalars of one reference step: the step number, the lr, whether the state has been
/// written before, and the algorithm's own scalars (NAdam's `mu_product`, ...), all f64 and
/// kept by the reference itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceScalars {
    /// The step being taken (1 on the first step).
    pub t: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Whether an earlier step (or a state load) has written the state tensors.
    pub state_written: bool,
    /// The algorithm's own scalars, in the order of `Algorithm::HOST_SCALARS`.
    pub own: [f64; MAX_HOST_SCALARS],
}

/// A per-tensor algorithm's flat reference step ([`ReferenceStep::reference_step`]): the
/// whole vector as one tensor of `shape` (whose element count is the vector's), stepped by
/// [`ReferenceStep::reference_segment_step`]; the optimizers step per segment instead.
pub(crate) fn step_whole_as_one_segment<C: ReferenceStep>(
    c: &C,
    r: &ReferenceScalars,
    shape: Vec<usize>,
    params: &mut [f64],
    grads: &[f64],
    states: &mut [Vec<f64>],
) -> Result<()> {
    let segment = SegmentShape { start: 0, shape };
    let mut views: Vec<&mut [f64]> = states.iter_mut().map(|s| &mut s[..]).collect();
    let mut scalars = vec![0.0; C::SEGMENT_SCALARS.len()];
    c.reference_segment_step(r, &segment, params, grads, &mut views, &mut scalars)
}

/// The f64 reference step of one algorithm, in `src/cpu/reference/<name>.rs`: written from
/// the reference implementation's formulas, one element at a time, sharing no arithmetic
/// with the uniform or the fast loops it checks. Every registered algorithm implements it
/// (the registry does not compile otherwise).
pub trait ReferenceStep: Algorithm {
    /// One step over every element; `states` are in `state_names` order.
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    );

    /// Per-tensor algorithms (`ELEMENTWISE = false`): one step over one segment of shape
    /// `segment.shape`; `params`, `grads` and `states` are that segment's elements. Writes
    /// the algorithm's `SEGMENT_SCALARS` into `scalars`. Elementwise algorithms are stepped
    /// by [`Self::reference_step`]; the default refuses ([`Error::Unsupported`]).
    fn reference_segment_step(
        &self,
        r: &ReferenceScalars,
        segment: &SegmentShape,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [&mut [f64]],
        scalars: &mut [f64],
    ) -> Result<()> {
        let _ = (r, segment, params, grads, states, scalars);
        Err(Error::Unsupported {
            optimizer: self.class_name(),
            feature: "per-tensor reference step",
        })
    }

    /// The train/eval mode switch of algorithms that have modes (to training when
    /// `train`); [`Error::Unsupported`] (the default) for the others.
    fn reference_mode_switch(
        &self,
        r: &mut ReferenceScalars,
        train: bool,
        params: &mut [f64],
        states: &mut [Vec<f64>],
    ) -> Result<()> {
        let _ = (r, train, params, states);
        Err(Error::Unsupported {
            optimizer: self.class_name(),
            feature: "train/eval modes",
        })
    }
}

/// A plain f64 implementation of every optimizer, one element at a time.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`). Its state is allocated fallibly
/// ([`Error::OutOfMemory`]).
#[derive(Clone, Debug)]
pub struct ReferenceOptimizer {
    config: OptimizerConfig,
    n: usize,
    lr: f64,
    scalars: ReferenceScalars,
    names: Vec<&'static str>,
    states: Vec<Vec<f64>>,
    grad_options: GradOptions,
    last_grad_norm: Option<f64>,
    last_skipped: bool,
    table: SegmentTable,
    /// Where each state tensor's part of each segment lies.
    layout: StateLayout,
    /// Per segment, the last step's `SEGMENT_SCALARS` (per-tensor algorithms).
    segment_scalars: Vec<Vec<f64>>,
}

impl ReferenceOptimizer {
    /// A fresh optimizer over tensors of `shapes`, back to back (per-tensor algorithms step
    /// each one as a tensor; [`Error::ShapeMismatch`]-style typed errors for empty or
    /// overflowing shapes, the algorithm's own for shapes it refuses).
    pub fn with_shapes(config: impl Into<OptimizerConfig>, shapes: &[Vec<usize>]) -> Result<Self> {
        let table = SegmentTable::contiguous(shapes)?;
        let config = config.into();
        with_algorithm!(&config, c => c.check_segments(&table))?;
        Self::allocate(config, table)
    }

    /// The segment table the optimizer steps by.
    pub fn segment_table(&self) -> &SegmentTable {
        &self.table
    }

    /// Per segment, the last step's value of the per-tensor scalar `name` (LAMB's
    /// `weight_norm`, `adam_norm`, `trust_ratio`); `None` for a name the algorithm does not
    /// report or before the first step.
    pub fn segment_scalar(&self, name: &str) -> Option<Vec<f64>> {
        let k = with_algorithm!(&self.config, c => segment_scalar_index(c, name))?;
        self.segment_scalars
            .iter()
            .map(|s| s.get(k).copied())
            .collect()
    }

    /// A fresh optimizer over `n` parameters (one 1-D tensor; see [`Self::with_shapes`]),
    /// state initialised as PyTorch does.
    pub fn new(config: impl Into<OptimizerConfig>, n: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if n == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        let table = SegmentTable::single(n)?;
        with_algorithm!(&config, c => c.check_segments(&table))?;
        Self::allocate(config, table)
    }

    /// The optimizer over `table`, its shapes checked by the caller.
    fn allocate(config: OptimizerConfig, table: SegmentTable) -> Result<Self> {
        config.validate()?;
        let n = table.len();
        let names = config.state_names();
        let layout = StateLayout::new(&config, &table);
        // Fallible allocation: Error::OutOfMemory instead of an abort.
        let states = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let len = layout.len(k);
                let mut v = Vec::new();
                v.try_reserve_exact(len).map_err(|e| Error::OutOfMemory {
                    during: "reference state allocation",
                    message: format!("{len} f64 ({e})"),
                })?;
                v.resize(len, config.initial_state_value(name));
                Ok(v)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut own = [0.0; MAX_HOST_SCALARS];
        for (slot, (_, initial)) in own.iter_mut().zip(config.host_scalars()) {
            *slot = *initial;
        }
        Ok(Self {
            segment_scalars: vec![Vec::new(); table.segments().len()],
            table,
            layout,
            lr: config.lr(),
            config,
            n,
            scalars: ReferenceScalars {
                t: 0,
                lr: config.lr(),
                state_written: false,
                own,
            },
            names,
            states,
            grad_options: GradOptions::default(),
            last_grad_norm: None,
            last_skipped: false,
        })
    }

    /// One of the algorithm's host scalars by name (NAdam's `"mu_product"`), in f64.
    pub fn host_scalar(&self, name: &str) -> Option<f64> {
        self.config
            .host_scalars()
            .iter()
            .position(|(n, _)| *n == name)
            .map(|k| self.scalars.own[k])
    }

    /// NAdam's `mu_product` (1 for other optimizers).
    pub fn mu_product(&self) -> f64 {
        self.host_scalar("mu_product").unwrap_or(1.0)
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`) or
    /// evaluation mode over `params`; [`Error::Unsupported`] for algorithms without modes.
    /// (Inherent, not in [`Optimizer`]: it takes the params.)
    pub fn set_train_mode(&mut self, params: &mut [f64], train: bool) -> Result<()> {
        if params.len() != self.n {
            return Err(Error::LengthMismatch {
                what: "params",
                expected: self.n,
                got: params.len(),
            });
        }
        self.config
            .reference_mode_switch(&mut self.scalars, train, params, &mut self.states)
    }

    /// One state tensor by PyTorch's name (f64, no copy).
    pub fn state(&self, name: &str) -> Result<&[f64]> {
        Ok(&self.states[self.config.state_index(name)?])
    }

    /// Replace the scalar state (step, lr, state written, the algorithm's scalars), as a
    /// checkpoint holds it.
    fn set_host_state(&mut self, host: &HostState) {
        self.lr = host.lr;
        self.scalars = ReferenceScalars {
            t: host.step,
            lr: host.lr,
            state_written: host.state_written,
            own: host.scalars,
        };
    }

    /// Whether a step may be taken now: the algorithm's own refusal (Schedule-Free in
    /// evaluation mode), [`Error::WrongMode`]; what [`Self::step`] checks first.
    pub fn check_step(&self) -> Result<()> {
        self.config.check_step(&self.host_state())
    }

    /// One step. `params` and `grads` must both have the optimizer's length.
    pub fn step(&mut self, params: &mut [f64], grads: &[f64]) -> Result<()> {
        for (what, len) in [("params", params.len()), ("grads", grads.len())] {
            if len != self.n {
                return Err(Error::LengthMismatch {
                    what,
                    expected: self.n,
                    got: len,
                });
            }
        }
        self.check_step()?;
        self.last_skipped = false;
        if self.grad_options.skip_nonfinite && grads.iter().any(|g| !g.is_finite()) {
            // Mixed precision: skip the whole step; nothing changes.
            self.last_skipped = true;
            return Ok(());
        }
        // Gradient pre-processing: g = clamp(g * scale, +-clip) * min(1, max_norm / (norm + 1e-6)).
        let o = self.grad_options;
        let clip = o.clip_value.unwrap_or(f64::INFINITY);
        let mut processed: Vec<f64> = grads
            .iter()
            .map(|&g| (g * o.grad_scale).clamp(-clip, clip))
            .collect();
        if let Some(max_norm) = o.max_norm {
            let norm = processed.iter().map(|g| g * g).sum::<f64>().sqrt();
            let coef = (max_norm / (norm + 1e-6)).min(1.0);
            processed.iter_mut().for_each(|g| *g *= coef);
            self.last_grad_norm = Some(norm);
        }
        let grads = &processed[..];
        self.scalars.t += 1;
        self.scalars.lr = self.lr;
        if self.config.is_elementwise() {
            self.config
                .reference_step(&mut self.scalars, params, grads, &mut self.states);
        } else {
            self.segmented_step(params, grads)?;
        }
        self.scalars.state_written = true;
        Ok(())
    }

    /// A per-tensor step: the global gradient scaling if the algorithm has one, then each
    /// segment on its own.
    fn segmented_step(&mut self, params: &mut [f64], grads: &[f64]) -> Result<()> {
        let clip = with_algorithm!(&self.config, c => c.global_grad_clip());
        let scaled: Vec<f64>;
        let grads = match clip {
            Some((max_norm, eps)) => {
                let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
                let s = (max_norm / (norm + eps)).min(1.0);
                scaled = grads.iter().map(|g| g * s).collect();
                &scaled[..]
            }
            None => grads,
        };
        let names = with_algorithm!(&self.config, c => segment_scalar_names(c));
        for (k, seg) in self.table.segments().iter().enumerate() {
            let r = seg.start..seg.end();
            let layout = &self.layout;
            let mut views: Vec<&mut [f64]> = self
                .states
                .iter_mut()
                .enumerate()
                .map(|(i, s)| &mut s[layout.range(i, k)])
                .collect();
            let mut scalars = vec![0.0; names.len()];
            self.config.reference_segment_step(
                &self.scalars,
                seg,
                &mut params[r.clone()],
                &grads[r],
                &mut views,
                &mut scalars,
            )?;
            self.segment_scalars[k] = scalars;
        }
        Ok(())
    }
}

impl Optimizer for ReferenceOptimizer {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.validate_lr(lr)?;
        self.lr = lr;
        Ok(())
    }

    fn step_count(&self) -> u64 {
        self.scalars.t
    }

    /// The host scalars in the form the other implementations report them.
    fn host_state(&self) -> HostState {
        let mut h = HostState::new(self.lr, self.config.host_scalars());
        h.step = self.scalars.t;
        h.state_written = self.scalars.state_written;
        h.scalars = self.scalars.own;
        h
    }

    fn state_names(&self) -> Vec<&'static str> {
        self.names.clone()
    }

    fn read_state(&self, name: &str) -> Result<Vec<f64>> {
        Ok(self.state(name)?.to_vec())
    }

    fn load_state(&mut self, name: &str, values: &[f64]) -> Result<()> {
        let k = self.config.state_index(name)?;
        if values.len() != self.layout.len(k) {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.layout.len(k),
                got: values.len(),
            });
        }
        self.states[k].copy_from_slice(values);
        if name == "momentum_buffer" {
            self.scalars.state_written = true;
        }
        Ok(())
    }

    fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        self.grad_options = options;
        Ok(())
    }

    fn grad_options(&self) -> GradOptions {
        self.grad_options
    }

    fn last_grad_norm(&self) -> Result<Option<f64>> {
        Ok(self.last_grad_norm)
    }

    fn last_step_skipped(&self) -> Result<bool> {
        Ok(self.last_skipped)
    }

    fn is_training(&self) -> bool {
        self.config.is_training(&self.host_state())
    }

    /// Saves the f64 state as F64 tensors (same format and metadata as the f32 paths).
    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let tensors = self
            .names
            .iter()
            .zip(&self.states)
            .map(|(name, s)| (name.to_string(), TensorValues::F64(s.clone())))
            .collect();
        crate::checkpoint::save(
            path,
            &crate::checkpoint::OptimizerState {
                config: self.config,
                host: self.host_state(),
                n: self.n,
                tensors,
                groups: Vec::new(),
                shapes: self.table.shapes(),
            },
        )
    }

    /// Loads F64 tensors as they are and F32 ones widened exactly.
    fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(path, &state, &self.config, self.n, &self.table.shapes())?;
        if !state.groups.is_empty() {
            return Err(Error::Checkpoint {
                file: path.display().to_string(),
                reason: "it holds parameter groups, which ReferenceOptimizer does not have".into(),
            });
        }
        for ((_, values), s) in state.tensors.iter().zip(self.states.iter_mut()) {
            *s = values.to_f64();
        }
        self.config = state.config;
        self.set_host_state(&state.host);
        Ok(())
    }
}

/// The names of an algorithm's per-tensor scalars.
fn segment_scalar_names<A: Algorithm>(_: &A) -> &'static [&'static str] {
    A::SEGMENT_SCALARS
}

/// The index of one of them.
fn segment_scalar_index<A: Algorithm>(_: &A, name: &str) -> Option<usize> {
    A::SEGMENT_SCALARS.iter().position(|n| *n == name)
}
