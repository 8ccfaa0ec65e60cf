//! `GpuOptimizer`: pipeline, bind groups and state buffers built once; `step` writes one
//! small uniform and dispatches one kernel per binding window, in one submission.
//!
//! One job per module:
//!
//! | module | job |
//! |---|---|
//! | `builder` | [`GpuOptimizerBuilder`]: checks a combination of options, allocates the state, builds the kernel; the old constructors as thin wrappers |
//! | `groups` | parameter groups: the lane-to-group table, each group's config and host scalars (stored once, in [`GpuOptimizer::groups`]) |
//! | `step` | encoding a step, the train/eval switch |
//! | `gradients` | the gradient pipeline: options, norm clipping, skipping, the device loss scaler and step counter |
//! | `state` | state tensors on the device, and the [`Optimizer`](crate::Optimizer) trait |
//! | `checkpoint` | saving and loading checkpoints |

use super::blockwise8::Blockwise8Device;
use super::buffer::FlatParams;
use super::context::GpuContext;
use super::device_step::DeviceSteps;
use super::factored::FactoredKernel;
use super::gradients::{GradOptions, NormClipper};
use super::kernel::KernelRunner;
use super::segmented::SegmentedKernel;

mod builder;
mod checkpoint;
mod gradients;
mod groups;
mod state;
mod step;

pub(crate) use super::groups::Group;
pub use super::groups::ParamGroup;
pub use super::kernel::{MAX_GROUPS, UNIFORM_RING};
pub use builder::{GpuOptimizerBuilder, Rounding, StateFormat};
pub(crate) use groups::validate as validate_groups;

/// One optimizer running on the device over a [`FlatParams`]. Built with
/// [`GpuOptimizer::builder`] (or the shorthands [`GpuOptimizer::new`],
/// [`GpuOptimizer::with_groups`], [`GpuOptimizer::new_low_precision`],
/// [`GpuOptimizer::with_bf16_state`]); controlled through the
/// [`Optimizer`](crate::Optimizer) trait; stepped with [`GpuOptimizer::step`].
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer};
/// let ctx = GpuContext::new()?;
/// let params = FlatParams::from_slice(&ctx, &[1.0, -2.0, 3.0])?;
/// let mut adam = GpuOptimizer::new(&params, AdamConfig::default())?;
/// params.write_grads(&[0.1, 0.2, -0.3])?;
/// adam.step()?; // one uniform write + one dispatch, no read-back
/// let p = params.read_params()?;
/// # Ok(()) }
/// ```
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`); stepping takes `&mut self`, so one optimizer is
/// stepped by one thread at a time (share it behind a `Mutex`). Optimizers over different
/// [`FlatParams`] on one context may be stepped from different threads at once: their
/// results are bitwise those of stepping them one after the other.
///
/// **Device loss:** every call that touches the device returns
/// [`Error::DeviceLost`](crate::Error::DeviceLost) once the context's device is lost.
pub struct GpuOptimizer {
    ctx: GpuContext,
    params: FlatParams,
    /// Every parameter group, group 0 first (one, with no segments, without groups): its
    /// config and host scalars. The one place they are kept.
    groups: Vec<Group>,
    /// The lane-to-group table (with explicit groups).
    _lane_groups: Option<wgpu::Buffer>,
    state_names: Vec<&'static str>,
    states: Vec<wgpu::Buffer>,
    /// State tensors stored as packed bf16.
    bf16_state: bool,
    runner: KernelRunner,
    control: wgpu::Buffer,
    grad_options: GradOptions,
    clipper: Option<NormClipper>,
    /// With `skip_nonfinite`: the step counter (and loss scaler) on the device. The groups'
    /// `host.step` then counts the steps issued, and the true count is the device's.
    device: Option<DeviceSteps>,
    /// The step's uniform bytes (one StepUniform per group), reused every step.
    hyper_bytes: Vec<u8>,
    low: Option<LowSetup>,
    /// f16 params converted with native f16 (`shader-f16`).
    native_f16: bool,
    /// With [`StateFormat::Blockwise8`]: the 8-bit state and its kernel, which then runs
    /// each step instead of `runner` (`states` is empty).
    q8: Option<Blockwise8Device>,
    /// Per-tensor algorithms: the two-pass kernel over the segment table, dispatched
    /// instead of `runner`.
    segmented: Option<SegmentedKernel>,
    /// Per-tensor algorithms whose state is not one element per parameter (Adafactor):
    /// their five-pass kernel, dispatched instead of `runner`.
    factored: Option<FactoredKernel>,
    /// The segments stepped (indices into the params' segment table): every segment, or
    /// with a per-tensor algorithm inside a [`MixedGpuOptimizer`](crate::mixed::MixedGpuOptimizer)
    /// its group's.
    members: Vec<usize>,
    /// Elements the state covers (a checkpoint's `n`): the params' length, or the members'
    /// element count (their state back to back).
    state_len: usize,
    /// Elements of each state tensor: `state_len`, or (state not one element per
    /// parameter) what the members' shapes give ([`StateLayout`](crate::StateLayout)).
    state_lens: Vec<usize>,
}

/// The 16-bit buffers of a low-precision optimizer.
struct LowSetup {
    code: u32,
    stochastic: bool,
    grads: wgpu::Buffer,
    params: wgpu::Buffer,
}

impl std::fmt::Debug for GpuOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuOptimizer")
            .field("config", &self.groups[0].config)
            .field("host", &self.groups[0].host)
            .field("groups", &self.groups.len())
            .field("len", &self.params.len())
            .field("windows", &self.runner.windows())
            .finish()
    }
}

impl GpuOptimizer {
    /// The parameters this optimizer updates.
    pub fn params(&self) -> &FlatParams {
        &self.params
    }

    /// Per segment stepped, the last step's value of the per-tensor scalar `name` (LAMB's
    /// `weight_norm`, `adam_norm`, `trust_ratio`), or `"nonfinite"` (1 when a norm of that
    /// segment was not finite: the step is flagged); `Ok(None)` for a name the algorithm
    /// does not report or an elementwise algorithm. Reads back (waits; on the web use
    /// [`Self::segment_scalar_async`]).
    pub fn segment_scalar(&self, name: &str) -> crate::Result<Option<Vec<f64>>> {
        super::wait::block_on("segment_scalar", self.segment_scalar_async(name))?
    }

    /// [`Self::segment_scalar`] without blocking.
    pub async fn segment_scalar_async(&self, name: &str) -> crate::Result<Option<Vec<f64>>> {
        if self.segmented.is_none() && self.factored.is_none() {
            return Ok(None);
        }
        let names = self.groups[0].config.segment_scalar_names();
        let word = match name {
            "nonfinite" => super::segmented::SEGMENT_WORDS - 1,
            _ => match names.iter().position(|n| *n == name) {
                Some(k) => 1 + k,
                None => return Ok(None),
            },
        };
        let words = match (&self.segmented, &self.factored) {
            (Some(k), _) => k.segment_words_async().await?,
            (None, Some(k)) => k.segment_words_async().await?,
            (None, None) => unreachable!("checked above"),
        };
        let per_segment: Vec<&[f32]> = words.chunks(super::segmented::SEGMENT_WORDS).collect();
        Ok(Some(
            self.members
                .iter()
                .map(|&k| f64::from(per_segment[k][word]))
                .collect(),
        ))
    }

    /// The shapes of the segments this optimizer steps (every segment's, or its members').
    pub(crate) fn member_shapes(&self) -> Vec<Vec<usize>> {
        let segs = self.params.segment_table().segments();
        self.members
            .iter()
            .map(|&k| segs[k].shape.clone())
            .collect()
    }

    /// Number of binding windows (dispatches per step).
    pub fn windows(&self) -> usize {
        self.runner.windows()
    }

    /// Whether this optimizer's kernel converts f16 params with native f16 (the device's
    /// `shader-f16`) rather than `pack2x16float` (f16 low precision only).
    pub fn uses_shader_f16(&self) -> bool {
        self.native_f16
    }
}
