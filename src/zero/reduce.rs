//! The gradient reduction in a fixed order: the same bits on every run, every MPI
//! implementation and every algorithm MPI would pick for `MPI_Reduce_scatter`.
//!
//! The contributions of ranks `0..R` to one element are added in a fixed binary tree:
//! neighbours first, then pairs of pairs (stride doubling), so for R = 4 it is
//! `(g0 + g1) + (g2 + g3)` and for R = 3 `(g0 + g1) + g2`; [`GradReduction::Mean`] then
//! divides by R (correctly rounded, exact for R a power of two). A sum of per-rank sums
//! in this tree equals the same tree over finer pieces: with a power-of-two number of equal
//! micro-batches, the reduced gradient is the same at every power-of-two world size (the
//! `zero` example's loss curves).

use rayon::prelude::*;

use crate::cpu::fast::CHUNK;

/// What the reduce-scatter makes of the ranks' gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GradReduction {
    /// The tree sum divided by the world size (data parallelism with per-rank mean losses).
    #[default]
    Mean,
    /// The tree sum (the ranks already scaled their gradients, e.g. by 1 / global batch).
    Sum,
}

/// Reduce `parts` (R equal-length slices, rank order) into `out` in the fixed tree of the
/// [module documentation](self); `parts` is used as scratch (its contents are destroyed).
///
/// # Panics
/// If `parts` is empty or the lengths differ (an internal invariant: callers size them).
pub fn reduce_in_rank_order(parts: &mut [&mut [f32]], out: &mut [f32], reduction: GradReduction) {
    let world = parts.len();
    assert!(world > 0 && parts.iter().all(|p| p.len() == out.len()));
    let mut stride = 1;
    while stride < world {
        for j in (0..world).step_by(2 * stride) {
            if j + stride < world {
                let (left, right) = parts.split_at_mut(j + stride);
                add_into(left[j], right[0]);
            }
        }
        stride *= 2;
    }
    let divisor = world as f32;
    let sum = &*parts[0];
    out.par_chunks_mut(CHUNK)
        .zip(sum.par_chunks(CHUNK))
        .for_each(|(o, s)| match reduction {
            GradReduction::Mean => o.iter_mut().zip(s).for_each(|(o, s)| *o = s / divisor),
            GradReduction::Sum => o.copy_from_slice(s),
        });
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, x)| *a += x));
}
