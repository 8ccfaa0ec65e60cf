//! Indexing past 2^31 and 2^32 elements, without allocating: binding windows, workgroup
//! grids, the u32 fields the kernels read (`Window.n`, `Window.first_lane`), segment offsets
//! and the fast CPU path's chunks. Findings and fixes: `docs/reliability/index.md`.

mod common;

use fused_optim::cpu::fast::{chunk_count, chunk_range, CHUNK};
use fused_optim::dispatch::{
    check_elements, grid, lane_table_bytes, padded_len, window_header, windows, Window,
    MAX_ELEMENTS, MAX_WINDOW_BYTES,
};
use fused_optim::gpu::buffer::segment_offsets;
use fused_optim::{Error, FlatParams};

const CAP: u64 = 128 << 20;
const P31: u64 = 1 << 31;
const P32: u64 = 1 << 32;
const MAX_PER_DIM: u32 = 65_535;

/// The lengths every test walks: around 2^31 and 2^32, 2.36e9, 5e9, and the largest allowed.
fn lengths() -> Vec<u64> {
    let mut v = Vec::new();
    for base in [P31, P32] {
        for d in [-5i64, -4, -3, -1, 0, 1, 3, 4, 5] {
            v.push((base as i64 + d) as u64);
        }
    }
    v.extend([2_360_000_000, 5_000_000_000, MAX_ELEMENTS - 1, MAX_ELEMENTS]);
    v
}

/// Launch shapes (WORKGROUP_SIZE, VEC4_PER_INVOCATION): the default, and the extremes
/// `check_launch` allows (workgroup 1..=1024 on common devices, 1..=64 lanes per invocation).
const TUNINGS: [(u64, u64); 5] = [(64, 1), (256, 4), (1, 1), (1024, 64), (64, 8)];

/// Windows cover [0, n) exactly once, each within the cap, aligned; lanes and offsets exact.
fn check_windows(n: u64, cap: u64, align: u64) -> Vec<Window> {
    let ws = windows(n, cap, align);
    // Power-of-two alignments: windows are multiples of max(align, 16) bytes.
    let a = align.max(16);
    let max_elems = cap.min(MAX_WINDOW_BYTES) / a * a / 4;
    assert_eq!(ws.len() as u64, n.div_ceil(max_elems), "{n} {cap} {align}");
    let mut next = 0u64;
    let mut lanes = 0u64;
    for (k, w) in ws.iter().enumerate() {
        assert_eq!(w.start, next, "{n}: window {k} starts at {}", w.start);
        assert!(w.len > 0);
        assert_eq!(w.byte_offset(), w.start * 4);
        assert_eq!(w.byte_offset() % align, 0, "{n} {align}: window {k}");
        assert_eq!(w.byte_offset() % 16, 0);
        assert!(
            w.bound_bytes() <= cap.min(MAX_WINDOW_BYTES),
            "{n}: window {k}"
        );
        if k + 1 < ws.len() {
            // Full windows: whole lanes, exactly the largest aligned count.
            assert_eq!(w.len, max_elems);
            assert_eq!(w.len % 4, 0);
        }
        // The u32 header the kernel reads: exact.
        let [wn, first_lane, _, _] = window_header(w).unwrap();
        assert_eq!(u64::from(wn), w.len);
        assert_eq!(u64::from(first_lane) * 4, w.start);
        assert!(u64::from(wn) + 3 <= u64::from(u32::MAX));
        assert!(u64::from(first_lane) + padded_len(w.len) / 4 <= P32);
        lanes += padded_len(w.len) / 4;
        next += w.len;
    }
    assert_eq!(next, n);
    assert_eq!(lanes, padded_len(n) / 4);
    ws
}

#[test]
fn index_windows_cover_past_2_31_and_2_32() {
    for n in lengths() {
        for align in [32, 256] {
            let ws = check_windows(n, CAP, align);
            // 128 MiB windows: 2^25 elements each.
            assert_eq!(ws[0].len, 1 << 25);
            // A cap that is not a multiple of the alignment.
            check_windows(n, CAP - 4, align);
        }
    }
    // 5e9 at 128 MiB: 150 windows, the last one partial (389,632 elements).
    let ws = windows(5_000_000_000, CAP, 256);
    assert_eq!(ws.len(), 150);
    assert_eq!(ws[149].start, 149 << 25);
    assert_eq!(ws[149].len, 389_632);
}

/// A device reporting a binding limit past 4 GiB still gets windows of at most 2^30 elements,
/// so `Window.n` (u32) and `(n + 3) / 4` cannot overflow.
#[test]
fn index_windows_capped_at_4_gib_whatever_the_device() {
    for n in [5_000_000_000u64, MAX_ELEMENTS] {
        for cap in [P32, P32 + 256, 1 << 40, u64::MAX / 4] {
            let ws = check_windows(n, cap, 256);
            assert_eq!(ws[0].len, 1 << 30, "{n} {cap}");
        }
    }
}

#[test]
fn index_window_header_refuses_instead_of_truncating() {
    let bad = |w: Window| {
        assert!(
            matches!(window_header(&w), Err(Error::TooManyElements { .. })),
            "{w:?}"
        );
    };
    // n past u32, or too close to it for `n + 3`.
    bad(Window { start: 0, len: P32 });
    bad(Window {
        start: 0,
        len: P32 - 3,
    });
    // First lane 2^32: what `(start / 4) as u32` silently turned into 0.
    bad(Window {
        start: MAX_ELEMENTS,
        len: 4,
    });
    assert_eq!((MAX_ELEMENTS / 4) as u32, 0);
    // Lanes running past lane 2^32 - 1.
    bad(Window {
        start: MAX_ELEMENTS - 4,
        len: 5,
    });
    // Unaligned start (not a window `windows` makes).
    bad(Window { start: 2, len: 4 });
    // The last lane of the largest buffer is fine.
    assert_eq!(
        window_header(&Window {
            start: MAX_ELEMENTS - 4,
            len: 4
        })
        .unwrap(),
        [4, u32::MAX, 0, 0]
    );
    assert_eq!(
        window_header(&Window {
            start: 5 << 30,
            len: 1 << 30
        })
        .unwrap(),
        [1 << 30, 5 << 28, 0, 0]
    );
}

/// The largest lane index the kernel computes (in u32) before its bounds check, for a launch
/// of `(x, y)` workgroups: `group * WG * V + local + (V - 1) * WG`.
fn max_kernel_index(x: u32, y: u32, wg: u64, v: u64) -> u64 {
    let last_group = u64::from(x) * u64::from(y) - 1;
    last_group * wg * v + (wg - 1) + (v - 1) * wg
}

fn check_grid(lanes: u64, wg: u64, v: u64) -> (u32, u32) {
    let groups = lanes.div_ceil(wg * v);
    let (x, y) = grid(groups, MAX_PER_DIM);
    assert!(x <= MAX_PER_DIM && y <= MAX_PER_DIM, "{lanes} {wg} {v}");
    let covered = u64::from(x) * u64::from(y);
    assert!(covered >= groups);
    assert!(covered * wg * v >= lanes);
    // Not wasteful: less than one row of surplus workgroups.
    assert!(
        covered - groups < u64::from(x),
        "{lanes} {wg} {v}: {x} x {y}"
    );
    (x, y)
}

#[test]
fn index_grid_past_2_31_lanes() {
    let most = u64::from(MAX_PER_DIM) * u64::from(MAX_PER_DIM);
    let mut refused = 0;
    for lanes in [
        P31 - 1,
        P31,
        P31 + 1,
        P32 - 1,
        P32,
        5_000_000_000 / 4,
        2_360_000_000 / 4,
    ] {
        for (wg, v) in TUNINGS {
            let groups = lanes.div_ceil(wg * v);
            if groups <= most {
                check_grid(lanes, wg, v);
            } else {
                // More than 65535^2 workgroups (2^32 - 1 or 2^32 lanes, one per workgroup):
                // `grid` refuses; it used to return y >= 65537, past the limit. A window (at
                // most 2^28 lanes) never asks for that (next test).
                assert!(std::panic::catch_unwind(|| grid(groups, MAX_PER_DIM)).is_err());
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 2);
    // The largest grid that fits: exactly 65535 x 65535.
    assert_eq!(grid(most, MAX_PER_DIM), (MAX_PER_DIM, MAX_PER_DIM));
}

/// Per window (what is launched), the kernel's u32 index arithmetic cannot overflow, for
/// every launch shape, at the 128 MiB cap and at the 4 GiB window maximum.
#[test]
fn index_kernel_u32_arithmetic_per_window() {
    for cap in [CAP, MAX_WINDOW_BYTES] {
        for n in [5_000_000_000u64, MAX_ELEMENTS] {
            let ws = windows(n, cap, 256);
            // The windows differ only in the last one's length.
            for w in [ws[0], ws[ws.len() - 1]] {
                let lanes = padded_len(w.len) / 4;
                for (wg, v) in TUNINGS {
                    let (x, y) = check_grid(lanes, wg, v);
                    let max_i = max_kernel_index(x, y, wg, v);
                    // `grid`'s bound: less than one row of surplus.
                    assert!(max_i < lanes + (u64::from(x) + 1) * wg * v);
                    assert!(max_i < (1 << 29) + (1 << 16), "{cap} {n} {wg} {v}: {max_i}");
                    // live_lanes: i * 4 + 3 for in-bounds i.
                    assert!((lanes - 1) * 4 + 3 < P32);
                    // groups.wgsl / store_low_param: first_lane + i.
                    assert!(w.start / 4 + lanes <= P32);
                }
            }
        }
    }
}

#[test]
fn index_flat_buffers_past_the_lane_limit_are_refused_before_allocation() {
    for n in lengths() {
        check_elements("params", n).unwrap();
    }
    for n in [MAX_ELEMENTS + 1, MAX_ELEMENTS + 4, u64::MAX] {
        assert!(matches!(
            check_elements("params", n),
            Err(Error::TooManyElements { len, limit: MAX_ELEMENTS, .. }) if len == n
        ));
    }
    // Through the public constructor: refused before any buffer is created (a 64 GiB
    // allocation would otherwise be attempted or refused by size only).
    let Some(ctx) = common::gpu() else { return };
    let e = FlatParams::zeros(&ctx, MAX_ELEMENTS as usize + 1).unwrap_err();
    assert!(matches!(e, Error::TooManyElements { .. }), "{e}");
    eprintln!(
        "device: max_buffer_size {} max_storage_buffer_binding_size {}",
        ctx.device().limits().max_buffer_size,
        ctx.device().limits().max_storage_buffer_binding_size
    );
}

/// The lane-group table is bound whole: past 2^27 elements (128 MiB of u32 per lane) a
/// grouped optimizer is refused with a typed error instead of a validation error.
#[test]
fn index_lane_table_bytes() {
    assert_eq!(lane_table_bytes(1), 16);
    assert_eq!(lane_table_bytes(1031), 1032);
    assert_eq!(lane_table_bytes(CAP), CAP); // 2^27 elements: 2^25 lanes, exactly 128 MiB
    assert!(lane_table_bytes(CAP + 1) > CAP);
    assert_eq!(lane_table_bytes(P32 + 1), P32 + 4);
    assert_eq!(lane_table_bytes(5_000_000_000), 5_000_000_000);
}

#[cfg(target_pointer_width = "64")]
#[test]
fn index_segment_offsets_past_2_32() {
    let p32 = P32 as usize;
    let lens = [p32 - 1, 3, (P31 as usize) + 1, 5, p32];
    let (offsets, total) = segment_offsets(&lens, false).unwrap();
    assert_eq!(
        offsets,
        [
            0,
            p32 - 1,
            p32 + 2,
            p32 + P31 as usize + 3,
            p32 + P31 as usize + 8
        ]
    );
    assert_eq!(total, 2 * p32 + P31 as usize + 8);
    let (offsets, total) = segment_offsets(&lens, true).unwrap();
    assert_eq!(
        offsets,
        [
            0,
            p32,
            p32 + 4,
            p32 + P31 as usize + 8,
            p32 + P31 as usize + 16
        ]
    );
    assert_eq!(total, 2 * p32 + P31 as usize + 16);
    assert!(offsets.iter().all(|o| o % 4 == 0));
    // Byte offsets (write_segment_grads: `offset as u64 * 4`) stay exact.
    assert_eq!(offsets[4] as u64 * 4, (P32 + P31 + 16) * 4);
    // Overflow is reported, not wrapped.
    assert_eq!(segment_offsets(&[usize::MAX, 1], false), None);
    assert_eq!(segment_offsets(&[usize::MAX - 2, 1], true), None);
}

/// `segment_offsets` is the builder's arithmetic (checked on a small set).
#[test]
fn index_segment_offsets_match_the_builder() {
    let Some(ctx) = common::gpu() else { return };
    let lens = [5usize, 3, 8, 1, 7];
    for aligned in [false, true] {
        let mut b = FlatParams::builder();
        if aligned {
            b = b.lane_aligned();
        }
        for (k, &len) in lens.iter().enumerate() {
            b = b.slice(&format!("s{k}"), &vec![1.0; len]);
        }
        let flat = b.build(&ctx).unwrap();
        let (offsets, total) = segment_offsets(&lens, aligned).unwrap();
        let got: Vec<usize> = flat.segments().iter().map(|s| s.offset).collect();
        assert_eq!(got, offsets, "lane_aligned {aligned}");
        assert_eq!(flat.len(), total);
    }
}

#[cfg(target_pointer_width = "64")]
#[test]
fn index_cpu_chunks_past_2_32() {
    for n in [P31 + 1, P32 - 1, P32, P32 + 1, 5_000_000_000, P32 * 2 + 7] {
        let len = n as usize;
        let count = chunk_count(len);
        assert_eq!(count as u64, n.div_ceil(CHUNK as u64));
        let mut next = 0usize;
        for i in 0..count {
            let r = chunk_range(len, i);
            assert_eq!(r.start, next);
            assert!(!r.is_empty() && r.len() <= CHUNK);
            if i + 1 < count {
                assert_eq!(r.len(), CHUNK);
            }
            next = r.end;
        }
        assert_eq!(next, len);
    }
}
