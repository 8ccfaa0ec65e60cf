//! The f64 reference of LAMB, from pytorch_optimizer 4.1.0's `Lamb` (`rectify=False`), one
//! tensor at a time.

use super::{ReferenceScalars, ReferenceStep};
use crate::error::Result;
use crate::optim::LambConfig;
use crate::segments::SegmentShape;

impl ReferenceStep for LambConfig {
    /// The whole vector as one tensor (the optimizers step per segment instead).
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        // LAMB accepts every shape: the segment step cannot fail.
        let shape = vec![params.len()];
        let _ = super::step_whole_as_one_segment(self, r, shape, params, grads, states);
    }

    fn reference_segment_step(
        &self,
        r: &ReferenceScalars,
        _segment: &SegmentShape,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [&mut [f64]],
        scalars: &mut [f64],
    ) -> Result<()> {
        let (b1, b2) = self.betas;
        let (lr, wd, eps) = (r.lr, self.weight_decay, self.eps);
        let [m, v] = states else {
            unreachable!("LAMB has two state tensors")
        };
        let sign = if self.maximize { -1.0 } else { 1.0 };
        // Decoupled decay before the norms.
        if self.weight_decouple {
            let factor = if self.fixed_decay {
                1.0 - wd
            } else {
                1.0 - lr * wd
            };
            params.iter_mut().for_each(|p| *p *= factor);
        }
        let beta3 = if self.grad_averaging { 1.0 - b1 } else { 1.0 };
        let mut update = vec![0.0; params.len()];
        for i in 0..params.len() {
            let g = sign * grads[i];
            m[i] = b1 * m[i] + beta3 * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            update[i] = m[i] / (v[i].sqrt() + eps);
            if !self.weight_decouple {
                update[i] += wd * params[i];
            }
        }
        let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
        let weight_norm = norm(params).min(self.clamp);
        let adam_norm = norm(&update);
        let trust = if weight_norm == 0.0 || adam_norm == 0.0 {
            1.0
        } else {
            weight_norm / (adam_norm + eps)
        };
        scalars[..3].copy_from_slice(&[weight_norm, adam_norm, trust]);
        let applied = if self.adam { 1.0 } else { trust };
        let step_size = lr / (1.0 - b1.powi(r.t as i32));
        for (p, u) in params.iter_mut().zip(&update) {
            *p -= step_size * applied * u;
        }
        Ok(())
    }
}
