//! Parameter groups as the caller gives them ([`ParamGroup`]) and as an optimizer keeps them
//! (`Group`): plain data, shared by the optimizer and the device step counter.

use crate::optim::{HostState, OptimizerConfig};

/// A parameter group: named segments of the [`FlatParams`](crate::FlatParams) sharing hyper-parameters (e.g. no
/// weight decay on biases and norms). All groups are updated by the same dispatch: the kernel
/// looks up each vec4 lane's group in a table on the device.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// Segment names.
    pub segments: Vec<String>,
    /// The group's hyper-parameters (same optimizer and structural options as every other
    /// group: the state tensors are shared buffers).
    pub config: OptimizerConfig,
}

/// One parameter group as the optimizer keeps it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Group {
    /// Its segments (none for the single group of an optimizer built without groups).
    pub segments: Vec<String>,
    /// Its hyper-parameters.
    pub config: OptimizerConfig,
    /// Its host scalars (step, lr, the algorithm's own).
    pub host: HostState,
}
