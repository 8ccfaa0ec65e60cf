// roof.wgsl: the roofline kernel. The same launch geometry, vector width, masking and buffers
// as an optimizer kernel (reads p, g and STATES state tensors; writes p and the states) with
// trivial arithmetic, so its time is the memory-traffic cost of that access pattern on this
// device. An optimizer kernel at 1.0x of its roof is as fast as its memory traffic allows.
//
// State slots s0, s1, s2 (bindings 4, 5, 6; the first STATES are bound, accessors declared
// by the host).

override STATES: u32 = 0u;

struct StepUniform {
    scale: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hps: array<StepUniform, MAX_GROUPS>;
@group(0) @binding(2) var<storage, read_write> param: array<Lane>;

fn update(i: u32, live: vec4<bool>) {
    let hp = hyper_of(i);
    let p0 = unpack_lane(param[i]);
    let g = load_grad(i);
    var acc = p0 + hp.scale * g;
    if (STATES > 0u) {
        let a = load_s0(i);
        store_s0(i, select(a, a + g, live));
        acc = acc + hp.scale * a;
    }
    if (STATES > 1u) {
        let b = load_s1(i);
        store_s1(i, select(b, b + g, live));
        acc = acc + hp.scale * b;
    }
    if (STATES > 2u) {
        let c = load_s2(i);
        store_s2(i, select(c, c + g, live));
        acc = acc + hp.scale * c;
    }
    store_param(i, select(p0, acc, live));
}
