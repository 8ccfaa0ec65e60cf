//! Which rank owns which elements: the shard plan.
//!
//! Two layouts, both contiguous (rank r owns `[offset_r, offset_r + len_r)`, in rank order,
//! together covering `[0, n)` exactly once, every shard non-empty):
//!
//! * [`ShardLayout::Segments`] (the default): whole segments (tensors) per rank, balanced so
//!   that the largest shard is as small as any contiguous split of the segments allows
//!   (binary search on the capacity, then a greedy fill that leaves a segment for every rank
//!   still to come). Per-tensor algorithms (trust ratios, factored moments, Newton-Schulz)
//!   and 8-bit blocks need a tensor on one rank; it is also the layout whose checkpoints read
//!   naturally tensor by tensor.
//! * [`ShardLayout::Aligned`]: equal ranges of `ceil(ceil(n / R) / align) * align` elements
//!   (the last rank takes the rest), for elementwise algorithms only. `align = 256` is the
//!   bitsandbytes block and keeps every shard start a multiple of the GPU's lane and
//!   binding-offset granularity; `align` a multiple of [`CHUNK`](crate::cpu::fast::CHUNK)
//!   (2^15) also makes the global gradient norm bit-identical to the single-process one
//!   (the fast path sums its norm per chunk).

use std::ops::Range;

use crate::error::{Error, Result};

/// How the elements are split over the ranks (see the [module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardLayout {
    /// Whole segments per rank, balanced (the default; needed by per-tensor algorithms).
    #[default]
    Segments,
    /// Equal ranges whose starts are multiples of `align` elements (elementwise algorithms).
    Aligned {
        /// The alignment of every shard start, in elements (> 0).
        align: usize,
    },
}

impl ShardLayout {
    /// Equal ranges aligned to 256 elements (a bitsandbytes block).
    pub const ALIGNED_256: Self = Self::Aligned { align: 256 };

    /// The layout as text (`segments`, `aligned:256`), as checkpoints record it.
    pub fn to_text(&self) -> String {
        match self {
            Self::Segments => "segments".to_string(),
            Self::Aligned { align } => format!("aligned:{align}"),
        }
    }

    /// The inverse of [`Self::to_text`].
    pub fn from_text(text: &str) -> Result<Self> {
        if text == "segments" {
            return Ok(Self::Segments);
        }
        text.strip_prefix("aligned:")
            .and_then(|a| a.parse().ok())
            .filter(|&align| align > 0)
            .map(|align| Self::Aligned { align })
            .ok_or_else(|| shard_error(format!("unknown shard layout `{text}`")))
    }
}

/// The shards of `n` elements over `world` ranks: rank r owns `ranges()[r]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    layout: ShardLayout,
    n: usize,
    ranges: Vec<Range<usize>>,
}

pub(crate) fn shard_error(reason: impl Into<String>) -> Error {
    Error::Shard {
        reason: reason.into(),
    }
}

impl ShardPlan {
    /// Plan the shards of segments of the given lengths (back to back, in order; one
    /// segment for an unstructured buffer) over `world` ranks.
    ///
    /// Errors ([`Error::Shard`]): no ranks, no elements, an empty segment, `align == 0`, or
    /// more ranks than the layout can give a non-empty shard (fewer segments than ranks for
    /// [`ShardLayout::Segments`], fewer than `world - 1` aligned blocks for
    /// [`ShardLayout::Aligned`]).
    pub fn new(layout: ShardLayout, segment_lens: &[usize], world: usize) -> Result<Self> {
        if world == 0 {
            return Err(shard_error("a world of 0 ranks"));
        }
        if segment_lens.contains(&0) {
            return Err(shard_error("an empty segment"));
        }
        let n: usize = segment_lens.iter().sum();
        if n == 0 {
            return Err(shard_error("no elements to shard"));
        }
        let ranges = match layout {
            ShardLayout::Segments => segment_ranges(segment_lens, world)?,
            ShardLayout::Aligned { align } => aligned_ranges(n, align, world)?,
        };
        Ok(Self { layout, n, ranges })
    }

    /// A plan from explicit ranges (as shard checkpoints record them): they must tile
    /// `[0, n)` in rank order, each non-empty.
    pub fn from_ranges(layout: ShardLayout, n: usize, ranges: Vec<Range<usize>>) -> Result<Self> {
        let mut expected_start = 0;
        for (rank, r) in ranges.iter().enumerate() {
            if r.start != expected_start || r.end <= r.start {
                return Err(shard_error(format!(
                    "shard {rank} is {r:?}: shards must be non-empty and follow each other from 0"
                )));
            }
            expected_start = r.end;
        }
        if expected_start != n || ranges.is_empty() {
            return Err(shard_error(format!(
                "the shards cover [0, {expected_start}), not [0, {n})"
            )));
        }
        Ok(Self { layout, n, ranges })
    }

    /// The layout the plan was made with.
    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// Elements in all shards together.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.ranges.len()
    }

    /// Every rank's range, in rank order.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Rank `rank`'s range; `None` past the last rank.
    pub fn range(&self, rank: usize) -> Option<Range<usize>> {
        self.ranges.get(rank).cloned()
    }

    /// Rank `rank`'s range, for a rank of the plan (internal callers index by their own
    /// rank, which the plan was made for).
    #[cfg(feature = "mpi")]
    pub(crate) fn at(&self, rank: usize) -> Range<usize> {
        self.ranges[rank].clone()
    }

    /// The longest shard (what each rank's per-shard buffers are sized for, at most).
    pub fn max_len(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).max().unwrap_or(0)
    }
}

fn segment_ranges(lens: &[usize], world: usize) -> Result<Vec<Range<usize>>> {
    if lens.len() < world {
        return Err(shard_error(format!(
            "{} segment(s) cannot give each of {world} ranks a whole segment: use \
             ShardLayout::Aligned (elementwise algorithms) or fewer ranks",
            lens.len()
        )));
    }
    // The smallest capacity at which a contiguous greedy fill needs at most `world` shards.
    let shards_at = |cap: usize| {
        let (mut shards, mut load) = (1, 0);
        for &len in lens {
            if load + len > cap {
                shards += 1;
                load = 0;
            }
            load += len;
        }
        shards
    };
    let (mut lo, mut hi) = (*lens.iter().max().unwrap(), lens.iter().sum::<usize>());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if shards_at(mid) <= world {
            hi = mid;
        } else {
            lo = mid;
            lo += 1;
        }
    }
    let cap = lo;
    // Fill greedily at that capacity, closing a shard early whenever the segments left are
    // exactly as many as the ranks left, so that every rank gets one.
    let mut ranges = Vec::with_capacity(world);
    let (mut start, mut end) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        let segments_left = lens.len() - i;
        let ranks_left_after_this = world - ranges.len() - 1;
        if end > start && (end - start + len > cap || segments_left == ranks_left_after_this) {
            ranges.push(start..end);
            start = end;
        }
        end += len;
    }
    ranges.push(start..end);
    debug_assert_eq!(ranges.len(), world);
    Ok(ranges)
}

fn aligned_ranges(n: usize, align: usize, world: usize) -> Result<Vec<Range<usize>>> {
    if align == 0 {
        return Err(shard_error("an alignment of 0 elements"));
    }
    let per_rank = n.div_ceil(world).div_ceil(align) * align;
    let ranges: Vec<_> = (0..world)
        .map(|r| (r * per_rank).min(n)..((r + 1) * per_rank).min(n))
        .collect();
    if let Some(empty) = ranges.iter().position(|r| r.is_empty()) {
        return Err(shard_error(format!(
            "{n} elements in shards of {per_rank} (aligned to {align}) leave rank {empty} of \
             {world} without elements: use fewer ranks or a smaller alignment"
        )));
    }
    Ok(ranges)
}
