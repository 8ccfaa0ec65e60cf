//! fused-optim for Burn: steps every parameter of a Burn module with one of fused-optim's fused
//! GPU optimizer kernels, in place, on Burn's own wgpu device and buffers, in one submission
//! per step (Burn's own optimizers run about ten tensor operations per parameter tensor).
//!
//! ```no_run
//! # fn main() -> Result<(), fused_optim_burn::Error> {
//! use burn::module::Module;
//! use burn::optim::GradientsParams;
//! use fused_optim::AdamConfig;
//! use fused_optim_burn::{init_device, FusedOptimizer};
//! let (device, ctx) = init_device()?; // Burn's wgpu device, shared with fused-optim
//! let mut opt = FusedOptimizer::new(&ctx, AdamConfig::adamw());
//! # let (model, loss): (burn::nn::Linear, burn::tensor::Tensor<1>) = todo!();
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let model = opt.step(1e-3, model, grads)?;
//! # Ok(()) }
//! ```
//!
//! How a step works ([`FusedOptimizer::step`]): the module's float parameters are walked in
//! order (path, `ParamId`); each one with a gradient gets a state
//! slot the first time (the set must not change later); each gradient's storage, and each
//! parameter's whose tensor changed since the last step (a copy, a load), is resolved to
//! (wgpu buffer, byte offset) through Burn's backend primitives (Burn's pools relocate and
//! reallocate; a parameter's storage guard is held between steps, which pins it, so an
//! unchanged parameter keeps its place); pending Burn work is flushed; then
//! [`TensorOptimizer::step`] updates them all in one submission while the storage guards are
//! held. Parameters are refused, with a typed [`Error`], when not f32 ([`Error::NotF32`]),
//! not contiguous ([`Error::NotContiguous`]) or not on the wgpu backend.
//!
//! **Aliasing:** the update is in place. A clone of a parameter tensor taken before the step
//! (it shares the buffer) sees the new values, as a clone of a `Param` does; clone with
//! `tensor.clone().add_scalar(0.0)` (a copy) to keep the old ones. `tests/burn.rs` checks
//! this behaviour.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor};
use fused_optim::gpu::tensors::{BufferRange, TensorBinding, TensorOptimizer, TensorSpec};
use fused_optim::{GpuContext, GradOptions, OptimizerConfig};

mod resolve;
pub mod state;

pub use resolve::Storage;

/// Everything that can go wrong, typed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// fused-optim refused (bad configuration, bad ranges, device lost, ...).
    #[error(transparent)]
    Core(#[from] fused_optim::Error),
    /// A parameter or gradient that is not f32.
    #[error("parameter `{path}`: {what} has dtype {dtype:?}; fused-optim-burn steps f32 only")]
    NotF32 {
        /// The parameter's path in the module.
        path: String,
        /// `"the parameter"` or `"its gradient"`.
        what: &'static str,
        /// Its dtype.
        dtype: DType,
    },
    /// A parameter or gradient whose elements are not one contiguous range.
    #[error("parameter `{path}`: {what} is not contiguous in memory")]
    NotContiguous {
        /// The parameter's path.
        path: String,
        /// `"the parameter"` or `"its gradient"`.
        what: &'static str,
    },
    /// A tensor that does not live on Burn's wgpu backend, or whose storage Burn would not
    /// hand out.
    #[error("parameter `{path}`: {reason}")]
    Backend {
        /// The parameter's path.
        path: String,
        /// What Burn said.
        reason: String,
    },
    /// The set of parameters with gradients changed after the first step.
    #[error("parameter set changed since the first step: {reason}")]
    ParamsChanged {
        /// What differs.
        reason: String,
    },
    /// Burn's wgpu runtime could not be initialised.
    #[error("Burn wgpu initialisation: {0}")]
    Init(String),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, Error>;

/// Initialise Burn's wgpu runtime (default adapter) and share its device and queue with
/// fused-optim: Burn's [`Device`] and the [`GpuContext`] a [`FusedOptimizer`] needs.
pub fn init_device() -> Result<(Device, GpuContext)> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| Error::Init(e.to_string()))?;
    Ok((device, GpuContext::from_device(setup.device, setup.queue)))
}

/// What a parameter group predicate sees of a parameter.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Its path in the module, e.g. `layers.0.norm.gamma`.
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

type GroupFn = Box<dyn Fn(&ParamInfo) -> usize + Send + Sync>;

/// One parameter as the optimizer tracks it.
#[derive(Clone, Debug)]
struct Slot {
    id: ParamId,
    path: String,
    len: usize,
}

/// A module-level optimizer running a fused-optim kernel over every parameter of a Burn
/// module: `step(lr, module, grads) -> module`, as Burn's `ModuleOptimizer`. Built from any
/// fused-optim configuration ([`Self::new`]) or from one configuration per parameter group
/// and a predicate choosing each parameter's group ([`Self::with_groups`]).
pub struct FusedOptimizer {
    ctx: GpuContext,
    configs: Vec<OptimizerConfig>,
    group_of: GroupFn,
    grad_options: GradOptions,
    slots: Vec<Slot>,
    inner: Option<TensorOptimizer>,
    placements: Vec<Placement>,
    /// Each parameter's storage from an earlier step, with the identity of the tensor value
    /// it was resolved from: while held, Burn neither frees nor relocates the allocation, so
    /// it is reused as long as the parameter is the same tensor (fusion only).
    held: Vec<Option<(String, Storage)>>,
}

/// Where a parameter and its gradient were at the last step (a diagnostic: Burn's pools
/// move tensors between steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// An identity of the parameter's buffer (a hash of wgpu's buffer identity).
    pub param_buffer: u64,
    /// Byte offset of the parameter in it.
    pub param_offset: u64,
    /// An identity of the gradient's buffer.
    pub grad_buffer: u64,
    /// Byte offset of the gradient in it.
    pub grad_offset: u64,
}

/// A stable identity of a wgpu buffer for [`Placement`] (wgpu hashes buffers by identity).
pub fn buffer_identity(buffer: &wgpu::Buffer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    buffer.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for FusedOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedOptimizer")
            .field("configs", &self.configs)
            .field("params", &self.slots.len())
            .finish()
    }
}

/// Walks a module's float parameters: (id, path, shape, a clone of the tensor).
struct Collect {
    path: Vec<String>,
    found: Vec<(ParamId, String, Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.shape().to_vec();
        // The tensor without its autodiff wrapper, viewed as rank 1 only for transport: the
        // storage is resolved from the original primitive (no reshape is recorded).
        self.found.push((
            param.id,
            self.path.join("."),
            shape,
            Tensor::from_bridge(t.inner().into_bridge()),
        ));
    }
}

impl FusedOptimizer {
    /// One configuration for every parameter (the learning rate is the one given to
    /// [`Self::step`]).
    pub fn new(ctx: &GpuContext, config: impl Into<OptimizerConfig>) -> Self {
        Self::with_groups(ctx, vec![config.into()], |_| 0)
    }

    /// Parameter groups: `configs[group_of(param)]` for each parameter (at most 8 groups,
    /// same algorithm and structural options; e.g. no weight decay on biases and norms:
    /// `|p| usize::from(p.shape.len() == 1)`). A group index out of range is refused at the
    /// first step.
    pub fn with_groups(
        ctx: &GpuContext,
        configs: Vec<OptimizerConfig>,
        group_of: impl Fn(&ParamInfo) -> usize + Send + Sync + 'static,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            configs,
            group_of: Box::new(group_of),
            grad_options: GradOptions::default(),
            slots: Vec::new(),
            inner: None,
            placements: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Unscaling, clipping by value, clipping by the global norm over all parameters,
    /// skipping steps with inf/NaN gradients (as fused-optim's `GradOptions`).
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        if let Some(inner) = &mut self.inner {
            inner.set_grad_options(options)?;
        }
        self.grad_options = options;
        Ok(())
    }

    /// The fused-optim optimizer underneath (after the first step): state, step count, norm.
    pub fn inner(&self) -> Option<&TensorOptimizer> {
        self.inner.as_ref()
    }

    /// Mutable access to the optimizer underneath (group learning rates, state loading).
    pub fn inner_mut(&mut self) -> Option<&mut TensorOptimizer> {
        self.inner.as_mut()
    }

    /// Where each parameter and its gradient were at the last step, in state-slot order.
    pub fn last_placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The parameters' paths in state-slot order (after the first step).
    pub fn paths(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.path.as_str()).collect()
    }

    /// One optimizer step with learning rate `lr` (for every group; a schedule passes its
    /// value each step) over every parameter of `module` that has a gradient in `grads`: in
    /// place, in one submission on the shared device. Returns the module (its parameters now
    /// hold the updated values). On an error nothing has been written.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: GradientsParams) -> Result<M> {
        let mut collect = Collect {
            path: Vec::new(),
            found: Vec::new(),
        };
        module.visit(&mut collect);
        // (slot, param tensor, grad tensor)
        let mut pairs: Vec<(Slot, Vec<usize>, Tensor<1>, Tensor<1>)> = Vec::new();
        for (id, path, shape, tensor) in collect.found {
            if let Some(grad) = grads_get(&grads, id, shape.len()) {
                let len = shape.iter().product();
                pairs.push((Slot { id, path, len }, shape, tensor, grad));
            }
        }
        if self.inner.is_none() {
            self.build(&pairs)?;
        } else {
            self.check_same(&pairs)?;
        }
        // Storage, resolved now (pools relocate between steps); the guards live until after
        // the submission.
        // A parameter that is still the same tensor keeps its held storage (pinned by the
        // guard); any other is resolved now. Gradients are new tensors: always resolved.
        self.held.resize_with(pairs.len(), || None);
        let ids: Vec<Option<String>> = pairs.iter().map(|p| resolve::identity(&p.2)).collect();
        let stale: Vec<usize> = (0..pairs.len())
            .filter(|&k| !matches!((&ids[k], &self.held[k]), (Some(a), Some((b, _))) if a == b))
            .collect();
        // One batch: the parameters to resolve again, then every gradient (two round trips to
        // Burn's runners in all, see `resolve`).
        let mut batch: Vec<resolve::Named<'_>> = stale
            .iter()
            .map(|&k| {
                (
                    pairs[k].2.clone(),
                    pairs[k].0.path.as_str(),
                    "the parameter",
                )
            })
            .collect();
        batch.extend(
            pairs
                .iter()
                .map(|(slot, _, _, grad)| (grad.clone(), slot.path.as_str(), "its gradient")),
        );
        let mut resolved = Storage::of_all(batch)?;
        let grads_storage = resolved.split_off(stale.len());
        for (k, p) in stale.into_iter().zip(resolved) {
            // Without an identity (no fusion) it is resolved again next step.
            self.held[k] = Some((ids[k].clone().unwrap_or_default(), p));
        }
        let storages: Vec<(&Storage, &Storage)> = self
            .held
            .iter()
            .map(|h| &h.as_ref().expect("resolved above").1)
            .zip(&grads_storage)
            .collect();
        let bindings: Vec<TensorBinding<'_>> = storages
            .iter()
            .map(|(p, g)| TensorBinding {
                param: BufferRange {
                    buffer: p.buffer(),
                    byte_offset: p.offset(),
                },
                grad: BufferRange {
                    buffer: g.buffer(),
                    byte_offset: g.offset(),
                },
            })
            .collect();
        // Burn's queued work (the gradients' producers, earlier updates) goes to the queue
        // before our submission, which then sees it finished.
        if let Some((p, _)) = storages.first() {
            p.flush().map_err(|reason| Error::Backend {
                path: self.slots[0].path.clone(),
                reason,
            })?;
        }
        let inner = self.inner.as_mut().expect("built above");
        inner.set_lr(lr)?;
        inner.step(&bindings)?;
        self.placements = storages
            .iter()
            .map(|(p, g)| Placement {
                param_buffer: buffer_identity(p.buffer()),
                param_offset: p.offset(),
                grad_buffer: buffer_identity(g.buffer()),
                grad_offset: g.offset(),
            })
            .collect();
        drop(bindings);
        drop(storages);
        drop(grads_storage);
        Ok(module)
    }

    fn build(&mut self, pairs: &[(Slot, Vec<usize>, Tensor<1>, Tensor<1>)]) -> Result<()> {
        let specs: Vec<TensorSpec> = pairs
            .iter()
            .map(|(slot, shape, _, _)| TensorSpec {
                name: slot.path.clone(),
                len: slot.len,
                group: (self.group_of)(&ParamInfo {
                    path: slot.path.clone(),
                    shape: shape.clone(),
                }),
            })
            .collect();
        let mut inner = TensorOptimizer::new(&self.ctx, &specs, &self.configs)?;
        inner.set_grad_options(self.grad_options)?;
        self.slots = pairs.iter().map(|p| p.0.clone()).collect();
        self.inner = Some(inner);
        Ok(())
    }

    fn check_same(&self, pairs: &[(Slot, Vec<usize>, Tensor<1>, Tensor<1>)]) -> Result<()> {
        if pairs.len() != self.slots.len() {
            return Err(Error::ParamsChanged {
                reason: format!(
                    "{} parameters with gradients, {} at the first step",
                    pairs.len(),
                    self.slots.len()
                ),
            });
        }
        for ((slot, _, _, _), known) in pairs.iter().zip(&self.slots) {
            if slot.id != known.id || slot.len != known.len {
                return Err(Error::ParamsChanged {
                    reason: format!("`{}` where `{}` was", slot.path, known.path),
                });
            }
        }
        Ok(())
    }
}

/// The gradient of `id` as a rank-1 view for transport (see `Collect`).
fn grads_get(grads: &GradientsParams, id: ParamId, rank: usize) -> Option<Tensor<1>> {
    fn get<const D: usize>(grads: &GradientsParams, id: ParamId) -> Option<Tensor<1>> {
        grads
            .get::<D>(id)
            .map(|g| Tensor::from_bridge(g.into_bridge()))
    }
    match rank {
        1 => get::<1>(grads, id),
        2 => get::<2>(grads, id),
        3 => get::<3>(grads, id),
        4 => get::<4>(grads, id),
        5 => get::<5>(grads, id),
        6 => get::<6>(grads, id),
        _ => None,
    }
}

/// The map from parameter path to state slot (for checkpoints keyed by path).
pub fn slot_index(opt: &FusedOptimizer) -> HashMap<String, usize> {
    opt.slots
        .iter()
        .enumerate()
        .map(|(k, s)| (s.path.clone(), k))
        .collect()
}
