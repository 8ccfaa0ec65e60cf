//! The f64 reference of Adadelta, from torch.optim.Adadelta's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::AdadeltaConfig;

impl ReferenceStep for AdadeltaConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let c = self;
        let lr = r.lr;
        let st = states;
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            st[0][i] = c.rho * st[0][i] + (1.0 - c.rho) * g * g;
            let delta = (st[1][i] + c.eps).sqrt() / (st[0][i] + c.eps).sqrt() * g;
            st[1][i] = c.rho * st[1][i] + (1.0 - c.rho) * delta * delta;
            params[i] -= lr * delta;
        }
    }
}
