//! The oracle of the block-wise 8-bit Adam step (bitsandbytes 0.50's CPU backend), written
//! apart from the fast path [`crate::cpu::blockwise8`]: one serial loop over the flattened
//! tensor, in the order of operations of the golden README (`golden/v2/README.md`, "8-bit
//! Adam / AdamW"), and a quantiser that counts midpoints per element instead of using a
//! lookup table. bitsandbytes' CPU path is exact f32 arithmetic, so this oracle is f32 too
//! (the f64 part is the host scalars only); the fast path must give the same bits.
//!
//! ```text
//! t += 1;  c1 = 1 - b1^t;  c2 = sqrt(1 - b2^t)                          (f64)
//! 8-bit tensor, element i in block b = i / 256:
//!   m = qmap1[state1[i]] * absmax1[b];  v = qmap2[state2[i]] * absmax2[b]
//!   m = fma(f32(1 - b1), g, f32(b1) * m);  v = fma(f32(1 - b2) * g, g, f32(b2) * v)
//!   denom = sqrt(v) / f32(c2) + f32(eps)
//!   p = p * f32(1 - lr * wd) if wd > 0;  p = p + (f32(-lr / c1) * m) / denom
//!   then per block: absmax = max |x|, x~ = clamp(x * f32(1 / absmax), -1, 1),
//!   idx = trunc(((x~ + 1) * 0.5) * 65535 + 0.5),
//!   code = #{ j : (q_j + q_{j+1}) / 2 < f32(-1 + f32(2 idx) / 65535) }   (0 when absmax = 0)
//! 32-bit tensor: m, v as above; decay; p = p + f32(-lr c2 / c1) * (m / (sqrt(v) + f32(eps c2)))
//! ```

/// The hyper-parameters of the oracle (bitsandbytes' `Adam8bit` names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OracleHparams {
    /// Learning rate of this step.
    pub lr: f64,
    /// beta1.
    pub beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// eps.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// Quantises one block of `x` against `map` (256 ascending values) by the oracle's rule:
/// returns the codes and the absmax.
pub fn oracle_quantize_block(map: &[f32; 256], x: &[f32]) -> (Vec<u8>, f32) {
    let mut absmax = 0.0f32;
    for &v in x {
        if v.abs() > absmax {
            absmax = v.abs();
        }
    }
    if absmax == 0.0 {
        return (vec![0; x.len()], 0.0);
    }
    let inv = 1.0f32 / absmax;
    let codes = x
        .iter()
        .map(|&v| {
            let n = (v * inv).clamp(-1.0, 1.0);
            let idx = (((n + 1.0) * 0.5) * 65535.0 + 0.5).trunc() as u32;
            let grid = -1.0f32 + (2 * idx) as f32 / 65535.0f32;
            let mut count = 0u32;
            for j in 0..255 {
                let mid = (map[j] + map[j + 1]) / 2.0;
                if mid < grid {
                    count += 1;
                }
            }
            count as u8
        })
        .collect();
    (codes, absmax)
}

/// One oracle step of a quantised tensor at step `t`: updates `p`, the codes and the absmax
/// (`absmax1.len() == absmax2.len() == p.len().div_ceil(256)`).
#[allow(clippy::too_many_arguments)]
pub fn oracle_step_8bit(
    h: &OracleHparams,
    t: u64,
    qmap1: &[f32; 256],
    qmap2: &[f32; 256],
    p: &mut [f32],
    g: &[f32],
    state1: &mut [u8],
    state2: &mut [u8],
    absmax1: &mut [f32],
    absmax2: &mut [f32],
) {
    let n = p.len();
    let c1 = 1.0 - h.beta1.powi(t as i32);
    let c2 = (1.0 - h.beta2.powi(t as i32)).sqrt();
    let mut m = vec![0.0f32; n];
    let mut v = vec![0.0f32; n];
    for i in 0..n {
        let b = i / 256;
        let m0 = qmap1[state1[i] as usize] * absmax1[b];
        let v0 = qmap2[state2[i] as usize] * absmax2[b];
        m[i] = ((1.0 - h.beta1) as f32).mul_add(g[i], h.beta1 as f32 * m0);
        v[i] = (((1.0 - h.beta2) as f32) * g[i]).mul_add(g[i], h.beta2 as f32 * v0);
        let denom = v[i].sqrt() / (c2 as f32) + h.eps as f32;
        if h.weight_decay > 0.0 {
            p[i] *= (1.0 - h.lr * h.weight_decay) as f32;
        }
        p[i] += ((-h.lr / c1) as f32 * m[i]) / denom;
    }
    for b in 0..n.div_ceil(256) {
        let r = b * 256..n.min(b * 256 + 256);
        let (codes, a) = oracle_quantize_block(qmap1, &m[r.clone()]);
        state1[r.clone()].copy_from_slice(&codes);
        absmax1[b] = a;
        let (codes, a) = oracle_quantize_block(qmap2, &v[r.clone()]);
        state2[r].copy_from_slice(&codes);
        absmax2[b] = a;
    }
}

/// One oracle step of a 32-bit (small) tensor at step `t`: bitsandbytes' 32-bit CPU path.
pub fn oracle_step_32bit(
    h: &OracleHparams,
    t: u64,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let c1 = 1.0 - h.beta1.powi(t as i32);
    let c2 = (1.0 - h.beta2.powi(t as i32)).sqrt();
    for i in 0..p.len() {
        m[i] = ((1.0 - h.beta1) as f32).mul_add(g[i], h.beta1 as f32 * m[i]);
        v[i] = (((1.0 - h.beta2) as f32) * g[i]).mul_add(g[i], h.beta2 as f32 * v[i]);
        if h.weight_decay > 0.0 {
            p[i] *= (1.0 - h.lr * h.weight_decay) as f32;
        }
        p[i] += (-h.lr * c2 / c1) as f32 * (m[i] / (v[i].sqrt() + (h.eps * c2) as f32));
    }
}
