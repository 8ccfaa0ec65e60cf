//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong in fused-optim, as a typed value.
///
/// No public function panics on bad input: it returns one of these and leaves the caller's
/// buffers, parameters and optimizer state as they were.
#[derive(Debug, Error)]
pub enum Error {
    /// No wgpu adapter could be found.
    #[error(
        "no GPU adapter found ({reason}). On a machine without a GPU install a software \
         driver: Mesa lavapipe (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`) or Mesa \
         llvmpipe over EGL (`libegl-mesa0`); WGPU_BACKEND=vulkan|gl and WGPU_ADAPTER_NAME select one"
    )]
    NoAdapter {
        /// What wgpu said.
        reason: String,
    },
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter `{adapter}`: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// A hyper-parameter is outside its valid range.
    #[error("{optimizer}: invalid {name} = {value}: {requirement}")]
    InvalidHyperParameter {
        /// Optimizer name (PyTorch's class name).
        optimizer: &'static str,
        /// Hyper-parameter name (PyTorch's keyword).
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the value must satisfy.
        requirement: &'static str,
    },
    /// Hyper-parameters that are valid one by one but not together.
    #[error("{optimizer}: {reason}")]
    InvalidCombination {
        /// Optimizer name.
        optimizer: &'static str,
        /// Why the combination is refused.
        reason: &'static str,
    },
    /// Two sequences that must have the same length do not.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An empty parameter set or tensor.
    #[error("{what} is empty")]
    Empty {
        /// What was empty.
        what: &'static str,
    },
    /// A buffer larger than the device allows.
    #[error("{what} needs {bytes} bytes, above the device limit max_buffer_size = {limit}")]
    BufferTooLarge {
        /// Which buffer.
        what: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// The device's limit.
        limit: u64,
    },
    /// A caller-supplied buffer is smaller than required.
    #[error(
        "{what} holds {got} bytes but {needed} are needed (fused-optim processes 4 elements per \
         lane, so a buffer for n elements must hold round_up(n, 4) * 4 bytes)"
    )]
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// A caller-supplied buffer lacks a usage flag it needs.
    #[error("{what} lacks the buffer usage {usage} (it has {has})")]
    MissingUsage {
        /// Which buffer.
        what: &'static str,
        /// The missing usage.
        usage: &'static str,
        /// The usages it has, as wgpu prints them.
        has: String,
    },
    /// A name that is not a state of this optimizer (with its options).
    #[error("{optimizer} has no state `{name}` with this configuration (it has: {known})")]
    UnknownState {
        /// Optimizer name.
        optimizer: &'static str,
        /// The name asked for.
        name: String,
        /// The names it has.
        known: String,
    },
    /// A tensor given as a range of a caller buffer that the kernels over caller ranges
    /// cannot update as given (`crate::gpu::tensors`): a misaligned byte offset, a range
    /// past its buffer's end, params overlapping another tensor's params or any gradients,
    /// a group index out of range. Refused before anything is encoded: nothing is written.
    #[error("tensor `{tensor}`: {reason}")]
    TensorRange {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A segment name that does not exist, or exists twice.
    #[error("segment `{name}`: {reason}")]
    Segment {
        /// The segment name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor shape whose element count is not the segment's length.
    #[error("segment `{segment}`: shape {shape:?} has {product} elements, the segment has {len}")]
    ShapeMismatch {
        /// The segment (its name, or its index).
        segment: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The shape's element count (`usize::MAX` when it overflows).
        product: usize,
        /// The segment's length.
        len: usize,
    },
    /// A segment table that does not describe the flat buffer: segments out of order,
    /// overlapping, past its end, or leaving elements (other than lane padding) uncovered.
    #[error("segment table over {len} elements: {reason}")]
    SegmentTable {
        /// The flat buffer's length.
        len: usize,
        /// What is wrong.
        reason: String,
    },
    /// An algorithm that needs a tensor of a certain rank got another one (Muon on a
    /// non-2-D segment, Adafactor's factored state on a 1-D tensor).
    #[error("{optimizer}: segment `{segment}` has shape {shape:?}: {requirement}")]
    WrongRank {
        /// Optimizer name.
        optimizer: &'static str,
        /// The segment.
        segment: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What the algorithm needs.
        requirement: &'static str,
    },
    /// A kernel variant needs more bindings of one kind than the device allows (e.g.
    /// WebGPU's default of 8 storage buffers per shader stage). Refused before any pipeline
    /// or layout is created, so nothing is left half-built.
    #[error("kernel {kernel} does not fit this device: it needs {needs} {what}, the device allows {limit}")]
    KernelDoesNotFit {
        /// The kernel file and its variant.
        kernel: String,
        /// How many it needs.
        needs: u32,
        /// How many the device allows.
        limit: u32,
        /// What is counted, with the name of the wgpu limit.
        what: &'static str,
    },
    /// A kernel variant needs a device feature the device was not created with.
    #[error("kernel {kernel} needs the device feature {feature}, which this device lacks")]
    KernelNeedsFeature {
        /// The kernel file and its variant.
        kernel: String,
        /// The feature (and what needs it).
        feature: &'static str,
    },
    /// A wgpu validation or device error (shader compilation, mapping, polling).
    #[error("wgpu error during {during}: {message}")]
    Wgpu {
        /// What was being done.
        during: &'static str,
        /// What wgpu said.
        message: String,
    },
    /// A blocking call on the web (wasm32), where nothing can wait: the browser delivers
    /// read-backs and WebGPU's error reports only from its event loop. Use the `*_async`
    /// counterpart (e.g. [`FlatParams::read_params_async`](crate::FlatParams::read_params_async),
    /// [`GpuContext::new_async`](crate::GpuContext::new_async)) and `.await` it.
    #[error("{what} would block, which the web cannot: use its `_async` counterpart and await it")]
    WouldBlock {
        /// The blocking call.
        what: &'static str,
    },
    /// The device is lost (destroyed with `wgpu::Device::destroy`, or lost by the driver).
    /// Every later call on anything built on its context returns this; host-side data
    /// (caller vectors, CPU optimizers, checkpoint files) is unaffected. Recover by creating
    /// a new [`GpuContext`](crate::GpuContext) and loading the last checkpoint.
    #[error("the wgpu device is lost ({reason}) during {during}: create a new GpuContext and load the last checkpoint")]
    DeviceLost {
        /// What was being done when the loss was seen.
        during: &'static str,
        /// The reason wgpu gave (`Destroyed`, or the driver's message).
        reason: String,
    },
    /// Memory could not be allocated: device memory (a wgpu out-of-memory error caught in an
    /// error scope) or host memory (a failed `try_reserve`). Nothing is left half-built.
    #[error("out of memory during {during}: {message}")]
    OutOfMemory {
        /// What was being allocated.
        during: &'static str,
        /// What the allocator or wgpu said, with the size asked for.
        message: String,
    },
    /// A checkpoint that cannot be written, read, or does not fit this optimizer. Nothing of
    /// the optimizer is changed when loading fails.
    #[error("checkpoint {file}: {reason}")]
    Checkpoint {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The global gradient norm was not finite (`clip_grad_norm_`'s `error_if_nonfinite`).
    #[error("the total norm of the gradients is non-finite ({norm}), so it cannot be clipped")]
    NonFiniteGradients {
        /// The norm found.
        norm: f64,
    },
    /// A feature this algorithm does not have (e.g. the device-side step counter for an
    /// algorithm whose uniform depends on its lr history, or a train/eval switch for an
    /// algorithm without modes).
    #[error("{optimizer} does not support {feature}")]
    Unsupported {
        /// Optimizer name.
        optimizer: &'static str,
        /// What was asked for.
        feature: &'static str,
    },
    /// A call that is not valid in the optimizer's current mode (Schedule-Free: stepping in
    /// evaluation mode).
    #[error("{optimizer}: {reason}")]
    WrongMode {
        /// Optimizer name.
        optimizer: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too few or too many parameter groups.
    #[error("{got} parameter groups given: between 1 and {max} are supported")]
    GroupCount {
        /// Groups given.
        got: usize,
        /// The most a kernel can tell apart (`MAX_GROUPS`).
        max: usize,
    },
    /// A parameter-group index past the last group.
    #[error("parameter group {index} does not exist (the optimizer has {groups})")]
    GroupIndex {
        /// The index given.
        index: usize,
        /// The number of groups.
        groups: usize,
    },
    /// An array view that is not contiguous in standard (row-major) layout.
    #[error("the {what} array is not contiguous in standard layout (use `.as_standard_layout()`)")]
    NotContiguous {
        /// Which argument.
        what: &'static str,
    },
    /// More elements than the kernels can index (u32 lane indices: at most 2^34 elements per
    /// flat buffer, `dispatch::MAX_ELEMENTS`); refused before anything is allocated.
    #[error("{what}: {len} elements, more than the kernels can index ({limit})")]
    TooManyElements {
        /// Which buffer.
        what: &'static str,
        /// Elements asked for.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A kernel launch option outside its valid range (`KernelTuning`).
    #[error("kernel launch option {name} = {value}: {requirement}")]
    InvalidLaunchOption {
        /// The option.
        name: &'static str,
        /// The value given.
        value: u64,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// A shard plan that cannot be made, or shard files that do not fit together
    /// ([`zero`](crate::zero)): more ranks than the layout can give work to, overlapping or
    /// missing shards, shards of different optimizers.
    #[error("sharding: {reason}")]
    Shard {
        /// What is wrong.
        reason: String,
    },
    /// A collective operation did not complete within the sharded optimizer's timeout: a
    /// peer is stuck, dead or not calling the same step. The optimizer is then poisoned (MPI
    /// may still write into its buffers): every later call returns [`Error::Poisoned`].
    #[error("{op} did not complete within {after:?} on rank {rank}: a peer is stuck, dead or not stepping")]
    CollectiveTimeout {
        /// The collective (`reduce-scatter`, `all-gather`, `status exchange`).
        op: &'static str,
        /// The timeout.
        after: std::time::Duration,
        /// This rank.
        rank: usize,
    },
    /// Other ranks reported a failure during a sharded step (their gradient closure failed
    /// or panicked, their shard update failed); this rank did not update anything in the
    /// phase named, and no collective is left pending.
    #[error("rank(s) {ranks:?} failed during {phase}")]
    PeerFailed {
        /// The ranks that failed.
        ranks: Vec<usize>,
        /// `construction` (a shard optimizer could not be made), `gradients` (nothing
        /// changed anywhere), `update` (ranks that did not fail updated their shard: reload
        /// the last checkpoint), `save` or `load`.
        phase: &'static str,
    },
    /// This rank's gradient closure failed or panicked during a sharded step; the peers were
    /// told (they return [`Error::PeerFailed`]) and nothing changed.
    #[error("the gradient computation failed on this rank: {reason}")]
    LocalFailure {
        /// The closure's error or panic message.
        reason: String,
    },
    /// A sharded optimizer whose collectives timed out: its buffers were given up to MPI.
    /// Reload the last checkpoint into a new optimizer.
    #[error("the sharded optimizer is unusable after a collective timed out")]
    Poisoned,
    /// Optimizer state given to load is invalid (e.g. a NaN absmax of 8-bit state); nothing
    /// was changed.
    #[error("invalid optimizer state: {what}: {reason}")]
    InvalidState {
        /// Which part of the state.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
