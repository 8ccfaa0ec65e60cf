//! Data-parallel training with ZeRO-1/2 optimizer-state sharding (DeepSpeed's ZeRO stages
//! 1 and 2, PyTorch's `ZeroRedundancyOptimizer`) over MPI.
//!
//! R ranks train one model on different data. Every rank holds all parameters; rank r owns
//! the shard `[offset_r, offset_r + len_r)` of a [`ShardPlan`] and keeps the optimizer
//! state of that shard only (1/R of it). A step reduce-scatters the gradients (rank r gets
//! the rank-order mean of its shard), updates the shard, and all-gathers the parameters.
//!
//! * [`layout`]: the shard plans (whole segments per rank, or aligned equal ranges).
//! * [`reduce`]: the fixed-order reduction (the same bits on every run).
//! * [`checkpoint`]: one file per rank, merging into a single-process checkpoint, loading
//!   any range (re-sharding).
//! * `ShardedOptimizer` (feature `mpi`): the optimizer over an rsmpi communicator, on the
//!   CPU or the GPU, with timeouts and failure agreement so that no rank hangs.
//!
//! The plans, the reduction and the checkpoint files need no MPI: they are always built
//! (and tested without `mpirun`).

pub mod checkpoint;
#[cfg(feature = "mpi")]
mod comm;
pub mod layout;
pub mod reduce;
#[cfg(feature = "mpi")]
mod sharded;
#[cfg(feature = "mpi")]
mod shm;

pub use checkpoint::{load_range, merge, merge_to_file, ShardInfo};
pub use layout::{ShardLayout, ShardPlan};
pub use reduce::{reduce_in_rank_order, GradReduction};
#[cfg(feature = "mpi")]
pub use sharded::{ShardBackend, ShardedOptimizer, StepTimings, Transport, ZeroConfig, ZeroStage};
