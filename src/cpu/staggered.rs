//! Host vectors laid out for streaming: staggered start addresses, huge pages.
//!
//! Two measured effects on a 2-thread update loop over 4-7 vectors of 16M `f32`:
//!
//! - **Start addresses.** Large allocations come straight from `mmap`, so every vector starts
//!   at the same offset within a page. The concurrent accesses of a streaming loop then map to
//!   the same cache sets and DRAM banks: a 2-thread Adam step over 16M elements ran 2.5-3x
//!   slower than with each vector offset by 4160 bytes (one page plus one cache line).
//! - **Page size.** With 4 KiB pages every vector crosses a page, and needs a TLB entry, every
//!   1024 elements; Adam's 7 streams at 2^24 span 115,000 pages. Linux backs memory with 2 MiB
//!   pages on request (`madvise(MADV_HUGEPAGE)`, honoured when transparent huge pages are in
//!   `madvise` or `always` mode, the usual default). Measured here: Adam's `cpu_fast` step at
//!   2^24 went from 1.5 to 1.9 G params/s (BENCHMARKS.md).
//!
//! [`StaggeredVec`] applies both. Its contents and API are those of a `[f32]`; the layout only
//! changes speed.

use std::ops::{Deref, DerefMut};

/// Bytes between the starts of consecutive slots: one 4 KiB page plus one 64-byte line.
pub const STAGGER_BYTES: usize = 4096 + 64;

/// Distinct slots; larger slot numbers wrap around (so no slot can overflow the offset).
pub const SLOTS: usize = 16;

/// Size of a huge page on x86_64 and aarch64 Linux.
#[cfg(target_os = "linux")]
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Allocations of at least this many bytes ask for huge pages (smaller ones would waste most
/// of a 2 MiB page).
pub const HUGE_PAGE_THRESHOLD_BYTES: usize = 4 << 20;

/// A `Vec<f32>` whose data starts `slot * STAGGER_BYTES` bytes into its allocation, and whose
/// memory is advised for huge pages (Linux) when it holds at least
/// [`HUGE_PAGE_THRESHOLD_BYTES`]. Dereferences to `[f32]`.
///
/// ```
/// use fused_optim::cpu::staggered::StaggeredVec;
/// let mut params = StaggeredVec::from_slice(&[1.0, 2.0, 3.0], 0);
/// params[1] = 5.0;
/// assert_eq!(&params[..], &[1.0, 5.0, 3.0]);
/// ```
#[derive(Debug)]
pub struct StaggeredVec {
    buf: Vec<f32>,
    start: usize,
}

impl StaggeredVec {
    /// `len` copies of `value`, offset by `slot % SLOTS` staggers. Panics (or aborts) if the
    /// memory cannot be allocated, like `vec!`; [`Self::try_filled`] returns an error instead.
    pub fn filled(len: usize, value: f32, slot: usize) -> Self {
        match Self::try_filled(len, value, slot) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Self::filled`], or [`Error::OutOfMemory`](crate::Error::OutOfMemory) when the
    /// allocation is refused (a size past `isize::MAX` bytes, or the allocator failing).
    pub fn try_filled(len: usize, value: f32, slot: usize) -> crate::Result<Self> {
        let start = (slot % SLOTS) * STAGGER_BYTES / 4;
        let oom = |why: String| crate::Error::OutOfMemory {
            during: "host vector allocation (StaggeredVec)",
            message: format!("{len} f32 ({why})"),
        };
        let total = start
            .checked_add(len)
            .ok_or_else(|| oom("the element count overflows usize".into()))?;
        // Reserve first and advise before the first write, so that the kernel can back the
        // pages with huge pages when they are first touched (by `resize`).
        let mut buf = Vec::new();
        buf.try_reserve_exact(total)
            .map_err(|e| oom(e.to_string()))?;
        if total * 4 >= HUGE_PAGE_THRESHOLD_BYTES {
            advise_huge_pages(buf.as_mut_ptr() as usize, total * 4);
        }
        buf.resize(total, value);
        Ok(Self { buf, start })
    }

    /// A copy of `values`, offset by `slot` staggers.
    pub fn from_slice(values: &[f32], slot: usize) -> Self {
        let mut v = Self::filled(values.len(), 0.0, slot);
        v.copy_from_slice(values);
        v
    }

    /// The slot this vector was laid out for (`slot % SLOTS` of the one it was made with).
    pub fn slot(&self) -> usize {
        self.start * 4 / STAGGER_BYTES
    }
}

impl Clone for StaggeredVec {
    /// A copy with the same layout (stagger and huge pages), which `Vec::clone` would lose.
    fn clone(&self) -> Self {
        Self::from_slice(self, self.slot())
    }
}

impl Deref for StaggeredVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..]
    }
}

impl DerefMut for StaggeredVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..]
    }
}

/// Ask Linux to back the whole 2 MiB pages inside `[addr, addr + bytes)` with huge pages.
/// Advice only: a refusal (THP off, another OS) changes nothing but speed.
#[cfg(target_os = "linux")]
fn advise_huge_pages(addr: usize, bytes: usize) {
    let first = addr.next_multiple_of(HUGE_PAGE_BYTES);
    let end = (addr + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if end > first {
        // SAFETY: the range lies inside an allocation this vector owns (reserved, not yet
        // initialised); MADV_HUGEPAGE changes how it is backed, never its contents or
        // validity, and a failure is harmless.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_addr: usize, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_does_not_change_contents() {
        // Large enough to take the huge-page path, odd length.
        let n = (HUGE_PAGE_THRESHOLD_BYTES / 4) * 3 + 17;
        let values: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
        for slot in [0, 1, 3] {
            let v = StaggeredVec::from_slice(&values, slot);
            assert_eq!(v.len(), n);
            assert!(v[..] == values[..]);
            assert_eq!(v.slot(), slot);
            assert_eq!(
                v.as_ptr() as usize - v.buf.as_ptr() as usize,
                slot * STAGGER_BYTES
            );
            let c = v.clone();
            assert!(c[..] == values[..]);
            assert_eq!(c.slot(), slot);
        }
        let small = StaggeredVec::filled(5, 2.5, 2);
        assert_eq!(&small[..], &[2.5; 5]);
        let wrapped = StaggeredVec::filled(3, 1.0, usize::MAX);
        assert_eq!(wrapped.slot(), usize::MAX % SLOTS);
        assert_eq!(&wrapped[..], &[1.0; 3]);
    }
}
