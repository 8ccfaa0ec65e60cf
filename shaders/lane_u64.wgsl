// lane_u64.wgsl: the same lanes moved as two u64 (`shader-int64`), for CPU implementations
// of WebGPU. llvmpipe (lavapipe) executes every storage-buffer access one SIMD lane and one
// scalar component at a time (a bounds-checked scalar load or store each), so its cost is
// per scalar, not per byte: two 64-bit scalars move a lane in half the operations of four
// 32-bit ones (measured: +20% for a copy and for Adam's access pattern). The bytes in
// memory are the same (little-endian: element 0 in the low half of the first u64), and the
// bits pass through unchanged (NaN payloads included).

alias Lane = vec2<u64>;

fn unpack_lane(w: Lane) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(u32(w.x & 0xfffffffflu), u32(w.x >> 32u), u32(w.y & 0xfffffffflu), u32(w.y >> 32u)));
}

fn pack_lane(x: vec4<f32>) -> Lane {
    let u = bitcast<vec4<u32>>(x);
    return vec2<u64>(u64(u.x) | (u64(u.y) << 32u), u64(u.z) | (u64(u.w) << 32u));
}
