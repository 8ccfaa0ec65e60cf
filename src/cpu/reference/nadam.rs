//! The f64 reference of NAdam, from torch.optim.NAdam's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::NadamConfig;

impl ReferenceStep for NadamConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let c = self;
        let lr = r.lr;
        let t = r.t as f64;
        let ti = r.t as i32;
        let (b1, b2) = c.betas;
        let mu = b1 * (1.0 - 0.5 * 0.96f64.powf(t * c.momentum_decay));
        let mu_next = b1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * c.momentum_decay));
        // own[0]: mu_product, the running product of mu (1 before the first step).
        r.own[0] *= mu;
        let mp = r.own[0];
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
            let denom = (st[1][i] / bc2).sqrt() + c.eps;
            params[i] -= lr * (1.0 - mu) / (1.0 - mp) * g / denom;
            params[i] -= lr * mu_next / (1.0 - mp * mu_next) * st[0][i] / denom;
        }
    }
}
