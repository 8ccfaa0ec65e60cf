//! CPU implementations: the f64 reference and the fast multi-threaded f32 path.

mod bf16_gemm;
pub mod blockwise8;
pub mod fast;
pub mod newton_schulz;
pub mod q8_checkpoint;
pub mod reference;
mod segmented;
/// The SIMD level of the fast path's loops (the crate's [`crate::simd`] module, here where it
/// was first).
pub use crate::simd;
pub mod staggered;
