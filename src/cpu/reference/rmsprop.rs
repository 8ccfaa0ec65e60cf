//! The f64 reference of RMSprop, from torch.optim.RMSprop's formulas.

use super::{ReferenceScalars, ReferenceStep};
use crate::optim::RmspropConfig;

impl ReferenceStep for RmspropConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let c = self;
        let lr = r.lr;
        let has_momentum = c.momentum > 0.0;
        // State order: square_avg, then momentum_buffer (momentum > 0), then grad_avg
        // (centered).
        let (buf_k, ga_k) = match (has_momentum, c.centered) {
            (true, true) => (1, 2),
            (true, false) => (1, usize::MAX),
            (false, true) => (usize::MAX, 1),
            (false, false) => (usize::MAX, usize::MAX),
        };
        let st = states;
        for i in 0..params.len() {
            let mut g = if c.maximize { -grads[i] } else { grads[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * params[i];
            }
            st[0][i] = c.alpha * st[0][i] + (1.0 - c.alpha) * g * g;
            let v = st[0][i];
            let avg = if c.centered {
                let ga = &mut st[ga_k][i];
                *ga += (1.0 - c.alpha) * (g - *ga);
                (v - *ga * *ga).sqrt() + c.eps
            } else {
                v.sqrt() + c.eps
            };
            if has_momentum {
                let buf = &mut st[buf_k][i];
                *buf = c.momentum * *buf + g / avg;
                params[i] -= lr * *buf;
            } else {
                params[i] -= lr * g / avg;
            }
        }
    }
}
