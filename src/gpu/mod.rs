//! The wgpu side: context, flat buffers, kernels, the optimizer runner.

pub(crate) mod blockwise8;
pub mod buffer;
pub mod context;
pub mod device_step;
pub(crate) mod factored;
pub mod gradients;
pub mod groups;
pub(crate) mod kernel;
pub mod low_precision;
pub mod newton_schulz;
pub mod optimizer;
pub(crate) mod segmented;
pub mod shaders;
pub mod tensors;
pub mod timer;
pub mod wait;
