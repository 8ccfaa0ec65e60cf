//! The f64 reference of Lion, from lion-pytorch 0.2.5's update.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::LionConfig;

impl ReferenceStep for LionConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let (b1, b2) = self.betas;
        let lr = r.lr;
        // lion-pytorch: decoupled_weight_decay divides the decay by the initial lr.
        let wd = if self.decoupled_weight_decay {
            self.weight_decay / self.lr
        } else {
            self.weight_decay
        };
        let m = &mut states[0];
        for i in 0..params.len() {
            params[i] *= 1.0 - lr * wd;
            let c = b1 * m[i] + (1.0 - b1) * grads[i];
            let s = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            params[i] -= lr * s;
            m[i] = b2 * m[i] + (1.0 - b2) * grads[i];
        }
    }
}
