//! The Newton–Schulz iteration's parameters (Muon's inner step; torch's `ns_steps`,
//! `ns_coefficients`, `eps`), shared by the algorithm's configuration and by the CPU and GPU
//! implementations (`cpu::newton_schulz`, `gpu::newton_schulz`).

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
}

impl Default for NewtonSchulz {
    fn default() -> Self {
        Self {
            steps: 5,
            coefficients: (3.4445, -4.7750, 2.0315),
            eps: 1e-7,
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
