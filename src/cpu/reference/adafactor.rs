//! The f64 reference of Adafactor, from `torch.optim.Adafactor` (PyTorch 2.15), one tensor
//! at a time, written as torch's single-tensor path reads. `eps1 = None` is f64's machine
//! epsilon here (torch's `finfo(float64).eps` in its float64 run).

use super::{ReferenceScalars, ReferenceStep};
use crate::error::Result;
use crate::optim::AdafactorConfig;
use crate::segments::SegmentShape;

/// torch's `lerp` in f64.
fn lerp(start: f64, end: f64, w: f64) -> f64 {
    if w < 0.5 {
        start + w * (end - start)
    } else {
        end - (end - start) * (1.0 - w)
    }
}

impl ReferenceStep for AdafactorConfig {
    /// The whole vector as one 1-D tensor (the optimizers step per segment).
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let shape = vec![params.len()];
        // Every shape is accepted: the segment step cannot fail.
        let _ = super::step_whole_as_one_segment(self, r, shape, params, grads, states);
    }

    fn reference_segment_step(
        &self,
        r: &ReferenceScalars,
        segment: &SegmentShape,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [&mut [f64]],
        scalars: &mut [f64],
    ) -> Result<()> {
        let [row_var, col_var, variance] = states else {
            unreachable!("Adafactor has three state tensors")
        };
        let eps1 = self.eps1.unwrap_or(f64::EPSILON);
        let sign = if self.maximize { -1.0 } else { 1.0 };
        let g: Vec<f64> = grads.iter().map(|&x| sign * x).collect();
        let t = r.t as f64;
        let n = params.len() as f64;
        let w = t.powf(self.beta2_decay);
        let rho = r.lr.min(1.0 / t.sqrt());
        let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
        // alpha from p before the decay.
        let alpha = self.eps2.max(norm(params) / n.sqrt()) * rho;
        if self.weight_decay != 0.0 {
            let factor = 1.0 - r.lr * self.weight_decay;
            params.iter_mut().for_each(|p| *p *= factor);
        }
        let mut v_hat = vec![0.0; params.len()];
        if segment.rank() >= 2 {
            let (rows, cols) = (segment.rows(), segment.cols());
            for b in 0..segment.batch() {
                let gm = &g[b * rows * cols..(b + 1) * rows * cols];
                let rv = &mut row_var[b * rows..(b + 1) * rows];
                let cv = &mut col_var[b * cols..(b + 1) * cols];
                for i in 0..rows {
                    let mean =
                        (0..cols).map(|j| gm[i * cols + j].powi(2)).sum::<f64>() / cols as f64;
                    rv[i] = lerp(rv[i], mean, w);
                }
                for j in 0..cols {
                    let mean =
                        (0..rows).map(|i| gm[i * cols + j].powi(2)).sum::<f64>() / rows as f64;
                    cv[j] = lerp(cv[j], mean, w);
                }
                let row_mean = (rv.iter().sum::<f64>() / rows as f64).max(eps1);
                for i in 0..rows {
                    for j in 0..cols {
                        v_hat[b * rows * cols + i * cols + j] = rv[i] * cv[j] / row_mean;
                    }
                }
            }
        } else {
            for (i, v) in variance.iter_mut().enumerate() {
                *v = lerp(*v, g[i] * g[i], w);
                v_hat[i] = *v;
            }
        }
        let update: Vec<f64> = v_hat
            .iter()
            .zip(&g)
            .map(|(v, g)| g / v.max(eps1 * eps1).sqrt())
            .collect();
        let denom = (norm(&update) / (n.sqrt() * self.d)).max(1.0);
        scalars[..2].copy_from_slice(&[alpha, denom]);
        for (p, u) in params.iter_mut().zip(&update) {
            *p -= alpha / denom * u;
        }
        Ok(())
    }
}
