//! The Newton–Schulz iteration's parameters (Muon's inner step; torch's `ns_steps`,
//! `ns_coefficients`, `eps`), shared by the algorithm's configuration and by the CPU and GPU
//! implementations (`cpu::newton_schulz`, `gpu::newton_schulz`).

/// The arithmetic of the Newton–Schulz iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NsArithmetic {
    /// f32 values, f32 matrix products (the default; every path: the CPU's GEMM crate, the
    /// GPU's WGSL matmul). Closer to the exact iteration than torch's.
    #[default]
    F32,
    /// torch 2.15's arithmetic (`_zeropower_via_newtonschulz` casts to bfloat16): every value
    /// bf16, each product accumulated in f32 and rounded once to bf16 with its `addmm`
    /// combination (the coefficients stay f32), the norm and the quotient rounded to bf16.
    /// Fast CPU path only (the GPU path refuses it with a typed error); on CPUs with
    /// AVX-512 BF16 the products run on `vdpbf16ps` (about twice the f32 GEMM's rate), elsewhere
    /// on the f32 GEMM over the widened values (the same arithmetic, the f32 speed). Results
    /// agree with torch's up to its GEMM's summation order (a few percent of max|O| on
    /// matrices of 64 x 48 and larger, bit for bit on most small ones).
    Bf16,
}

impl NsArithmetic {
    /// The name in hyper-parameter maps (`"f32"`, `"bf16"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// The arithmetic of a name written by [`Self::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(Self::F32),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }
}

/// The Newton–Schulz iteration's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonSchulz {
    /// Iterations (torch's `ns_steps`, default 5).
    pub steps: u32,
    /// (a, b, c) of `X = a X + (b A + c A²) X` (torch's `ns_coefficients`, default
    /// (3.4445, -4.7750, 2.0315)).
    pub coefficients: (f64, f64, f64),
    /// The norm's floor (torch's `eps`, default 1e-7).
    pub eps: f64,
    /// The arithmetic (default [`NsArithmetic::F32`]; torch's is [`NsArithmetic::Bf16`]).
    pub arithmetic: NsArithmetic,
}

impl Default for NewtonSchulz {
    fn default() -> Self {
        Self {
            steps: 5,
            coefficients: (3.4445, -4.7750, 2.0315),
            eps: 1e-7,
            arithmetic: NsArithmetic::F32,
        }
    }
}

impl NewtonSchulz {
    /// Multiply-adds of one call on a rows x cols matrix (2 flops each): per step
    /// r·r·c (A) + r·r·r (A A) + r·r·c (B X), with r = min(rows, cols), c = max.
    pub fn flops(&self, rows: usize, cols: usize) -> f64 {
        let (r, c) = (rows.min(cols) as f64, rows.max(cols) as f64);
        2.0 * f64::from(self.steps) * (r * r * c + r * r * r + r * r * c)
    }
}
