//! The f64 reference of Adamax, from torch.optim.Adamax's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::AdamaxConfig;

impl ReferenceStep for AdamaxConfig {
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
        let st = states;
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            st[0][i] = b1 * st[0][i] + (1.0 - b1) * g;
            st[1][i] = (b2 * st[1][i]).max(g.abs() + c.eps);
            params[i] -= (lr / bc1) * st[0][i] / st[1][i];
        }
    }
}
