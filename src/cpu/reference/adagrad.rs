//! The f64 reference of Adagrad, from torch.optim.Adagrad's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::AdagradConfig;

impl ReferenceStep for AdagradConfig {
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
        let clr = lr / (1.0 + (t - 1.0) * c.lr_decay);
        let sum = &mut states[0];
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            sum[i] += g * g;
            params[i] -= clr * g / (sum[i].sqrt() + c.eps);
        }
    }
}
