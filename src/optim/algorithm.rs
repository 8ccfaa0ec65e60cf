//! The contract every registered algorithm fulfils ([`Algorithm`]), and the small types it is
//! written with. One file per algorithm in `src/optim/` implements it; the registry
//! (`src/optim/registry.rs`, one line per algorithm) turns the implementations into
//! [`OptimizerConfig`](super::OptimizerConfig) and every dispatch over it, with no wildcard
//! arms: an algorithm that lacks a piece does not compile.

use serde_json::Value;

use crate::error::Result;

/// Host scalars an algorithm may keep besides the step counter and the lr (NAdam's
/// `mu_product`; Schedule-Free's `lr_max`, `weight_sum`, ...).
pub const MAX_HOST_SCALARS: usize = 4;

/// The scalar part of an optimizer's state, kept on the host: the step counter (PyTorch's
/// `step`), the current learning rate, whether the state tensors have been written once
/// (SGD's momentum buffer is a copy of g on the first step), and the algorithm's own
/// scalars, named by [`Algorithm::HOST_SCALARS`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostState {
    /// Steps taken so far (PyTorch's `step`); the next step uses `step + 1`.
    pub step: u64,
    /// Learning rate for the next step.
    pub lr: f64,
    /// False until a step (or a state load) has written the state tensors.
    pub state_written: bool,
    /// The algorithm's own scalars, in the order of [`Algorithm::HOST_SCALARS`]; unused
    /// slots are 0.
    pub scalars: [f64; MAX_HOST_SCALARS],
}

impl HostState {
    /// The state before the first step: `lr`, and each named scalar at its initial value.
    pub fn new(lr: f64, scalars: &[(&'static str, f64)]) -> Self {
        let mut values = [0.0; MAX_HOST_SCALARS];
        for (slot, (_, initial)) in values.iter_mut().zip(scalars) {
            *slot = *initial;
        }
        Self {
            step: 0,
            lr,
            state_written: false,
            scalars: values,
        }
    }
}

/// How one 32-bit word of a per-step uniform depends on the step number `t`, for the
/// device-side step counter (`shaders/device_step.wgsl`), which completes the uniform on the
/// device once it knows `t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WordClass {
    /// Independent of `t`: the host's value is used as is.
    Keep = 0,
    /// `lr * f(t)`: the host writes `lr`, the step table `f(t)`, the device multiplies (f32).
    LrTimes = 1,
    /// `f(t)`, independent of `lr`: taken from the step table.
    OfStep = 2,
}

/// The options of a configuration that cost arithmetic in every lane of a kernel. A kernel
/// leaves out the arithmetic of an option no parameter group uses (override constants
/// `MAXIMIZE`, `L2_DECAY`, `DECOUPLED_DECAY` of `shaders/common.wgsl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneOptions {
    /// The gradient's sign is flipped.
    pub maximize: bool,
    /// L2 weight decay is added to the gradient.
    pub l2_decay: bool,
    /// The params are multiplied by a decay factor.
    pub decoupled_decay: bool,
}

impl LaneOptions {
    /// The options of an algorithm with `maximize`, a weight decay, and the decay applied
    /// decoupled (to the params) or as L2 (to the gradient).
    pub fn of(maximize: bool, weight_decay: f64, decoupled: bool) -> Self {
        let decays = weight_decay != 0.0;
        Self {
            maximize,
            l2_decay: decays && !decoupled,
            decoupled_decay: decays && decoupled,
        }
    }
}

/// A WGSL kernel file: its name, its source (without the common prelude) and its state
/// slots in binding order (bindings 4, 5, ...).
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name under `shaders/`.
    pub file: &'static str,
    /// The algorithm's part of the module.
    pub source: &'static str,
    /// State tensor names in binding order, from binding 4.
    pub slots: &'static [&'static str],
}

/// Reads a PyTorch-style hyper-parameter map (`param_groups[0]` minus `params`, or a
/// checkpoint's `hparams`): every key read is remembered, so that [`Self::finish`] can refuse
/// an option this crate does not have instead of ignoring it.
pub struct HparamReader<'a> {
    map: &'a serde_json::Map<String, Value>,
    used: std::cell::RefCell<Vec<String>>,
}

impl<'a> HparamReader<'a> {
    /// Implementation switches of PyTorch that change no result.
    pub const IGNORED: &'static [&'static str] =
        &["foreach", "fused", "capturable", "differentiable"];

    /// A reader over `map`.
    pub fn new(map: &'a serde_json::Map<String, Value>) -> Self {
        Self {
            map,
            used: std::cell::RefCell::new(Self::IGNORED.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn take(&self, key: &str) -> Option<&'a Value> {
        self.used.borrow_mut().push(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A number (`default` when absent or null).
    pub fn num(&self, key: &str, default: f64) -> std::result::Result<f64, String> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("`{key}` is not a number: {v}")),
        }
    }

    /// An integer (`default` when absent or null).
    pub fn uint(&self, key: &str, default: u64) -> std::result::Result<u64, String> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|x| x.fract() == 0.0 && *x >= 0.0)
                        .map(|x| x as u64)
                })
                .ok_or_else(|| format!("`{key}` is not a non-negative integer: {v}")),
        }
    }

    /// A boolean (`default` when absent or null).
    pub fn flag(&self, key: &str, default: bool) -> std::result::Result<bool, String> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("`{key}` is not a boolean: {v}")),
        }
    }

    /// A pair of numbers such as `betas` (`default` when absent or null).
    pub fn pair(&self, key: &str, default: (f64, f64)) -> std::result::Result<(f64, f64), String> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Array(a)) if a.len() == 2 => {
                let x = |i: usize| {
                    a[i].as_f64()
                        .ok_or_else(|| format!("`{key}[{i}]` is not a number: {}", a[i]))
                };
                Ok((x(0)?, x(1)?))
            }
            Some(v) => Err(format!("`{key}` is not a pair of numbers: {v}")),
        }
    }

    /// A string (`None` when absent or null).
    pub fn text(&self, key: &str) -> std::result::Result<Option<String>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("`{key}` is not a string: {v}")),
        }
    }

    /// A pair whose first entry may be null, such as Adafactor's `eps` = `[eps1 or None,
    /// eps2]` (`default` when absent or null).
    pub fn optional_first_pair(
        &self,
        key: &str,
        default: (Option<f64>, f64),
    ) -> std::result::Result<(Option<f64>, f64), String> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Array(a)) if a.len() == 2 => {
                let first = match &a[0] {
                    Value::Null => None,
                    v => Some(
                        v.as_f64()
                            .ok_or_else(|| format!("`{key}[0]` is not a number or null: {v}"))?,
                    ),
                };
                let second = a[1]
                    .as_f64()
                    .ok_or_else(|| format!("`{key}[1]` is not a number: {}", a[1]))?;
                Ok((first, second))
            }
            Some(v) => Err(format!("`{key}` is not a pair: {v}")),
        }
    }

    /// A triple of numbers such as Muon's `ns_coefficients` (`default` when absent or null).
    pub fn triple(
        &self,
        key: &str,
        default: (f64, f64, f64),
    ) -> std::result::Result<(f64, f64, f64), String> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Array(a)) if a.len() == 3 => {
                let x = |i: usize| {
                    a[i].as_f64()
                        .ok_or_else(|| format!("`{key}[{i}]` is not a number: {}", a[i]))
                };
                Ok((x(0)?, x(1)?, x(2)?))
            }
            Some(v) => Err(format!("`{key}` is not a triple of numbers: {v}")),
        }
    }

    /// Marks `keys` as understood without reading them (e.g. bookkeeping entries).
    pub fn accept(&self, keys: &[&str]) {
        self.used
            .borrow_mut()
            .extend(keys.iter().map(|k| k.to_string()));
    }

    /// Fails on the first key nobody read.
    pub fn finish(self, class: &str) -> std::result::Result<(), String> {
        let used = self.used.borrow();
        match self.map.keys().find(|k| !used.iter().any(|u| u == *k)) {
            Some(k) => Err(format!(
                "{class}: unsupported hyper-parameter `{k}` = {}",
                self.map[k]
            )),
            None => Ok(()),
        }
    }
}

/// One optimization algorithm: everything that is particular to it, in one place. The
/// implementing type is the algorithm's configuration (hyper-parameters with PyTorch's or the
/// reference package's defaults).
///
/// The registry generates from these: [`OptimizerConfig`](super::OptimizerConfig) (one
/// variant per algorithm), kernel lookup, the fast CPU dispatch, checkpoint and golden
/// hyper-parameter mappings, the benchmark list and the test tables' coverage check. The f64
/// reference step is the one piece kept apart, in `src/cpu/reference/<name>.rs`
/// ([`ReferenceStep`](crate::cpu::reference::ReferenceStep)), so that the oracle shares no
/// arithmetic with the code it checks.
pub trait Algorithm: Copy + std::fmt::Debug + PartialEq + Default + Send + Sync + 'static {
    /// The per-step uniform: the `#[repr(C)]` mirror of the kernel's WGSL `struct StepUniform`,
    /// computed on the host in f64 and rounded to f32 once per step.
    type Uniform: bytemuck::Pod + std::fmt::Debug + Send + Sync;

    /// Registry id: the file stem of `src/optim/<id>.rs` and `shaders/<id>.wgsl`.
    const ID: &'static str;
    /// Whether each element's update depends only on that element (and scalars): then any
    /// split of the elements gives the same bits, and [`zero`](crate::zero) may shard it in
    /// equal aligned ranges. Per-tensor algorithms (trust ratios, factored moments,
    /// orthogonalisation) are `false` and are sharded by whole segments.
    const ELEMENTWISE: bool;
    /// The WGSL kernel.
    const KERNEL: KernelSource;
    /// Class names (PyTorch's or the reference package's) this algorithm answers to in
    /// hyper-parameter maps; the first is the default.
    const CLASS_NAMES: &'static [&'static str];
    /// The algorithm's own host scalars with their initial values (stored in
    /// [`HostState::scalars`] in this order, and in checkpoints by name).
    const HOST_SCALARS: &'static [(&'static str, f64)] = &[];
    /// How each word of [`Self::Uniform`] depends on the step number, for the device-side
    /// step counter; `None` when the uniform depends on more than `t` and the current lr (the
    /// device step counter is then refused with a typed error).
    const WORD_CLASSES: Option<&'static [WordClass]>;

    /// Named configurations the benchmarks measure: one per distinct access pattern and
    /// kernel variant.
    fn benchmark_configs() -> Vec<(&'static str, Self)>;

    /// The class name of this configuration (`"AdamW"` for Adam with decoupled decay).
    fn class_name(&self) -> &'static str;
    /// The initial learning rate.
    fn lr(&self) -> f64;
    /// This configuration with its initial learning rate replaced.
    fn with_lr(self, lr: f64) -> Self;
    /// Checks every hyper-parameter as the reference implementation does; the error names
    /// the first bad one.
    fn validate(&self) -> Result<()>;
    /// Checks a learning rate given to `set_lr` (default: finite and >= 0).
    fn validate_lr(&self, lr: f64) -> Result<()> {
        super::validate::non_negative(self.class_name(), "lr", lr)
    }
    /// Per-element state tensors of this configuration, by the reference's names, in the
    /// order the kernel binds them.
    fn state_names(&self) -> Vec<&'static str>;
    /// Initial value of a state tensor (f64, so that the reference starts exactly).
    fn initial_state_value(&self, name: &str) -> f64;
    /// The per-lane options this configuration uses.
    fn lane_options(&self) -> LaneOptions;
    /// Pipeline-overridable constants of the kernel for this configuration (structural
    /// flags only; everything numeric is in the per-step uniform).
    fn overrides(&self) -> Vec<(&'static str, f64)>;
    /// Starts a step: `host.step` has just been incremented; advances the algorithm's host
    /// scalars and returns the step's uniform.
    fn begin_step(&self, host: &mut HostState) -> Self::Uniform;
    /// The hyper-parameters under the reference's names (as in `param_groups[0]`).
    fn to_hparams(&self) -> Value;
    /// The inverse of [`Self::to_hparams`] for a class of [`Self::CLASS_NAMES`]: absent keys
    /// take the class's defaults, every key present must be read.
    fn from_hparams(class: &str, h: &HparamReader<'_>) -> std::result::Result<Self, String>;
    /// The fast CPU loop over one chunk (`s`: the state tensors' chunks in
    /// [`Self::state_names`] order). Must be `#[inline(always)]`: it is compiled into the
    /// SSE2 and AVX2 entry points of `cpu::fast`.
    fn cpu_chunk(&self, u: &Self::Uniform, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]);
    /// Whether a step may be taken now (default: always). Schedule-Free refuses to step in
    /// evaluation mode, as the package does.
    fn check_step(&self, host: &HostState) -> Result<()> {
        let _ = host;
        Ok(())
    }
    /// Algorithms whose params hold a different sequence while training than for evaluation
    /// (Schedule-Free: y while training, x for evaluation): switch `host` to training
    /// (`train`) or evaluation mode and return the uniform of the kernel pass that maps the
    /// params, or `None` when no pass is needed (already in that mode, or no step taken
    /// yet). The default: the algorithm has no modes ([`Error::Unsupported`]).
    ///
    /// [`Error::Unsupported`]: crate::Error::Unsupported
    fn mode_switch(&self, host: &mut HostState, train: bool) -> Result<Option<Self::Uniform>> {
        let _ = (host, train);
        Err(crate::Error::Unsupported {
            optimizer: self.class_name(),
            feature: "train/eval modes",
        })
    }
    /// Whether `host` is in training mode (always true for algorithms without modes).
    fn is_training(&self, host: &HostState) -> bool {
        let _ = host;
        true
    }

    // ---- The per-tensor extension (algorithms with `ELEMENTWISE = false`) ----
    //
    // A per-tensor algorithm steps one segment (tensor) at a time in two passes: a first
    // pass over the segment's chunks that may update state and adds `SEGMENT_SUMS` partial
    // sums per chunk (kept per chunk, in fixed slots, summed in chunk order: deterministic,
    // no atomics), then `finish_segment` turns the segment's sums into the uniform of the
    // second pass (e.g. LAMB's trust ratio), which `cpu_chunk` runs over the same chunks.
    // An algorithm with a matrix transform (Muon: `matrix_transform`) writes each element's
    // transform input into a work buffer in the first pass; the implementations then
    // orthogonalise every segment's work matrix (Newton–Schulz) and the second pass gets the
    // result in place of the gradient.
    // The defaults describe an elementwise algorithm (no first pass); the implementations
    // (`cpu::fast`, `cpu::reference`) take this path exactly when `ELEMENTWISE` is false.

    /// The GPU module of a per-tensor algorithm (`None`: the GPU refuses it, typed): WGSL
    /// with entry points `gnorm`, `gfinish` (the global gradient clip), `reduce`, `finish`
    /// and `apply`, and the bindings `src/gpu/segmented.rs` describes; `slots` are the state
    /// tensors from binding 3.
    const SEGMENTED_KERNEL: Option<KernelSource> = None;
    /// Partial sums per segment the first pass produces (0: no first pass).
    const SEGMENT_SUMS: usize = 0;
    /// Names of the per-segment scalars [`Self::finish_segment`] reports for the last step
    /// (LAMB: `weight_norm`, `adam_norm`, `trust_ratio`), readable from the optimizers.
    const SEGMENT_SCALARS: &'static [&'static str] = &[];

    /// Whether every state tensor holds one element per parameter, at the parameter's own
    /// index (the default). `false` (Adafactor's factored moments): each state tensor holds
    /// [`Self::state_elements`] per segment, the segments' parts back to back
    /// ([`StateLayout`](crate::StateLayout)).
    const STATE_PER_ELEMENT: bool = true;

    /// Elements of state tensor `state` (index into [`Self::state_names`]) for one segment
    /// (default: one per element; only read when [`Self::STATE_PER_ELEMENT`] is false).
    fn state_elements(&self, state: usize, segment: &crate::segments::SegmentShape) -> usize {
        let _ = state;
        segment.len()
    }

    /// A whole segment's step on the fast CPU path, for per-tensor algorithms that do not
    /// fit the chunked two-pass scheme (Adafactor's row and column reductions): `host` is the
    /// step's host state (after [`Self::begin_step`], which gave `u`), `states` the segment's
    /// parts of the state tensors, `scratch` reusable, `scalars` for
    /// [`Self::SEGMENT_SCALARS`]. Returns `false` (the default, nothing done) for algorithms
    /// stepped by [`Self::cpu_reduce_chunk`], [`Self::finish_segment`] and
    /// [`Self::cpu_chunk`].
    #[allow(clippy::too_many_arguments)]
    fn cpu_segment_step(
        &self,
        host: &HostState,
        u: &Self::Uniform,
        segment: &crate::segments::SegmentShape,
        p: &mut [f32],
        g: &[f32],
        states: &mut [&mut [f32]],
        scratch: &mut SegmentScratch,
        scalars: &mut [f64],
    ) -> bool {
        let _ = (host, u, segment, p, g, states, scratch, scalars);
        false
    }

    /// Checks that the algorithm accepts tensors of these shapes (a typed error naming the
    /// segment otherwise; default: any shape).
    fn check_segments(&self, table: &crate::segments::SegmentTable) -> Result<()> {
        let _ = table;
        Ok(())
    }

    /// Whether the step first scales every gradient by `min(1, max / (||g|| + eps))` over
    /// all segments together, as `(max, eps)` (LAMB's `pre_norm`); default none.
    fn global_grad_clip(&self) -> Option<(f64, f64)> {
        None
    }

    /// The first pass over one chunk of one segment: may update the state chunks `s`
    /// (in [`Self::state_names`] order), adds its partial sums to `sums`
    /// (`SEGMENT_SUMS` of them, zero on entry; f64 accumulators on the CPU) and, for an
    /// algorithm with a [`Self::matrix_transform`], writes the transform's input for each
    /// element into `work` (the chunk's part of the segment's matrix; empty otherwise).
    /// Must be `#[inline(always)]`, as [`Self::cpu_chunk`]. Default: nothing.
    #[inline(always)]
    fn cpu_reduce_chunk(
        &self,
        u: &Self::Uniform,
        p: &[f32],
        g: &[f32],
        s: &mut [&mut [f32]],
        sums: &mut [f64],
        work: &mut [f32],
    ) {
        let _ = (u, p, g, s, sums, work);
    }

    /// The matrix function applied between the passes to every segment's work matrix (the
    /// first pass's output, rows x cols of the segment's matrix view): Muon's Newton–Schulz
    /// orthogonalisation. The second pass then receives the result as its `g`. `None` (the
    /// default): no transform, the second pass gets the gradient.
    fn matrix_transform(&self) -> Option<super::NewtonSchulz> {
        None
    }

    /// The step's uniform with every gradient scaled by `scale` (the factor of
    /// [`Self::global_grad_clip`], rounded to f32 as the reference package does); default:
    /// unchanged (an algorithm without global clipping).
    fn with_grad_scale(&self, u: &Self::Uniform, scale: f32) -> Self::Uniform {
        let _ = scale;
        *u
    }

    /// Between the passes: the uniform of the second pass over `segment`, from the step's
    /// uniform and the segment's finished sums (f64, summed in chunk order); writes the
    /// values of [`Self::SEGMENT_SCALARS`] into `scalars`. Default: the step's uniform.
    fn finish_segment(
        &self,
        u: &Self::Uniform,
        segment: &crate::segments::SegmentShape,
        sums: &[f64],
        scalars: &mut [f64],
    ) -> Self::Uniform {
        let _ = (segment, sums, scalars);
        *u
    }
}

/// Reusable buffers of [`Algorithm::cpu_segment_step`]: kept by the optimizer, grown on
/// first use, never shrunk (no allocation per step once sized).
#[derive(Debug, Default)]
pub struct SegmentScratch {
    /// f64 words (partial sums).
    pub wide: Vec<f64>,
    /// f32 words (per-row and per-column factors).
    pub narrow: Vec<f32>,
}

/// PyTorch's sign of the gradient: -1 when maximizing, else 1.
pub(crate) fn sign(maximize: bool) -> f32 {
    if maximize {
        -1.0
    } else {
        1.0
    }
}

/// A 0/1 override constant.
pub(crate) fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}
