// Newton-Schulz orthogonalisation (Muon's inner step) of a batch of matrices, on the device.
// Mirror of src/cpu/newton_schulz.rs (same iteration, f32); host side src/gpu/newton_schulz.rs.
//
// Every matrix and its workspace live in one f32 buffer `mats` (regions given by offsets):
//   U (rows x cols, row-major; overwritten by the result O), X and Y (r x c, r = min, c = max),
//   A and B (r x r).
// Entry points, all batched over every matrix of the step:
//   prepare: one workgroup per matrix: s = sum of squares of U (fixed-order workgroup
//            reduction: deterministic), X = U (or Uᵀ if rows > cols) / max(sqrt(s), eps)
//   matmul:  C = alpha * P * op(Q) + beta * D for a list of problems, one workgroup per 64 x 64
//            tile of C: tiles of P (64 x 16) and Q (16 x 64) staged in workgroup memory as
//            vec4s, each of the 64 invocations accumulating an 8 x 8 block of C. op(Q) = Q or
//            Qᵀ (flag bit 0).
//            D may be C itself (each element is read, then written, by one invocation).
//   finish:  one workgroup per matrix: U = X (or Xᵀ).
// A Newton-Schulz step is three matmul dispatches: A = X Xᵀ; B = c A A + b A; Y = B X + a X.

struct Problem {
    p_off: u32,
    q_off: u32,
    c_off: u32,
    d_off: u32,
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    alpha: f32,
    beta: f32,
    tile_start: u32,
    tiles_n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

struct Mat {
    u_off: u32,
    x_off: u32,
    rows: u32,
    cols: u32,
    transposed: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> mats: array<f32>;
@group(0) @binding(1) var<storage, read> problems: array<Problem>;
// Per workgroup of a matmul dispatch: the index of its problem (0xffffffff: padding).
@group(0) @binding(2) var<storage, read> tile_problem: array<u32>;
@group(0) @binding(3) var<storage, read> matrices: array<Mat>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
const NONE: u32 = 0xffffffffu;

// Tiles as vec4s: ps4[kk * 16 + i] holds rows 4i..4i+3 of P's column kk, qs4[kk * 16 + j]
// columns 4j..4j+3 of op(Q)'s row kk: per k, two vec4 loads of each feed 64 FMAs of an
// invocation's 8 x 8 block.
var<workgroup> ps4: array<vec4<f32>, 256>; // [TK][TM / 4]
var<workgroup> qs4: array<vec4<f32>, 256>; // [TK][TN / 4]
var<workgroup> partial: array<f32, 256>;

// Element (row, col) of the m x k matrix at `off` (row-major), 0 outside.
fn at_p(off: u32, m: u32, k: u32, row: u32, col: u32) -> f32 {
    if (row < m && col < k) {
        return mats[off + row * k + col];
    }
    return 0.0;
}

// Element (kq, col) of op(Q) (k x n): Q is k x n, or n x k when transposed; 0 outside.
fn at_q(pr: Problem, kq: u32, col: u32, transposed: bool) -> f32 {
    if (col < pr.n && kq < pr.k) {
        if (transposed) {
            return mats[pr.q_off + col * pr.k + kq];
        }
        return mats[pr.q_off + kq * pr.n + col];
    }
    return 0.0;
}

// C[row, col..col + 8] = alpha * (lo, hi) + beta * D[row, ...], inside the matrix.
fn store_row(pr: Problem, row: u32, col: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (row >= pr.m) {
        return;
    }
    for (var j = 0u; j < 8u; j++) {
        let c = col + j;
        if (c < pr.n) {
            var v = 0.0;
            if (j < 4u) {
                v = pr.alpha * lo[j];
            } else {
                v = pr.alpha * hi[j - 4u];
            }
            if (pr.beta != 0.0) {
                v += pr.beta * mats[pr.d_off + row * pr.n + c];
            }
            mats[pr.c_off + row * pr.n + c] = v;
        }
    }
}

@compute @workgroup_size(64)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let w = wg.x + wg.y * nwg.x;
    if (w >= arrayLength(&tile_problem)) {
        return;
    }
    let index = tile_problem[w];
    if (index == NONE) {
        return;
    }
    let pr = problems[index];
    let t = w - pr.tile_start;
    let row0 = (t / pr.tiles_n) * TM;
    let col0 = (t % pr.tiles_n) * TN;
    let tx = li % 8u;
    let ty = li / 8u;
    let q_transposed = (pr.flags & 1u) != 0u;
    var a0l = vec4<f32>(0.0);
    var a0h = vec4<f32>(0.0);
    var a1l = vec4<f32>(0.0);
    var a1h = vec4<f32>(0.0);
    var a2l = vec4<f32>(0.0);
    var a2h = vec4<f32>(0.0);
    var a3l = vec4<f32>(0.0);
    var a3h = vec4<f32>(0.0);
    var a4l = vec4<f32>(0.0);
    var a4h = vec4<f32>(0.0);
    var a5l = vec4<f32>(0.0);
    var a5h = vec4<f32>(0.0);
    var a6l = vec4<f32>(0.0);
    var a6h = vec4<f32>(0.0);
    var a7l = vec4<f32>(0.0);
    var a7h = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < pr.k; k0 += TK) {
        // 256 vec4 of each tile, four per invocation.
        for (var e = 0u; e < 4u; e++) {
            let v = li + e * 64u;
            // P: column kk = v % 16, rows 4 (v / 16) .. + 3.
            let kk = v % TK;
            let r = row0 + (v / TK) * 4u;
            let gk = k0 + kk;
            ps4[kk * 16u + v / TK] = vec4<f32>(
                at_p(pr.p_off, pr.m, pr.k, r, gk),
                at_p(pr.p_off, pr.m, pr.k, r + 1u, gk),
                at_p(pr.p_off, pr.m, pr.k, r + 2u, gk),
                at_p(pr.p_off, pr.m, pr.k, r + 3u, gk),
            );
            // op(Q): row kq = v / 16, columns 4 (v % 16) .. + 3.
            let kq = v / 16u;
            let c = col0 + (v % 16u) * 4u;
            let gq = k0 + kq;
            qs4[v] = vec4<f32>(
                at_q(pr, gq, c, q_transposed),
                at_q(pr, gq, c + 1u, q_transposed),
                at_q(pr, gq, c + 2u, q_transposed),
                at_q(pr, gq, c + 3u, q_transposed),
            );
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let pl = ps4[kk * 16u + 2u * ty];
            let ph = ps4[kk * 16u + 2u * ty + 1u];
            let ql = qs4[kk * 16u + 2u * tx];
            let qh = qs4[kk * 16u + 2u * tx + 1u];
            a0l += pl.x * ql;
            a0h += pl.x * qh;
            a1l += pl.y * ql;
            a1h += pl.y * qh;
            a2l += pl.z * ql;
            a2h += pl.z * qh;
            a3l += pl.w * ql;
            a3h += pl.w * qh;
            a4l += ph.x * ql;
            a4h += ph.x * qh;
            a5l += ph.y * ql;
            a5h += ph.y * qh;
            a6l += ph.z * ql;
            a6h += ph.z * qh;
            a7l += ph.w * ql;
            a7h += ph.w * qh;
        }
        workgroupBarrier();
    }
    store_row(pr, row0 + ty * 8u + 0u, col0 + tx * 8u, a0l, a0h);
    store_row(pr, row0 + ty * 8u + 1u, col0 + tx * 8u, a1l, a1h);
    store_row(pr, row0 + ty * 8u + 2u, col0 + tx * 8u, a2l, a2h);
    store_row(pr, row0 + ty * 8u + 3u, col0 + tx * 8u, a3l, a3h);
    store_row(pr, row0 + ty * 8u + 4u, col0 + tx * 8u, a4l, a4h);
    store_row(pr, row0 + ty * 8u + 5u, col0 + tx * 8u, a5l, a5h);
    store_row(pr, row0 + ty * 8u + 6u, col0 + tx * 8u, a6l, a6h);
    store_row(pr, row0 + ty * 8u + 7u, col0 + tx * 8u, a7l, a7h);
}

@compute @workgroup_size(256)
fn prepare(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let mt = matrices[wg.x];
    let len = mt.rows * mt.cols;
    var s = 0.0;
    for (var i = li; i < len; i += 256u) {
        let v = mats[mt.u_off + i];
        s += v * v;
    }
    partial[li] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            partial[li] += partial[li + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / max(sqrt(partial[0]), mt.eps);
    // X = U or Uᵀ (r x c, c = the longer side), scaled.
    for (var i = li; i < len; i += 256u) {
        let row = i / mt.cols;
        let col = i % mt.cols;
        var dst = i;
        if (mt.transposed != 0u) {
            dst = col * mt.rows + row;
        }
        mats[mt.x_off + dst] = mats[mt.u_off + i] * inv;
    }
}

@compute @workgroup_size(256)
fn finish(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let mt = matrices[wg.x];
    let len = mt.rows * mt.cols;
    for (var i = li; i < len; i += 256u) {
        let row = i / mt.cols;
        let col = i % mt.cols;
        var src = i;
        if (mt.transposed != 0u) {
            src = col * mt.rows + row;
        }
        mats[mt.u_off + i] = mats[mt.x_off + src];
    }
}
