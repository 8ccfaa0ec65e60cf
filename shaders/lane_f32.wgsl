// lane_f32.wgsl: how the kernels move their f32 data, the default. A lane (4 consecutive f32
// of a flat buffer) is one vec4<f32>: one 16-byte access on a GPU.

alias Lane = vec4<f32>;

fn unpack_lane(w: Lane) -> vec4<f32> {
    return w;
}

fn pack_lane(x: vec4<f32>) -> Lane {
    return x;
}
