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

    /// This node's shared window of `2 n` f32 per rank, if every rank is on this node.
    pub(crate) fn shared_buffers(&self, params: &[f32]) -> Option<super::shm::SharedBuffers> {
        super::shm::SharedBuffers::allocate(&self.comm, params)
    }

    /// Poll `req` until it completes or the timeout passes.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        req: Request<'a, D, S>,
        op: &'static str,
    ) -> Result<()> {
        self.wait_all(vec![req], op)
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
    /// this rank's range (see [`Self::exchange_buckets`]).
    pub(crate) fn reduce_scatter(
        &self,
        plan: &ShardPlan,
        grads: &[f32],
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        bucket: usize,
        reduction: GradReduction,
    ) -> Result<()> {
        self.exchange_buckets(plan, grads, scratch, bucket, |offset, parts| {
            let out = &mut out[offset..offset + parts[0].len()];
            reduce_in_rank_order(parts, out, reduction).expect("the buckets are sized alike");
        })
    }

    /// The exchange of the reduce-scatter, in buckets of `bucket` elements of this rank's
    /// shard: for each bucket, every other rank's gradients of it arrive in `scratch`
    /// (`world * bucket` elements) and `reduce(offset, parts)` gets the R contributions in
    /// rank order (this rank's own read in place from `grads`: it is not sent to itself),
    /// `offset` counting from the shard's start.
    pub(crate) fn exchange_buckets(
        &self,
        plan: &ShardPlan,
        grads: &[f32],
        scratch: &mut Vec<f32>,
        bucket: usize,
        mut reduce: impl FnMut(usize, &[&[f32]]),
    ) -> Result<()> {
        let (world, me) = (self.world, self.rank);
        let rounds = plan.max_len().div_ceil(bucket);
        scratch.resize(world * bucket.min(plan.max_len()), 0.0);
        let piece = |r: usize, b: usize| plan.at(r).len().saturating_sub(b * bucket).min(bucket);
        let others = |r: usize, x: usize| if r == me { 0 } else { x };
        for b in 0..rounds {
            let send_counts: Vec<Count> =
                (0..world).map(|r| count(others(r, piece(r, b)))).collect();
            let send_displs: Vec<Count> = (0..world)
                .map(|r| {
                    count(if piece(r, b) > 0 {
                        plan.at(r).start + b * bucket
                    } else {
                        0
                    })
                })
                .collect();
            let mine = piece(me, b);
            let recv_counts: Vec<Count> = (0..world).map(|r| count(others(r, mine))).collect();
            let recv_displs: Vec<Count> = (0..world).map(|r| count(r * mine)).collect();
            let send = Partition::new(grads, &send_counts[..], &send_displs[..]);
            let mut recv = PartitionMut::new(
                &mut scratch[..world * mine],
                &recv_counts[..],
                &recv_displs[..],
            );
            mpi::request::scope(|scope: &LocalScope<'_>| {
                let req = self
                    .comm
                    .immediate_all_to_all_varcount_into(scope, &send, &mut recv);
                self.wait(req, "reduce-scatter")
            })?;
            if mine > 0 {
                let own_start = plan.at(me).start + b * bucket;
                let parts: Vec<&[f32]> = (0..world)
                    .map(|r| {
                        if r == me {
                            &grads[own_start..own_start + mine]
                        } else {
                            &scratch[r * mine..(r + 1) * mine]
                        }
                    })
                    .collect();
                reduce(b * bucket, &parts);
            }
        }
        Ok(())
    }

    /// `full[range_r]` = rank r's `full[range_r]` for every other rank r (this rank's range
    /// is sent, not copied): point-to-point sends and receives into disjoint slices.
    pub(crate) fn all_gather_in_place(&self, plan: &ShardPlan, full: &mut [f32]) -> Result<()> {
        let me = self.rank;
        let mut slices: Vec<&mut [f32]> = Vec::with_capacity(self.world);
        let mut rest = full;
        for r in plan.ranges() {
            let (head, tail) = rest.split_at_mut(r.len());
            slices.push(head);
            rest = tail;
        }
        let mine: &mut [f32] = std::mem::take(&mut slices[me]);
        let mine: &[f32] = mine;
        mpi::request::scope(|scope: &LocalScope<'_>| {
            let mut pending = Vec::with_capacity(2 * self.world);
            for (r, slice) in slices.iter_mut().enumerate() {
                if r != me {
                    let peer = self.comm.process_at_rank(r as mpi::Rank);
                    pending.push(peer.immediate_receive_into(scope, &mut **slice));
                }
            }
            for r in (0..self.world).filter(|&r| r != me) {
                let peer = self.comm.process_at_rank(r as mpi::Rank);
                pending.push(peer.immediate_send(scope, mine));
            }
            self.wait_all(pending, "all-gather")
        })
    }

    /// Poll `requests` until all complete or the timeout passes (one deadline for all).
    fn wait_all<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        requests: Vec<Request<'a, D, S>>,
        op: &'static str,
    ) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut pending = requests;
        let mut polls = 0u32;
        while !pending.is_empty() {
            let mut still = Vec::with_capacity(pending.len());
            for req in pending {
                if let Err(req) = req.test() {
                    still.push(req);
                }
            }
            pending = still;
            if !pending.is_empty() && Instant::now() > deadline {
                for req in pending {
                    // SAFETY: the request stays pending in MPI, which may still read or
                    // write its buffers; the caller gives those buffers up for good
                    // (poisoning), so they outlive the request.
                    let _ = unsafe { req.into_raw() };
                }
                return Err(Error::CollectiveTimeout {
                    op,
                    after: self.timeout,
                    rank: self.rank,
                });
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// `full` = every rank's `mine` back to back, at `displs` with `counts` elements each.
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
