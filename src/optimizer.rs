//! [`Optimizer`]: the control surface every implementation shares — [`GpuOptimizer`],
//! [`CpuOptimizer`], [`ReferenceOptimizer`] and [`AutoOptimizer`] — with one signature each.
//!
//! What is in the trait and what is not:
//!
//! * **In the trait**: everything that does not touch the parameters: configuration, learning
//!   rate, step count, host scalars, state tensors by name, gradient options and what the last
//!   step found, the training-mode query, checkpoints. It is object safe: generic code takes
//!   `&mut dyn Optimizer` or `impl Optimizer`.
//! * **Inherent**: whatever takes the parameters, because the implementations hold them
//!   differently. `GpuOptimizer::step()` and `AutoOptimizer::step()` update the parameters
//!   they own; `CpuOptimizer::step(&mut [f32], &[f32])` and
//!   `ReferenceOptimizer::step(&mut [f64], &[f64])` take the caller's slices. The same holds
//!   for the Schedule-Free train/eval switch, `set_train_mode`, which maps the params: it is
//!   inherent (`(bool)` on the GPU and auto paths, `(params, bool)` on the CPU and reference
//!   paths), while [`Optimizer::is_training`] is in the trait. Typed, zero-copy state access
//!   stays inherent too (`CpuOptimizer::state` → `&[f32]`, `ReferenceOptimizer::state` →
//!   `&[f64]`, `GpuOptimizer::read_state_f32`).
//!
//! State values cross the trait as f64: f32 state is widened exactly, the reference gives its
//! own f64; loading rounds to f32 (nearest even) on the f32 paths. To step through the trait,
//! pass the step as a closure, as [`LossScaler::step`](crate::LossScaler::step) does.
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::{AdamConfig, CpuOptimizer, Optimizer};
//! fn warm_restart(opt: &mut dyn Optimizer, lr: f64) -> fused_optim::Result<()> {
//!     opt.set_lr(lr)?;
//!     for name in opt.state_names() {
//!         let zeros = vec![0.0; opt.read_state(name)?.len()];
//!         opt.load_state(name, &zeros)?;
//!     }
//!     Ok(())
//! }
//! let mut cpu = CpuOptimizer::new(AdamConfig::default(), 1000)?;
//! warm_restart(&mut cpu, 1e-4)?;
//! # Ok(()) }
//! ```
//!
//! [`GpuOptimizer`]: crate::GpuOptimizer
//! [`CpuOptimizer`]: crate::CpuOptimizer
//! [`ReferenceOptimizer`]: crate::ReferenceOptimizer
//! [`AutoOptimizer`]: crate::AutoOptimizer

use std::path::Path;

use crate::error::Result;
use crate::grads::GradOptions;
use crate::optim::{HostState, OptimizerConfig};

/// The control surface shared by every optimizer implementation (see the
/// [module documentation](self) for what is deliberately left out).
pub trait Optimizer {
    /// The configuration (of parameter group 0 where there are groups).
    fn config(&self) -> &OptimizerConfig;

    /// The learning rate of the next step.
    fn lr(&self) -> f64;

    /// Set the learning rate used from the next step on (every parameter group's). Checked
    /// as the configuration's algorithm checks it; on error nothing changes.
    fn set_lr(&mut self, lr: f64) -> Result<()>;

    /// Steps taken (PyTorch's `step`). On the GPU with `skip_nonfinite` the device keeps the
    /// count: this is then exact after [`Self::last_step_skipped`] (an upper bound before).
    fn step_count(&self) -> u64;

    /// The scalar part of the state (step, lr, the algorithm's host scalars), at
    /// [`Self::step_count`].
    fn host_state(&self) -> HostState;

    /// Names of the per-element state tensors (PyTorch's names), in binding order.
    fn state_names(&self) -> Vec<&'static str>;

    /// One state tensor by name, as f64: f32 state widened exactly (bf16 state widened from
    /// bf16), the reference's own f64. Reads back from the device on the GPU (waits).
    fn read_state(&self, name: &str) -> Result<Vec<f64>>;

    /// Overwrite one state tensor (the optimizer's length). The f32 paths round each value
    /// to nearest f32 (bf16 state: to nearest bf16). On error (unknown name, wrong length)
    /// nothing changes.
    fn load_state(&mut self, name: &str, values: &[f64]) -> Result<()>;

    /// How gradients are pre-processed inside the step (unscaling, clipping, skipping
    /// non-finite steps); see [`GradOptions`]. On error nothing changes.
    fn set_grad_options(&mut self, options: GradOptions) -> Result<()>;

    /// The gradient options in force.
    fn grad_options(&self) -> GradOptions;

    /// The global gradient norm of the last step (after unscaling and value clipping),
    /// `None` without norm clipping. Reads back from the device on the GPU (waits).
    fn last_grad_norm(&self) -> Result<Option<f64>>;

    /// Whether the last step was skipped because its gradients held inf or NaN (with
    /// [`GradOptions::skip_nonfinite`]; always false without it). Reads back from the device
    /// on the GPU (waits), after which [`Self::step_count`] is exact.
    fn last_step_skipped(&self) -> Result<bool>;

    /// Whether the optimizer is in training mode (always, for algorithms without train/eval
    /// modes; switching is the inherent `set_train_mode`, which maps the params).
    fn is_training(&self) -> bool;

    /// Save the state (state tensors, step, lr, hyper-parameters) as a safetensors
    /// checkpoint, atomically (see [`checkpoint`](crate::checkpoint)): F32 tensors from the
    /// f32 paths, F64 from the reference.
    fn save_checkpoint(&self, path: &Path) -> Result<()>;

    /// Load a checkpoint written by any implementation's [`Self::save_checkpoint`]: F64
    /// tensors are rounded to f32 on the f32 paths, F32 ones widened exactly for the
    /// reference. The file is validated completely first; on any error nothing changes.
    fn load_checkpoint(&mut self, path: &Path) -> Result<()>;
}
