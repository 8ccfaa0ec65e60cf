//! Tensor shapes inside a flat parameter vector: the segment table.
//!
//! Every implementation keeps one flat buffer of parameters (and one per state tensor); the
//! table says where each tensor starts, how long it is and what shape it has. Elementwise
//! algorithms never look at it; per-tensor algorithms (LAMB's trust ratio, and the row and
//! column statistics or matrix products of others) reduce and update one segment at a time.
//! On the device the table is one storage buffer of [`DeviceSegment`]s, uploaded when the
//! params are built ([`FlatParams`](crate::FlatParams)), never per step.

use crate::error::{Error, Result};

/// One tensor of a flat vector: its first element and its shape (row-major). A 0-dimensional
/// shape (`[]`) is a scalar of one element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentShape {
    /// First element in the flat vector.
    pub start: usize,
    /// Its shape; the element count is the product.
    pub shape: Vec<usize>,
}

impl SegmentShape {
    /// Number of elements (the product of the shape; `usize::MAX` when it overflows).
    pub fn len(&self) -> usize {
        shape_product(&self.shape).unwrap_or(usize::MAX)
    }

    /// True for a segment of no elements (a table never holds one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its elements in the flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.end()
    }

    /// One past its last element.
    pub fn end(&self) -> usize {
        self.start.saturating_add(self.len())
    }

    /// Its rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Rows of its matrix view: the second-last dimension for rank >= 2, else 1.
    pub fn rows(&self) -> usize {
        match self.shape.len() {
            0 | 1 => 1,
            r => self.shape[r - 2],
        }
    }

    /// Columns of its matrix view: the last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of `rows x cols` matrices (the product of the leading dimensions; 1 for rank <= 2).
    pub fn batch(&self) -> usize {
        match self.shape.len() {
            0..=2 => 1,
            r => self.shape[..r - 2].iter().product(),
        }
    }
}

/// The product of a shape's dimensions, `None` when it overflows.
pub fn shape_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// One entry of the device-side table (`struct Segment` in the kernels that read it):
/// first element, length, rows and columns of the matrix view (see [`SegmentShape`]), as
/// u32 (flat buffers hold fewer than 2^32 elements).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DeviceSegment {
    /// First element.
    pub start: u32,
    /// Number of elements.
    pub len: u32,
    /// Rows of the matrix view.
    pub rows: u32,
    /// Columns of the matrix view.
    pub cols: u32,
}

/// Elements of the largest alignment a segment start may be padded to: 64 f32 = 256 bytes,
/// the largest `min_storage_buffer_offset_alignment` WebGPU allows, so a segment starting on
/// it can be bound at its own offset on every device.
pub const BINDING_ALIGN: usize = 64;

/// Padding elements allowed before a segment starting at `start`: fewer than
/// [`BINDING_ALIGN`] before a start on a multiple of it, else fewer than 4 (lane padding).
fn padding_allowed(start: usize) -> usize {
    if start.is_multiple_of(BINDING_ALIGN) {
        BINDING_ALIGN
    } else {
        4
    }
}

/// The segments of a flat vector of `len` elements, checked: in order, not overlapping,
/// inside the vector, each non-empty, and covering it except for alignment padding: fewer
/// than 4 elements after the last segment or before a segment (lane padding, as
/// [`FlatParamsBuilder::lane_aligned`](crate::FlatParamsBuilder::lane_aligned) leaves), and
/// fewer than [`BINDING_ALIGN`] before a segment starting on a multiple of [`BINDING_ALIGN`]
/// (as [`FlatParamsBuilder::binding_aligned`](crate::FlatParamsBuilder::binding_aligned)
/// leaves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentTable {
    len: usize,
    segments: Vec<SegmentShape>,
}

impl SegmentTable {
    /// A checked table: [`Error::SegmentTable`] when the segments do not describe a vector of
    /// `len` elements as above, [`Error::Empty`] for no segments or an empty one.
    pub fn new(len: usize, segments: Vec<SegmentShape>) -> Result<Self> {
        if segments.is_empty() {
            return Err(Error::Empty {
                what: "segment table",
            });
        }
        let bad = |reason: String| Error::SegmentTable { len, reason };
        let mut end = 0usize;
        for (k, s) in segments.iter().enumerate() {
            let n = shape_product(&s.shape)
                .ok_or_else(|| bad(format!("segment {k}: shape {:?} overflows", s.shape)))?;
            if n == 0 {
                return Err(Error::Empty { what: "segment" });
            }
            if s.start < end {
                return Err(bad(format!(
                    "segment {k} starts at {} inside the previous one (which ends at {end})",
                    s.start
                )));
            }
            if s.start - end >= padding_allowed(s.start) {
                return Err(bad(format!(
                    "elements {end}..{} are in no segment",
                    s.start
                )));
            }
            end = s
                .start
                .checked_add(n)
                .ok_or_else(|| bad(format!("segment {k} ends past usize")))?;
            if end > len {
                return Err(bad(format!("segment {k} ends at {end}, past the end")));
            }
        }
        if len - end >= 4 {
            return Err(bad(format!("elements {end}..{len} are in no segment")));
        }
        Ok(Self { len, segments })
    }

    /// Tensors of `shapes` back to back (no padding).
    pub fn contiguous(shapes: &[Vec<usize>]) -> Result<Self> {
        let mut start = 0usize;
        let mut segments = Vec::with_capacity(shapes.len());
        for shape in shapes {
            segments.push(SegmentShape {
                start,
                shape: shape.clone(),
            });
            start = start.saturating_add(shape_product(shape).unwrap_or(usize::MAX));
        }
        Self::new(start, segments)
    }

    /// One 1-D segment over all `len` elements.
    pub fn single(len: usize) -> Result<Self> {
        Self::contiguous(&[vec![len]])
    }

    /// Checks that `shape` has `len` elements ([`Error::ShapeMismatch`] otherwise).
    pub fn check_shape(segment: &str, shape: &[usize], len: usize) -> Result<()> {
        let product = shape_product(shape).unwrap_or(usize::MAX);
        if product != len {
            return Err(Error::ShapeMismatch {
                segment: segment.to_string(),
                shape: shape.to_vec(),
                product,
                len,
            });
        }
        Ok(())
    }

    /// The flat vector's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a table has at least one segment).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[SegmentShape] {
        &self.segments
    }

    /// The shapes, in order.
    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.segments.iter().map(|s| s.shape.clone()).collect()
    }

    /// The table as the device reads it ([`Error::TooManyElements`] past u32).
    pub fn device_entries(&self) -> Result<Vec<DeviceSegment>> {
        let word = |x: usize| {
            u32::try_from(x).map_err(|_| Error::TooManyElements {
                what: "segment table entry",
                len: x as u64,
                limit: u64::from(u32::MAX),
            })
        };
        self.segments
            .iter()
            .map(|s| {
                Ok(DeviceSegment {
                    start: word(s.start)?,
                    len: word(s.len())?,
                    rows: word(s.rows())?,
                    cols: word(s.cols())?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_views() {
        let t = SegmentTable::contiguous(&[vec![15, 11], vec![11], vec![2, 3, 4], vec![]]).unwrap();
        let s = t.segments();
        assert_eq!((s[0].rows(), s[0].cols(), s[0].batch()), (15, 11, 1));
        assert_eq!((s[1].rows(), s[1].cols(), s[1].batch()), (1, 11, 1));
        assert_eq!((s[2].rows(), s[2].cols(), s[2].batch()), (3, 4, 2));
        assert_eq!(
            (s[3].start, s[3].len(), s[3].rows(), s[3].cols()),
            (200, 1, 1, 1)
        );
        assert_eq!(t.len(), 201);
    }
}
