//! [`ShardedOptimizer`]: ZeRO-1/2 over an MPI communicator.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use mpi::traits::Communicator;
use rayon::prelude::*;

use super::checkpoint::{load_range, save_shard, shard_set, ShardInfo};
use super::comm::{count, Collectives};
use super::layout::{shard_error, ShardLayout, ShardPlan};
use super::reduce::{reduce_in_rank_order, reduce_range, GradReduction};
use super::shm::SharedBuffers;
use crate::checkpoint::{OptimizerState, TensorValues};
use crate::cpu::fast::CHUNK;
use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::context::GpuContext;
use crate::grads::GradOptions;
use crate::optim::OptimizerConfig;
use crate::optimizer::Optimizer;
use crate::{CpuOptimizer, GpuOptimizer};

/// Which ZeRO stage: what each rank keeps of the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZeroStage {
    /// ZeRO-1: optimizer state sharded; the reduced gradients kept whole on every rank (an
    /// all-reduce: the reduce-scatter followed by an all-gather of the reduced gradients;
    /// [`ShardedOptimizer::reduced_grads`] gives all `n`).
    One,
    /// ZeRO-2: optimizer state and reduced gradients sharded (only this rank's `len`
    /// reduced gradients are kept; half the communication of ZeRO-1).
    #[default]
    Two,
}

/// Where each rank's shard is updated.
#[derive(Clone, Debug, Default)]
pub enum ShardBackend {
    /// The fast CPU path ([`CpuOptimizer`]) on this process's rayon pool.
    #[default]
    Cpu,
    /// The WGSL kernels ([`GpuOptimizer`]) on this device. The shard's reduced gradients are
    /// written to the device and its updated parameters read back every step (staging through
    /// host memory: the collectives run on host buffers).
    Gpu(Box<GpuContext>),
}

/// The sharding options.
#[derive(Clone, Debug)]
pub struct ZeroConfig {
    /// ZeRO-1 or ZeRO-2 (default).
    pub stage: ZeroStage,
    /// How the elements are split (default: whole segments per rank).
    pub layout: ShardLayout,
    /// Mean (default) or sum over ranks.
    pub reduction: GradReduction,
    /// Longest a collective may wait for the peers before [`Error::CollectiveTimeout`]
    /// (default 60 s).
    pub timeout: Duration,
    /// Elements per rank and round of the reduce-scatter (default 2^20): the receive buffer
    /// holds `world * bucket`.
    pub bucket: usize,
    /// Where the shard is updated (default: the CPU).
    pub backend: ShardBackend,
    /// How gradients and parameters move between ranks (default: shared memory on one
    /// node, messages otherwise).
    pub transport: Transport,
}

impl Default for ZeroConfig {
    fn default() -> Self {
        Self {
            stage: ZeroStage::Two,
            layout: ShardLayout::Segments,
            reduction: GradReduction::Mean,
            timeout: Duration::from_secs(60),
            bucket: 1 << 20,
            backend: ShardBackend::Cpu,
            transport: Transport::Auto,
        }
    }
}

/// How the ranks exchange gradients and parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Shared memory when every rank is on this node, messages otherwise (default).
    #[default]
    Auto,
    /// MPI messages (`MPI_Ialltoallv`, point-to-point), whatever the placement.
    Messages,
    /// An MPI shared-memory window: each rank reads the others' gradients of its shard in
    /// place, and the node keeps one copy of the parameters that each rank updates its
    /// shard of in place (no copies through MPI; [`ShardedOptimizer::params_mut`] on one
    /// rank then changes what every rank sees). [`Error::Shard`] if the ranks are not all
    /// on one node.
    SharedMemory,
}

/// Where the full parameters and the local gradients live.
enum Storage {
    /// In this process's memory (the messages transport).
    Owned { params: Vec<f32>, grads: Vec<f32> },
    /// In the node's shared window.
    Shared(SharedBuffers),
}

impl Storage {
    fn sync(&self) {
        if let Self::Shared(s) = self {
            s.sync();
        }
    }

    fn params(&self) -> &[f32] {
        match self {
            Self::Owned { params, .. } => params,
            Self::Shared(s) => s.params(),
        }
    }

    fn params_mut(&mut self) -> &mut [f32] {
        match self {
            Self::Owned { params, .. } => params,
            Self::Shared(s) => s.params_mut(),
        }
    }

    fn grads_mut(&mut self) -> &mut [f32] {
        match self {
            Self::Owned { grads, .. } => grads,
            Self::Shared(s) => s.grads_mut(),
        }
    }
}

/// The optimizer of one rank's shard.
enum Inner {
    Cpu(Box<CpuOptimizer>),
    Gpu {
        params: Box<FlatParams>,
        opt: Box<GpuOptimizer>,
        /// The host params of the shard changed since the device copy was written.
        stale: bool,
    },
}

impl Inner {
    fn optimizer(&self) -> &dyn Optimizer {
        match self {
            Self::Cpu(o) => o.as_ref(),
            Self::Gpu { opt, .. } => opt.as_ref(),
        }
    }

    fn optimizer_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            Self::Cpu(o) => o.as_mut(),
            Self::Gpu { opt, .. } => opt.as_mut(),
        }
    }

    /// One update of `params` (the shard) with `grads` (its reduced gradients).
    fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        match self {
            Self::Cpu(o) => o.step(params, grads),
            Self::Gpu {
                params: device,
                opt,
                stale,
            } => {
                if *stale {
                    device.write_params(params)?;
                    *stale = false;
                }
                device.write_grads(grads)?;
                opt.step()?;
                params.copy_from_slice(&device.read_params()?);
                Ok(())
            }
        }
    }
}

/// A data-parallel optimizer with ZeRO-1/2 state sharding over an MPI communicator.
///
/// Every rank holds the full parameters and computes gradients for its own data. A step
/// ([`Self::step_with`]):
///
/// 1. runs the caller's gradient closure on the local gradient buffer (a failure or panic
///    there is told to every rank: this rank returns [`Error::LocalFailure`], the others
///    [`Error::PeerFailed`], and nothing changes anywhere);
/// 2. reduce-scatters the gradients: rank r receives every rank's gradients of its shard
///    `[offset_r, offset_r + len_r)` and reduces them in rank order (mean by default;
///    deterministic, see [`reduce`](super::reduce)); ZeRO-1 then all-gathers the reduced
///    gradients;
/// 3. applies the gradient options to the reduced shard as the single-process optimizer
///    does (unscale, value clip, `skip_nonfinite` decided by all ranks together, norm
///    clipping over the global norm from every rank's per-chunk partial sums);
/// 4. updates the shard's parameters and state (`len` elements: 1/R of the state) on the
///    CPU or the GPU, and tells the other ranks whether that worked;
/// 5. all-gathers the updated parameters.
///
/// For elementwise algorithms the result is bit-identical to the single-process optimizer
/// stepping the rank-order mean of the ranks' gradients (`tests/zero.rs` under `mpirun`).
/// Every collective times out ([`ZeroConfig::timeout`]); after a timeout the optimizer is
/// poisoned (its buffers are given up to MPI, which may still write them).
pub struct ShardedOptimizer {
    comm: Collectives,
    plan: ShardPlan,
    zero: ZeroConfig,
    config: OptimizerConfig,
    store: Storage,
    /// The reduced gradients: this shard's (`len`, ZeRO-2) or all (`n`, ZeRO-1).
    reduced: Vec<f32>,
    /// The shard's processed gradients (with gradient options).
    shard_grads: Vec<f32>,
    scratch: Vec<f32>,
    inner: Inner,
    grad_options: GradOptions,
    last_grad_norm: Option<f64>,
    last_skipped: bool,
    timings: StepTimings,
    poisoned: bool,
}

/// Where the last step's time went (wall clock on this rank), for profiling and the `zero`
/// example's benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimings {
    /// The gradient closure and the failure agreement.
    pub gradients: Duration,
    /// The reduce-scatter (ZeRO-1: and the all-gather of the reduced gradients).
    pub reduce_scatter: Duration,
    /// Gradient options and the shard update (and its agreement).
    pub update: Duration,
    /// The all-gather of the parameters.
    pub all_gather: Duration,
}

impl StepTimings {
    /// The communication: reduce-scatter and all-gather.
    pub fn communication(&self) -> Duration {
        self.reduce_scatter + self.all_gather
    }
}

/// Which gradients the shard update takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShardGrads {
    /// None: the step is skipped.
    Skip,
    /// The reduced gradients as they are.
    Reduced,
    /// `shard_grads`: unscaled and clipped.
    Processed,
}

/// Status words of the exchanges.
const OK: i32 = 0;
const FAILED: i32 = 1;

impl ShardedOptimizer {
    /// A sharded optimizer over `comm` (duplicated: its traffic never mixes with the
    /// caller's), for `params` (this rank's copy of all of them, identical on every rank)
    /// made of segments of `segment_lens` (back to back; `&[params.len()]` for one flat
    /// tensor). Collective: every rank must call it with the same sizes, configuration and
    /// options, which is checked ([`Error::Shard`] on every rank otherwise).
    ///
    /// Errors: the configuration's own, [`Error::Shard`] for a plan that cannot be made
    /// (an aligned layout for a per-tensor algorithm, more ranks than work), lengths that
    /// disagree, MPI counts past `i32::MAX`, and the backend's (device, memory).
    pub fn new(
        comm: &impl Communicator,
        config: impl Into<OptimizerConfig>,
        params: Vec<f32>,
        segment_lens: &[usize],
        zero: ZeroConfig,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let comm = Collectives::new(comm, zero.timeout);
        let n = params.len();
        let local = (|| {
            if segment_lens.iter().sum::<usize>() != n {
                return Err(Error::LengthMismatch {
                    what: "segment lengths (sum)",
                    expected: n,
                    got: segment_lens.iter().sum(),
                });
            }
            if n > i32::MAX as usize {
                return Err(Error::TooManyElements {
                    what: "sharded parameters (MPI counts are C ints)",
                    len: n as u64,
                    limit: i32::MAX as u64,
                });
            }
            if zero.bucket == 0 {
                return Err(shard_error("a bucket of 0 elements"));
            }
            if !config.is_elementwise() {
                // A shard's optimizer does not know the tensors' shapes yet: refused rather
                // than a trust ratio over a shard.
                return Err(shard_error(format!(
                    "{} is a per-tensor algorithm: ZeRO does not shard those yet",
                    config.name()
                )));
            }
            if matches!(zero.layout, ShardLayout::Aligned { .. }) && !config.is_elementwise() {
                return Err(shard_error(format!(
                    "{} is not elementwise: shard it by whole segments (ShardLayout::Segments)",
                    config.name()
                )));
            }
            ShardPlan::new(zero.layout, segment_lens, comm.world)
        })();
        // Every rank must have made the same plan of the same problem: compare a digest.
        let digest = plan_digest(&config, &zero, segment_lens, local.as_ref().ok());
        let digests = comm.exchange_status(digest)?;
        let plan = local?;
        if digests.iter().any(|&d| d != digest) {
            return Err(shard_error(format!(
                "the ranks disagree on sizes, configuration or options (digests {digests:?})"
            )));
        }
        let range = plan.at(comm.rank);
        let inner = (|| {
            Ok(match &zero.backend {
                ShardBackend::Cpu => Inner::Cpu(Box::new(CpuOptimizer::new(config, range.len())?)),
                ShardBackend::Gpu(ctx) => {
                    let device = FlatParams::from_slice(ctx, &params[range.clone()])?;
                    let opt = GpuOptimizer::new(&device, config)?;
                    Inner::Gpu {
                        params: Box::new(device),
                        opt: Box::new(opt),
                        stale: false,
                    }
                }
            })
        })();
        // A rank whose shard optimizer could not be made (memory, device) must not leave the
        // others waiting in the window's collective allocation below.
        let all = comm.exchange_status(if inner.is_err() { FAILED } else { OK })?;
        let inner = inner?;
        let failed: Vec<usize> = (0..all.len()).filter(|&r| all[r] != OK).collect();
        if !failed.is_empty() {
            return Err(Error::PeerFailed {
                ranks: failed,
                phase: "construction",
            });
        }
        let store = match zero.transport {
            Transport::Messages => None,
            Transport::Auto | Transport::SharedMemory => comm.shared_buffers(&params),
        };
        let store = match (store, zero.transport) {
            (Some(shared), _) => Storage::Shared(shared),
            (None, Transport::SharedMemory) => {
                return Err(shard_error(
                    "Transport::SharedMemory: the ranks are not all on one node",
                ))
            }
            (None, _) => Storage::Owned {
                params,
                grads: vec![0.0; n],
            },
        };
        if let Storage::Shared(shared) = &store {
            // Rank 0 wrote the node's parameters: nobody reads them before this barrier.
            shared.sync();
            comm.exchange_status(OK)?;
            shared.sync();
        }
        Ok(Self {
            comm,
            config,
            store,
            reduced: Vec::new(),
            shard_grads: Vec::new(),
            scratch: Vec::new(),
            plan,
            zero,
            inner,
            grad_options: GradOptions::default(),
            last_grad_norm: None,
            last_skipped: false,
            timings: StepTimings::default(),
            poisoned: false,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank
    }

    /// The shard plan (every rank's range).
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// This rank's elements.
    pub fn shard(&self) -> Range<usize> {
        self.plan.at(self.comm.rank)
    }

    /// The sharding options.
    pub fn zero_config(&self) -> &ZeroConfig {
        &self.zero
    }

    /// All parameters (identical on every rank after a step).
    pub fn params(&self) -> &[f32] {
        self.store.params()
    }

    /// All parameters, to change. With messages every rank holds its own copy: make the
    /// same change on every rank (they are not exchanged until the next step's all-gather,
    /// and only the shard owner's values win). In shared memory the node's ranks share one
    /// copy: change it on one rank only, between steps (two ranks writing it at once race).
    pub fn params_mut(&mut self) -> &mut [f32] {
        if let Inner::Gpu { stale, .. } = &mut self.inner {
            *stale = true;
        }
        self.store.params_mut()
    }

    /// The local gradient buffer (all `n`), for [`Self::step`].
    pub fn grads_mut(&mut self) -> &mut [f32] {
        self.store.grads_mut()
    }

    /// Whether the ranks exchange through a shared-memory window (all on one node, with
    /// [`Transport::Auto`] or [`Transport::SharedMemory`]).
    pub fn uses_shared_memory(&self) -> bool {
        matches!(self.store, Storage::Shared(_))
    }

    /// The reduced gradients of the last step: all `n` with ZeRO-1, this rank's shard with
    /// ZeRO-2 (before the gradient options are applied); empty when the reduction was fused
    /// into the update (ZeRO-2 on the CPU without gradient options: they never exist whole).
    pub fn reduced_grads(&self) -> &[f32] {
        &self.reduced
    }

    /// Bytes of optimizer state this rank holds (f32 state tensors of its shard).
    pub fn state_bytes(&self) -> usize {
        self.config.state_names().len() * self.shard().len() * 4
    }

    /// Bytes of gradient buffers this rank holds: the local gradients, the reduced ones
    /// (`n` with ZeRO-1, `len` with ZeRO-2) and the shard's processed copy.
    pub fn gradient_bytes(&self) -> usize {
        (self.plan.n() + self.reduced.len() + self.shard_grads.len() + self.scratch.len()) * 4
    }

    /// One step with the gradients already in [`Self::grads_mut`]. Collective.
    pub fn step(&mut self) -> Result<()> {
        self.check_usable()?;
        let result = self.finish_step(None, Instant::now());
        self.poison_on_timeout(result)
    }

    /// One step: `compute` fills this rank's local gradients (the buffer is zeroed first),
    /// then the reduce-scatter, the shard update and the all-gather follow (see the type's
    /// documentation). Collective: every rank must call it.
    pub fn step_with<E: std::fmt::Display>(
        &mut self,
        compute: impl FnOnce(&mut [f32]) -> std::result::Result<(), E>,
    ) -> Result<()> {
        self.check_usable()?;
        let start = Instant::now();
        let grads = self.store.grads_mut();
        grads.par_iter_mut().for_each(|g| *g = 0.0);
        let local = match catch_unwind(AssertUnwindSafe(|| compute(grads))) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(panic_message(&panic)),
        };
        let result = self.finish_step(local, start);
        self.poison_on_timeout(result)
    }

    fn poison_on_timeout(&mut self, result: Result<()>) -> Result<()> {
        if matches!(result, Err(Error::CollectiveTimeout { .. })) {
            self.poison();
        }
        result
    }

    /// The step after the local gradients: `local` is this rank's failure in computing them.
    fn finish_step(&mut self, local: Option<String>, start: Instant) -> Result<()> {
        self.store.sync();
        self.agree(local, "gradients")?;
        self.store.sync();
        let t_reduce = Instant::now();
        if self.fused() {
            return self.fused_step(t_reduce, start);
        }
        let range = self.shard();
        let reduced_len = match self.zero.stage {
            ZeroStage::One => self.plan.n(),
            ZeroStage::Two => range.len(),
        };
        self.reduced.resize(reduced_len, 0.0);
        let reduced_shard = match self.zero.stage {
            ZeroStage::Two => &mut self.reduced[..],
            ZeroStage::One => &mut self.reduced[range.clone()],
        };
        match &self.store {
            Storage::Owned { grads, .. } => self.comm.reduce_scatter(
                &self.plan,
                grads,
                reduced_shard,
                &mut self.scratch,
                self.zero.bucket,
                self.zero.reduction,
            )?,
            Storage::Shared(shared) => {
                // SAFETY: between the barrier after the gradients and the one after the
                // update: nobody writes gradients.
                let parts = unsafe { shared.all_peer_grads(range.clone()) };
                reduce_in_rank_order(&parts, reduced_shard, self.zero.reduction)?;
            }
        }
        if self.zero.stage == ZeroStage::One {
            self.comm
                .all_gather_in_place(&self.plan, &mut self.reduced)?;
        }
        let t_update = Instant::now();
        self.timings = StepTimings {
            gradients: t_reduce - start,
            reduce_scatter: t_update - t_reduce,
            ..StepTimings::default()
        };
        let grads = self.preprocess()?;
        if grads == ShardGrads::Skip {
            // (The skip decision was a barrier after every rank's last read of gradients.)
            self.last_skipped = true;
            self.timings.update = t_update.elapsed();
            return Ok(());
        }
        self.last_skipped = false;
        let grads = match (grads, self.zero.stage) {
            (ShardGrads::Processed, _) => &self.shard_grads[..],
            (_, ZeroStage::Two) => &self.reduced[..],
            (_, ZeroStage::One) => &self.reduced[range.clone()],
        };
        let update = self
            .inner
            .step(&mut self.store.params_mut()[range.clone()], grads);
        self.finish_update(update, t_update, false)
    }

    /// The all-gather after the shard update (`update`: its result), and the agreement on
    /// it: with messages, agree then gather; in shared memory, store into the peers' params
    /// (only if this rank's update worked), then agree (the barrier that ends the step).
    /// `published`: the shard's params are already in the peers' (shared memory).
    fn finish_update(
        &mut self,
        update: Result<()>,
        t_update: Instant,
        published: bool,
    ) -> Result<()> {
        let range = self.shard();
        let local = update.err().map(|e| e.to_string());
        let t_gather = Instant::now();
        self.timings.update = t_gather - t_update;
        match &mut self.store {
            Storage::Owned { params, .. } => {
                agree_on(&self.comm, local, "update")?;
                let t_gather = Instant::now();
                self.comm.all_gather_in_place(&self.plan, params)?;
                self.timings.all_gather = t_gather.elapsed();
            }
            Storage::Shared(shared) => {
                if local.is_none() && !published {
                    shared.publish_shard(range);
                }
                shared.sync();
                self.timings.all_gather = t_gather.elapsed();
                agree_on(&self.comm, local, "update")?;
                shared.sync();
            }
        }
        Ok(())
    }

    /// Whether the step fuses the reduction into the update: ZeRO-2 on the CPU without
    /// gradient options. Each chunk of the shard's contributions is then reduced into a
    /// cache-resident buffer the update reads at once, so the reduced gradients never go
    /// through memory (and are not kept: [`Self::reduced_grads`] is empty).
    fn fused(&self) -> bool {
        let o = self.grad_options;
        matches!(self.inner, Inner::Cpu(_))
            && self.zero.stage == ZeroStage::Two
            && o.clip_value.is_none()
            && o.max_norm.is_none()
            && o.grad_scale == 1.0
            && !o.skip_nonfinite
    }

    fn fused_step(&mut self, t_reduce: Instant, start: Instant) -> Result<()> {
        let Inner::Cpu(cpu) = &mut self.inner else {
            unreachable!("fused() checked the backend");
        };
        let begun = cpu.begin_pieces();
        agree_on(
            &self.comm,
            begun.as_ref().err().map(|e| e.to_string()),
            "update",
        )?;
        let before = begun?;
        let range = self.plan.at(self.comm.rank);
        let reduction = self.zero.reduction;
        self.reduced.clear();
        self.last_skipped = false;
        let mut waited = Duration::ZERO;
        let mut published = false;
        match &mut self.store {
            Storage::Owned { params, grads } => {
                let params = &mut params[range];
                let mut t_bucket = Instant::now();
                self.comm.exchange_buckets(
                    &self.plan,
                    grads,
                    &mut self.scratch,
                    self.zero.bucket,
                    |offset, parts| {
                        waited += t_bucket.elapsed();
                        let len = parts[0].len();
                        let fill =
                            |at: usize, out: &mut [f32]| reduce_range(parts, at, out, reduction);
                        cpu.apply_piece(
                            &before,
                            &mut params[offset..offset + len],
                            offset..offset + len,
                            &fill,
                            None,
                        );
                        t_bucket = Instant::now();
                    },
                )?;
                waited += t_bucket.elapsed();
            }
            Storage::Shared(shared) => {
                // SAFETY: between the barriers of the step: nobody writes gradients, and
                // peers write only outside this rank's shard.
                let parts = unsafe { shared.all_peer_grads(range.clone()) };
                let params = unsafe { shared.own_params_mut(range.clone()) };
                let fill = |at: usize, out: &mut [f32]| reduce_range(&parts, at, out, reduction);
                let shared = &*shared;
                let start = range.start;
                // SAFETY: within this rank's shard, in the update phase.
                let publish = |at: usize, values: &[f32]| unsafe {
                    shared.publish_values(start + at, values)
                };
                cpu.apply_piece(&before, params, 0..range.len(), &fill, Some(&publish));
                published = true;
            }
        }
        let t_update = Instant::now();
        self.timings = StepTimings {
            gradients: t_reduce - start,
            reduce_scatter: waited,
            ..StepTimings::default()
        };
        // `update` counts from the reduce: the two are one pass here.
        let result = self.finish_update(Ok(()), t_update, published);
        self.timings.update = (t_update - t_reduce).saturating_sub(waited);
        result
    }

    /// Where the last step's time went on this rank.
    pub fn last_step_timings(&self) -> StepTimings {
        self.timings
    }

    /// Tell every rank whether this one failed in `phase`; an error if any did.
    fn agree(&self, local: Option<String>, phase: &'static str) -> Result<()> {
        agree_on(&self.comm, local, phase)
    }

    /// The gradient options over the reduced shard, into `shard_grads`, as the fast CPU
    /// path applies them to the whole: returns whether the step is skipped (non-finite
    /// gradients on any rank, with `skip_nonfinite`).
    fn preprocess(&mut self) -> Result<ShardGrads> {
        let range = self.shard();
        let reduced = match self.zero.stage {
            ZeroStage::Two => &self.reduced[..],
            ZeroStage::One => &self.reduced[range.clone()],
        };
        let o = self.grad_options;
        if o.clip_value.is_some() || o.max_norm.is_some() || o.grad_scale != 1.0 {
            self.shard_grads.resize(range.len(), 0.0);
        }
        if o.skip_nonfinite {
            let bad = reduced.par_iter().any(|g| !g.is_finite());
            let all = self.comm.exchange_status(i32::from(bad))?;
            if all.iter().any(|&b| b != 0) {
                return Ok(ShardGrads::Skip);
            }
        }
        let control = o.control();
        let (scale, clip) = (control.inv_scale, control.clip_value);
        if o.clip_value.is_none() && o.max_norm.is_none() && o.grad_scale == 1.0 {
            return Ok(ShardGrads::Reduced);
        }
        self.shard_grads
            .par_iter_mut()
            .zip(reduced.par_iter())
            .for_each(|(o, g)| *o = (g * scale).clamp(-clip, clip));
        self.last_grad_norm = None;
        if let Some(max_norm) = o.max_norm {
            // The fast path's norm: f64 sums over the global chunks of CHUNK elements, added
            // in order. Each rank sums the pieces of the chunks its shard overlaps.
            let pieces = |r: &Range<usize>| chunk_pieces(r.clone());
            let mine: Vec<f64> = pieces(&range)
                .into_iter()
                .map(|p| {
                    self.shard_grads[p.start - range.start..p.end - range.start]
                        .iter()
                        .map(|&g| f64::from(g) * f64::from(g))
                        .sum::<f64>()
                })
                .collect();
            let counts: Vec<_> = self.plan.ranges().iter().map(|r| pieces(r).len()).collect();
            let displs: Vec<_> = counts
                .iter()
                .scan(0, |acc, &c| {
                    let d = *acc;
                    *acc += c;
                    Some(count(d))
                })
                .collect();
            let mut all = vec![0.0f64; counts.iter().sum()];
            let counts: Vec<_> = counts.into_iter().map(count).collect();
            self.comm
                .gather_varcount(&mine, &mut all, &counts, &displs, "norm all-gather")?;
            let norm = all.iter().sum::<f64>().sqrt();
            let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
            self.shard_grads.par_iter_mut().for_each(|g| *g *= coef);
            self.last_grad_norm = Some(norm);
        }
        Ok(ShardGrads::Processed)
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    /// After a timeout: MPI may still read or write these buffers, so they are never freed.
    fn poison(&mut self) {
        self.poisoned = true;
        let given_up = std::mem::replace(
            &mut self.store,
            Storage::Owned {
                params: Vec::new(),
                grads: Vec::new(),
            },
        );
        std::mem::forget(given_up);
        for buf in [&mut self.reduced, &mut self.shard_grads, &mut self.scratch] {
            std::mem::forget(std::mem::take(buf));
        }
    }

    /// The shard's optimizer (state of this rank's elements only; its lr, step count, grad
    /// options are the sharded optimizer's own).
    pub fn shard_optimizer(&self) -> &dyn Optimizer {
        self.inner.optimizer()
    }

    /// Set the learning rate of the next step (every rank must set the same).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.inner.optimizer_mut().set_lr(lr)
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.inner.optimizer().lr()
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.inner.optimizer().step_count()
    }

    /// Set the gradient options (every rank must set the same).
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        self.grad_options = options;
        Ok(())
    }

    /// The global gradient norm of the last step (with norm clipping).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// Whether the last step was skipped (non-finite gradients on some rank, with
    /// `skip_nonfinite`).
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// The shard's state as a checkpoint state (`n` = the shard's length).
    pub fn shard_state(&self) -> Result<OptimizerState> {
        let opt = self.inner.optimizer();
        let tensors = opt
            .state_names()
            .into_iter()
            .map(|name| {
                let values = opt.read_state(name)?;
                // The f32 paths widen exactly: narrowing restores the bits.
                let values = values.into_iter().map(|x| x as f32).collect();
                Ok((name.to_string(), TensorValues::F32(values)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OptimizerState {
            config: *opt.config(),
            host: opt.host_state(),
            n: self.shard().len(),
            tensors,
            groups: Vec::new(),
            shapes: Vec::new(),
        })
    }

    /// Save this rank's shard into `dir` (`shard-RRRRR-of-WWWWW.safetensors`, atomically),
    /// wait for every rank's, then rank 0 removes shard files of other world sizes (so the
    /// folder holds one consistent set). Collective. Merge with
    /// [`merge_to_file`](super::checkpoint::merge_to_file).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.check_usable()?;
        let info = ShardInfo {
            rank: self.rank(),
            world: self.plan.world(),
            range: self.shard(),
            n: self.plan.n(),
            layout: self.plan.layout(),
        };
        let local = self
            .shard_state()
            .and_then(|state| save_shard(dir, &info, &state));
        self.agree(local.err().map(|e| e.to_string()), "save")?;
        if self.rank() == 0 {
            remove_other_worlds(dir, self.plan.world());
        }
        self.agree(None, "save")
    }

    /// Resume from a shard folder written at any world size, or from a single-process
    /// checkpoint: this rank reads the files overlapping its shard and loads that range
    /// (state, step, lr, hyper-parameters), validated completely before anything changes.
    /// Collective: when any rank fails, every rank returns an error (its own or
    /// [`Error::PeerFailed`]); ranks whose own load succeeded keep it, so load again on
    /// every rank after fixing the cause.
    pub fn load_checkpoint(&mut self, source: &Path) -> Result<()> {
        self.check_usable()?;
        let range = self.shard();
        let local = (|| {
            if source.is_dir() {
                // Refuse a set of a different whole before reading any tensor.
                let set = shard_set(source)?;
                if set[0].0.n != self.plan.n() {
                    return Err(shard_error(format!(
                        "the shards describe {} elements, this optimizer has {}",
                        set[0].0.n,
                        self.plan.n()
                    )));
                }
            }
            let state = load_range(source, range)?;
            self.load_shard_state(&state)
        })();
        self.agree(local.err().map(|e| e.to_string()), "load")
    }

    /// Load a state of this shard's length into the shard's optimizer, through its own
    /// validated checkpoint loader (a temporary file next to the system's temp dir).
    fn load_shard_state(&mut self, state: &OptimizerState) -> Result<()> {
        let tmp = std::env::temp_dir().join(format!(
            "fused-optim-shard-{}-{}.safetensors",
            std::process::id(),
            self.rank()
        ));
        crate::checkpoint::save(&tmp, state)?;
        let loaded = self.inner.optimizer_mut().load_checkpoint(&tmp);
        let _ = std::fs::remove_file(&tmp);
        loaded
    }
}

/// Tell every rank whether this one failed in `phase`; an error if any did.
fn agree_on(comm: &Collectives, local: Option<String>, phase: &'static str) -> Result<()> {
    let all = comm.exchange_status(if local.is_some() { FAILED } else { OK })?;
    if let Some(reason) = local {
        return Err(Error::LocalFailure {
            reason: format!("{phase}: {reason}"),
        });
    }
    let ranks: Vec<usize> = (0..all.len()).filter(|&r| all[r] != OK).collect();
    if ranks.is_empty() {
        Ok(())
    } else {
        Err(Error::PeerFailed { ranks, phase })
    }
}

/// The pieces of the global chunks (`[k * CHUNK, (k + 1) * CHUNK)`) that `range` overlaps.
fn chunk_pieces(range: Range<usize>) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let end = ((start / CHUNK + 1) * CHUNK).min(range.end);
        pieces.push(start..end);
        start = end;
    }
    pieces
}

fn remove_other_worlds(dir: &Path, world: usize) {
    let suffix = format!("-of-{world:05}.safetensors");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-")
                && name.ends_with(".safetensors")
                && !name.ends_with(&suffix)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// A digest of what every rank must agree on (sizes, configuration, options, whether the
/// plan could be made), as a status word.
fn plan_digest(
    config: &OptimizerConfig,
    zero: &ZeroConfig,
    segment_lens: &[usize],
    plan: Option<&ShardPlan>,
) -> i32 {
    let mut h = crc32fast::Hasher::new();
    h.update(config.name().as_bytes());
    h.update(config.hparams().to_string().as_bytes());
    h.update(
        format!(
            "{:?} {:?} {} {:?} {} {}",
            zero.transport,
            zero.stage,
            zero.layout.to_text(),
            zero.reduction,
            zero.bucket,
            matches!(zero.backend, ShardBackend::Gpu(_))
        )
        .as_bytes(),
    );
    for len in segment_lens {
        h.update(&(*len as u64).to_le_bytes());
    }
    h.update(&[u8::from(plan.is_some())]);
    h.finalize() as i32
}
