//! The algorithms: one file per algorithm (configuration with the reference's defaults and
//! its update rule, validation, state, the per-step uniform and its host scalars, the
//! hyper-parameter mapping, kernel options and the fast CPU loop), the [`Algorithm`] trait
//! they implement, and the registry that makes [`OptimizerConfig`] of them.

mod adadelta;
mod adafactor;
mod adagrad;
mod adam;
mod adamax;
pub mod algorithm;
pub(crate) mod chunk;
mod lamb;
mod lion;
mod muon;
mod nadam;
mod newton_schulz;
mod radam;
mod registry;
mod rmsprop;
mod schedule_free;
mod sgd;
mod state_format;
mod state_layout;
pub(crate) mod validate;

pub use adadelta::{AdadeltaConfig, AdadeltaUniform};
pub use adafactor::{AdafactorConfig, AdafactorUniform, TILE_COLS, TILE_ROWS};
pub use adagrad::{AdagradConfig, AdagradUniform};
pub use adam::{AdamConfig, AdamUniform};
pub use adamax::{AdamaxConfig, AdamaxUniform};
pub use algorithm::{
    Algorithm, HostState, HparamReader, KernelSource, LaneOptions, SegmentScratch, WordClass,
    MAX_HOST_SCALARS,
};
pub use lamb::{LambConfig, LambUniform, LAMB_ADAM, LAMB_DECOUPLED, LAMB_PRE_NORM};
pub use lion::{LionConfig, LionUniform};
pub use muon::{MuonConfig, MuonLrAdjust, MuonUniform};
pub use nadam::{NadamConfig, NadamUniform};
pub use newton_schulz::{NewtonSchulz, NsArithmetic};
pub use radam::{RadamConfig, RadamUniform};
pub(crate) use registry::with_algorithm;
pub use registry::{OptimizerConfig, StepUniform, MAX_UNIFORM_BYTES};
pub use rmsprop::{RmspropConfig, RmspropUniform};
pub use schedule_free::{ScheduleFreeBase, ScheduleFreeConfig, ScheduleFreeUniform};
pub use sgd::{SgdConfig, SgdUniform};
pub use state_format::StateFormat;
pub use state_layout::StateLayout;

use crate::error::{Error, Result};

impl OptimizerConfig {
    /// The host state before the first step: the initial lr and the algorithm's scalars at
    /// their initial values.
    pub fn initial_host_state(&self) -> HostState {
        HostState::new(self.lr(), self.host_scalars())
    }

    /// One of the algorithm's host scalars by name (`"mu_product"`), or `None`.
    pub fn host_scalar(&self, host: &HostState, name: &str) -> Option<f64> {
        self.host_scalars()
            .iter()
            .position(|(n, _)| *n == name)
            .map(|k| host.scalars[k])
    }

    /// Whether the GPU path steps this algorithm: elementwise, or per-tensor with a
    /// segmented kernel ([`Algorithm::SEGMENTED_KERNEL`]); the GPU optimizers refuse the
    /// others with [`Error::Unsupported`] (Adafactor).
    pub fn runs_on_gpu(&self) -> bool {
        self.is_elementwise() || self.segmented_kernel().is_some()
    }

    /// Index of a state tensor in [`Self::state_names`], or a typed error.
    pub fn state_index(&self, name: &str) -> Result<usize> {
        let names = self.state_names();
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::UnknownState {
                optimizer: self.name(),
                name: name.to_string(),
                known: names.join(", "),
            })
    }

    /// Minimal bytes moved per parameter per step: p, g read; p written; each state read and
    /// written once (f32).
    pub fn minimal_bytes_per_param(&self) -> u64 {
        12 + 8 * self.state_names().len() as u64
    }

    /// Ends a step whose kernel has been issued: the state tensors have been written.
    pub fn end_step(&self, host: &mut HostState) {
        host.state_written = true;
    }
}
