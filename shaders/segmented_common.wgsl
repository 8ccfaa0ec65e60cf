// segmented_common.wgsl: the part every per-tensor kernel shares (src/gpu/segmented.rs
// prepends it to the algorithm's module): the segment table's entry, the workgroup size, and
// the table sizes. The module declares `segments: array<Segment>` and
// `chunks: array<vec4<u32>>` (per segment a head, then per chunk an entry) at its bindings.

struct Segment {
    start: u32,
    len: u32,
    rows: u32,
    cols: u32,
}

const WG: u32 = 256u;

fn segment_count() -> u32 {
    return arrayLength(&segments);
}

fn chunk_count() -> u32 {
    return arrayLength(&chunks) - segment_count();
}
