//! The f64 reference of RAdam, from torch.optim.RAdam's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::RadamConfig;

impl ReferenceStep for RadamConfig {
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
        let bc1 = 1.0 - b1.powi(ti);
        let bc2 = 1.0 - b2.powi(ti);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powi(ti) / bc2;
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
            let m_hat = st[0][i] / bc1;
            if rho_t > 5.0 {
                let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                    .sqrt();
                params[i] -= lr * m_hat * r * bc2.sqrt() / (st[1][i].sqrt() + c.eps);
            } else {
                params[i] -= lr * m_hat;
            }
        }
    }
}
