//! Where each state tensor's elements for each segment lie: at the parameters' own indices
//! (every algorithm whose state is one element per parameter), or, for an algorithm with
//! [`Algorithm::STATE_PER_ELEMENT`](super::Algorithm::STATE_PER_ELEMENT) false (Adafactor),
//! [`state_elements`](super::Algorithm::state_elements) per segment, back to back in
//! segment order.

use super::OptimizerConfig;
use crate::segments::{SegmentShape, SegmentTable};

/// The state tensors' layout over one segment table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Per state tensor, per segment: (first element, element count).
    parts: Vec<Vec<(usize, usize)>>,
    /// Per state tensor, its length.
    lens: Vec<usize>,
}

impl StateLayout {
    /// The layout of `config`'s state tensors over `table`: one element per parameter at the
    /// parameter's index (each state tensor `table.len()` long, padding included), or the
    /// segments' parts back to back.
    pub fn new(config: &OptimizerConfig, table: &SegmentTable) -> Self {
        let states = config.state_names().len();
        let segments = table.segments();
        if config.state_per_element() {
            let part: Vec<(usize, usize)> = segments.iter().map(|s| (s.start, s.len())).collect();
            return Self {
                parts: vec![part; states],
                lens: vec![table.len(); states],
            };
        }
        Self::packed(config, segments)
    }

    /// The lengths of `config`'s state tensors over tensors of `shapes` in a vector of `n`
    /// elements (`n` each when the state is one element per parameter).
    pub fn lens_for_shapes(
        config: &OptimizerConfig,
        shapes: &[Vec<usize>],
        n: usize,
    ) -> Vec<usize> {
        let states = config.state_names().len();
        if config.state_per_element() {
            return vec![n; states];
        }
        Self::packed_over_shapes(config, shapes).lens
    }

    /// The layout over tensors of `shapes` with their parts back to back (also for an
    /// algorithm whose state is one element per parameter: then each tensor's part is its
    /// element count, compact).
    pub fn packed_over_shapes(config: &OptimizerConfig, shapes: &[Vec<usize>]) -> Self {
        let segments: Vec<SegmentShape> = shapes
            .iter()
            .map(|shape| SegmentShape {
                start: 0,
                shape: shape.clone(),
            })
            .collect();
        Self::packed(config, &segments)
    }

    fn packed(config: &OptimizerConfig, segments: &[SegmentShape]) -> Self {
        let states = config.state_names().len();
        let mut parts = vec![Vec::with_capacity(segments.len()); states];
        let mut lens = vec![0usize; states];
        for (k, (part, len)) in parts.iter_mut().zip(&mut lens).enumerate() {
            for s in segments {
                let count = config.state_elements(k, s);
                part.push((*len, count));
                *len = len.saturating_add(count);
            }
        }
        Self { parts, lens }
    }

    /// The length of state tensor `state`.
    pub fn len(&self, state: usize) -> usize {
        self.lens[state]
    }

    /// Every state tensor's length, in `state_names` order.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// The elements of state tensor `state` that belong to segment `segment`.
    pub fn range(&self, state: usize, segment: usize) -> std::ops::Range<usize> {
        let (start, count) = self.parts[state][segment];
        start..start + count
    }
}
