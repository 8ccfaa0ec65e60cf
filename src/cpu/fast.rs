//! The fast CPU path: the same configs, host scalars and order of operations as the WGSL
//! kernels, over `&mut [f32]`, split across threads (rayon) in contiguous chunks whose inner
//! loops the compiler vectorises.

#[cfg(feature = "ndarray")]
use ndarray::{ArrayBase, Data, DataMut, Dimension};
use rayon::prelude::*;

use super::blockwise8::Blockwise8State;
use super::segmented::SegmentedScratch;
use super::simd::{simd_level, SimdLevel};
use super::staggered::StaggeredVec;
use std::path::Path;

use crate::checkpoint::TensorValues;
use crate::error::{Error, Result};
use crate::grads::GradOptions;
use crate::optim::{
    with_algorithm, Algorithm, HostState, OptimizerConfig, StateFormat, StateLayout,
};
use crate::optimizer::Optimizer;
use crate::segments::SegmentTable;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
pub const CHUNK: usize = 1 << 15;

/// How many chunks the fast path splits `len` elements into (rayon's `par_chunks(CHUNK)`).
/// Pure usize arithmetic: lengths past 2^32 split correctly on 64-bit targets.
pub fn chunk_count(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// The elements of chunk `i` of `len` (`i < chunk_count(len)`): every chunk but the last holds
/// `CHUNK` elements.
pub fn chunk_range(len: usize, i: usize) -> std::ops::Range<usize> {
    let start = i * CHUNK;
    start..len.min(start + CHUNK)
}

/// Multi-threaded f32 optimizer over host slices. Same API shape as
/// [`GpuOptimizer`](crate::GpuOptimizer); state is kept inside. The control surface
/// (lr, state, gradient options, checkpoints) is the [`Optimizer`] trait; `step` and
/// `set_train_mode` take the caller's params and are inherent.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`); a step itself runs on rayon's pool.
/// **Memory:** [`CpuOptimizer::new`] allocates the state fallibly:
/// [`Error::OutOfMemory`] rather than an abort.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: OptimizerConfig,
    host: HostState,
    n: usize,
    names: Vec<&'static str>,
    states: Vec<StaggeredVec>,
    storage: Storage,
    grad_options: GradOptions,
    scratch: Vec<f32>,
    last_grad_norm: Option<f64>,
    last_skipped: bool,
    /// The tensors' starts and shapes (per-tensor algorithms step by them).
    table: SegmentTable,
    /// Where each state tensor's part of each segment lies.
    layout: StateLayout,
    /// Per segment, the last step's `SEGMENT_SCALARS` (per-tensor algorithms).
    segment_scalars: Vec<Vec<f64>>,
    segmented: SegmentedScratch,
}

/// Where the state tensors live: `states` (f32), or a compact format.
#[derive(Clone, Debug)]
enum Storage {
    /// f32 in `CpuOptimizer::states`.
    F32,
    /// bitsandbytes' block-wise 8-bit state (Adam/AdamW); `states` is empty.
    Blockwise8(Box<Blockwise8State>),
    /// bf16 bit patterns, one `Vec` per state tensor (Adam/AdamW); `states` is empty.
    Bf16(Vec<Vec<u16>>),
}

/// f32 to bf16 bits, rounded to nearest, ties to even: the GPU's `to_bf16`
/// (`shaders/bf16_round.wgsl`), `(bits + 0x7fff + ((bits >> 16) & 1)) >> 16`.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Builds a [`CpuOptimizer`] with options beyond [`CpuOptimizer::new`]: the tensors
/// (segments) the flat parameter vector is made of, and the [`StateFormat`].
///
/// ```
/// use fused_optim::{AdamConfig, CpuOptimizer, StateFormat};
/// // Three tensors; the first (5000 elements) gets 8-bit state, the small ones f32 state.
/// let mut opt = CpuOptimizer::builder(AdamConfig::adamw(), 5000 + 165 + 11)
///     .segments(&[5000, 165, 11])
///     .state_format(StateFormat::Blockwise8 { min_size: 4096 })
///     .build()?;
/// let mut p = vec![0.5f32; 5176];
/// opt.step(&mut p, &vec![0.1f32; 5176])?;
/// # Ok::<(), fused_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CpuOptimizerBuilder {
    config: OptimizerConfig,
    n: usize,
    segments: Option<Vec<usize>>,
    shapes: Option<Vec<Vec<usize>>>,
    format: StateFormat,
}

impl CpuOptimizerBuilder {
    /// The lengths of the tensors the flat parameter vector is the concatenation of (in
    /// order; they must sum to `n`, each > 0). Default: one tensor of `n` elements. Only
    /// [`StateFormat::Blockwise8`] uses them (per-tensor blocks and `min_size`).
    pub fn segments(mut self, lens: &[usize]) -> Self {
        self.segments = Some(lens.to_vec());
        self
    }

    /// The shapes of the tensors the flat parameter vector is the concatenation of (in
    /// order, back to back; their element counts must sum to `n`). Per-tensor algorithms
    /// (LAMB) step each tensor on its own; checkpoints record the shapes. Replaces
    /// [`Self::segments`] (whose lengths are 1-D shapes).
    pub fn shapes(mut self, shapes: &[Vec<usize>]) -> Self {
        self.shapes = Some(shapes.to_vec());
        self
    }

    /// How the state is stored (default [`StateFormat::F32`]).
    pub fn state_format(mut self, format: StateFormat) -> Self {
        self.format = format;
        self
    }

    /// Checks the options and allocates the state: [`Error::InvalidCombination`] for a
    /// format the algorithm does not have, [`Error::LengthMismatch`] when the segment lengths
    /// do not sum to `n`, [`Error::Empty`] for an empty segment.
    pub fn build(self) -> Result<CpuOptimizer> {
        self.config.validate()?;
        if self.n == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        let lens = self.segments.clone().unwrap_or_else(|| vec![self.n]);
        if lens.contains(&0) {
            return Err(Error::Empty { what: "segment" });
        }
        let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l));
        if total != Some(self.n) {
            return Err(Error::LengthMismatch {
                what: "segment lengths (sum)",
                expected: self.n,
                got: total.unwrap_or(usize::MAX),
            });
        }
        let shapes = match &self.shapes {
            Some(s) => s.clone(),
            None => lens.iter().map(|&l| vec![l]).collect(),
        };
        let table = SegmentTable::contiguous(&shapes)?;
        if table.len() != self.n {
            return Err(Error::SegmentTable {
                len: self.n,
                reason: format!("the shapes hold {} elements", table.len()),
            });
        }
        with_algorithm!(&self.config, c => c.check_segments(&table))?;
        if matches!(self.format, StateFormat::F32) {
            return CpuOptimizer::allocate(self.config, table);
        }
        let mut opt = self.build_storage(&lens)?;
        opt.segment_scalars = vec![Vec::new(); table.segments().len()];
        opt.layout = StateLayout::new(&opt.config, &table);
        opt.table = table;
        Ok(opt)
    }

    fn build_storage(self, lens: &[usize]) -> Result<CpuOptimizer> {
        match self.format {
            StateFormat::F32 => CpuOptimizer::allocate(self.config, SegmentTable::single(self.n)?),
            StateFormat::Bf16 => {
                if !matches!(self.config, OptimizerConfig::Adam(_)) {
                    return Err(Error::InvalidCombination {
                        optimizer: self.config.name(),
                        reason: "bf16 state (StateFormat::Bf16) is implemented for Adam/AdamW only",
                    });
                }
                let names = self.config.state_names();
                let mut states = Vec::with_capacity(names.len());
                for name in &names {
                    let mut v: Vec<u16> = Vec::new();
                    v.try_reserve_exact(self.n)
                        .map_err(|e| Error::OutOfMemory {
                            during: "CPU bf16 state",
                            message: format!("{} bytes: {e}", 2 * self.n),
                        })?;
                    v.resize(
                        self.n,
                        f32_to_bf16(self.config.initial_state_value(name) as f32),
                    );
                    states.push(v);
                }
                Ok(CpuOptimizer {
                    host: self.config.initial_host_state(),
                    config: self.config,
                    n: self.n,
                    names,
                    states: Vec::new(),
                    storage: Storage::Bf16(states),
                    grad_options: GradOptions::default(),
                    scratch: Vec::new(),
                    last_grad_norm: None,
                    last_skipped: false,
                    table: SegmentTable::single(self.n)?,
                    layout: StateLayout::new(&self.config, &SegmentTable::single(self.n)?),
                    segment_scalars: vec![Vec::new()],
                    segmented: SegmentedScratch::default(),
                })
            }
            StateFormat::Blockwise8 { min_size } => {
                match self.config {
                    OptimizerConfig::Adam(adam) => super::blockwise8::check_config(&adam)?,
                    // bitsandbytes' Lion8bit / SGD8bit (one state).
                    other => super::blockwise8::check_config_1state(&other)?,
                }
                let state = Blockwise8State::new(lens, min_size)?;
                Ok(CpuOptimizer {
                    host: self.config.initial_host_state(),
                    config: self.config,
                    n: self.n,
                    names: self.config.state_names(),
                    states: Vec::new(),
                    storage: Storage::Blockwise8(Box::new(state)),
                    grad_options: GradOptions::default(),
                    scratch: Vec::new(),
                    last_grad_norm: None,
                    last_skipped: false,
                    table: SegmentTable::single(self.n)?,
                    layout: StateLayout::new(&self.config, &SegmentTable::single(self.n)?),
                    segment_scalars: vec![Vec::new()],
                    segmented: SegmentedScratch::default(),
                })
            }
        }
    }
}

impl CpuOptimizer {
    /// A fresh optimizer over `n` parameters (one 1-D tensor: per-tensor algorithms that
    /// need shapes are built with [`Self::builder`] and
    /// [`CpuOptimizerBuilder::shapes`]).
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
        let layout = StateLayout::new(&config, &table);
        let names = config.state_names();
        // Slots 1, 2, 3: params and grads usually sit at slot 0 (see `StaggeredVec`).
        // Fallible allocation: a state that cannot be allocated is Error::OutOfMemory, not
        // an abort.
        let states = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                StaggeredVec::try_filled(
                    layout.len(k),
                    config.initial_state_value(name) as f32,
                    k + 1,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            host: config.initial_host_state(),
            config,
            n,
            names,
            states,
            storage: Storage::F32,
            grad_options: GradOptions::default(),
            scratch: Vec::new(),
            last_grad_norm: None,
            last_skipped: false,
            segment_scalars: vec![Vec::new(); table.segments().len()],
            table,
            layout,
            segmented: SegmentedScratch::default(),
        })
    }

    /// A builder with further options (segments, [`StateFormat`]) for `config` over `n`
    /// parameters.
    pub fn builder(config: impl Into<OptimizerConfig>, n: usize) -> CpuOptimizerBuilder {
        CpuOptimizerBuilder {
            config: config.into(),
            n,
            segments: None,
            shapes: None,
            format: StateFormat::F32,
        }
    }

    /// The state format this optimizer was built with.
    pub fn state_format(&self) -> StateFormat {
        match &self.storage {
            Storage::F32 => StateFormat::F32,
            Storage::Blockwise8(s) => StateFormat::Blockwise8 {
                min_size: s.min_size,
            },
            Storage::Bf16(_) => StateFormat::Bf16,
        }
    }

    /// The 8-bit state (bitsandbytes' per-tensor `state1`, `state2`, `absmax1`, `absmax2`),
    /// when built with [`StateFormat::Blockwise8`].
    pub fn blockwise8_state(&self) -> Option<&Blockwise8State> {
        match &self.storage {
            Storage::Blockwise8(s) => Some(s),
            Storage::F32 | Storage::Bf16(_) => None,
        }
    }

    /// Whether a step may be taken now: the algorithm's own refusal (Schedule-Free in
    /// evaluation mode), [`Error::WrongMode`]; what [`Self::step`] checks first.
    pub fn check_step(&self) -> Result<()> {
        self.config.check_step(&self.host)
    }

    /// One step over `params` with `grads` (both of the optimizer's length).
    ///
    /// Any slices work. For large models allocate them as
    /// [`StaggeredVec`]`::filled(n, x, 0)` (params) and `(n, x, 4)` (grads), the layout of the
    /// optimizer's own state: huge pages and staggered start addresses made Adam's step at
    /// 2^24 about 25% faster here (`BENCHMARKS.md`).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
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
        if self.grad_options.skip_nonfinite && grads.par_iter().any(|g| !g.is_finite()) {
            // Mixed precision: skip the whole step; nothing changes.
            self.last_skipped = true;
            return Ok(());
        }
        let grads = if self.grad_options == GradOptions::default() {
            grads
        } else {
            self.last_grad_norm = preprocess(&self.grad_options, grads, &mut self.scratch);
            &self.scratch[..]
        };
        match (&mut self.storage, &self.config) {
            (Storage::Blockwise8(state), OptimizerConfig::Lion(_) | OptimizerConfig::Sgd(_)) => {
                self.host.step += 1;
                let s = super::blockwise8::OneStateScalars::new(
                    &self.config,
                    self.host.step,
                    self.host.lr,
                );
                state.step_1state(&s, params, grads, simd_level());
                self.host.state_written = true;
            }
            (Storage::Blockwise8(state), OptimizerConfig::Adam(c)) => {
                self.host.step += 1;
                state.step(c, self.host.step, self.host.lr, params, grads, simd_level());
                self.host.state_written = true;
            }
            (Storage::Bf16(states), OptimizerConfig::Adam(c)) => {
                self.host.step += 1;
                let u = c.begin_step(&mut self.host);
                bf16_apply(&Step(c, &u), params, grads, states);
                self.host.state_written = true;
            }
            _ if !self.config.is_elementwise() => {
                self.host.step += 1;
                with_algorithm!(&self.config, c => super::segmented::segmented_step(
                    c,
                    &mut self.host,
                    &self.table,
                    &self.layout,
                    params,
                    grads,
                    &mut self.states,
                    &mut self.segmented,
                    &mut self.segment_scalars,
                    &super::segmented::FastChunks {
                        chunk: CHUNK,
                        avx2: simd_level() >= SimdLevel::Avx2,
                        avx512: simd_level() >= SimdLevel::Avx512,
                        run: run_chunk,
                    },
                ))?;
                self.host.state_written = true;
            }
            _ => self
                .config
                .cpu_step(&mut self.host, params, grads, &mut self.states),
        }
        Ok(())
    }

    /// The segment table the optimizer steps by.
    pub fn segment_table(&self) -> &SegmentTable {
        &self.table
    }

    /// Per segment, the last step's value of the per-tensor scalar `name` (LAMB's
    /// `weight_norm`, `adam_norm`, `trust_ratio`); `None` for a name the algorithm does not
    /// report, or before the first step.
    pub fn segment_scalar(&self, name: &str) -> Option<Vec<f64>> {
        let k = with_algorithm!(&self.config, c => scalar_index(c, name))?;
        self.segment_scalars
            .iter()
            .map(|s| s.get(k).copied())
            .collect()
    }

    /// One step over ndarray views (any shape, standard layout).
    #[cfg(feature = "ndarray")]
    pub fn step_array<S1, S2, D>(
        &mut self,
        params: &mut ArrayBase<S1, D>,
        grads: &ArrayBase<S2, D>,
    ) -> Result<()>
    where
        S1: DataMut<Elem = f32>,
        S2: Data<Elem = f32>,
        D: Dimension,
    {
        let g = grads
            .as_slice()
            .ok_or(Error::NotContiguous { what: "grads" })?;
        let p = params
            .as_slice_mut()
            .ok_or(Error::NotContiguous { what: "params" })?;
        self.step(p, g)
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`: the
    /// params hold y) or evaluation mode (`false`: x) over `params`, the optimizer's length.
    /// [`Error::Unsupported`] for algorithms without modes. (Inherent, not in
    /// [`Optimizer`]: it takes the params.)
    pub fn set_train_mode(&mut self, params: &mut [f32], train: bool) -> Result<()> {
        if params.len() != self.n {
            return Err(Error::LengthMismatch {
                what: "params",
                expected: self.n,
                got: params.len(),
            });
        }
        self.config
            .cpu_mode_switch(&mut self.host, train, params, &mut self.states)
    }

    /// One state tensor, as the optimizer keeps it (f32, no copy).
    /// [`Error::Unsupported`] for a compact [`StateFormat`] (use
    /// [`Optimizer::read_state`], which dequantises).
    pub fn state(&self, name: &str) -> Result<&[f32]> {
        let k = self.config.state_index(name)?;
        self.f32_storage("borrowing the state as f32 slices (use read_state)")?;
        Ok(&self.states[k])
    }

    fn f32_storage(&self, feature: &'static str) -> Result<()> {
        match self.storage {
            Storage::F32 => Ok(()),
            Storage::Blockwise8(_) | Storage::Bf16(_) => Err(Error::Unsupported {
                optimizer: self.config.name(),
                feature,
            }),
        }
    }

    /// Overwrite one state tensor with f32 values as they are; on error nothing changes.
    /// With [`StateFormat::Blockwise8`] the values are quantised as a step would, with
    /// [`StateFormat::Bf16`] rounded to bf16 (nearest even).
    pub fn load_state_f32(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let k = self.checked_state(name, values.len())?;
        match &mut self.storage {
            Storage::Blockwise8(state) => state.load_moments(k, values)?,
            Storage::Bf16(states) => {
                for (d, &x) in states[k].iter_mut().zip(values) {
                    *d = f32_to_bf16(x);
                }
            }
            Storage::F32 => self.states[k].copy_from_slice(values),
        }
        self.note_state_load(name);
        Ok(())
    }

    /// Start a step that is applied in pieces ([`Self::apply_piece`]): checks that a step
    /// may be taken, advances the step count and host scalars, and returns the host state
    /// the step's uniform is computed from. Gradient options do not apply (the caller
    /// produces final gradients).
    #[cfg(feature = "mpi")]
    pub(crate) fn begin_pieces(&mut self) -> Result<HostState> {
        self.f32_storage("stepping in pieces (ZeRO) with 8-bit or bf16 state")?;
        self.config.check_step(&self.host)?;
        let before = self.host;
        with_algorithm!(&self.config, c => {
            self.host.step += 1;
            let _ = c.begin_step(&mut self.host);
        });
        self.host.state_written = true;
        self.last_skipped = false;
        Ok(before)
    }

    /// Apply the step begun at `before` to the elements `range` of the optimizer:
    /// `params` are those elements' parameters, and `fill(offset, out)` writes the
    /// gradients of elements `range.start + offset ..` into `out` (a chunk at a time, in
    /// a per-thread buffer that stays in cache: the gradients never travel through memory),
    /// and `publish(offset, params)`, if given, is called with each chunk's updated
    /// parameters while they are in cache. Every element must be covered by exactly one
    /// piece per step.
    #[cfg(feature = "mpi")]
    pub(crate) fn apply_piece(
        &mut self,
        before: &HostState,
        params: &mut [f32],
        range: std::ops::Range<usize>,
        fill: &GradFill<'_>,
        publish: Option<&ChunkPublish<'_>>,
    ) {
        debug_assert_eq!(params.len(), range.len());
        let mut host = *before;
        let mut states: Vec<&mut [f32]> = self
            .states
            .iter_mut()
            .map(|s| &mut s[range.clone()])
            .collect();
        with_algorithm!(&self.config, c => {
            host.step += 1;
            let u = c.begin_step(&mut host);
            par_apply_produced(params, (fill, publish), &mut states, &Step(c, &u));
        });
    }

    fn checked_state(&self, name: &str, len: usize) -> Result<usize> {
        let k = self.config.state_index(name)?;
        if len != self.layout.len(k) {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.layout.len(k),
                got: len,
            });
        }
        Ok(k)
    }

    fn note_state_load(&mut self, name: &str) {
        if name == "momentum_buffer" {
            self.host.state_written = true;
        }
    }
}

impl Optimizer for CpuOptimizer {
    fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn lr(&self) -> f64 {
        self.host.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.config.validate_lr(lr)?;
        self.host.lr = lr;
        Ok(())
    }

    fn step_count(&self) -> u64 {
        self.host.step
    }

    fn host_state(&self) -> HostState {
        self.host
    }

    fn state_names(&self) -> Vec<&'static str> {
        self.names.clone()
    }

    fn read_state(&self, name: &str) -> Result<Vec<f64>> {
        if let Storage::Blockwise8(state) = &self.storage {
            let k = self.config.state_index(name)?;
            return Ok(state.moments(k).into_iter().map(f64::from).collect());
        }
        if let Storage::Bf16(states) = &self.storage {
            let k = self.config.state_index(name)?;
            return Ok(states[k]
                .iter()
                .map(|&h| f64::from(bf16_to_f32(h)))
                .collect());
        }
        Ok(self.state(name)?.iter().map(|&x| f64::from(x)).collect())
    }

    fn load_state(&mut self, name: &str, values: &[f64]) -> Result<()> {
        let k = self.checked_state(name, values.len())?;
        if !matches!(self.storage, Storage::F32) {
            let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
            return self.load_state_f32(name, &v);
        }
        for (s, &v) in self.states[k].iter_mut().zip(values) {
            *s = v as f32;
        }
        self.note_state_load(name);
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
        self.config.is_training(&self.host)
    }

    /// With [`StateFormat::Blockwise8`]: the 8-bit layout of [`super::q8_checkpoint`]
    /// (bitsandbytes' names per segment; Adam/AdamW, Lion and SGD).
    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        if let Storage::Blockwise8(state) = &self.storage {
            return super::q8_checkpoint::save(path, &self.config, &self.host, state);
        }
        let tensors = match &self.storage {
            // bf16 state widened exactly: the ordinary F32 format, loadable anywhere.
            Storage::Bf16(states) => self
                .names
                .iter()
                .zip(states)
                .map(|(name, s)| {
                    let v = s.iter().map(|&h| bf16_to_f32(h)).collect();
                    (name.to_string(), TensorValues::F32(v))
                })
                .collect(),
            _ => self
                .names
                .iter()
                .zip(&self.states)
                .map(|(name, s)| (name.to_string(), TensorValues::F32(s.to_vec())))
                .collect(),
        };
        crate::checkpoint::save(
            path,
            &crate::checkpoint::OptimizerState {
                config: self.config,
                host: self.host,
                n: self.n,
                tensors,
                groups: Vec::new(),
                shapes: self.table.shapes(),
            },
        )
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        if let Storage::Blockwise8(state) = &mut self.storage {
            let (config, host, loaded) = super::q8_checkpoint::load(path, &self.config, state)?;
            **state = loaded;
            self.config = config;
            self.host = host;
            return Ok(());
        }
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(path, &state, &self.config, self.n, &self.table.shapes())?;
        if !state.groups.is_empty() {
            return Err(Error::Checkpoint {
                file: path.display().to_string(),
                reason: "it holds parameter groups, which CpuOptimizer does not have".into(),
            });
        }
        match &mut self.storage {
            Storage::Bf16(states) => {
                for ((_, values), s) in state.tensors.iter().zip(states.iter_mut()) {
                    for (d, x) in s.iter_mut().zip(values.to_f32()) {
                        *d = f32_to_bf16(x);
                    }
                }
            }
            _ => {
                for ((_, values), s) in state.tensors.iter().zip(self.states.iter_mut()) {
                    s.copy_from_slice(&values.to_f32());
                }
            }
        }
        self.config = state.config;
        self.host = state.host;
        Ok(())
    }
}

/// `out = clamp(g * scale, +-clip) * coef` in parallel; returns the norm when norm clipping
/// is on. The norm sums fixed chunks in a fixed order (deterministic).
fn preprocess(o: &GradOptions, grads: &[f32], out: &mut Vec<f32>) -> Option<f64> {
    let control = o.control();
    let (scale, clip) = (control.inv_scale, control.clip_value);
    out.resize(grads.len(), 0.0);
    out.par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(o, g)| {
            for (o, g) in o.iter_mut().zip(g) {
                *o = (g * scale).clamp(-clip, clip);
            }
        });
    let max_norm = o.max_norm?;
    let partials: Vec<f64> = out
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .collect();
    let norm = partials.iter().sum::<f64>().sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
    out.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
    Some(norm)
}

/// The CPU roof (`roofline::cpu_roof`): `p += scale * (g + sum(states)); state += g` over
/// the same chunks, threads and vector code (AVX2 where available) as the optimizers.
#[cfg(feature = "roofline")]
#[derive(Clone, Copy)]
struct Roof(f32);

/// A per-chunk loop: an algorithm's `cpu_chunk` with its step's uniform, or the roof.
trait ChunkLoop: Sync + Send {
    /// The loop over one chunk; always inlined, so that it is compiled into both the SSE2
    /// and the AVX2 entry points.
    fn run(&self, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]);
}

#[cfg(feature = "roofline")]
impl ChunkLoop for Roof {
    #[inline(always)]
    fn run(&self, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        roof_chunk(self.0, p, g, s)
    }
}

/// An algorithm with the uniform of one step.
struct Step<'a, A: Algorithm>(&'a A, &'a A::Uniform);

impl<A: Algorithm> ChunkLoop for Step<'_, A> {
    #[inline(always)]
    fn run(&self, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        self.0.cpu_chunk(self.1, p, g, s)
    }
}

impl OptimizerConfig {
    /// One fast-CPU step over `params`, `grads` and the state tensors.
    pub(crate) fn cpu_step(
        &self,
        host: &mut HostState,
        params: &mut [f32],
        grads: &[f32],
        states: &mut [StaggeredVec],
    ) {
        host.step += 1;
        with_algorithm!(self, c => {
            let u = c.begin_step(host);
            apply(c, &u, params, grads, states);
        });
        host.state_written = true;
    }

    /// The fast-CPU train/eval switch: runs the pass when one is needed.
    pub(crate) fn cpu_mode_switch(
        &self,
        host: &mut HostState,
        train: bool,
        params: &mut [f32],
        states: &mut [StaggeredVec],
    ) -> Result<()> {
        with_algorithm!(self, c => {
            if let Some(u) = c.mode_switch(host, train)? {
                let zeros = vec![0.0f32; params.len()];
                apply(c, &u, params, &zeros, states);
            }
        });
        Ok(())
    }
}

/// The index of a per-tensor scalar of `A`.
fn scalar_index<A: Algorithm>(_: &A, name: &str) -> Option<usize> {
    A::SEGMENT_SCALARS.iter().position(|n| *n == name)
}

/// One chunk of algorithm `c`'s loop with uniform `u`, in the build of the fast path's SIMD
/// level (the per-tensor step's second pass).
pub(crate) fn run_chunk<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &mut [f32],
    g: &[f32],
    s: &mut [&mut [f32]],
) {
    run_at(simd_level(), &Step(c, u), p, g, s)
}

/// One step of algorithm `config` with uniform `u` over every chunk, in parallel.
pub(crate) fn apply<A: Algorithm>(
    config: &A,
    u: &A::Uniform,
    p: &mut [f32],
    g: &[f32],
    states: &mut [StaggeredVec],
) {
    par_apply(p, g, states, &Step(config, u))
}

/// The CPU roof: `p += scale * (g + sum(states)); state += g` over the same chunks, threads
/// and vector code (AVX2 where available) as the optimizers.
#[cfg(feature = "roofline")]
pub(crate) fn roof_step(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], scale: f32) {
    par_apply(p, g, states, &Roof(scale))
}

/// One step over bf16 state: per chunk, the state is widened to f32 (exact) into per-thread
/// buffers, the algorithm's f32 chunk loop runs unchanged (the GPU kernel's arithmetic),
/// and the state is stored back rounded to bf16 (nearest even, as the GPU stores it). The
/// params are updated with the unrounded f32 moments, as on the GPU. The per-thread buffers
/// are allocated once per thread for the life of the process (no per-step allocation).
fn bf16_apply<K: ChunkLoop>(k: &K, p: &mut [f32], g: &[f32], states: &mut [Vec<u16>]) {
    let level = simd_level();
    let run = move |p: &mut [f32], g: &[f32], s16: &mut [&mut [u16]]| {
        BF16_SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            let n = p.len();
            let [b0, b1, b2] = &mut *buf;
            let mut views: [&mut [f32]; 3] = [&mut b0[..n], &mut b1[..n], &mut b2[..n]];
            let views = &mut views[..s16.len()];
            for (b, s) in views.iter_mut().zip(s16.iter()) {
                for (d, &h) in b.iter_mut().zip(s.iter()) {
                    *d = bf16_to_f32(h);
                }
            }
            run_at(level, k, p, g, views);
            for (b, s) in views.iter().zip(s16.iter_mut()) {
                for (d, &x) in s.iter_mut().zip(b.iter()) {
                    *d = f32_to_bf16(x);
                }
            }
        })
    };
    let pg = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
    match states {
        [a, b] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), a), b)| run(p, g, &mut [a, b])),
        [a, b, c] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .zip(c.par_chunks_mut(CHUNK))
            .for_each(|((((p, g), a), b), c)| run(p, g, &mut [a, b, c])),
        _ => unreachable!("bf16 state is only kept for Adam (2 tensors) and AMSGrad (3)"),
    }
}

thread_local! {
    /// Per thread: three chunks of f32 state widened from bf16 (see [`bf16_apply`]).
    static BF16_SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> =
        std::cell::RefCell::new([vec![0.0; CHUNK], vec![0.0; CHUNK], vec![0.0; CHUNK]]);
}

fn par_apply<K: ChunkLoop>(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], k: &K) {
    let level = simd_level();
    par_chunks(p, g, states, move |p, g, s| run_at(level, k, p, g, s))
}

/// Writes the gradients of a chunk at an offset (`fill(offset, out)`).
#[cfg(feature = "mpi")]
pub(crate) type GradFill<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// Takes a chunk's updated parameters at an offset (`publish(offset, params)`).
#[cfg(feature = "mpi")]
pub(crate) type ChunkPublish<'a> = dyn Fn(usize, &[f32]) + Sync + 'a;

/// Per chunk: where its gradients come from, and where its updated parameters go as well.
#[cfg(feature = "mpi")]
type ChunkIo<'a> = (&'a GradFill<'a>, Option<&'a ChunkPublish<'a>>);

/// [`par_apply`] with gradients produced per chunk (the ZeRO step's fused reduction) and
/// the updated chunk published.
#[cfg(feature = "mpi")]
fn par_apply_produced<K: ChunkLoop>(
    p: &mut [f32],
    fill: ChunkIo<'_>,
    states: &mut [&mut [f32]],
    k: &K,
) {
    let level = simd_level();
    par_chunks_produced(p, fill, states, move |p, g, s| run_at(level, k, p, g, s))
}

#[cfg(feature = "mpi")]
fn par_chunks_produced<F>(
    p: &mut [f32],
    (fill, publish): ChunkIo<'_>,
    states: &mut [&mut [f32]],
    f: F,
) where
    F: Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync + Send,
{
    let run = |buf: &mut Vec<f32>, i: usize, p: &mut [f32], s: &mut [&mut [f32]]| {
        let g = &mut buf[..p.len()];
        fill(i * CHUNK, g);
        f(p, g, s);
        if let Some(publish) = publish {
            publish(i * CHUNK, p);
        }
    };
    let buffer = || vec![0.0f32; CHUNK];
    let pi = p.par_chunks_mut(CHUNK).enumerate();
    match states {
        [] => pi.for_each_init(buffer, |b, (i, p)| run(b, i, p, &mut [])),
        [a] => pi
            .zip(a.par_chunks_mut(CHUNK))
            .for_each_init(buffer, |b, ((i, p), a)| run(b, i, p, &mut [a])),
        [a, b] => pi
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .for_each_init(buffer, |buf, (((i, p), a), b)| run(buf, i, p, &mut [a, b])),
        [a, b, c] => pi
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .zip(c.par_chunks_mut(CHUNK))
            .for_each_init(buffer, |buf, ((((i, p), a), b), c)| {
                run(buf, i, p, &mut [a, b, c])
            }),
        _ => unreachable!("no optimizer has more than 3 state tensors"),
    }
}

/// The loop compiled for the baseline target (SSE2 on x86_64).
fn sse2<K: ChunkLoop>(k: &K, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
    k.run(p, g, s)
}

/// One chunk's loop in the code of `level` (from [`simd_level`], so never above what the CPU
/// has: see [`crate::cpu::simd`]).
#[inline(always)]
fn run_at<K: ChunkLoop>(level: SimdLevel, k: &K, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
    match level {
        // SAFETY: `simd_level` is never above `SimdLevel::detected()`, so the CPU has the
        // features these entry points are compiled for.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::avx512(k, p, g, s) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::avx2(k, p, g, s) },
        _ => sse2(k, p, g, s),
    }
}

/// The per-chunk loops compiled for AVX2 and for AVX-512: the same source as [`sse2`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    /// The kernel's loop compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<K: super::ChunkLoop>(k: &K, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        k.run(p, g, s)
    }

    /// The kernel's loop compiled for AVX-512 (F, VL, BW, DQ) with AVX2 + FMA.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub unsafe fn avx512<K: super::ChunkLoop>(
        k: &K,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        k.run(p, g, s)
    }
}

fn par_chunks<F>(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], f: F)
where
    F: Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync + Send,
{
    let pg = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
    match states {
        [] => pg.for_each(|(p, g)| f(p, g, &mut [])),
        [a] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .for_each(|((p, g), a)| f(p, g, &mut [a])),
        [a, b] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), a), b)| f(p, g, &mut [a, b])),
        [a, b, c] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .zip(c.par_chunks_mut(CHUNK))
            .for_each(|((((p, g), a), b), c)| f(p, g, &mut [a, b, c])),
        _ => unreachable!("no optimizer has more than 3 state tensors"),
    }
}

/// The roof's loop over one chunk.
#[cfg(feature = "roofline")]
#[inline(always)]
fn roof_chunk(scale: f32, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
    let n = p.len();
    let g = &g[..n];
    match s {
        [] => {
            for i in 0..n {
                p[i] += scale * g[i];
            }
        }
        [a] => {
            let a = &mut a[..n];
            for i in 0..n {
                p[i] += scale * (g[i] + a[i]);
                a[i] += g[i];
            }
        }
        [a, b] => {
            let (a, b) = (&mut a[..n], &mut b[..n]);
            for i in 0..n {
                p[i] += scale * (g[i] + a[i] + b[i]);
                a[i] += g[i];
                b[i] += g[i];
            }
        }
        [a, b, c, ..] => {
            let (a, b, c) = (&mut a[..n], &mut b[..n], &mut c[..n]);
            for i in 0..n {
                p[i] += scale * (g[i] + a[i] + b[i] + c[i]);
                a[i] += g[i];
                b[i] += g[i];
                c[i] += g[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `chunk_count` / `chunk_range` describe the split `par_chunks` makes.
    #[test]
    fn chunk_helpers_match_rayon() {
        for len in [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5] {
            let v = vec![0u8; len];
            let got: Vec<(usize, usize)> = v
                .par_chunks(CHUNK)
                .map(|c| (c.as_ptr() as usize - v.as_ptr() as usize, c.len()))
                .collect();
            let want: Vec<(usize, usize)> = (0..chunk_count(len))
                .map(|i| {
                    let r = chunk_range(len, i);
                    (r.start, r.len())
                })
                .collect();
            assert_eq!(got, want, "len {len}");
        }
    }
}
