//! The f64 reference of SGD, from torch.optim.SGD's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::SgdConfig;

impl ReferenceStep for SgdConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let c = self;
        let lr = r.lr;
        let first = !r.state_written;
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            if c.momentum != 0.0 {
                let buf = &mut states[0][i];
                *buf = if first {
                    g
                } else {
                    c.momentum * *buf + (1.0 - c.dampening) * g
                };
                g = if c.nesterov {
                    g + c.momentum * *buf
                } else {
                    *buf
                };
            }
            params[i] -= lr * g;
        }
    }
}
