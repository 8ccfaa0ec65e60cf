// roof8.wgsl: the roofline kernel of the 8-bit state (StateFormat::Blockwise8). ALGO != 0:
// the one-state pattern (one code word, the absmax pair still read and written). The bindings,
// launch geometry (one workgroup of 64 invocations per block of 256 elements, 4 scalar
// elements per invocation), block table and buffers of blockwise8.wgsl, with trivial
// arithmetic: it reads p, g, both code words, the absmax pair and the block entry, and writes
// p, both code words and the absmax pair, as the 8-bit step does. No reduction, no table
// look-up, no exact-rounding emulation: its time is the memory-traffic cost of that access
// pattern on this device. The host side is src/gpu/blockwise8.rs (same bind group layout).

struct Q8Uniform {
    scale: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: vec4<f32>,
    _pad4: vec4<f32>,
    _pad5: vec4<f32>,
}

const MAX_GROUPS: u32 = 8u;
override GRAD_PIPELINE: bool = false;
// 2: Adam's two code bytes per element; 1: one (Lion, SGD with momentum; the kernel's ALGO).
override ALGO: u32 = 0u;

@group(0) @binding(0) var<uniform> hps: array<Q8Uniform, MAX_GROUPS>;
@group(0) @binding(1) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> absmax: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> full: array<f32>;
@group(0) @binding(7) var<storage, read> control: GradControl;
@group(0) @binding(8) var<storage, read> tables: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let b = wid.x + wid.y * nwg.x;
    if (b >= arrayLength(&blocks)) {
        return;
    }
    let blk = blocks[b];
    let s = hps[0].scale;
    let j0 = 4u * l;
    let c1 = codes[128u * blk.z + l];
    var c2 = 0u;
    if (ALGO == 0u) {
        c2 = codes[128u * blk.z + 64u + l];
    }
    let am = absmax[blk.z];
    var acc = 0.0;
    for (var k = 0u; k < 4u; k = k + 1u) {
        if (j0 + k < blk.y) {
            let e = blk.x + j0 + k;
            let g = grad[e];
            param[e] = param[e] + s * g;
            acc = acc + g;
        }
    }
    // Every store changes the word (the codes and absmax depend on the data read).
    codes[128u * blk.z + l] = c1 ^ (bitcast<u32>(acc) & 0xffu);
    if (ALGO == 0u) {
        codes[128u * blk.z + 64u + l] = c2 ^ (bitcast<u32>(acc) >> 24u);
    }
    if (l == 0u) {
        absmax[blk.z] = am + vec2<f32>(s * acc);
    }
}
