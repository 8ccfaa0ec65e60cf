//! Pieces shared by the algorithms' fast CPU loops (`Algorithm::cpu_chunk` in
//! `src/optim/<name>.rs`, run by `cpu::fast`): the same operations, in the same order, as the WGSL `update`
//! functions, except that terms PyTorch skips are skipped (monomorphised on `L2`: weight
//! decay added to the gradient; `DECAY`: decoupled decay factor): no `+ 0 * p`, no `p * 1`.

/// `sign * g (+ wd * p)`.
#[inline(always)]
pub(crate) fn grad_term<const L2: bool>(g: f32, p: f32, sign: f32, wd: f32) -> f32 {
    if L2 {
        g * sign + wd * p
    } else {
        g * sign
    }
}

/// `p (* decay_factor)`.
#[inline(always)]
pub(crate) fn decay<const DECAY: bool>(p: f32, factor: f32) -> f32 {
    if DECAY {
        p * factor
    } else {
        p
    }
}

/// Calls `$f::<L2, DECAY>(args)` with `L2 = $l2 != 0` and `DECAY = $decay != 1`: the loop
/// is compiled once per combination, each without the arithmetic it does not need.
macro_rules! shaped {
    ($l2:expr, $decay:expr, $f:ident($($arg:expr),*)) => {
        match ($l2 != 0.0, $decay != 1.0) {
            (false, false) => $f::<false, false>($($arg),*),
            (true, false) => $f::<true, false>($($arg),*),
            (false, true) => $f::<false, true>($($arg),*),
            (true, true) => $f::<true, true>($($arg),*),
        }
    };
}
pub(crate) use shaped;
