//! `AutoOptimizer`: one optimizer API over host slices that runs the fused GPU kernels on a
//! real GPU and the fast CPU path where the only adapter is a CPU implementation (lavapipe,
//! llvmpipe, WARP), which runs WGSL several times slower than native CPU code. The caller may
//! force either.

use crate::cpu::fast::CpuOptimizer;
use crate::cpu::staggered::StaggeredVec;
use crate::error::{Error, Result};
use crate::gpu::buffer::FlatParams;
use crate::gpu::context::GpuContext;
use crate::gpu::optimizer::GpuOptimizer;
use crate::optim::{HostState, OptimizerConfig};

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

/// The same optimizer API on either backend: write grads, step, read params when needed.
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

    /// One state tensor by PyTorch's name.
    pub fn read_state(&self, name: &str) -> Result<Vec<f32>> {
        match &self.inner {
            Inner::Gpu { opt, .. } => opt.read_state(name),
            Inner::Cpu { opt, .. } => opt.state(name).map(<[f32]>::to_vec),
        }
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        match &mut self.inner {
            Inner::Gpu { opt, .. } => opt.set_lr(lr),
            Inner::Cpu { opt, .. } => opt.set_lr(lr),
        }
    }

    /// Host-side scalar state (step count, lr, NAdam's mu_product).
    pub fn host_state(&self) -> HostState {
        match &self.inner {
            Inner::Gpu { opt, .. } => opt.host_state(),
            Inner::Cpu { opt, .. } => opt.host_state(),
        }
    }
}
