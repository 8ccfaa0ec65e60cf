//! The ranks' parameter and gradient buffers in one MPI shared-memory window, for ranks on
//! one node: a rank reads the other ranks' gradients of its shard directly (the
//! reduce-scatter without a copy), and the node keeps one copy of the parameters that every
//! rank updates its own shard of in place (the all-gather without a copy: after the step's
//! closing barrier every rank sees all of them).
//!
//! `MPI_Win_allocate_shared` gives each rank `2 n` f32 (its parameters, then its gradients,
//! at staggered offsets)
//! that every rank of the node can address (`MPI_Win_shared_query`). The window is locked
//! for the whole lifetime (`MPI_Win_lock_all(MPI_MODE_NOCHECK)`), and every phase boundary
//! is `MPI_Win_sync` + the status exchange (a barrier) + `MPI_Win_sync`, MPI's unified-model
//! recipe for load/store synchronisation.

use std::os::raw::{c_int, c_void};

use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::cpu::staggered::{SLOTS, STAGGER_BYTES};

/// The shared window and every rank's params and grads in it.
pub(crate) struct SharedBuffers {
    win: ffi::MPI_Win,
    /// Rank r's parameters (n f32).
    params: Vec<*mut f32>,
    /// Rank r's gradients (n f32).
    grads: Vec<*mut f32>,
    n: usize,
    me: usize,
}

/// f32 between stagger slots (`STAGGER_BYTES`: a page and a cache line).
const STAGGER: usize = STAGGER_BYTES / std::mem::size_of::<f32>();

/// Where rank r's params and grads start in its part of the window: staggered like
/// `StaggeredVec` (slots 4r and 4r + 3, modulo `SLOTS`), so that the streams of the update
/// (own and peers' buffers, the state's slots 1 to 3) do not fall on the same cache sets;
/// unstaggered, a 2-thread Adam step at 2^24 ran 2.5-3x slower (`cpu::staggered`).
fn offsets(rank: usize, n: usize) -> (usize, usize) {
    let slot = |k: usize| (k % SLOTS) * STAGGER;
    (slot(4 * rank), SLOTS * STAGGER + n + slot(4 * rank + 3))
}

/// f32 of one rank's part of the window.
fn part_len(n: usize) -> usize {
    2 * n + 2 * SLOTS * STAGGER
}

// SAFETY: the window's memory is plain shared memory; access is synchronised by the
// optimizer's phase barriers, and the handle is only used by the thread that owns the
// optimizer (MPI is initialised single-threaded or funneled through it).
unsafe impl Send for SharedBuffers {}
unsafe impl Sync for SharedBuffers {}

impl SharedBuffers {
    /// Collective over `comm`: allocate `2 n` f32 per rank, initialised to `params` and 0,
    /// if every rank of `comm` is on this node; `None` otherwise (or if MPI refuses).
    pub(crate) fn allocate(comm: &SimpleCommunicator, params: &[f32]) -> Option<Self> {
        let node = comm.split_shared(comm.rank());
        if node.size() != comm.size() {
            return None;
        }
        let n = params.len();
        let bytes = (part_len(n) * std::mem::size_of::<f32>()) as ffi::MPI_Aint;
        let mut base: *mut f32 = std::ptr::null_mut();
        let mut win: ffi::MPI_Win = unsafe { std::mem::zeroed() };
        // SAFETY: FFI with valid out-pointers; `comm` is a live communicator.
        let rc = unsafe {
            ffi::MPI_Win_allocate_shared(
                bytes,
                std::mem::size_of::<f32>() as c_int,
                ffi::RSMPI_INFO_NULL,
                comm.as_raw(),
                &mut base as *mut *mut f32 as *mut c_void,
                &mut win,
            )
        };
        if rc != 0 || base.is_null() {
            return None;
        }
        let (mut all_params, mut all_grads) = (Vec::new(), Vec::new());
        for r in 0..comm.size() {
            let mut size: ffi::MPI_Aint = 0;
            let mut unit: c_int = 0;
            let mut ptr: *mut f32 = std::ptr::null_mut();
            // SAFETY: as above; `r` is a rank of the window's group.
            unsafe {
                ffi::MPI_Win_shared_query(
                    win,
                    r,
                    &mut size,
                    &mut unit,
                    &mut ptr as *mut *mut f32 as *mut c_void,
                );
            }
            if ptr.is_null() || (size as usize) < part_len(n) * std::mem::size_of::<f32>() {
                return None;
            }
            let (p, g) = offsets(r as usize, n);
            // SAFETY: both offsets plus n lie inside the rank's part (`part_len`).
            unsafe {
                all_params.push(ptr.add(p));
                all_grads.push(ptr.add(g));
            }
        }
        // One copy of the parameters per node: rank 0's. Every rank updates its shard of it
        // in place, so the all-gather costs nothing; the other ranks' params regions are
        // never touched (tmpfs gives them no memory).
        let node_params = all_params[0];
        all_params.iter_mut().for_each(|p| *p = node_params);
        // SAFETY: the window was just created over `comm`.
        unsafe { ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as c_int, win) };
        let me = comm.rank() as usize;
        let mut buffers = Self {
            win,
            params: all_params,
            grads: all_grads,
            n,
            me,
        };
        // Written before anyone reads them (the caller synchronises before the first step);
        // the node's params by rank 0 only.
        if me == 0 {
            buffers.params_mut().copy_from_slice(params);
        }
        buffers.grads_mut().fill(0.0);
        Some(buffers)
    }

    /// The other ranks whose parameters are a separate copy (none: the node shares one
    /// copy, so the all-gather has nothing to store; kept for a layout with copies).
    fn peers_with_own_params(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.params.len()).filter(move |&r| self.params[r] != self.params[self.me])
    }

    /// Make this rank's stores visible and the others' visible to it (around a barrier).
    pub(crate) fn sync(&self) {
        // SAFETY: the window is locked for its lifetime.
        unsafe { ffi::MPI_Win_sync(self.win) };
    }

    /// This rank's parameters.
    pub(crate) fn params(&self) -> &[f32] {
        // SAFETY: this rank's own region; peers write only into ranges this rank does not
        // own, and only between the phase barriers of a step, while no `&` borrow obtained
        // here is alive (the optimizer holds `&mut self` during a step).
        unsafe { std::slice::from_raw_parts(self.params[self.me], self.n) }
    }

    /// This rank's parameters, to change.
    pub(crate) fn params_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for `params`, with `&mut self` excluding any other borrow.
        unsafe { std::slice::from_raw_parts_mut(self.params[self.me], self.n) }
    }

    /// This rank's gradients, to write.
    pub(crate) fn grads_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for `params_mut`; peers only read them between the barriers.
        unsafe { std::slice::from_raw_parts_mut(self.grads[self.me], self.n) }
    }

    /// Every rank's gradients at `range`, in rank order (read during the reduce phase).
    ///
    /// # Safety
    /// Only between the barrier after the gradients and the barrier after the update,
    /// when no rank writes gradients; the slices must not outlive that phase.
    pub(crate) unsafe fn all_peer_grads<'a>(
        &self,
        range: std::ops::Range<usize>,
    ) -> Vec<&'a [f32]> {
        assert!(range.end <= self.n);
        self.grads
            .iter()
            .map(|&g| std::slice::from_raw_parts(g.add(range.start), range.len()))
            .collect()
    }

    /// This rank's parameters at `range` (its shard), to update in place.
    ///
    /// # Safety
    /// As for [`Self::all_peer_grads`]; no other borrow of this rank's params may be alive.
    pub(crate) unsafe fn own_params_mut<'a>(&self, range: std::ops::Range<usize>) -> &'a mut [f32] {
        assert!(range.end <= self.n);
        std::slice::from_raw_parts_mut(self.params[self.me].add(range.start), range.len())
    }

    /// Store `values`, this rank's updated params at `start..` of its shard, into every
    /// other rank's params (the all-gather a chunk at a time, from any thread).
    ///
    /// # Safety
    /// Only within this rank's shard and in the update phase (no rank reads those
    /// parameters until the barrier that ends the step).
    pub(crate) unsafe fn publish_values(&self, start: usize, values: &[f32]) {
        assert!(start + values.len() <= self.n);
        for r in self.peers_with_own_params() {
            std::ptr::copy_nonoverlapping(values.as_ptr(), self.params[r].add(start), values.len());
        }
    }

    /// The all-gather in shared memory: store this rank's params at `range` (its shard)
    /// into every other rank's params. Only in the update phase: no rank reads those
    /// parameters until the barrier that ends the step.
    pub(crate) fn publish_shard(&mut self, range: std::ops::Range<usize>) {
        assert!(range.end <= self.n);
        for r in self.peers_with_own_params() {
            // SAFETY: disjoint regions of the window (another rank's params at this rank's
            // shard, which only this rank writes), inside the allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.params[self.me].add(range.start),
                    self.params[r].add(range.start),
                    range.len(),
                );
            }
        }
    }
}
