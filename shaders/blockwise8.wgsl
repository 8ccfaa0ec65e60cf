// blockwise8.wgsl: bitsandbytes 0.50-style block-wise 8-bit Adam / AdamW state
// (StateFormat::Blockwise8). Mirror of src/cpu/blockwise8.rs (the fast CPU step) and its
// oracle src/cpu/reference/blockwise8.rs; host side src/gpu/blockwise8.rs. The host prepends
// grad_control.wgsl.
//
// One workgroup of 64 invocations owns one block of at most 256 elements of one tensor
// (segment): invocation `l` owns elements 4l .. 4l + 3 of the block. Blocks never cross
// segments. A block of a quantised tensor (at least min_size elements):
//   m = qmap1[code1] * absmax1;  v = qmap2[code2] * absmax2
//   m = fma(1 - b1, g, b1 * m);  v = fma((1 - b2) * g, g, b2 * v)
//   denom = sqrt(v) / c2 + eps;  p = p * decay_factor (if decays);  p = p + (step_size * m) / denom
//   absmax = max |x| over the block (workgroup reduction, one pass), 0 -> every code 0
//   idx = trunc(((clamp(x * (1 / absmax), -1, 1) + 1) * 0.5) * 65535 + 0.5);  code = LUT[idx]
// A block of a 32-bit tensor (fewer than min_size elements) keeps f32 m, v:
//   p = p + step_size_32 * (m / (sqrt(v) + eps_32))
//
// Bindings (8 storage buffers: WebGPU's default per-stage limit):
//   0 uniform  array<Q8Uniform, MAX_GROUPS>  per-group scalars (host f64 -> f32; dynamic offset)
//   1 storage  blocks  read   vec4<u32> per workgroup: first element, element count (1..256),
//                            ordinal of the block among its kind, kind (bit 0: 32-bit) | group << 8
//   2 storage  param   read_write  f32 (scalar: segments need not start on a vec4 lane)
//   3 storage  grad    read   f32
//   4 storage  codes   read_write  u32: quantised block q at words 128q .. 128q + 63 (state1),
//                                  128q + 64 .. 128q + 127 (state2), 4 codes per word, first
//                                  element in the low byte (read back as bytes)
//   5 storage  absmax  read_write  vec2<f32> (absmax1, absmax2) per quantised block
//   6 storage  full    read_write  f32: 32-bit block f at 512f .. 512f + 255 (m),
//                                  512f + 256 .. 512f + 511 (v)
//   7 storage  control read   GradControl (the gradient pipeline: unscale, clip, norm-clip)
//   8 storage  tables  read   u32: qmap1 bits [0, 256), qmap2 bits [256, 512), LUT1 at
//                            512 + idx / 4 (byte idx % 4), LUT2 at 512 + 16384 + idx / 4

override GRAD_PIPELINE: bool = false;
// 0: Adam / AdamW (two states); 1: Lion (bitsandbytes' Lion8bit), 2: SGD with momentum
// (SGD8bit): one state (state1, absmax1 only), rules in src/cpu/reference/blockwise8_1state.rs.
override ALGO: u32 = 0u;
const MAX_GROUPS: u32 = 8u;
const LUT1: u32 = 512u;
const LUT2: u32 = 16896u;

struct Q8Uniform {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    c2: f32,
    eps: f32,
    step_size: f32,
    decay_factor: f32,
    step_size_32: f32,
    eps_32: f32,
    decays: u32,
    // Always 0 (the host writes it): the operand of `o`, opaque to the compiler.
    zero: u32,
    // One-state optimizers: beta1 = Lion's beta1 or the momentum, beta2 = Lion's beta2,
    // step_size = -lr, decay_factor = 1 - lr * wd (Lion).
    weight_decay: f32,
    first: u32,
    wd_positive: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> hps: array<Q8Uniform, MAX_GROUPS>;
@group(0) @binding(1) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> absmax: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> full: array<f32>;
@group(0) @binding(7) var<storage, read> control: GradControl;
@group(0) @binding(8) var<storage, read> tables: array<u32>;

var<workgroup> red: array<vec2<f32>, 64>;

// Exact f32 arithmetic as the CPU does it. lavapipe lowers WGSL `fma` to a separate
// multiply and add, and its compiler may contract `a * b + c` elsewhere or reassociate sums;
// `/` and `sqrt` are correctly rounded there (measured: 0 of 65536 random operands differ
// from the CPU). So every rounding the CPU step performs is pinned with `o` (an XOR with a
// zero the compiler cannot see, Q8Uniform.zero), and the CPU's fused multiply-adds are
// emulated exactly: Dekker's product, two TwoSums and a rounding to odd (Boldo and
// Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding
// to odd", IEEE TC 2008), valid for operands whose products neither overflow nor underflow
// (|a * b| in [2^-100, 2^100]: moments of gradients in the f32 range squared stay inside;
// outside it, the result can be off by an ulp).
var<private> zero: u32;

fn o(x: vec4<f32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(x) ^ vec4<u32>(zero));
}

// a = hi + lo exactly, hi with at most 12 significant bits (Veltkamp).
fn split(a: vec4<f32>) -> array<vec4<f32>, 2> {
    let t = o(4097.0 * a);
    let hi = o(t - o(t - a));
    return array<vec4<f32>, 2>(hi, o(a - hi));
}

// s + e = a + b exactly, s = RN(a + b) (Knuth).
fn two_sum(a: vec4<f32>, b: vec4<f32>) -> array<vec4<f32>, 2> {
    let s = o(a + b);
    let bb = o(s - a);
    return array<vec4<f32>, 2>(s, o(o(a - o(s - bb)) + o(b - bb)));
}

// RN(a * b + c), the CPU's `a.mul_add(b, c)`.
fn fma_rn(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    let ph = o(a * b);
    let sa = split(a);
    let sb = split(b);
    let pl = o(o(o(o(o(sa[0] * sb[0]) - ph) + o(sa[0] * sb[1])) + o(sa[1] * sb[0])) + o(sa[1] * sb[1]));
    let t = two_sum(c, ph);
    let u = two_sum(t[1], pl);
    // Round u[0] + u[1] to odd: step u[0] one ulp towards u[1] when inexact and even.
    let vb = bitcast<vec4<u32>>(u[0]);
    let toward = (u[1] > vec4<f32>(0.0)) == (u[0] > vec4<f32>(0.0));
    let moved = select(vb - vec4<u32>(1u), vb + vec4<u32>(1u), toward);
    let odd = (u[1] != vec4<f32>(0.0)) & ((vb & vec4<u32>(1u)) == vec4<u32>(0u));
    let v = bitcast<vec4<f32>>(select(vb, moved, odd));
    return o(t[0] + v);
}

fn qmap1(c: u32) -> f32 {
    return bitcast<f32>(tables[c]);
}

fn qmap2(c: u32) -> f32 {
    return bitcast<f32>(tables[256u + c]);
}

// The grid index of x (bitsandbytes' CPU quantize_block): in [0.5, 65535.5] before the
// truncation; NaN gives 0 as the CPU's saturating cast does.
fn grid_index(x: f32, inv: f32) -> u32 {
    let n = clamp(o(vec4<f32>(x * inv)).x, -1.0, 1.0);
    let t = o(o(o(vec4<f32>((n + 1.0) * 0.5)) * 65535.0) + 0.5).x;
    return select(0u, min(u32(t), 65535u), t >= 0.0);
}

fn lut(base: u32, idx: u32) -> u32 {
    return (tables[base + (idx >> 2u)] >> ((idx & 3u) * 8u)) & 0xffu;
}

// The 4 codes of x (absmax > 0), packed into one word, first element in the low byte.
fn quantize4(x: vec4<f32>, a: f32, base: u32) -> u32 {
    if (a == 0.0) {
        return 0u;
    }
    let inv = o(vec4<f32>(1.0 / a)).x;
    return lut(base, grid_index(x.x, inv))
        | (lut(base, grid_index(x.y, inv)) << 8u)
        | (lut(base, grid_index(x.z, inv)) << 16u)
        | (lut(base, grid_index(x.w, inv)) << 24u);
}

// max |x| over the live elements, skipping NaN as the CPU's `a > max` does.
fn abs_max4(x: vec4<f32>, live: vec4<bool>) -> f32 {
    var a = 0.0;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let v = abs(x[k]);
        if (live[k] && v > a) {
            a = v;
        }
    }
    return a;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) l: u32,
) {
    let b = wid.x + wid.y * nwg.x;
    if (b >= arrayLength(&blocks)) {
        return; // uniform per workgroup: the grid may exceed the block count
    }
    let blk = blocks[b];
    let first = blk.x;
    let count = blk.y;
    let ordinal = blk.z;
    let is_full = (blk.w & 1u) != 0u;
    let hp = hps[min(blk.w >> 8u, MAX_GROUPS - 1u)];
    zero = hp.zero;
    var grad_scalars = vec3<f32>(1.0, 3.4028235e38, 1.0);
    if (GRAD_PIPELINE) {
        grad_scalars = vec3<f32>(control.inv_scale, control.clip_value, control.coef);
    }

    let j0 = 4u * l;
    let live = (vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(count);
    var p = vec4<f32>(0.0);
    var g = vec4<f32>(0.0);
    var m = vec4<f32>(0.0);
    var v = vec4<f32>(0.0);
    var c1w = 0u;
    var c2w = 0u;
    var am = vec2<f32>(0.0);
    if (!is_full) {
        c1w = codes[128u * ordinal + l];
        if (ALGO == 0u) {
            c2w = codes[128u * ordinal + 64u + l];
        }
        am = absmax[ordinal];
    }
    for (var k = 0u; k < 4u; k = k + 1u) {
        if (live[k]) {
            let e = first + j0 + k;
            p[k] = param[e];
            var gk = grad[e];
            if (GRAD_PIPELINE) {
                gk = clamp(gk * grad_scalars.x, -grad_scalars.y, grad_scalars.y) * grad_scalars.z;
            }
            g[k] = gk;
            if (is_full) {
                m[k] = full[512u * ordinal + j0 + k];
                v[k] = full[512u * ordinal + 256u + j0 + k];
            } else {
                m[k] = qmap1((c1w >> (8u * k)) & 0xffu) * am.x;
                v[k] = qmap2((c2w >> (8u * k)) & 0xffu) * am.y;
            }
        }
    }
    m = o(m);
    v = o(v);
    var pn: vec4<f32>;
    if (ALGO == 0u) {
        m = fma_rn(vec4<f32>(hp.one_minus_beta1), g, o(hp.beta1 * m));
        v = fma_rn(o(hp.one_minus_beta2 * g), g, o(hp.beta2 * v));
        var pd = p;
        if (hp.decays != 0u) {
            pd = o(p * hp.decay_factor);
        }
        if (is_full) {
            pn = o(pd + o(hp.step_size_32 * o(m / o(o(sqrt(v)) + hp.eps_32))));
        } else {
            let denom = o(o(o(sqrt(v)) / hp.c2) + hp.eps);
            pn = o(pd + o(o(hp.step_size * m) / denom));
        }
    } else if (ALGO == 1u) {
        var pd = p;
        if (hp.decays != 0u) {
            pd = o(p * hp.decay_factor);
        }
        var u: vec4<f32>;
        if (is_full) {
            u = fma_rn(vec4<f32>(hp.one_minus_beta1), g, o(hp.beta1 * m));
        } else {
            u = o(o(hp.beta1 * m) + o(hp.one_minus_beta1 * g));
        }
        // torch.sign keeps a zero's sign (select(...) of 0 gives u itself).
        let dir = select(select(u, vec4<f32>(-1.0), u < vec4<f32>(0.0)), vec4<f32>(1.0), u > vec4<f32>(0.0));
        pn = o(pd + o(hp.step_size * dir));
        m = fma_rn(vec4<f32>(hp.one_minus_beta2), g, o(hp.beta2 * m));
    } else {
        var gi = g;
        if (!is_full || hp.wd_positive != 0u) {
            gi = fma_rn(vec4<f32>(hp.weight_decay), p, g);
        }
        if (hp.first != 0u) {
            m = gi;
        } else {
            m = o(o(hp.beta1 * m) + gi);
        }
        pn = fma_rn(vec4<f32>(hp.step_size), m, p);
    }
    for (var k = 0u; k < 4u; k = k + 1u) {
        if (live[k]) {
            param[first + j0 + k] = pn[k];
            if (is_full) {
                full[512u * ordinal + j0 + k] = m[k];
                full[512u * ordinal + 256u + j0 + k] = v[k];
            }
        }
    }

    // absmax of m and v over the block: a tree over the workgroup (every invocation takes
    // part, also in 32-bit blocks, so the barriers stay in uniform control flow).
    red[l] = vec2<f32>(abs_max4(m, live), abs_max4(v, live));
    for (var s = 32u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (l < s) {
            let o = red[l + s];
            let a = red[l];
            red[l] = vec2<f32>(select(a.x, o.x, o.x > a.x), select(a.y, o.y, o.y > a.y));
        }
    }
    workgroupBarrier();
    let a = red[0];
    if (!is_full) {
        codes[128u * ordinal + l] = quantize4(m, a.x, LUT1);
        if (ALGO == 0u) {
            codes[128u * ordinal + 64u + l] = quantize4(v, a.y, LUT2);
        }
        if (l == 0u) {
            absmax[ordinal] = select(vec2<f32>(a.x, 0.0), a, ALGO == 0u);
        }
    }
}
