//! # fused-optim
//!
//! GPU optimizer steps as one fused WGSL kernel per step, with PyTorch `torch.optim`
//! semantics option for option, a plain f64 CPU reference every kernel is checked against,
//! and a fast multi-threaded CPU path.
//!
//! An optimizer step reads every parameter, gradient and state element once and writes the
//! parameter and state once: it is bound by memory bandwidth, so the whole update is one pass
//! over flat buffers (one dispatch per binding window, one submission per step).
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer};
//!
//! let ctx = GpuContext::new()?;                       // WGPU_BACKEND=vulkan|gl to choose
//! let params = FlatParams::from_slice(&ctx, &vec![0.5f32; 1_000_003])?;
//! let mut opt = GpuOptimizer::new(&params, AdamConfig { lr: 1e-2, ..Default::default() })?;
//! for _ in 0..10 {
//!     params.write_grads(&vec![0.1f32; 1_000_003])?; // or bind your own grads buffer
//!     opt.step()?;                                    // no read-back
//! }
//! let updated: Vec<f32> = params.read_params()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod auto;
pub mod checkpoint;
pub mod cpu;
pub mod dispatch;
pub mod error;
pub mod gpu;
pub mod grads;
pub mod mixed;
pub mod optim;
pub mod optimizer;
#[cfg(feature = "roofline")]
pub mod roofline;
pub mod scaler;
pub mod schedule;
pub mod segments;
pub mod simd;
pub mod zero;

pub use auto::{AutoOptimizer, Backend, BackendChoice};
pub use cpu::fast::{CpuOptimizer, CpuOptimizerBuilder};
pub use cpu::reference::ReferenceOptimizer;
pub use error::{Error, Result};
pub use gpu::buffer::{FlatParams, FlatParamsBuilder, Segment, MAX_BUILDER_ELEMENTS};
pub use gpu::context::{ContextOptions, GpuContext, KernelTuning, LaneTransport};
pub use gpu::low_precision::{LowFormat, LowPrecisionParams};
pub use gpu::optimizer::{
    GpuOptimizer, GpuOptimizerBuilder, ParamGroup, Rounding, StateFormat, MAX_GROUPS, UNIFORM_RING,
};
pub use gpu::timer::GpuTimer;
pub use grads::GradOptions;
/// The `half` crate (f16, bf16), re-exported for the low-precision API.
pub use half;
/// The rsmpi crate (feature `mpi`), re-exported so that callers build communicators with
/// the same version [`zero::ShardedOptimizer`] takes.
#[cfg(feature = "mpi")]
pub use mpi;
pub use optim::{
    AdadeltaConfig, AdafactorConfig, AdagradConfig, AdamConfig, AdamaxConfig, Algorithm, HostState,
    LambConfig, LionConfig, MuonConfig, MuonLrAdjust, NadamConfig, NewtonSchulz, NsArithmetic,
    OptimizerConfig, RadamConfig, RmspropConfig, ScheduleFreeBase, ScheduleFreeConfig, SgdConfig,
    StateLayout,
};
pub use optimizer::Optimizer;
pub use scaler::LossScaler;
pub use segments::{DeviceSegment, SegmentShape, SegmentTable};
