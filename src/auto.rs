//! `AutoOptimizer`: one optimizer API over host slices that runs the fused GPU kernels on a
//! real GPU and the fast CPU path where the only adapter is a CPU implementation (lavapipe,
//! llvmpipe, WARP), which runs WGSL several times slower than native CPU code. The caller may
//! force either.

use std::path::Path;

use crate::cpu::fast::CpuOptimizer;
use crate::cpu::staggered::StaggeredVec;
use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::context::GpuContext;
use crate::gpu::optimizer::GpuOptimizer;
use crate::grads::GradOptions;
use crate::optim::{HostState, OptimizerConfig};
use crate::optimizer::Optimizer;

/// Where the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The WGSL kernels on the context's device.
    Gpu,
    /// The fast multi-threaded CPU path.
    Cpu,
}

/// How to choose the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// GPU when the adapter is a real GPU, CPU when there is no adapter or it is a CPU
    /// implementation.
    #[default]
    Auto,
    /// Always the GPU (an error without a context).
    Gpu,
    /// Always the CPU.
    Cpu,
}

impl BackendChoice {
    /// The backend this choice selects for `ctx`.
    pub fn resolve(self, ctx: Option<&GpuContext>) -> Result<Backend> {
        match (self, ctx) {
            (Self::Cpu, _) => Ok(Backend::Cpu),
            (Self::Gpu, Some(_)) => Ok(Backend::Gpu),
            (Self::Gpu, None) => Err(Error::NoAdapter {
                reason: "the GPU backend was forced but no context was given".into(),
            }),
            (Self::Auto, Some(c)) if !c.is_software() => Ok(Backend::Gpu),
            (Self::Auto, _) => Ok(Backend::Cpu),
        }
    }
}

enum Inner {
    Gpu {
        params: Box<FlatParams>,
        opt: Box<GpuOptimizer>,
    },
    Cpu {
        // Laid out as the optimizer's states are: staggered, huge pages (see StaggeredVec).
        params: StaggeredVec,
        grads: StaggeredVec,
        opt: Box<CpuOptimizer>,
    },
}

/// The same optimizer API on either backend: write grads, step, read params when needed;
/// the rest of the control surface (lr, state, gradient options, checkpoints) is the
/// [`Optimizer`] trait, forwarded to the backend's optimizer.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`), whichever backend it holds.
///
/// ```no_run
/// # fn main() -> fused_optim::Result<()> {
/// use fused_optim::{AdamConfig, AutoOptimizer, BackendChoice, GpuContext};
/// let ctx = GpuContext::new().ok();
/// let mut opt = AutoOptimizer::new(ctx.as_ref(), &[0.5; 1000], AdamConfig::default(), BackendChoice::Auto)?;
/// opt.write_grads(&[0.1; 1000])?;
/// opt.step()?;
/// let p = opt.read_params()?;
/// # Ok(()) }
/// ```
pub struct AutoOptimizer {
    inner: Inner,
}

impl AutoOptimizer {
    /// An optimizer over `initial` parameters on the backend `choice` selects.
    pub fn new(
        ctx: Option<&GpuContext>,
        initial: &[f32],
        config: impl Into<OptimizerConfig>,
        choice: BackendChoice,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let inner = match (choice.resolve(ctx)?, ctx) {
            (Backend::Gpu, Some(ctx)) => {
                let params = Box::new(FlatParams::from_slice(ctx, initial)?);
                let opt = Box::new(GpuOptimizer::new(&params, config)?);
                Inner::Gpu { params, opt }
            }
            _ => Inner::Cpu {
                opt: Box::new(CpuOptimizer::new(config, initial.len())?),
                params: StaggeredVec::from_slice(initial, 0),
                grads: StaggeredVec::filled(initial.len(), 0.0, 4),
            },
        };
        Ok(Self { inner })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Gpu { .. } => Backend::Gpu,
            Inner::Cpu { .. } => Backend::Cpu,
        }
    }

    /// Set the gradients of the next step.
    pub fn write_grads(&mut self, grads: &[f32]) -> Result<()> {
        match &mut self.inner {
            Inner::Gpu { params, .. } => params.write_grads(grads),
            Inner::Cpu { grads: g, .. } => {
                if g.len() != grads.len() {
                    return Err(Error::LengthMismatch {
                        what: "grads",
                        expected: g.len(),
                        got: grads.len(),
                    });
                }
                g.copy_from_slice(grads);
                Ok(())
            }
        }
    }

    /// One step.
    pub fn step(&mut self) -> Result<()> {
        match &mut self.inner {
            Inner::Gpu { opt, .. } => opt.step(),
            Inner::Cpu { params, grads, opt } => opt.step(params, grads),
        }
    }

    /// The current parameters (a read-back on the GPU).
    pub fn read_params(&self) -> Result<Vec<f32>> {
        match &self.inner {
            Inner::Gpu { params, .. } => params.read_params(),
            Inner::Cpu { params, .. } => Ok(params.to_vec()),
        }
    }

    /// Switch an algorithm with train/eval modes (Schedule-Free) to training (`true`) or
    /// evaluation mode (`false`), mapping the params this optimizer holds;
    /// [`Error::Unsupported`] for algorithms without modes.
    pub fn set_train_mode(&mut self, train: bool) -> Result<()> {
        match &mut self.inner {
            Inner::Gpu { opt, .. } => opt.set_train_mode(train),
            Inner::Cpu { params, opt, .. } => opt.set_train_mode(params, train),
        }
    }

    /// The optimizer in use, through the shared trait.
    pub fn inner(&self) -> &dyn Optimizer {
        match &self.inner {
            Inner::Gpu { opt, .. } => opt.as_ref(),
            Inner::Cpu { opt, .. } => opt.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Optimizer {
        match &mut self.inner {
            Inner::Gpu { opt, .. } => opt.as_mut(),
            Inner::Cpu { opt, .. } => opt.as_mut(),
        }
    }
}

/// Every call is forwarded to the backend's optimizer (gradient options and checkpoints
/// included; a checkpoint saved on one backend loads on the other).
impl Optimizer for AutoOptimizer {
    fn config(&self) -> &OptimizerConfig {
        self.inner().config()
    }

    fn lr(&self) -> f64 {
        self.inner().lr()
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.inner_mut().set_lr(lr)
    }

    fn step_count(&self) -> u64 {
        self.inner().step_count()
    }

    fn host_state(&self) -> HostState {
        self.inner().host_state()
    }

    fn state_names(&self) -> Vec<&'static str> {
        self.inner().state_names()
    }

    fn read_state(&self, name: &str) -> Result<Vec<f64>> {
        self.inner().read_state(name)
    }

    fn load_state(&mut self, name: &str, values: &[f64]) -> Result<()> {
        self.inner_mut().load_state(name, values)
    }

    fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        self.inner_mut().set_grad_options(options)
    }

    fn grad_options(&self) -> GradOptions {
        self.inner().grad_options()
    }

    fn last_grad_norm(&self) -> Result<Option<f64>> {
        self.inner().last_grad_norm()
    }

    fn last_step_skipped(&self) -> Result<bool> {
        self.inner().last_step_skipped()
    }

    fn is_training(&self) -> bool {
        self.inner().is_training()
    }

    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        self.inner().save_checkpoint(path)
    }

    fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.inner_mut().load_checkpoint(path)
    }
}
