//! The fast CPU step of per-tensor algorithms (`Algorithm::ELEMENTWISE = false`): per
//! segment, a first pass over its chunks in parallel that updates state and sums
//! `SEGMENT_SUMS` values per chunk (f64 accumulators, one fixed slot per chunk, added in
//! chunk order: the result does not depend on the thread count), `finish_segment` between
//! the passes, and the second pass (`cpu_chunk`) over the same chunks. Both passes run the
//! AVX2 + FMA build where the fast path does: the fast path passes in its chunk length, its
//! AVX2 switch and its chunk runner (no import of `cpu::fast` here: no module cycle).

use rayon::prelude::*;

use super::staggered::StaggeredVec;
use crate::optim::{Algorithm, HostState};
use crate::segments::SegmentTable;

/// Reusable buffers of the segmented step (no allocation per step once sized).
#[derive(Clone, Debug, Default)]
pub(crate) struct SegmentedScratch {
    /// Per chunk of the current segment, its partial sums.
    partials: Vec<f64>,
}

/// The fast path's loop over one chunk (its AVX2 dispatch included).
pub(crate) type ChunkRunner<A> =
    fn(&A, &<A as Algorithm>::Uniform, &mut [f32], &[f32], &mut [&mut [f32]]);

/// How the fast path runs chunks: their length, whether AVX2 + FMA code is in use, and its
/// chunk runner.
pub(crate) struct FastChunks<A: Algorithm> {
    pub chunk: usize,
    pub avx2: bool,
    pub run: ChunkRunner<A>,
}

/// One step of `c` over every segment of `table`; `host.step` has been incremented. The
/// per-segment scalars (`SEGMENT_SCALARS`) go to `scalars[segment]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn segmented_step<A: Algorithm>(
    c: &A,
    host: &mut HostState,
    table: &SegmentTable,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [StaggeredVec],
    scratch: &mut SegmentedScratch,
    scalars: &mut [Vec<f64>],
    fast: &FastChunks<A>,
) {
    let chunk = fast.chunk;
    let mut u = c.begin_step(host);
    if let Some((max_norm, eps)) = c.global_grad_clip() {
        let norm = sum_squares(grads, chunk).sqrt();
        let scale = (max_norm / (norm + eps)).min(1.0) as f32;
        u = c.with_grad_scale(&u, scale);
    }
    let sums = A::SEGMENT_SUMS;
    for (k, seg) in table.segments().iter().enumerate() {
        let r = seg.start..seg.end();
        let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
        let mut s: Vec<&mut [f32]> = Vec::new();
        s.extend(states.iter_mut().map(|v| &mut v[r.clone()]));
        // Pass 1: state update and partial sums, one slot per chunk.
        let chunks = seg.len().div_ceil(chunk);
        scratch.partials.clear();
        scratch.partials.resize(chunks * sums, 0.0);
        if sums > 0 {
            for_chunks(
                p,
                g,
                &mut s,
                &mut scratch.partials,
                sums,
                chunk,
                |p, g, s, out| reduce_chunk(c, &u, p, g, s, out, fast.avx2),
            );
        }
        let mut total = vec![0.0f64; sums];
        for part in scratch.partials.chunks(sums.max(1)) {
            for (t, x) in total.iter_mut().zip(part) {
                *t += x;
            }
        }
        let mut out = vec![0.0; A::SEGMENT_SCALARS.len()];
        let u2 = c.finish_segment(&u, seg, &total, &mut out);
        scalars[k] = out;
        // Pass 2: the update with the segment's uniform.
        let mut none: Vec<f64> = Vec::new();
        for_chunks(p, g, &mut s, &mut none, 0, chunk, |p, g, s, _| {
            (fast.run)(c, &u2, p, g, s)
        });
    }
}

/// Σ g², f64, over fixed chunks in chunk order (deterministic).
fn sum_squares(g: &[f32], chunk: usize) -> f64 {
    let partials: Vec<f64> = g
        .par_chunks(chunk)
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// `f(p, g, states, sums)` over the `chunk`-element chunks of one segment, in parallel; chunk
/// i gets `sums[i * width..(i + 1) * width]` (empty when `width` is 0).
fn for_chunks<F>(
    p: &mut [f32],
    g: &[f32],
    states: &mut [&mut [f32]],
    sums: &mut [f64],
    width: usize,
    chunk: usize,
    f: F,
) where
    F: Fn(&mut [f32], &[f32], &mut [&mut [f32]], &mut [f64]) + Sync + Send,
{
    let n = p.len().div_ceil(chunk);
    let mut empty: Vec<&mut [f64]> = Vec::new();
    let sum_chunks: Vec<&mut [f64]> = if width == 0 {
        empty.extend((0..n).map(|_| &mut [][..]));
        empty
    } else {
        sums.chunks_mut(width).collect()
    };
    let pg = p
        .par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(sum_chunks.into_par_iter());
    match states {
        [] => pg.for_each(|((p, g), o)| f(p, g, &mut [], o)),
        [a] => pg
            .zip(a.par_chunks_mut(chunk))
            .for_each(|(((p, g), o), a)| f(p, g, &mut [a], o)),
        [a, b] => pg
            .zip(a.par_chunks_mut(chunk))
            .zip(b.par_chunks_mut(chunk))
            .for_each(|((((p, g), o), a), b)| f(p, g, &mut [a, b], o)),
        [a, b, c] => pg
            .zip(a.par_chunks_mut(chunk))
            .zip(b.par_chunks_mut(chunk))
            .zip(c.par_chunks_mut(chunk))
            .for_each(|(((((p, g), o), a), b), c)| f(p, g, &mut [a, b, c], o)),
        _ => unreachable!("no optimizer has more than 3 state tensors"),
    }
}

/// The first pass over one chunk, in the AVX2 + FMA build when the fast path's SIMD level
/// is AVX2 or above (the reduction keeps its order: same sums at every level).
fn reduce_chunk<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &[f32],
    g: &[f32],
    s: &mut [&mut [f32]],
    sums: &mut [f64],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2 and FMA (the fast path passes `simd_level() >= Avx2`).
        return unsafe { reduce_avx2(c, u, p, g, s, sums) };
    }
    let _ = avx2;
    c.cpu_reduce_chunk(u, p, g, s, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce_avx2<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &[f32],
    g: &[f32],
    s: &mut [&mut [f32]],
    sums: &mut [f64],
) {
    c.cpu_reduce_chunk(u, p, g, s, sums)
}
