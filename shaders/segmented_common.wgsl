// segmented_common.wgsl: the part every per-tensor kernel shares (src/gpu/segmented.rs
// prepends it to the algorithm's module): the segment table's entry, the workgroup size, and
// the table sizes, and where an element's state is. The module declares `segments: array<Segment>` and
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

// The state shift of chunk entry `e`'s segment (its head's third word): element i of the
// params keeps its state at i - shift (0 when the state covers every segment; an optimizer
// over some of the segments keeps theirs back to back).
fn state_shift(e: vec4<u32>) -> u32 {
    return chunks[e.x].z;
}
