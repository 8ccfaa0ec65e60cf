//! The registry: one line per algorithm (at the bottom of this file). The macro turns the
//! list into [`OptimizerConfig`], [`StepUniform`] and every dispatch over them, as exhaustive
//! `match`es without wildcard arms: an algorithm whose file lacks a piece of [`Algorithm`] or
//! of [`ReferenceStep`] does not compile.

use super::algorithm::{Algorithm, HostState, HparamReader, KernelSource, LaneOptions, WordClass};
use crate::error::Result;

use super::*;

macro_rules! registry {
    (($d:tt) $($variant:ident($config:ty)),* $(,)?) => {
        /// `with_algorithm!(config, c => body)`: `body` with `c` bound to the algorithm
        /// configuration inside `config` (an exhaustive match over the registry, expanded
        /// once per algorithm, so `body` is compiled for each concrete type). Lets the CPU
        /// paths dispatch without the registry depending on them.
        macro_rules! with_algorithm {
            ($d value:expr, $d c:ident => $d body:expr) => {
                match $d value {
                    $(crate::optim::OptimizerConfig::$variant($d c) => $d body,)*
                }
            };
        }
        pub(crate) use with_algorithm;

        /// Any optimizer of the crate, with its hyper-parameters: one variant per registered
        /// algorithm (`src/optim/registry.rs`).
        ///
        /// Build one from a specific config with `.into()`:
        /// `OptimizerConfig::from(AdamConfig::default())`.
        ///
        /// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`): a plain `Copy` value.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum OptimizerConfig {
            $(
                #[doc = concat!("[`", stringify!($config), "`].")]
                $variant($config),
            )*
        }

        $(
            impl From<$config> for OptimizerConfig {
                fn from(c: $config) -> Self {
                    OptimizerConfig::$variant(c)
                }
            }
        )*

        /// The per-step uniform of one kernel, typed: [`Algorithm::Uniform`] of the
        /// configuration's algorithm.
        #[derive(Clone, Copy, Debug)]
        pub enum StepUniform {
            $(
                #[doc = concat!("Of [`", stringify!($config), "`].")]
                $variant(<$config as Algorithm>::Uniform),
            )*
        }

        impl StepUniform {
            /// The bytes written to the uniform buffer.
            pub fn as_bytes(&self) -> &[u8] {
                match self {
                    $(Self::$variant(u) => bytemuck::bytes_of(u),)*
                }
            }
        }

        // Every per-step uniform is a multiple of 16 bytes and fits its slot.
        const _: () = {
            $(
                let size = std::mem::size_of::<<$config as Algorithm>::Uniform>() as u64;
                assert!(size % 16 == 0, "a per-step uniform must be a multiple of 16 bytes");
                assert!(size <= MAX_UNIFORM_BYTES, "a per-step uniform is larger than MAX_UNIFORM_BYTES");
            )*
        };

        impl OptimizerConfig {
            /// Registry ids of every algorithm, in registry order.
            pub const IDS: &'static [&'static str] = &[$(<$config as Algorithm>::ID,)*];

            /// The registry id of this configuration's algorithm (`"adam"`).
            pub fn id(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::ID,)*
                }
            }

            /// The class name (PyTorch's, or the reference package's; `"AdamW"` for Adam
            /// with decoupled weight decay).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(c) => c.class_name(),)*
                }
            }

            /// Check the hyper-parameters; the error names the first bad one.
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.validate(),)*
                }
            }

            /// Check a learning rate given to `set_lr`.
            pub fn validate_lr(&self, lr: f64) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.validate_lr(lr),)*
                }
            }

            /// The initial learning rate.
            pub fn lr(&self) -> f64 {
                match self {
                    $(Self::$variant(c) => c.lr(),)*
                }
            }

            /// This configuration with its initial learning rate replaced.
            pub fn with_lr(self, lr: f64) -> Self {
                match self {
                    $(Self::$variant(c) => Self::$variant(c.with_lr(lr)),)*
                }
            }

            /// Per-element state tensors this configuration has, by the reference's names,
            /// in the order the kernels bind them.
            pub fn state_names(&self) -> Vec<&'static str> {
                match self {
                    $(Self::$variant(c) => c.state_names(),)*
                }
            }

            /// Initial value of a state tensor (e.g. Adagrad's `sum` starts at
            /// `initial_accumulator_value`), exact in f64.
            pub fn initial_state_value(&self, name: &str) -> f64 {
                match self {
                    $(Self::$variant(c) => c.initial_state_value(name),)*
                }
            }

            /// The algorithm's own host scalars with their initial values.
            pub fn host_scalars(&self) -> &'static [(&'static str, f64)] {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::HOST_SCALARS,)*
                }
            }

            /// The per-lane options this configuration uses.
            pub(crate) fn lane_options(&self) -> LaneOptions {
                match self {
                    $(Self::$variant(c) => c.lane_options(),)*
                }
            }

            /// Pipeline-overridable constants of the kernel for this configuration.
            pub(crate) fn overrides(&self) -> Vec<(&'static str, f64)> {
                match self {
                    $(Self::$variant(c) => c.overrides(),)*
                }
            }

            /// Starts a step: increments the step counter, advances the host scalars and
            /// returns the step's uniform, computed in f64 and rounded to f32.
            pub fn begin_step(&self, host: &mut HostState) -> StepUniform {
                host.step += 1;
                match self {
                    $(Self::$variant(c) => StepUniform::$variant(c.begin_step(host)),)*
                }
            }

            /// Whether a step may be taken now ([`Algorithm::check_step`]).
            pub fn check_step(&self, host: &HostState) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.check_step(host),)*
                }
            }

            /// Switch `host` to training or evaluation mode ([`Algorithm::mode_switch`]):
            /// the uniform of the pass that maps the params, if one is needed.
            pub fn mode_switch(
                &self,
                host: &mut HostState,
                train: bool,
            ) -> Result<Option<StepUniform>> {
                match self {
                    $(Self::$variant(c) => Ok(c.mode_switch(host, train)?.map(StepUniform::$variant)),)*
                }
            }

            /// Whether `host` is in training mode ([`Algorithm::is_training`]).
            pub fn is_training(&self, host: &HostState) -> bool {
                match self {
                    $(Self::$variant(c) => c.is_training(host),)*
                }
            }

            /// How each word of the uniform depends on `t`, or `None` when the device-side
            /// step counter cannot complete it.
            pub fn word_classes(&self) -> Option<&'static [WordClass]> {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::WORD_CLASSES,)*
                }
            }

            /// The GPU module of a per-tensor algorithm ([`Algorithm::SEGMENTED_KERNEL`]).
            pub fn segmented_kernel(&self) -> Option<KernelSource> {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::SEGMENTED_KERNEL,)*
                }
            }

            /// Whether a step starts with the global gradient clip
            /// ([`Algorithm::global_grad_clip`]).
            pub fn has_global_grad_clip(&self) -> bool {
                match self {
                    $(Self::$variant(c) => c.global_grad_clip().is_some(),)*
                }
            }

            /// The matrix transform between the passes ([`Algorithm::matrix_transform`]:
            /// Muon's Newton–Schulz), or `None`.
            pub fn matrix_transform(&self) -> Option<super::NewtonSchulz> {
                match self {
                    $(Self::$variant(c) => c.matrix_transform(),)*
                }
            }

            /// Checks that the algorithm accepts tensors of these shapes
            /// ([`Algorithm::check_segments`]).
            pub fn check_segments(&self, table: &crate::segments::SegmentTable) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.check_segments(table),)*
                }
            }

            /// The per-tensor scalars the algorithm reports for the last step
            /// ([`Algorithm::SEGMENT_SCALARS`]; empty for elementwise algorithms).
            pub fn segment_scalar_names(&self) -> &'static [&'static str] {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::SEGMENT_SCALARS,)*
                }
            }

            /// Whether every state tensor holds one element per parameter
            /// ([`Algorithm::STATE_PER_ELEMENT`]).
            pub fn state_per_element(&self) -> bool {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::STATE_PER_ELEMENT,)*
                }
            }

            /// Elements of state tensor `state` for one segment
            /// ([`Algorithm::state_elements`]).
            pub fn state_elements(
                &self,
                state: usize,
                segment: &crate::segments::SegmentShape,
            ) -> usize {
                match self {
                    $(Self::$variant(c) => c.state_elements(state, segment),)*
                }
            }

            /// Whether the algorithm is elementwise ([`Algorithm::ELEMENTWISE`]).
            pub fn is_elementwise(&self) -> bool {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::ELEMENTWISE,)*
                }
            }

            /// The WGSL kernel of this configuration's algorithm.
            pub fn kernel(&self) -> KernelSource {
                match self {
                    $(Self::$variant(_) => <$config as Algorithm>::KERNEL,)*
                }
            }

            /// Every registered kernel, in registry order.
            pub fn all_kernels() -> Vec<KernelSource> {
                vec![$(<$config as Algorithm>::KERNEL,)*]
            }

            /// The default configuration of every registered algorithm, in registry order.
            pub fn defaults() -> Vec<OptimizerConfig> {
                vec![$(OptimizerConfig::$variant(<$config>::default()),)*]
            }

            /// The hyper-parameters under the reference's names (as in `param_groups[0]`),
            /// the inverse of [`Self::from_hparams`].
            pub fn hparams(&self) -> serde_json::Value {
                match self {
                    $(Self::$variant(c) => c.to_hparams(),)*
                }
            }

            /// The configuration of class `class` (PyTorch's `"Adam"`, lion-pytorch's
            /// `"Lion"`, ...) from its hyper-parameter map. Implementation switches
            /// (`foreach`, `fused`, ...) are accepted and ignored; any other unknown key is
            /// an error, so an option this crate lacks never passes silently.
            pub fn from_hparams(
                class: &str,
                map: &serde_json::Map<String, serde_json::Value>,
            ) -> std::result::Result<OptimizerConfig, String> {
                $(
                    if <$config as Algorithm>::CLASS_NAMES.contains(&class) {
                        let reader = HparamReader::new(map);
                        let config = <$config as Algorithm>::from_hparams(class, &reader)?;
                        reader.finish(class)?;
                        return Ok(config.into());
                    }
                )*
                Err(format!("unsupported optimizer `{class}`"))
            }

            /// The configurations the benchmarks measure, by short name: one per distinct
            /// access pattern and kernel variant of every algorithm.
            pub fn benchmark_suite() -> Vec<(&'static str, OptimizerConfig)> {
                let mut all = Vec::new();
                $(
                    all.extend(
                        <$config as Algorithm>::benchmark_configs()
                            .into_iter()
                            .map(|(name, c)| (name, OptimizerConfig::$variant(c))),
                    );
                )*
                all
            }

        }
    };
}

/// Bytes of one group's slot in the per-step uniform: the largest uniform an algorithm may
/// have (checked at compile time for every registered one). `shaders/device_step.wgsl`
/// relies on it (`WORDS` = `MAX_GROUPS` × 12).
pub const MAX_UNIFORM_BYTES: u64 = 48;

// The registry: one line per algorithm, `Variant(ConfigType)`.
registry! {
    ($)
    Sgd(SgdConfig),
    Adagrad(AdagradConfig),
    Rmsprop(RmspropConfig),
    Adam(AdamConfig),
    Adadelta(AdadeltaConfig),
    Nadam(NadamConfig),
    Adamax(AdamaxConfig),
    Radam(RadamConfig),
    Lion(LionConfig),
    ScheduleFree(ScheduleFreeConfig),
    Lamb(LambConfig),
    Muon(MuonConfig),
    Adafactor(AdafactorConfig),
}
