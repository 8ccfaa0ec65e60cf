// bf16_round.wgsl: rounding f32 to bf16, for the variants that store bf16 (bf16 params,
// LOW_PRECISION = 2, or bf16 state, BF16_STATE). Only they bind the per-step seed.

struct StepInfo {
    seed: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(11) var<uniform> step_info: StepInfo;

// PCG hash (for stochastic rounding).
fn pcg(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// f32 to the upper 16 bits (bf16): round to nearest even, or stochastically (add 16 random
// bits below the cut, so the probability of rounding up is the discarded fraction). `stream`
// decorrelates the random bits of different tensors.
fn to_bf16(x: vec4<f32>, lane: u32, stream: u32) -> vec4<u32> {
    let bits = bitcast<vec4<u32>>(x);
    var add: vec4<u32>;
    if (STOCHASTIC_ROUNDING) {
        let e = (window.first_lane + lane) * 4u;
        let s = step_info.seed ^ (stream * 0x9e3779b9u);
        add = vec4<u32>(pcg(e ^ s), pcg((e + 1u) ^ s), pcg((e + 2u) ^ s), pcg((e + 3u) ^ s)) & vec4<u32>(0xffffu);
    } else {
        add = vec4<u32>(0x7fffu) + ((bits >> vec4<u32>(16u)) & vec4<u32>(1u));
    }
    return (bits + add) >> vec4<u32>(16u);
}

// 4 f32 to bf16, packed two per u32.
fn pack_bf16(x: vec4<f32>, lane: u32, stream: u32) -> vec2<u32> {
    let h = to_bf16(x, lane, stream);
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}
