//! Pure arithmetic of a step over caller ranges, no device: the optimizer's own flat state
//! layout (fixed at construction), the checks of where the tensors are this step, and the
//! step's plan: which tensors each dispatch binds (a *unit*: one window of a params buffer,
//! one of a gradients buffer, one of each state buffer), and the tensor table the kernels
//! read (`shaders/tensors.wgsl`).

use crate::error::{Error, Result};

/// Launch geometry and device limits the plan must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Byte alignment of every bound offset: the device's
    /// `min_storage_buffer_offset_alignment`, at least 16 (one vec4 lane). A power of two.
    pub align: u64,
    /// Largest bound window, in bytes (the device's storage binding limit).
    pub max_binding: u64,
    /// Lanes (4 elements) one workgroup updates: `WORKGROUP_SIZE * VEC4_PER_INVOCATION`.
    pub block_lanes: u64,
}

impl Geometry {
    /// Elements of the largest piece a tensor is cut into (a multiple of `align / 4`, so
    /// every piece starts on an aligned offset).
    pub fn piece_elements(&self) -> u64 {
        let by_binding = self.max_binding / self.align * self.align / 4;
        // A piece's lanes stay far below 2^32 (u32 lane indices in the kernels).
        by_binding.min(1 << 28).max(self.align / 4)
    }
}

/// Where one tensor's params or gradients are this step: a buffer (an index into the step's
/// distinct buffers) and a byte offset. The length is the tensor's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Index of the buffer among the step's distinct buffers.
    pub buffer: usize,
    /// Byte offset of the tensor's first element.
    pub byte_offset: u64,
    /// Size of the buffer in bytes.
    pub buffer_size: u64,
}

/// The optimizer's state layout: tensor `k`'s state starts at element `starts[k]` of every
/// state buffer, each start aligned so that it can be bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// First element of each tensor's state.
    pub starts: Vec<u64>,
    /// Each tensor's element count.
    pub lens: Vec<u64>,
    /// Elements of every state buffer (a multiple of 4).
    pub total: u64,
}

impl StateLayout {
    /// Tensors of `lens` elements one after the other, each starting on `geometry.align`.
    pub fn new(lens: &[u64], geometry: &Geometry) -> Self {
        let step = geometry.align / 4;
        let mut starts = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for &len in lens {
            let start = end.next_multiple_of(step);
            starts.push(start);
            end = start + len;
        }
        Self {
            starts,
            lens: lens.to_vec(),
            total: end.next_multiple_of(4).max(4),
        }
    }
}

/// One dispatch of a step: the bound windows (byte offset, byte size) and its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    /// The params' buffer (index among the step's distinct buffers).
    pub param_buffer: usize,
    /// The gradients' buffer; equal to `param_buffer` when they share it (then
    /// `grad_window == param_window`: one read-write binding).
    pub grad_buffer: usize,
    /// The params' window.
    pub param_window: (u64, u64),
    /// The gradients' window.
    pub grad_window: (u64, u64),
    /// The window of every state buffer.
    pub state_window: (u64, u64),
    /// First block of the table (workgroup 0 of the dispatch).
    pub first_block: u32,
    /// Blocks (workgroups) of the dispatch.
    pub blocks: u32,
    /// Where the dispatch's entries start in the table, in u32 words.
    pub table_base: u32,
    /// `Some((elements, parameter group))` when the dispatch is one whole tensor (or one
    /// piece of it) whose element count is a multiple of 4, in its own windows of a params
    /// buffer and a separate gradients buffer: every window then starts at the tensor's
    /// element 0 and ends at its last element, so the flat kernel runs on it unchanged
    /// (lane `i` of every binding is lane `i` of the tensor) with no table reads. Else
    /// `None`: the kernel over the table (`shaders/tensors.wgsl`).
    pub direct: Option<(u32, u32)>,
}

impl Unit {
    /// Whether the gradients are read through the params' binding.
    pub fn grad_in_param(&self) -> bool {
        self.param_buffer == self.grad_buffer
    }
}

/// A step's plan: its dispatches and the table (block -> entry, then 8 words per entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The dispatches, in order.
    pub units: Vec<Unit>,
    /// The tensor table.
    pub table: Vec<u32>,
    /// Blocks of all dispatches (the norm pass's partial sums).
    pub blocks: u32,
}

fn range_error(name: &str, reason: String) -> Error {
    Error::TensorRange {
        tensor: name.to_string(),
        reason,
    }
}

fn end16(byte_offset: u64, len: u64) -> u64 {
    (byte_offset + len * 4).next_multiple_of(16)
}

/// Check where the tensors are: offsets aligned, every tensor's last vec4 lane inside its
/// buffer, no params overlapping another tensor's params or any gradients (gradients may
/// overlap each other: they are only read).
pub fn check(
    names: &[String],
    lens: &[u64],
    params: &[Place],
    grads: &[Place],
    geometry: &Geometry,
) -> Result<()> {
    for (what, places) in [("params", params), ("gradients", grads)] {
        if places.len() != lens.len() {
            return Err(Error::LengthMismatch {
                what: if what == "params" {
                    "parameter ranges (one per tensor)"
                } else {
                    "gradient ranges (one per tensor)"
                },
                expected: lens.len(),
                got: places.len(),
            });
        }
        for (k, p) in places.iter().enumerate() {
            if !p.byte_offset.is_multiple_of(geometry.align) {
                return Err(range_error(
                    &names[k],
                    format!(
                        "its {what} start at byte {} of their buffer, not a multiple of {} \
                         (4 bytes per element, and the device's \
                         min_storage_buffer_offset_alignment, at least one 16-byte lane)",
                        p.byte_offset, geometry.align
                    ),
                ));
            }
            let end = end16(p.byte_offset, lens[k]);
            if end > p.buffer_size {
                return Err(range_error(
                    &names[k],
                    format!(
                        "its {what} (bytes {}..{}, read and written as whole 16-byte lanes up \
                         to byte {end}) run past the end of their {}-byte buffer",
                        p.byte_offset,
                        p.byte_offset + lens[k] * 4,
                        p.buffer_size
                    ),
                ));
            }
        }
    }
    // Overlaps: (buffer, start, end, is_param, tensor), swept in order.
    let mut spans: Vec<(usize, u64, u64, bool, usize)> = Vec::with_capacity(2 * lens.len());
    for (k, len) in lens.iter().enumerate() {
        let (p, g) = (params[k], grads[k]);
        spans.push((p.buffer, p.byte_offset, p.byte_offset + len * 4, true, k));
        spans.push((g.buffer, g.byte_offset, g.byte_offset + len * 4, false, k));
    }
    spans.sort_unstable();
    // Per buffer: the span reaching furthest so far, among all and among params.
    let mut any: Option<(usize, u64, bool, usize)> = None;
    let mut param: Option<(usize, u64, usize)> = None;
    for &(buffer, start, end, is_param, k) in &spans {
        if let Some((b, e, other_is_param, j)) = any {
            if b == buffer && start < e && (is_param || other_is_param) {
                let what = |p: bool| if p { "params" } else { "gradients" };
                let reason = if j == k {
                    "its params and its gradients overlap".to_string()
                } else {
                    format!(
                        "its {} overlap the {} of tensor `{}` (params are written: they may \
                         share no byte with another tensor's params or any gradients)",
                        what(is_param),
                        what(other_is_param),
                        names[j]
                    )
                };
                return Err(range_error(&names[k], reason));
            }
        }
        if let Some((b, e, j)) = param {
            if b == buffer && start < e && !is_param {
                return Err(range_error(
                    &names[k],
                    format!(
                        "its gradients overlap the params of tensor `{}` (params are written)",
                        names[j]
                    ),
                ));
            }
        }
        if any.is_none_or(|(b, e, _, _)| b != buffer || end > e) {
            any = Some((buffer, end, is_param, k));
        }
        if is_param && param.is_none_or(|(b, e, _)| b != buffer || end > e) {
            param = Some((buffer, end, k));
        }
    }
    Ok(())
}

/// One piece of a tensor (tensors longer than a binding are cut into pieces).
#[derive(Clone, Copy, Debug)]
struct Piece {
    param: Place,
    grad: Place,
    state_byte: u64,
    len: u64,
    group: u32,
}

/// Elements from which a whole tensor (or piece) with a multiple of 4 elements, its params
/// and gradients in different buffers, gets a dispatch of its own running the flat kernel
/// ([`Unit::direct`]) even when its buffers hold other tensors. Smaller ones share the
/// table's dispatches: a dispatch's fixed cost would outweigh their table reads (1000
/// tensors of ~1000 elements each in its own dispatch would be 1000 dispatches).
pub const DIRECT_MIN_ELEMENTS: u64 = 1 << 16;

/// The plan of a step whose tensors are at `params` / `grads` (checked by [`check`]), with
/// state `layout` and each tensor's parameter group `groups`.
pub fn plan(
    layout: &StateLayout,
    groups: &[u32],
    params: &[Place],
    grads: &[Place],
    geometry: &Geometry,
) -> Plan {
    let piece_len = geometry.piece_elements();
    let mut pieces = Vec::with_capacity(layout.lens.len());
    for (k, &len) in layout.lens.iter().enumerate() {
        let mut e0 = 0;
        while e0 < len {
            let n = piece_len.min(len - e0);
            let at = |p: Place| Place {
                byte_offset: p.byte_offset + e0 * 4,
                ..p
            };
            pieces.push(Piece {
                param: at(params[k]),
                grad: at(grads[k]),
                state_byte: (layout.starts[k] + e0) * 4,
                len: n,
                group: groups[k],
            });
            e0 += n;
        }
    }
    // Dispatches bind one params buffer and one gradients buffer: group by that pair, in
    // the params' order.
    pieces.sort_by_key(|p| (p.param.buffer, p.grad.buffer, p.param.byte_offset));
    // Large whole pieces run the flat kernel in a dispatch of their own even when their
    // buffers hold other tensors (a pooling allocator's pages); the rest share dispatches.
    let (alone, pieces): (Vec<Piece>, Vec<Piece>) = pieces.into_iter().partition(|p| {
        p.param.buffer != p.grad.buffer && p.len % 4 == 0 && p.len >= DIRECT_MIN_ELEMENTS
    });

    let mut units_pieces: Vec<Vec<Piece>> = Vec::new();
    let mut span = Spans::default();
    for piece in pieces {
        let same_pair = units_pieces.last().is_some_and(|u| {
            u[0].param.buffer == piece.param.buffer && u[0].grad.buffer == piece.grad.buffer
        });
        let grown = span.with(&piece);
        let shared = piece.param.buffer == piece.grad.buffer;
        if same_pair && grown.fits(geometry.max_binding, shared) {
            span = grown;
            units_pieces.last_mut().expect("a unit").push(piece);
        } else {
            span = Spans::default().with(&piece);
            units_pieces.push(vec![piece]);
        }
    }

    units_pieces.extend(alone.into_iter().map(|p| vec![p]));

    let blocks_of = |len: u64| len.div_ceil(4).div_ceil(geometry.block_lanes);
    let total_blocks: u64 = units_pieces
        .iter()
        .flatten()
        .map(|p| blocks_of(p.len))
        .sum();
    let mut table: Vec<u32> = Vec::with_capacity(total_blocks as usize);
    let mut entries: Vec<u32> = Vec::new();
    let mut units = Vec::with_capacity(units_pieces.len());
    let mut block = 0u64;
    for pieces in &units_pieces {
        let s = pieces.iter().fold(Spans::default(), |s, p| s.with(p));
        let shared = pieces[0].param.buffer == pieces[0].grad.buffer;
        let param_window = if shared { s.union() } else { s.param };
        let grad_window = if shared { param_window } else { s.grad };
        let first_block = block;
        let table_base = entries.len() as u64;
        for (e, p) in pieces.iter().enumerate() {
            let lane = |byte: u64, window: (u64, u64)| ((byte - window.0) / 16) as u32;
            entries.extend_from_slice(&[
                lane(p.param.byte_offset, param_window),
                lane(p.grad.byte_offset, grad_window),
                lane(p.state_byte, s.state),
                p.len as u32,
                block as u32,
                p.group,
                0,
                0,
            ]);
            for _ in 0..blocks_of(p.len) {
                table.push(e as u32);
            }
            block += blocks_of(p.len);
        }
        let direct = (pieces.len() == 1 && !shared && pieces[0].len % 4 == 0)
            .then(|| (pieces[0].len as u32, pieces[0].group));
        units.push(Unit {
            param_buffer: pieces[0].param.buffer,
            grad_buffer: pieces[0].grad.buffer,
            param_window: (param_window.0, param_window.1 - param_window.0),
            grad_window: (grad_window.0, grad_window.1 - grad_window.0),
            state_window: (s.state.0, s.state.1 - s.state.0),
            first_block: first_block as u32,
            blocks: (block - first_block) as u32,
            // Entries follow the block map.
            table_base: (total_blocks + table_base) as u32,
            direct,
        });
    }
    table.extend_from_slice(&entries);
    Plan {
        units,
        table,
        blocks: total_blocks as u32,
    }
}

/// The byte spans [start, end) of a unit's params, gradients and state.
#[derive(Clone, Copy, Debug)]
struct Spans {
    param: (u64, u64),
    grad: (u64, u64),
    state: (u64, u64),
}

impl Default for Spans {
    fn default() -> Self {
        Self {
            param: (u64::MAX, 0),
            grad: (u64::MAX, 0),
            state: (u64::MAX, 0),
        }
    }
}

impl Spans {
    fn with(self, p: &Piece) -> Self {
        let grow = |(s, e): (u64, u64), start: u64| (s.min(start), e.max(end16(start, p.len)));
        Self {
            param: grow(self.param, p.param.byte_offset),
            grad: grow(self.grad, p.grad.byte_offset),
            state: grow(self.state, p.state_byte),
        }
    }

    fn union(&self) -> (u64, u64) {
        (self.param.0.min(self.grad.0), self.param.1.max(self.grad.1))
    }

    /// Whether every window fits one binding (`shared`: params and gradients in one).
    fn fits(&self, max: u64, shared: bool) -> bool {
        let len = |(s, e): (u64, u64)| e - s;
        len(self.param) <= max
            && len(self.grad) <= max
            && len(self.state) <= max
            && (!shared || len(self.union()) <= max)
    }
}
