//! CPU implementations: the f64 reference and the fast multi-threaded f32 path.

pub mod blockwise8;
pub mod fast;
pub mod newton_schulz;
pub mod q8_checkpoint;
pub mod reference;
pub mod simd;
pub mod staggered;
