//! The wgpu side: context, flat buffers, kernels, the optimizer runner.

pub mod buffer;
pub mod context;
pub mod device_step;
pub mod gradients;
pub mod groups;
pub(crate) mod kernel;
pub mod low_precision;
pub mod optimizer;
pub mod shaders;
pub mod tensors;
pub mod timer;
pub mod wait;
