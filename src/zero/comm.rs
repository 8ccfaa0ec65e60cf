//! The collectives a sharded step needs, on MPI (rsmpi), each with a timeout.
//!
//! Every collective is an MPI immediate (non-blocking) operation polled until it completes
//! or the timeout passes, so that a peer that is stuck, dead or not stepping makes this rank
//! return [`Error::CollectiveTimeout`] instead of hanging. A timed-out request is left to
//! MPI (collectives cannot be cancelled): its buffers must never be freed or reused, which is
//! why the caller gives them up (see `ShardedOptimizer`'s poisoning).
//!
//! The reduce-scatter is MPI's all-to-all (each rank sends rank r the slice of its gradients
//! that r owns, in buckets) followed by the reduction in rank order of
//! [`reduce`](super::reduce): the same bytes as a ring or pairwise reduce-scatter, and the
//! same bits whatever algorithm MPI would choose.

use std::time::{Duration, Instant};

use mpi::datatype::{Partition, PartitionMut};
use mpi::request::{LocalScope, Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use super::layout::ShardPlan;
use super::reduce::{reduce_in_rank_order, GradReduction};
use crate::error::{Error, Result};

/// A duplicate of the caller's communicator (our traffic never mixes with theirs), with the
/// timeout every collective waits at most.
pub(crate) struct Collectives {
    comm: SimpleCommunicator,
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) timeout: Duration,
}

/// MPI counts and displacements are C ints.
pub(crate) fn count(x: usize) -> Count {
    Count::try_from(x).expect("sizes are checked against Count::MAX at construction")
}

impl Collectives {
    pub(crate) fn new(comm: &impl Communicator, timeout: Duration) -> Self {
        let comm = comm.duplicate();
        Self {
            rank: comm.rank() as usize,
            world: comm.size() as usize,
            comm,
            timeout,
        }
    }

    /// Poll `req` until it completes or the timeout passes.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        mut req: Request<'a, D, S>,
        op: &'static str,
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut polls = 0u32;
        loop {
            match req.test() {
                Ok(_) => return Ok(()),
                Err(pending) => req = pending,
            }
            if Instant::now() > deadline {
                // SAFETY: the request stays pending in MPI, which may still read or write
                // its buffers; the caller gives those buffers up for good (poisoning), so
                // they outlive the request.
                let _ = unsafe { req.into_raw() };
                return Err(Error::CollectiveTimeout {
                    op,
                    after: self.timeout,
                    rank: self.rank,
                });
            }
            polls = polls.wrapping_add(1);
            if polls % 64 == 0 {
                std::thread::yield_now();
            }
        }
    }

    /// Every rank's status word (0 = fine), in rank order; doubles as a barrier.
    pub(crate) fn exchange_status(&self, mine: i32) -> Result<Vec<i32>> {
        let mut all = vec![0i32; self.world];
        mpi::request::scope(|scope: &LocalScope<'_>| {
            let req = self
                .comm
                .immediate_all_gather_into(scope, &mine, &mut all[..]);
            self.wait(req, "status exchange")
        })?;
        Ok(all)
    }

    /// `out` (this rank's shard) = the reduction over ranks of their `grads` restricted to
    /// this rank's range, in buckets of `bucket` elements (`scratch` holds `world * bucket`).
    pub(crate) fn reduce_scatter(
        &self,
        plan: &ShardPlan,
        grads: &[f32],
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        bucket: usize,
        reduction: GradReduction,
    ) -> Result<()> {
        let world = self.world;
        let rounds = plan.max_len().div_ceil(bucket);
        scratch.resize(world * bucket.min(plan.max_len()), 0.0);
        let piece = |r: usize, b: usize| plan.range(r).len().saturating_sub(b * bucket).min(bucket);
        for b in 0..rounds {
            let send_counts: Vec<Count> = (0..world).map(|r| count(piece(r, b))).collect();
            let send_displs: Vec<Count> = (0..world)
                .map(|r| {
                    count(if piece(r, b) > 0 {
                        plan.range(r).start + b * bucket
                    } else {
                        0
                    })
                })
                .collect();
            let mine = piece(self.rank, b);
            let recv_counts: Vec<Count> = vec![count(mine); world];
            let recv_displs: Vec<Count> = (0..world).map(|r| count(r * mine)).collect();
            let recv = &mut scratch[..world * mine];
            let send = Partition::new(grads, &send_counts[..], &send_displs[..]);
            let mut recv = PartitionMut::new(&mut recv[..], &recv_counts[..], &recv_displs[..]);
            mpi::request::scope(|scope: &LocalScope<'_>| {
                let req = self
                    .comm
                    .immediate_all_to_all_varcount_into(scope, &send, &mut recv);
                self.wait(req, "reduce-scatter")
            })?;
            if mine > 0 {
                let mut parts: Vec<&mut [f32]> = scratch[..world * mine].chunks_mut(mine).collect();
                let out = &mut out[b * bucket..b * bucket + mine];
                reduce_in_rank_order(&mut parts, out, reduction);
            }
        }
        Ok(())
    }

    /// `full` = every rank's `mine` at its range of the plan.
    pub(crate) fn all_gather<T: Equivalence>(
        &self,
        plan: &ShardPlan,
        mine: &[T],
        full: &mut [T],
    ) -> Result<()> {
        let counts: Vec<Count> = plan.ranges().iter().map(|r| count(r.len())).collect();
        let displs: Vec<Count> = plan.ranges().iter().map(|r| count(r.start)).collect();
        self.gather_varcount(mine, full, &counts, &displs, "all-gather")
    }

    /// `full` = every rank's `mine` back to back; `lens` are every rank's lengths.
    pub(crate) fn gather_varcount<T: Equivalence>(
        &self,
        mine: &[T],
        full: &mut [T],
        counts: &[Count],
        displs: &[Count],
        op: &'static str,
    ) -> Result<()> {
        let mut recv = PartitionMut::new(full, counts, displs);
        mpi::request::scope(|scope: &LocalScope<'_>| {
            let req = self
                .comm
                .immediate_all_gather_varcount_into(scope, mine, &mut recv);
            self.wait(req, op)
        })
    }
}
