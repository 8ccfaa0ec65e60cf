//! The classic optimizer experiments, as library code the examples (`paths`, `regression`,
//! `mlp`, `mnist`) and their tests share: test functions, small models with hand-written
//! forward and backward passes, data generators, and an MNIST idx reader. Gradients are
//! computed on the CPU; the updates run through the library's optimizers.

pub mod data;
pub mod functions;
pub mod idx;
pub mod mlp;
pub mod paths;
pub mod regression;
