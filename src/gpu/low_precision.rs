//! Low-precision parameters and gradients (f16 or bf16, packed two per `u32`) next to f32
//! master weights: the model computes with the 16-bit params and produces 16-bit gradients;
//! the optimizer reads those, updates the f32 master weights and f32 state, and writes the
//! rounded 16-bit params back, all in the same fused kernel.
//!
//! f16 uses WGSL's `pack2x16float` / `unpack2x16float`, so it works on every adapter (no
//! `shader-f16` needed); bf16 is bit manipulation. Rounding of the written params is to
//! nearest even, or stochastic for bf16 (probability of rounding up = the discarded fraction).

use half::{bf16, f16};

use super::buffer::{read_bytes_async, FlatParams, FLAT_USAGE};
use super::context::GpuContext;
use crate::dispatch::padded_len;
use crate::error::{Error, Result};

/// A 16-bit floating-point format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowFormat {
    /// IEEE half precision (5-bit exponent, 10-bit mantissa).
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    Bf16,
}

impl LowFormat {
    /// `LOW_PRECISION` in `common.wgsl`.
    pub(crate) fn code(self) -> u32 {
        match self {
            LowFormat::F16 => 1,
            LowFormat::Bf16 => 2,
        }
    }

    /// The 16-bit pattern of `x`, rounded to nearest even.
    pub fn round(self, x: f32) -> u16 {
        match self {
            LowFormat::F16 => f16::from_f32(x).to_bits(),
            LowFormat::Bf16 => bf16::from_f32(x).to_bits(),
        }
    }

    /// The value of a 16-bit pattern.
    pub fn value(self, bits: u16) -> f32 {
        match self {
            LowFormat::F16 => f16::from_bits(bits).to_f32(),
            LowFormat::Bf16 => bf16::from_bits(bits).to_f32(),
        }
    }
}

/// f32 master weights plus their 16-bit copy and 16-bit gradients, on the device.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`), as [`FlatParams`].
#[derive(Clone, Debug)]
pub struct LowPrecisionParams {
    master: FlatParams,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    format: LowFormat,
}

impl LowPrecisionParams {
    /// Master weights from `values`; the 16-bit params start as their rounding.
    pub fn new(ctx: &GpuContext, values: &[f32], format: LowFormat) -> Result<Self> {
        let master = FlatParams::from_slice(ctx, values)?;
        Self::over(master, values, format)
    }

    /// 16-bit params and gradients over existing master weights (e.g. named, lane-aligned
    /// segments for parameter groups; the master's buffers are shared, not copied). Reads the
    /// masters back once (waits) to start the 16-bit params as their rounding.
    pub fn from_master(master: &FlatParams, format: LowFormat) -> Result<Self> {
        let values = master.read_params()?;
        Self::over(master.clone(), &values, format)
    }

    fn over(master: FlatParams, values: &[f32], format: LowFormat) -> Result<Self> {
        let ctx = master.context().clone();
        let half_bytes = padded_len(values.len() as u64) * 2;
        let limit = ctx.max_binding_bytes();
        if half_bytes > limit {
            return Err(Error::BufferTooLarge {
                what: "16-bit params (bound whole)",
                bytes: half_bytes,
                limit,
            });
        }
        let make = |label| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: half_bytes,
                usage: FLAT_USAGE,
                mapped_at_creation: false,
            })
        };
        let (params, grads) = ctx.scoped("16-bit buffers", || {
            Ok((
                make("fused-optim 16-bit params"),
                make("fused-optim 16-bit grads"),
            ))
        })?;
        let lp = Self {
            params,
            grads,
            master,
            format,
        };
        let bits: Vec<u16> = values.iter().map(|&v| format.round(v)).collect();
        lp.write(&lp.params, &bits);
        Ok(lp)
    }

    fn write(&self, buffer: &wgpu::Buffer, bits: &[u16]) {
        // Pad to whole u32 words (queue writes are multiples of 4 bytes).
        let mut padded = bits.to_vec();
        padded.resize(bits.len().next_multiple_of(2), 0);
        self.master
            .context()
            .queue()
            .write_buffer(buffer, 0, bytemuck::cast_slice(&padded));
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.master.len()
    }

    /// Always false (an empty set is refused).
    pub fn is_empty(&self) -> bool {
        self.master.is_empty()
    }

    /// The format.
    pub fn format(&self) -> LowFormat {
        self.format
    }

    /// The f32 master weights.
    pub fn master(&self) -> &FlatParams {
        &self.master
    }

    /// The packed 16-bit params buffer (2 per u32, first in the low half).
    pub fn params_buffer(&self) -> &wgpu::Buffer {
        &self.params
    }

    /// The packed 16-bit gradients buffer.
    pub fn grads_buffer(&self) -> &wgpu::Buffer {
        &self.grads
    }

    /// Write gradients as 16-bit patterns of this format.
    pub fn write_grad_bits(&self, bits: &[u16]) -> Result<()> {
        self.master.context().check_alive("write_grad_bits")?;
        if bits.len() != self.len() {
            return Err(Error::LengthMismatch {
                what: "16-bit grads",
                expected: self.len(),
                got: bits.len(),
            });
        }
        self.write(&self.grads, bits);
        Ok(())
    }

    /// Write bf16 gradients (the format must be bf16).
    pub fn write_grads_bf16(&self, grads: &[bf16]) -> Result<()> {
        self.expect(LowFormat::Bf16)?;
        self.write_grad_bits(bytemuck::cast_slice(grads))
    }

    /// Write f16 gradients (the format must be f16).
    pub fn write_grads_f16(&self, grads: &[f16]) -> Result<()> {
        self.expect(LowFormat::F16)?;
        self.write_grad_bits(bytemuck::cast_slice(grads))
    }

    fn expect(&self, format: LowFormat) -> Result<()> {
        if self.format == format {
            Ok(())
        } else {
            Err(Error::InvalidCombination {
                optimizer: "LowPrecisionParams",
                reason: "the values' format differs from the buffers' format",
            })
        }
    }

    /// Read the 16-bit params back as bit patterns (waits; on the web
    /// [`Error::WouldBlock`]: use [`LowPrecisionParams::read_param_bits_async`]).
    pub fn read_param_bits(&self) -> Result<Vec<u16>> {
        super::wait::block_on("read_param_bits", self.read_param_bits_async())?
    }

    /// [`LowPrecisionParams::read_param_bits`] without blocking.
    pub async fn read_param_bits_async(&self) -> Result<Vec<u16>> {
        let words = self.len().div_ceil(2) as u64;
        let bytes = read_bytes_async(self.master.context(), &self.params, 0, words * 4).await?;
        let mut bits: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes);
        bits.truncate(self.len());
        Ok(bits)
    }
}
