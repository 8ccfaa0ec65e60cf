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
use crate::error::{Error, Result};

/// What the reduce-scatter makes of the ranks' gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GradReduction {
    /// The tree sum divided by the world size (data parallelism with per-rank mean losses).
    #[default]
    Mean,
    /// The tree sum (the ranks already scaled their gradients, e.g. by 1 / global batch).
    Sum,
}

/// Elements per block of the reduction: the partial sums of a block stay in the L1 cache.
const BLOCK: usize = 1024;

/// Reduce `parts` (R equal-length slices, rank order) into `out` in the fixed tree of the
/// [module documentation](self): one pass that reads every part once and writes `out`
/// once (partial sums live in block-sized scratch), in parallel over chunks.
///
/// Errors: [`Error::Empty`] without parts, [`Error::LengthMismatch`] when a part's length
/// is not `out`'s; `out` is then unchanged.
pub fn reduce_in_rank_order(
    parts: &[&[f32]],
    out: &mut [f32],
    reduction: GradReduction,
) -> Result<()> {
    if parts.is_empty() {
        return Err(Error::Empty {
            what: "contributions to reduce",
        });
    }
    if let Some(bad) = parts.iter().find(|p| p.len() != out.len()) {
        return Err(Error::LengthMismatch {
            what: "contribution",
            expected: out.len(),
            got: bad.len(),
        });
    }
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| reduce_range(parts, c * CHUNK, out, reduction));
    Ok(())
}

/// `out` = the reduction of `parts` at elements `start..start + out.len()` (one thread).
pub(crate) fn reduce_range(
    parts: &[&[f32]],
    start: usize,
    out: &mut [f32],
    reduction: GradReduction,
) {
    let world = parts.len();
    let divisor = world as f32;
    // Scratch blocks: one per level below the root.
    let depth = usize::BITS as usize - world.leading_zeros() as usize;
    let mut scratch = vec![0.0f32; BLOCK * depth];
    for (b, o) in out.chunks_mut(BLOCK).enumerate() {
        tree(parts, 0..world, start + b * BLOCK, o, &mut scratch);
        if reduction == GradReduction::Mean {
            o.iter_mut().for_each(|x| *x /= divisor);
        }
    }
}

/// `out` = the tree sum of `parts[ranks]` at elements `start..start + out.len()`. A group
/// of k > 2 ranks splits after the largest power of two below k: for k a power of two the
/// halves, otherwise a full subtree and the rest, which is the stride-doubling order.
fn tree(
    parts: &[&[f32]],
    ranks: std::ops::Range<usize>,
    start: usize,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let len = out.len();
    let at = |r: usize| &parts[r][start..start + len];
    match ranks.len() {
        1 => out.copy_from_slice(at(ranks.start)),
        2 => {
            let (a, b) = (at(ranks.start), at(ranks.start + 1));
            for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        }
        k => {
            let split = ranks.start + (1 << (usize::BITS - 1 - (k - 1).leading_zeros()));
            tree(parts, ranks.start..split, start, out, scratch);
            let (right, deeper) = scratch.split_at_mut(BLOCK);
            let right = &mut right[..len];
            tree(parts, split..ranks.end, start, right, deeper);
            for (o, r) in out.iter_mut().zip(right.iter()) {
                *o += r;
            }
        }
    }
}
