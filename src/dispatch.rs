//! Pure launch arithmetic: binding windows and workgroup grids. No GPU needed to test it.
//!
//! A storage binding may not exceed `max_storage_buffer_binding_size` (128 MiB on lavapipe),
//! and a dispatch may not exceed `max_compute_workgroups_per_dimension` (65535) per axis. Large
//! parameter buffers are therefore split into *windows* (each bound at an offset aligned to
//! `min_storage_buffer_offset_alignment`) and each window is launched on a 2-D grid.
//!
//! Host arithmetic is in u64; the kernels index in u32. What keeps every kernel index in u32
//! (`docs/reliability/index.md`):
//! - a window holds at most [`MAX_WINDOW_BYTES`] (2^30 elements, 2^28 lanes), whatever the
//!   device allows, so the window's `n`, `(n + 3) / 4`, `i * 4` and the linearised
//!   `group * WORKGROUP_SIZE * VEC4_PER_INVOCATION + local` (below 2^29, see [`grid`]) fit;
//! - a flat buffer holds at most [`MAX_ELEMENTS`] (2^32 lanes), so `first_lane + i` (the
//!   lane-group table and the 16-bit copies are indexed from the whole buffer's first lane)
//!   fits; longer buffers are refused with [`Error::TooManyElements`] before anything is
//!   allocated ([`check_elements`]), and [`window_header`] refuses to truncate.

use crate::error::{Error, Result};

/// The largest binding window, in bytes, whatever the device's binding limit: 2^32 bytes,
/// 2^30 f32 elements, 2^28 vec4 lanes.
pub const MAX_WINDOW_BYTES: u64 = 1 << 32;

/// The largest flat buffer, in elements: 2^32 vec4 lanes (a lane index is a WGSL u32).
pub const MAX_ELEMENTS: u64 = 1 << 34;

/// Refuse a flat buffer of `n` elements that the kernels cannot index (more than
/// [`MAX_ELEMENTS`]): called before any buffer is allocated.
pub fn check_elements(what: &'static str, n: u64) -> Result<()> {
    if n > MAX_ELEMENTS {
        return Err(Error::TooManyElements {
            what,
            len: n,
            limit: MAX_ELEMENTS,
        });
    }
    Ok(())
}

/// The `Window` uniform of `common.wgsl` for window `w`: `[n, first_lane, 0, 0]`, both u32.
/// Fails (instead of truncating) when the window is longer than a u32 can count with room for
/// `n + 3`, or when its lanes run past lane 2^32 - 1 of the buffer.
pub fn window_header(w: &Window) -> Result<[u32; 4]> {
    let end_lane = (w.start + padded_len(w.len)) / 4;
    let too_many = || Error::TooManyElements {
        what: "binding window",
        len: w.start + w.len,
        limit: MAX_ELEMENTS,
    };
    if !w.start.is_multiple_of(4) || end_lane > 1 << 32 {
        return Err(too_many());
    }
    let n = u32::try_from(w.len)
        .ok()
        .filter(|n| n.checked_add(3).is_some())
        .ok_or_else(too_many)?;
    let first_lane = u32::try_from(w.start / 4).map_err(|_| too_many())?;
    Ok([n, first_lane, 0, 0])
}

/// Bytes of the lane-to-group table of a grouped optimizer over `n` elements (one u32 per
/// vec4 lane, at least 16). The table is bound whole, so it must fit one binding.
pub fn lane_table_bytes(n: u64) -> u64 {
    (padded_len(n) / 4 * 4).max(16)
}

/// One binding window: elements `[start, start + len)` of every flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First element.
    pub start: u64,
    /// Number of logical elements in this window.
    pub len: u64,
}

impl Window {
    /// Byte offset of the window in each buffer.
    pub fn byte_offset(&self) -> u64 {
        self.start * 4
    }
    /// Bytes bound for the window: the length rounded up to whole `vec4<f32>` lanes.
    pub fn bound_bytes(&self) -> u64 {
        padded_len(self.len) * 4
    }
}

/// `n` rounded up to a multiple of 4 (the kernels read and write `vec4<f32>`).
pub fn padded_len(n: u64) -> u64 {
    // Saturating: a length past u64::MAX - 3 is refused by the size checks, not wrapped.
    n.div_ceil(4).saturating_mul(4)
}

/// Split `n` elements into windows of at most `max_binding_bytes` bytes whose starts are
/// aligned to `offset_alignment` bytes and to whole `vec4` lanes. `max_binding_bytes` is
/// capped at [`MAX_WINDOW_BYTES`].
///
/// Returns an empty list for `n == 0`.
pub fn windows(n: u64, max_binding_bytes: u64, offset_alignment: u64) -> Vec<Window> {
    // Each window's element count must keep the next start aligned both to the device's
    // offset alignment and to 16 bytes (one vec4).
    let align = lcm(offset_alignment.max(4), 16);
    let max_elems = (max_binding_bytes.min(MAX_WINDOW_BYTES) / align) * align / 4;
    assert!(
        max_elems > 0,
        "binding limit smaller than one aligned block"
    );
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(max_elems);
        out.push(Window { start, len });
        start += len;
    }
    out
}

/// A 2-D workgroup grid `(x, y)` with `x * y >= groups`, `x, y <= max_per_dim`.
///
/// Kernels linearise the group id as `wg.x + wg.y * num_workgroups.x` and bounds-check the
/// elements, so the surplus `x * y - groups` workgroups do nothing; it is less than one row
/// (`x`). With `groups = ceil(lanes / (WORKGROUP_SIZE * VEC4_PER_INVOCATION))` the largest
/// lane index a kernel computes before its bounds check is below
/// `(x * y) * WORKGROUP_SIZE * VEC4_PER_INVOCATION < lanes + (x + 1) * WORKGROUP_SIZE *
/// VEC4_PER_INVOCATION`, under 2^29 + 2^16 for a window of at most 2^28 lanes.
///
/// # Panics
/// When `groups > max_per_dim^2` (more than 4.29e9 workgroups at 65535: a window of at most
/// 2^28 lanes never asks for that).
pub fn grid(groups: u64, max_per_dim: u32) -> (u32, u32) {
    if groups == 0 {
        return (0, 0);
    }
    let max = u64::from(max_per_dim.max(1));
    if groups <= max {
        return (groups as u32, 1);
    }
    let y = groups.div_ceil(max);
    assert!(
        y <= max,
        "{groups} workgroups do not fit a {max} x {max} grid"
    );
    let x = groups.div_ceil(y);
    (x as u32, y as u32)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_exactly_once_with_aligned_starts() {
        for &(n, max, align) in &[
            (1u64, 128u64 << 20, 32u64),
            (257, 64, 32),
            (100_003, 1 << 16, 256),
            (40_000_001, 128 << 20, 32),
            (40_000_001, (128 << 20) - 4, 256),
        ] {
            let ws = windows(n, max, align);
            let mut next = 0;
            for w in &ws {
                assert_eq!(w.start, next);
                assert_eq!(w.byte_offset() % align, 0, "{n} {max} {align}");
                assert!(w.bound_bytes() <= max);
                assert!(w.len > 0);
                next += w.len;
            }
            assert_eq!(next, n);
        }
        assert!(windows(0, 1024, 32).is_empty());
        // 40M f32 at 128 MiB windows: two windows, the first exactly 32 Mi elements.
        let ws = windows(40_000_000, 128 << 20, 32);
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].len, 32 << 20);
    }

    #[test]
    fn grid_covers_and_respects_limit() {
        for &g in &[1u64, 65_535, 65_536, 131_071, 4_200_000, 4_000_000_000] {
            let (x, y) = grid(g, 65_535);
            assert!(x <= 65_535 && y <= 65_535);
            assert!(u64::from(x) * u64::from(y) >= g);
            // No more than one partial row of surplus.
            assert!(u64::from(x) * u64::from(y) - g < u64::from(x));
        }
        assert_eq!(grid(0, 65_535), (0, 0));
        assert_eq!(grid(10, 65_535), (10, 1));
    }

    #[test]
    fn padded_len_rounds_to_vec4() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 4);
        assert_eq!(padded_len(4), 4);
        assert_eq!(padded_len(257), 260);
    }
}
