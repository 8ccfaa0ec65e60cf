//! The oracle of bitsandbytes 0.50's one-state 8-bit optimizers on its CPU backend:
//! `Lion8bit` (`optimizer_name = "lion"`) and `SGD8bit` (`"momentum"`), 8-bit and 32-bit
//! tensors, written from bitsandbytes' `backends/cpu/ops.py` (`_optimizer_update_8bit_blockwise_cpu`,
//! `_optimizer_update_32bit_cpu`) in torch's f32 arithmetic: a scalar is the f32 of the
//! Python float (`f32(1 - b1)` computed in f64), `x.mul(a)` is one rounded product, and
//! `x.add_(y, alpha=a)` is torch's fused `fma(a, y, x)`. The state is quantised with
//! [`oracle_quantize_block`] (signed map `qmap1`, blocks of 256). Checked against
//! bitsandbytes' own runs in `golden/bnb8` (`tools/tests/golden_bnb8_1state.rs`).
//!
//! ```text
//! Lion, 8-bit:  m = qmap1[state1] * absmax1;  p = p * f32(1 - lr wd)  if wd > 0
//!               p = fma(f32(-lr), sign(f32(b1) * m + f32(1 - b1) * g), p)
//!               m = fma(f32(1 - b2), g, f32(b2) * m);  quantise m
//! Lion, 32-bit: as above, but the direction is sign(fma(f32(1 - b1), g, f32(b1) * m))
//! SGD momentum, 8-bit:  m = qmap1[state1] * absmax1;  g = fma(f32(wd), p, g)  (always)
//!               m = g at step 1, else f32(b1) * m + g;  p = fma(f32(-lr), m, p);  quantise m
//! SGD momentum, 32-bit: g = fma(f32(wd), p, g) only if wd > 0; then as above
//! ```

use super::blockwise8::oracle_quantize_block;

/// Which one-state optimizer, with its hyper-parameters (bitsandbytes' names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OneState {
    /// `Lion8bit(lr, betas = (beta1, beta2), weight_decay)` (decoupled decay).
    Lion {
        /// Learning rate of this step.
        lr: f64,
        /// Interpolation of the update direction.
        beta1: f64,
        /// Decay of the momentum.
        beta2: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// `SGD8bit(lr, momentum, weight_decay)` (dampening 0, no Nesterov: L2 decay in the
    /// gradient).
    Momentum {
        /// Learning rate of this step.
        lr: f64,
        /// Momentum (`beta1`).
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x // ±0 (and NaN) as torch.sign
    }
}

/// One 8-bit step at step `t` (1-based) of a tensor: `p`, `g` its elements, `state1` its
/// codes into `qmap1`, `absmax1` one per block of 256.
pub fn oracle_step_8bit_1state(
    o: &OneState,
    t: u64,
    qmap1: &[f32; 256],
    p: &mut [f32],
    g: &[f32],
    state1: &mut [u8],
    absmax1: &mut [f32],
) {
    let n = p.len();
    let mut m = vec![0.0f32; n];
    for i in 0..n {
        let m0 = qmap1[state1[i] as usize] * absmax1[i / 256];
        match *o {
            OneState::Lion {
                lr,
                beta1,
                beta2,
                weight_decay,
            } => {
                if weight_decay > 0.0 {
                    p[i] *= (1.0 - lr * weight_decay) as f32;
                }
                let u = beta1 as f32 * m0 + (1.0 - beta1) as f32 * g[i];
                p[i] = (-lr as f32).mul_add(sign(u), p[i]);
                m[i] = ((1.0 - beta2) as f32).mul_add(g[i], beta2 as f32 * m0);
            }
            OneState::Momentum {
                lr,
                momentum,
                weight_decay,
            } => {
                let gi = (weight_decay as f32).mul_add(p[i], g[i]);
                m[i] = if t == 1 {
                    gi
                } else {
                    momentum as f32 * m0 + gi
                };
                p[i] = (-lr as f32).mul_add(m[i], p[i]);
            }
        }
    }
    for (b, absmax) in absmax1.iter_mut().enumerate().take(n.div_ceil(256)) {
        let r = b * 256..n.min(b * 256 + 256);
        let (codes, a) = oracle_quantize_block(qmap1, &m[r.clone()]);
        state1[r].copy_from_slice(&codes);
        *absmax = a;
    }
}

/// One 32-bit step at step `t` of a small tensor (f32 state `m`): bitsandbytes' 32-bit CPU
/// path.
pub fn oracle_step_32bit_1state(o: &OneState, t: u64, p: &mut [f32], g: &[f32], m: &mut [f32]) {
    for i in 0..p.len() {
        match *o {
            OneState::Lion {
                lr,
                beta1,
                beta2,
                weight_decay,
            } => {
                if weight_decay > 0.0 {
                    p[i] *= (1.0 - lr * weight_decay) as f32;
                }
                let u = ((1.0 - beta1) as f32).mul_add(g[i], beta1 as f32 * m[i]);
                p[i] = (-lr as f32).mul_add(sign(u), p[i]);
                m[i] = ((1.0 - beta2) as f32).mul_add(g[i], beta2 as f32 * m[i]);
            }
            OneState::Momentum {
                lr,
                momentum,
                weight_decay,
            } => {
                let gi = if weight_decay > 0.0 {
                    (weight_decay as f32).mul_add(p[i], g[i])
                } else {
                    g[i]
                };
                m[i] = if t == 1 {
                    gi
                } else {
                    momentum as f32 * m[i] + gi
                };
                p[i] = (-lr as f32).mul_add(m[i], p[i]);
            }
        }
    }
}
