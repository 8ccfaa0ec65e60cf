// adafactor_segmented.wgsl: the GPU step of Adafactor (torch.optim.Adafactor, PyTorch 2.15)
// per tensor, all passes in one compute pass of one submission (src/gpu/factored.rs):
//   tiles_a  per tile: factored tensors: the tile's column sums of g^2 (one invocation per
//            column) and row sums (one per row), sum p^2; tensors of rank <= 1: the
//            variance lerp, sum p^2 and sum U^2; each into the tile's own slots
//   factors  per matrix: R, C lerped from the tiles' slots summed in tile order; the clamped
//            row mean of R into the matrix's slot
//   tiles_b  per tile of a factored tensor: sum U^2 with V = R_i C_j / mean
//   finish   per segment: alpha = max(eps2, RMS(p)) rho, denom = max(1, RMS(U) / d) from its
//            tiles' slots (a fixed tree: deterministic, no atomics); a non-finite sum flags
//            the segment
//   apply    per tile: p = p * decay - alpha / denom * U
// Mirror of src/optim/adafactor.rs (AdafactorUniform, cpu_segment_step) and
// src/cpu/reference/adafactor.rs. Sums are f32 here (a tile's column: <= 64 terms, row:
// <= 256, then fixed trees); the CPU path sums in f64.
//
// tab (u32): [segments, tiles, matrices, -]; per segment 12 words (start, len, rows, cols,
// batch, row_var offset, col_var offset, variance offset, first tile, tile count,
// factored, first matrix); per tile 4 (segment, batch index, first row, first column; a
// vector tile: -, -, -, first element); per matrix 2 (segment, batch index).
// work (f32): per segment 8 (alpha / denom, alpha, denom, -, -, -, -, non-finite flag); per
// matrix 1 (the clamped row mean); per tile TR + TC + 2 (row sums, column sums, sum p^2,
// sum U^2).

struct StepUniform {
    grad_sign: f32,
    decay: f32,
    weight: f32,
    eps1: f32,
    eps1_sq: f32,
    coef: f32,
    rho: f32,
    eps2: f32,
    d: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> hp: StepUniform;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> row_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> col_var: array<f32>;
@group(0) @binding(5) var<storage, read_write> variance: array<f32>;
@group(0) @binding(6) var<storage, read> tab: array<u32>;
@group(0) @binding(7) var<storage, read_write> work: array<f32>;

const WG: u32 = 256u;
const TR: u32 = 64u;
const TC: u32 = 256u;
const VEC_TILE: u32 = 1024u;
const SEG_WORDS: u32 = 12u;
const TILE_WORDS: u32 = 322u;

var<workgroup> red: array<vec2<f32>, WG>;

fn segments() -> u32 {
    return tab[0];
}

fn tiles() -> u32 {
    return tab[1];
}

fn matrices() -> u32 {
    return tab[2];
}

fn seg(s: u32, w: u32) -> u32 {
    return tab[4u + SEG_WORDS * s + w];
}

fn tile(t: u32) -> vec4<u32> {
    let o = 4u + SEG_WORDS * segments() + 4u * t;
    return vec4<u32>(tab[o], tab[o + 1u], tab[o + 2u], tab[o + 3u]);
}

fn matrix(m: u32) -> vec2<u32> {
    let o = 4u + SEG_WORDS * segments() + 4u * tiles() + 2u * m;
    return vec2<u32>(tab[o], tab[o + 1u]);
}

fn mean_slot(m: u32) -> u32 {
    return 8u * segments() + m;
}

fn tile_slot(t: u32) -> u32 {
    return 8u * segments() + matrices() + TILE_WORDS * t;
}

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// torch's lerp: exact at weight 1.
fn lerp_t(start: f32, end: f32, w: f32) -> f32 {
    if (w < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * (1.0 - w);
}

// U of one element: g / sqrt(max(v, eps1^2)), the gradient's sign applied.
fn scaled(g: f32, v: f32) -> f32 {
    return (1.0 / sqrt(max(v, hp.eps1_sq))) * (g * hp.grad_sign);
}

// Tree sum of red[0..WG) (called by every invocation of the workgroup).
fn tree(lid: u32) -> vec2<f32> {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(WG)
fn tiles_a(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles()) {
        return;
    }
    let e = tile(t);
    let s = e.x;
    let start = seg(s, 0u);
    let o = tile_slot(t);
    var acc = vec2<f32>(0.0, 0.0);
    if (seg(s, 10u) == 1u) {
        let rows = seg(s, 2u);
        let cols = seg(s, 3u);
        let base = start + e.y * rows * cols;
        let r1 = min(e.z + TR, rows);
        let c1 = min(e.w + TC, cols);
        let j = e.w + lid;
        if (j < c1) {
            var col = 0.0;
            for (var i = e.z; i < r1; i = i + 1u) {
                let k = base + i * cols + j;
                let g = load_grad(k);
                let p = param[k];
                col = col + g * g;
                acc.x = acc.x + p * p;
            }
            work[o + TR + lid] = col;
        }
        if (lid < r1 - e.z) {
            let i = e.z + lid;
            var row = 0.0;
            for (var jj = e.w; jj < c1; jj = jj + 1u) {
                let g = load_grad(base + i * cols + jj);
                row = row + g * g;
            }
            work[o + lid] = row;
        }
    } else {
        let voff = seg(s, 7u);
        let c1 = min(e.w + VEC_TILE, seg(s, 1u));
        for (var i = e.w + lid; i < c1; i = i + WG) {
            let g = load_grad(start + i);
            let gs = g * hp.grad_sign;
            let v = lerp_t(variance[voff + i], gs * gs, hp.weight);
            variance[voff + i] = v;
            let x = scaled(g, v);
            let p = param[start + i];
            acc = acc + vec2<f32>(p * p, x * x);
        }
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        work[o + TR + TC] = total.x;
        work[o + TR + TC + 1u] = total.y;
    }
}

@compute @workgroup_size(WG)
fn factors(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let m = wid.x + wid.y * nwg.x;
    if (m >= matrices()) {
        return;
    }
    let mv = matrix(m);
    let s = mv.x;
    let b = mv.y;
    let rows = seg(s, 2u);
    let cols = seg(s, 3u);
    let bands = (rows + TR - 1u) / TR;
    let blocks = (cols + TC - 1u) / TC;
    let t0 = seg(s, 8u) + b * bands * blocks;
    let roff = seg(s, 5u) + b * rows;
    let coff = seg(s, 6u) + b * cols;
    var sum = 0.0;
    for (var i = lid; i < rows; i = i + WG) {
        var x = 0.0;
        for (var k = 0u; k < blocks; k = k + 1u) {
            x = x + work[tile_slot(t0 + (i / TR) * blocks + k) + i % TR];
        }
        let r = lerp_t(row_var[roff + i], x / f32(cols), hp.weight);
        row_var[roff + i] = r;
        sum = sum + r;
    }
    for (var j = lid; j < cols; j = j + WG) {
        var x = 0.0;
        for (var k = 0u; k < bands; k = k + 1u) {
            x = x + work[tile_slot(t0 + k * blocks + j / TC) + TR + j % TC];
        }
        col_var[coff + j] = lerp_t(col_var[coff + j], x / f32(rows), hp.weight);
    }
    red[lid] = vec2<f32>(sum, 0.0);
    let total = tree(lid);
    if (lid == 0u) {
        work[mean_slot(m)] = max(total.x / f32(rows), hp.eps1);
    }
}

@compute @workgroup_size(WG)
fn tiles_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles()) {
        return;
    }
    let e = tile(t);
    let s = e.x;
    if (seg(s, 10u) != 1u) {
        return;
    }
    let rows = seg(s, 2u);
    let cols = seg(s, 3u);
    let base = seg(s, 0u) + e.y * rows * cols;
    let roff = seg(s, 5u) + e.y * rows;
    let coff = seg(s, 6u) + e.y * cols;
    let mean = work[mean_slot(seg(s, 11u) + e.y)];
    let r1 = min(e.z + TR, rows);
    let c1 = min(e.w + TC, cols);
    let j = e.w + lid;
    var uu = 0.0;
    if (j < c1) {
        let c = col_var[coff + j];
        for (var i = e.z; i < r1; i = i + 1u) {
            let x = scaled(load_grad(base + i * cols + j), row_var[roff + i] * c / mean);
            uu = uu + x * x;
        }
    }
    red[lid] = vec2<f32>(uu, 0.0);
    let total = tree(lid);
    if (lid == 0u) {
        work[tile_slot(t) + TR + TC + 1u] = total.x;
    }
}

@compute @workgroup_size(WG)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let s = wid.x + wid.y * nwg.x;
    if (s >= segments()) {
        return;
    }
    let t0 = seg(s, 8u);
    let count = seg(s, 9u);
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < count; k = k + WG) {
        let o = tile_slot(t0 + k) + TR + TC;
        acc = acc + vec2<f32>(work[o], work[o + 1u]);
    }
    red[lid] = acc;
    let total = tree(lid);
    if (lid == 0u) {
        let n = sqrt(f32(seg(s, 1u)));
        let alpha = max(hp.eps2, sqrt(total.x) / n) * hp.rho;
        let denom = max(1.0, sqrt(total.y) / (n * hp.d));
        let o = 8u * s;
        work[o] = alpha / denom;
        work[o + 1u] = alpha;
        work[o + 2u] = denom;
        work[o + 7u] = select(1.0, 0.0, finite(total.x) && finite(total.y));
    }
}

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles()) {
        return;
    }
    let e = tile(t);
    let s = e.x;
    let coef = work[8u * s];
    let start = seg(s, 0u);
    if (seg(s, 10u) == 1u) {
        let rows = seg(s, 2u);
        let cols = seg(s, 3u);
        let base = start + e.y * rows * cols;
        let roff = seg(s, 5u) + e.y * rows;
        let coff = seg(s, 6u) + e.y * cols;
        let mean = work[mean_slot(seg(s, 11u) + e.y)];
        let r1 = min(e.z + TR, rows);
        let c1 = min(e.w + TC, cols);
        let j = e.w + lid;
        if (j < c1) {
            let c = col_var[coff + j];
            for (var i = e.z; i < r1; i = i + 1u) {
                let k = base + i * cols + j;
                let x = scaled(load_grad(k), row_var[roff + i] * c / mean);
                param[k] = param[k] * hp.decay - coef * x;
            }
        }
    } else {
        let voff = seg(s, 7u);
        let c1 = min(e.w + VEC_TILE, seg(s, 1u));
        for (var i = e.w + lid; i < c1; i = i + WG) {
            let x = scaled(load_grad(start + i), variance[voff + i]);
            param[start + i] = param[start + i] * hp.decay - coef * x;
        }
    }
}
