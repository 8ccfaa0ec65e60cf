//! Pure planning of a mixed optimizer, no device: which segments each algorithm group owns,
//! checked (every segment in exactly one group, each group's algorithm accepts its tensors),
//! and where each group's tensors are in the flat vector.

use std::ops::Range;

use super::AlgorithmGroup;
use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;
use crate::segments::SegmentTable;

/// One group, planned: its algorithm, its segments in increasing order, their shapes and
/// ranges in the flat vector.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlannedGroup {
    /// The group's configuration (validated).
    pub config: OptimizerConfig,
    /// Segment indices, increasing.
    pub members: Vec<usize>,
    /// Their shapes, in the same order.
    pub shapes: Vec<Vec<usize>>,
    /// Their element ranges in the flat vector.
    pub ranges: Vec<Range<usize>>,
    /// The one range they fill without gaps, when they are consecutive segments back to
    /// back (then a step needs no gathering on the CPU paths).
    pub contiguous: Option<Range<usize>>,
}

impl PlannedGroup {
    /// Elements of the group (its state length).
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

/// Check `groups` against `table` and plan them, in the order given. Errors (nothing is
/// allocated): [`Error::Empty`] for no groups or a group without segments,
/// [`Error::Segment`] for a segment index past the table, in two groups or in none, the
/// configuration's own validation error, and the algorithm's refusal of its tensors (e.g.
/// [`Error::WrongRank`] for Muon on a 1-D segment).
pub(crate) fn plan(table: &SegmentTable, groups: &[AlgorithmGroup]) -> Result<Vec<PlannedGroup>> {
    if groups.is_empty() {
        return Err(Error::Empty {
            what: "algorithm groups of a mixed optimizer",
        });
    }
    let segs = table.segments();
    let mut owner: Vec<Option<usize>> = vec![None; segs.len()];
    for (g, group) in groups.iter().enumerate() {
        if group.segments.is_empty() {
            return Err(Error::Empty {
                what: "algorithm group (no segments)",
            });
        }
        group.config.validate()?;
        for &k in &group.segments {
            let slot = owner.get_mut(k).ok_or_else(|| Error::Segment {
                name: format!("#{k}"),
                reason: "is past the segment table",
            })?;
            if slot.is_some() {
                return Err(Error::Segment {
                    name: format!("#{k}"),
                    reason: "is in more than one algorithm group",
                });
            }
            *slot = Some(g);
        }
    }
    if let Some(k) = owner.iter().position(Option::is_none) {
        return Err(Error::Segment {
            name: format!("#{k}"),
            reason: "is in no algorithm group",
        });
    }
    groups
        .iter()
        .map(|group| {
            let mut members = group.segments.clone();
            members.sort_unstable();
            let shapes: Vec<Vec<usize>> = members.iter().map(|&k| segs[k].shape.clone()).collect();
            let ranges: Vec<Range<usize>> = members
                .iter()
                .map(|&k| segs[k].start..segs[k].end())
                .collect();
            group
                .config
                .check_segments(&SegmentTable::contiguous(&shapes)?)?;
            let back_to_back = members.windows(2).all(|w| w[1] == w[0] + 1)
                && ranges.windows(2).all(|w| w[0].end == w[1].start);
            let contiguous = back_to_back.then(|| ranges[0].start..ranges[ranges.len() - 1].end);
            Ok(PlannedGroup {
                config: group.config,
                members,
                shapes,
                ranges,
                contiguous,
            })
        })
        .collect()
}

/// (algorithm, tensor count) per group, for `Debug`.
pub(crate) fn summary(groups: &[PlannedGroup]) -> Vec<(&'static str, usize)> {
    groups
        .iter()
        .map(|g| (g.config.name(), g.members.len()))
        .collect()
}

/// Every group's lr from `schedule` at `epoch` over its base lr, each checked as its
/// algorithm checks an lr (all before any is used).
pub(crate) fn scheduled_lrs(
    groups: &[PlannedGroup],
    base_lrs: &[f64],
    schedule: &crate::schedule::LrSchedule,
    epoch: u64,
) -> Result<Vec<f64>> {
    groups
        .iter()
        .zip(base_lrs)
        .map(|(group, &base)| {
            let lr = schedule.lr_at(base, epoch);
            group.config.validate_lr(lr)?;
            Ok(lr)
        })
        .collect()
}
