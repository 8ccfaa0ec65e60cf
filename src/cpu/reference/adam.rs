//! The f64 reference of Adam and AdamW, from torch.optim.Adam's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::AdamConfig;

impl ReferenceStep for AdamConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let c = self;
        let lr = r.lr;
        let ti = r.t as i32;
        let (b1, b2) = c.betas;
        let bc1 = 1.0 - b1.powi(ti);
        let bc2 = 1.0 - b2.powi(ti);
        let st = states;
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.decoupled_weight_decay {
                params[i] *= 1.0 - lr * c.weight_decay;
            } else if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
            st[1][i] = b2 * st[1][i] + (1.0 - b2) * g * g;
            let vv = if c.amsgrad {
                st[2][i] = st[2][i].max(st[1][i]);
                st[2][i]
            } else {
                st[1][i]
            };
            params[i] -= (lr / bc1) * st[0][i] / (vv.sqrt() / bc2.sqrt() + c.eps);
        }
    }
}
