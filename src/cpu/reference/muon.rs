//! The f64 reference of Muon, from `torch.optim.Muon` (PyTorch 2.15), one 2-D tensor at a
//! time. Newton–Schulz runs in f64 ([`NsPrecision::F64`]: the iteration as written) for
//! [`NsArithmetic::F32`], and emulates torch's bfloat16 roundings ([`NsPrecision::Bf16`])
//! for [`NsArithmetic::Bf16`].

use super::newton_schulz::{newton_schulz_reference, NsPrecision};
use super::{ReferenceScalars, ReferenceStep};
use crate::error::Result;
use crate::optim::{MuonConfig, NsArithmetic};
use crate::segments::SegmentShape;

/// torch's `lerp` in f64: `start + w (end - start)` for w < 0.5, else
/// `end - (end - start)(1 - w)`.
fn lerp(start: f64, end: f64, w: f64) -> f64 {
    if w < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

impl ReferenceStep for MuonConfig {
    /// The whole vector as one 1 x n matrix (the optimizers refuse anything but 2-D
    /// segments, and step per segment).
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        // A 1 x n matrix with n > 0 is a valid Newton–Schulz input: cannot fail.
        let shape = vec![1, params.len()];
        let _ = super::step_whole_as_one_segment(self, r, shape, params, grads, states);
    }

    fn reference_segment_step(
        &self,
        r: &ReferenceScalars,
        segment: &SegmentShape,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [&mut [f64]],
        _scalars: &mut [f64],
    ) -> Result<()> {
        let [buf] = states else {
            unreachable!("Muon has one state tensor")
        };
        let mu = self.momentum;
        let mut u = vec![0.0; params.len()];
        for i in 0..params.len() {
            buf[i] = lerp(buf[i], grads[i], 1.0 - mu);
            u[i] = if self.nesterov {
                lerp(grads[i], buf[i], mu)
            } else {
                buf[i]
            };
        }
        let (rows, cols) = (segment.rows(), segment.cols());
        // The configured arithmetic: exact (f64) for f32, torch's roundings for bf16.
        let precision = match self.ns.arithmetic {
            NsArithmetic::F32 => NsPrecision::F64,
            NsArithmetic::Bf16 => NsPrecision::Bf16,
        };
        let o = newton_schulz_reference(&self.ns, &u, rows, cols, precision)?;
        let adjusted = r.lr * self.adjust_lr.ratio(rows, cols);
        let decay = 1.0 - r.lr * self.weight_decay;
        for (p, o) in params.iter_mut().zip(&o) {
            *p = *p * decay - adjusted * o;
        }
        Ok(())
    }
}
