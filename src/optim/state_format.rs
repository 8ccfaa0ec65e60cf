//! How an optimizer stores its per-element state tensors ([`StateFormat`]), shared by the
//! GPU builder and the fast CPU path.

/// How the state tensors are stored.
///
/// | format | GPU ([`GpuOptimizerBuilder`](crate::GpuOptimizerBuilder)) | fast CPU ([`CpuOptimizer::builder`](crate::CpuOptimizer::builder)) |
/// |---|---|---|
/// | [`F32`](Self::F32) | every algorithm | every algorithm |
/// | [`Bf16`](Self::Bf16) | Adam/AdamW | Adam/AdamW |
/// | [`Blockwise8`](Self::Blockwise8) | Adam/AdamW, Lion, SGD with momentum | Adam/AdamW, Lion, SGD with momentum (bitsandbytes' `Adam8bit`/`AdamW8bit`/`Lion8bit`/`SGD8bit`) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFormat {
    /// f32 (the default).
    #[default]
    F32,
    /// bf16, packed two per u32 on the GPU (one `u16` each on the CPU): half the state
    /// memory and traffic; the arithmetic stays f32 and each value is rounded to bf16 when
    /// stored (to nearest, ties to even, unless the GPU builder asks for stochastic
    /// rounding) (Adam/AdamW only).
    Bf16,
    /// Block-wise dynamic 8-bit state as bitsandbytes 0.50's CPU backend keeps it
    /// ([`crate::cpu::blockwise8`]): per tensor (segment) of at least `min_size` elements,
    /// `exp_avg` and `exp_avg_sq` are stored as one code byte per element into a 256-value
    /// dynamic map (signed for `exp_avg`, unsigned for `exp_avg_sq`) times one f32 absmax per
    /// block of [`BLOCK`](crate::cpu::blockwise8::BLOCK) = 256 elements; smaller tensors keep
    /// f32 state and bitsandbytes' 32-bit update. Adam/AdamW with decoupled (or no) weight
    /// decay; Lion and SGD with momentum keep one state (`state1` into the signed map),
    /// as bitsandbytes' `Lion8bit` / `SGD8bit`. On the fast CPU path and the GPU.
    Blockwise8 {
        /// Tensors with fewer elements keep f32 state (bitsandbytes' `min_8bit_size`,
        /// default [`DEFAULT_MIN_8BIT_SIZE`](crate::cpu::blockwise8::DEFAULT_MIN_8BIT_SIZE)
        /// = 4096).
        min_size: usize,
    },
}
