//! The fast CPU step of per-tensor algorithms (`Algorithm::ELEMENTWISE = false`): per
//! segment, a first pass over its chunks in parallel that updates state and sums
//! `SEGMENT_SUMS` values per chunk (f64 accumulators, one fixed slot per chunk, added in
//! chunk order: the result does not depend on the thread count), `finish_segment` between
//! the passes, and the second pass (`cpu_chunk`) over the same chunks. Both passes run the
//! AVX2 + FMA build where the fast path does: the fast path passes in its chunk length, its
//! AVX2 switch and its chunk runner (no import of `cpu::fast` here: no module cycle).
//!
//! An algorithm with a matrix transform (Muon) runs the first pass over every segment, writing
//! its transform input into a work vector, then orthogonalises every segment's matrix in
//! parallel (Newton–Schulz on a GEMM crate, one workspace per worker thread), then the second
//! pass with the result in place of the gradient.

use std::sync::Mutex;

use rayon::prelude::*;

use super::newton_schulz::{NewtonSchulz, NsWorkspace, Threads};

use super::staggered::StaggeredVec;
use crate::error::Result;
use crate::optim::{Algorithm, HostState, StateLayout};
use crate::segments::SegmentTable;

/// Reusable buffers of the segmented step (no allocation per step once sized).
#[derive(Debug, Default)]
pub(crate) struct SegmentedScratch {
    /// Per chunk of the current segment, its partial sums.
    partials: Vec<f64>,
    /// Matrix transforms: the first pass's output, one element per parameter.
    work: Vec<f32>,
    /// Matrix transforms: the transformed `work`, the second pass's input.
    transformed: Vec<f32>,
    /// Matrix transforms: one Newton–Schulz workspace per rayon worker (and one for the
    /// calling thread), grown on first use.
    workspaces: Vec<Mutex<NsWorkspace>>,
    /// Algorithms with their own segment step (`Algorithm::cpu_segment_step`): its scratch.
    own: crate::optim::SegmentScratch,
}

impl Clone for SegmentedScratch {
    /// Scratch holds no state between steps: a clone starts empty.
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The fast path's loop over one chunk (its AVX2 dispatch included).
pub(crate) type ChunkRunner<A> =
    fn(&A, &<A as Algorithm>::Uniform, &mut [f32], &[f32], &mut [&mut [f32]]);

/// How the fast path runs chunks: their length, whether AVX2 + FMA code is in use, and its
/// chunk runner.
pub(crate) struct FastChunks<A: Algorithm> {
    pub chunk: usize,
    pub avx2: bool,
    /// AVX-512 code is in use (the first pass then runs its AVX-512 build).
    pub avx512: bool,
    pub run: ChunkRunner<A>,
}

/// One step of `c` over every segment of `table`; `host.step` has been incremented. The
/// per-segment scalars (`SEGMENT_SCALARS`) go to `scalars[segment]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn segmented_step<A: Algorithm>(
    c: &A,
    host: &mut HostState,
    table: &SegmentTable,
    layout: &StateLayout,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [StaggeredVec],
    scratch: &mut SegmentedScratch,
    scalars: &mut [Vec<f64>],
    fast: &FastChunks<A>,
) -> Result<()> {
    let chunk = fast.chunk;
    let mut u = c.begin_step(host);
    if !A::STATE_PER_ELEMENT {
        // Each segment stepped by the algorithm itself, its state parts from the layout.
        for (k, seg) in table.segments().iter().enumerate() {
            let r = seg.range();
            let mut s: Vec<&mut [f32]> = states
                .iter_mut()
                .enumerate()
                .map(|(i, v)| &mut v[layout.range(i, k)])
                .collect();
            let mut out = vec![0.0; A::SEGMENT_SCALARS.len()];
            let done = c.cpu_segment_step(
                host,
                &u,
                seg,
                &mut params[r.clone()],
                &grads[r],
                &mut s,
                &mut scratch.own,
                &mut out,
            );
            if !done {
                return Err(crate::Error::Unsupported {
                    optimizer: c.class_name(),
                    feature: "a state that is not one element per parameter without its own \
                              CPU segment step",
                });
            }
            scalars[k] = out;
        }
        return Ok(());
    }
    if let Some((max_norm, eps)) = c.global_grad_clip() {
        let norm = sum_squares(grads, chunk).sqrt();
        let scale = (max_norm / (norm + eps)).min(1.0) as f32;
        u = c.with_grad_scale(&u, scale);
    }
    if let Some(ns) = c.matrix_transform() {
        return transform_step(
            c, &u, &ns, table, params, grads, states, scratch, scalars, fast,
        );
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
                &mut [],
                |p, g, s, out, _| reduce_chunk(c, &u, p, g, s, out, &mut [], fast),
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
        for_chunks(p, g, &mut s, &mut [], 0, chunk, &mut [], |p, g, s, _, _| {
            (fast.run)(c, &u2, p, g, s)
        });
    }
    Ok(())
}

/// Matrices whose smaller side is at least this are orthogonalised one at a time with the
/// GEMM crate's own threads; smaller ones in parallel over segments. (Measured on the
/// 2-core development machine, `examples/muon.rs`: one 512 x 512 matrix 1.9x faster with
/// threaded GEMM than on one core; 72 matrices of 512 rows 0.8x as fast threaded inside
/// rayon's parallel loop as single-threaded GEMMs in it.)
const THREADED_GEMM_MIN_DIM: usize = 128;

/// One segment's matrices for the transform: its part of the work vector, its part of the
/// output, and its matrix view.
struct Piece<'a> {
    input: &'a [f32],
    output: &'a mut [f32],
    rows: usize,
    cols: usize,
    batch: usize,
}

/// The step of an algorithm with a matrix transform: pass 1 over every segment into
/// `scratch.work`, Newton–Schulz of every segment's matrices into `scratch.transformed` (in
/// parallel over segments), then per segment `finish_segment` and pass 2 with the transformed
/// matrix as its `g`.
#[allow(clippy::too_many_arguments)]
fn transform_step<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    ns: &NewtonSchulz,
    table: &SegmentTable,
    params: &mut [f32],
    grads: &[f32],
    states: &mut [StaggeredVec],
    scratch: &mut SegmentedScratch,
    scalars: &mut [Vec<f64>],
    fast: &FastChunks<A>,
) -> Result<()> {
    let (chunk, n, sums) = (fast.chunk, params.len(), A::SEGMENT_SUMS);
    for v in [&mut scratch.work, &mut scratch.transformed] {
        if v.len() != n {
            v.resize(n, 0.0);
        }
    }
    let workers = rayon::current_num_threads() + 1;
    if scratch.workspaces.len() < workers {
        scratch
            .workspaces
            .resize_with(workers, || Mutex::new(NsWorkspace::default()));
    }
    let segs = table.segments();
    let mut totals = vec![0.0f64; sums * segs.len()];
    // Pass 1: state update, partial sums and the transform input.
    for (k, seg) in segs.iter().enumerate() {
        let r = seg.start..seg.end();
        let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
        let mut s: Vec<&mut [f32]> = Vec::new();
        s.extend(states.iter_mut().map(|v| &mut v[r.clone()]));
        let chunks = seg.len().div_ceil(chunk);
        scratch.partials.clear();
        scratch.partials.resize(chunks * sums, 0.0);
        for_chunks(
            p,
            g,
            &mut s,
            &mut scratch.partials,
            sums,
            chunk,
            &mut scratch.work[r],
            |p, g, s, out, work| reduce_chunk(c, u, p, g, s, out, work, fast),
        );
        for part in scratch.partials.chunks(sums.max(1)) {
            for (t, x) in totals[k * sums..(k + 1) * sums].iter_mut().zip(part) {
                *t += x;
            }
        }
    }
    // The transform: every segment's matrices, in parallel over segments.
    let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(segs.len());
    let (mut work, mut out) = (&scratch.work[..], &mut scratch.transformed[..]);
    let mut at = 0;
    for seg in segs {
        let skip = seg.start - at;
        let (input, w_rest) = work[skip..].split_at(seg.len());
        let (output, o_rest) = std::mem::take(&mut out)[skip..].split_at_mut(seg.len());
        pieces.push(Piece {
            input,
            output,
            rows: seg.rows(),
            cols: seg.cols(),
            batch: seg.batch(),
        });
        (work, out, at) = (w_rest, o_rest, seg.end());
    }
    // Large matrices one after the other (the GEMM crate spreads each over the cores: its
    // `threading` feature), small ones in parallel over rayon's threads (one workspace each).
    let workspaces = &scratch.workspaces;
    let run = |piece: Piece<'_>, ws: &Mutex<NsWorkspace>, threads: Threads| -> Result<()> {
        let mut ws = ws.lock().unwrap_or_else(|e| e.into_inner());
        let m = piece.rows * piece.cols;
        for b in 0..piece.batch {
            let r = b * m..(b + 1) * m;
            ns.orthogonalize_on(
                &piece.input[r.clone()],
                piece.rows,
                piece.cols,
                &mut piece.output[r],
                &mut ws,
                threads,
            )?;
        }
        Ok(())
    };
    let (large, small): (Vec<Piece<'_>>, Vec<Piece<'_>>) = pieces
        .into_iter()
        .partition(|p| p.rows.min(p.cols) >= THREADED_GEMM_MIN_DIM);
    for piece in large {
        run(piece, &workspaces[workers - 1], Threads::All)?;
    }
    small.into_par_iter().try_for_each(|piece| {
        let slot = rayon::current_thread_index().map_or(workers - 1, |i| i.min(workers - 2));
        run(piece, &workspaces[slot], Threads::One)
    })?;
    // Pass 2 with the transformed matrices.
    for (k, seg) in segs.iter().enumerate() {
        let r = seg.start..seg.end();
        let mut out = vec![0.0; A::SEGMENT_SCALARS.len()];
        let u2 = c.finish_segment(u, seg, &totals[k * sums..(k + 1) * sums], &mut out);
        scalars[k] = out;
        let (p, o) = (&mut params[r.clone()], &scratch.transformed[r.clone()]);
        let mut s: Vec<&mut [f32]> = Vec::new();
        s.extend(states.iter_mut().map(|v| &mut v[r.clone()]));
        for_chunks(p, o, &mut s, &mut [], 0, chunk, &mut [], |p, o, s, _, _| {
            (fast.run)(c, &u2, p, o, s)
        });
    }
    Ok(())
}

/// Σ g², f64, over fixed chunks in chunk order (deterministic).
fn sum_squares(g: &[f32], chunk: usize) -> f64 {
    let partials: Vec<f64> = g
        .par_chunks(chunk)
        .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .collect();
    partials.iter().sum()
}

/// `f(p, g, states, sums, work)` over the `chunk`-element chunks of one segment, in
/// parallel; chunk i gets `sums[i * width..(i + 1) * width]` (empty when `width` is 0) and
/// its part of `work` (empty when `work` is).
#[allow(clippy::too_many_arguments)]
fn for_chunks<F>(
    p: &mut [f32],
    g: &[f32],
    states: &mut [&mut [f32]],
    sums: &mut [f64],
    width: usize,
    chunk: usize,
    work: &mut [f32],
    f: F,
) where
    F: Fn(&mut [f32], &[f32], &mut [&mut [f32]], &mut [f64], &mut [f32]) + Sync + Send,
{
    let n = p.len().div_ceil(chunk);
    let sum_chunks: Vec<&mut [f64]> = if width == 0 {
        (0..n).map(|_| &mut [][..]).collect()
    } else {
        sums.chunks_mut(width).collect()
    };
    let work_chunks: Vec<&mut [f32]> = if work.is_empty() {
        (0..n).map(|_| &mut [][..]).collect()
    } else {
        work.chunks_mut(chunk).collect()
    };
    let pg = p
        .par_chunks_mut(chunk)
        .zip(g.par_chunks(chunk))
        .zip(sum_chunks.into_par_iter().zip(work_chunks.into_par_iter()));
    match states {
        [] => pg.for_each(|((p, g), (o, w))| f(p, g, &mut [], o, w)),
        [a] => pg
            .zip(a.par_chunks_mut(chunk))
            .for_each(|(((p, g), (o, w)), a)| f(p, g, &mut [a], o, w)),
        [a, b] => pg
            .zip(a.par_chunks_mut(chunk))
            .zip(b.par_chunks_mut(chunk))
            .for_each(|((((p, g), (o, w)), a), b)| f(p, g, &mut [a, b], o, w)),
        [a, b, c] => pg
            .zip(a.par_chunks_mut(chunk))
            .zip(b.par_chunks_mut(chunk))
            .zip(c.par_chunks_mut(chunk))
            .for_each(|(((((p, g), (o, w)), a), b), c)| f(p, g, &mut [a, b, c], o, w)),
        _ => unreachable!("no optimizer has more than 3 state tensors"),
    }
}

/// The first pass over one chunk, in the AVX2 + FMA build when the fast path's SIMD level
/// is AVX2 or above (the reduction keeps its order: same sums at every level).
#[allow(clippy::too_many_arguments)]
fn reduce_chunk<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &[f32],
    g: &[f32],
    s: &mut [&mut [f32]],
    sums: &mut [f64],
    work: &mut [f32],
    fast: &FastChunks<A>,
) {
    #[cfg(target_arch = "x86_64")]
    if fast.avx512 {
        // SAFETY: the CPU has AVX-512 F/VL/BW/DQ (the fast path passes
        // `simd_level() >= Avx512`).
        return unsafe { reduce_avx512(c, u, p, g, s, sums, work) };
    }
    #[cfg(target_arch = "x86_64")]
    if fast.avx2 {
        // SAFETY: the CPU has AVX2 and FMA (the fast path passes `simd_level() >= Avx2`).
        return unsafe { reduce_avx2(c, u, p, g, s, sums, work) };
    }
    // (Read on every target: elsewhere the switches have no other use.)
    let _ = (fast.avx2, fast.avx512);
    c.cpu_reduce_chunk(u, p, g, s, sums, work)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn reduce_avx512<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &[f32],
    g: &[f32],
    s: &mut [&mut [f32]],
    sums: &mut [f64],
    work: &mut [f32],
) {
    c.cpu_reduce_chunk(u, p, g, s, sums, work)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn reduce_avx2<A: Algorithm>(
    c: &A,
    u: &A::Uniform,
    p: &[f32],
    g: &[f32],
    s: &mut [&mut [f32]],
    sums: &mut [f64],
    work: &mut [f32],
) {
    c.cpu_reduce_chunk(u, p, g, s, sums, work)
}
