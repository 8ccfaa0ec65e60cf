//! The f64 reference of Schedule-Free AdamW / SGD, from schedulefree 1.4.1's
//! `AdamWScheduleFree.step` / `SGDScheduleFree.step` and their `train()` / `eval()`.

use super::{ReferenceScalars, ReferenceStep};
use crate::error::Result;
use crate::optim::{ScheduleFreeBase, ScheduleFreeConfig};

/// `own` slots: lr_max, weight_sum, train_mode (1 = training).
const LR_MAX: usize = 0;
const WEIGHT_SUM: usize = 1;
const TRAIN_MODE: usize = 2;

/// torch's `lerp(start, end, weight)`.
fn lerp(start: f64, end: f64, weight: f64) -> f64 {
    start + weight * (end - start)
}

impl ReferenceStep for ScheduleFreeConfig {
    fn reference_step(
        &self,
        r: &mut ReferenceScalars,
        params: &mut [f64],
        grads: &[f64],
        states: &mut [Vec<f64>],
    ) {
        let k = r.t - 1;
        let sched = if k < self.warmup_steps {
            (k + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = r.lr * sched;
        r.own[LR_MAX] = r.own[LR_MAX].max(lr);
        let weight = ((k + 1) as f64).powf(self.r) * r.own[LR_MAX].powf(self.weight_lr_power);
        r.own[WEIGHT_SUM] += weight;
        let ckp1 = if r.own[WEIGHT_SUM] == 0.0 {
            0.0
        } else {
            weight / r.own[WEIGHT_SUM]
        };
        if !r.state_written {
            states[0].copy_from_slice(params);
        }
        let (beta2, bc2) = (self.beta2, 1.0 - self.beta2.powi((k + 1) as i32));
        for i in 0..params.len() {
            let y = params[i];
            let mut g = grads[i];
            if self.base == ScheduleFreeBase::AdamW {
                let v = &mut states[1][i];
                *v = *v * beta2 + (1.0 - beta2) * g * g;
                g /= (*v / bc2).sqrt() + self.eps;
            }
            if self.weight_decay != 0.0 {
                g += self.weight_decay * y;
            }
            let z = states[0][i];
            let y = lerp(y, z, ckp1) + lr * (self.beta * (1.0 - ckp1) - 1.0) * g;
            states[0][i] = z - lr * g;
            params[i] = y;
        }
    }

    fn reference_mode_switch(
        &self,
        r: &mut ReferenceScalars,
        train: bool,
        params: &mut [f64],
        states: &mut [Vec<f64>],
    ) -> Result<()> {
        let training = r.own[TRAIN_MODE] != 0.0;
        if training == train {
            return Ok(());
        }
        r.own[TRAIN_MODE] = if train { 1.0 } else { 0.0 };
        if !r.state_written {
            return Ok(());
        }
        let weight = if train {
            1.0 - self.beta
        } else {
            1.0 - 1.0 / self.beta
        };
        for (p, z) in params.iter_mut().zip(&states[0]) {
            *p = lerp(*p, *z, weight);
        }
        Ok(())
    }
}
