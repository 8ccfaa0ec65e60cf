// Newton-Schulz orthogonalisation (Muon's inner step) of a batch of matrices, on the device.
// Mirror of src/cpu/newton_schulz.rs (same iteration, f32); host side src/gpu/newton_schulz.rs.
//
// Every matrix and its workspace live in one f32 buffer `mats` (regions given by offsets):
//   U (rows x cols, row-major; overwritten by the result O), X and Y (r x c, r = min, c = max),
//   A and B (r x r).
// Entry points, all batched over every matrix of the step:
//   prepare: one workgroup per matrix: s = sum of squares of U (fixed-order workgroup
//            reduction: deterministic), X = U (or Uᵀ if rows > cols) / max(sqrt(s), eps)
//   matmul:  C = alpha * P * op(Q) + beta * D for a list of problems, one workgroup per 32 x 32
//            tile of C: tiles of P (32 x 16) and Q (16 x 32) staged in workgroup memory, each
//            of the 64 invocations accumulating a 4 x 4 block of C. op(Q) = Q or Qᵀ (flag bit 0).
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

const TM: u32 = 32u;
const TN: u32 = 32u;
const TK: u32 = 16u;
const NONE: u32 = 0xffffffffu;

var<workgroup> ps: array<f32, 512>; // [TK][TM]
var<workgroup> qs: array<f32, 512>; // [TK][TN]
var<workgroup> partial: array<f32, 256>;

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
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < pr.k; k0 += TK) {
        for (var e = 0u; e < 8u; e++) {
            let idx = li + e * 64u;
            // P tile: row r, column kk.
            let r = idx / TK;
            let kk = idx % TK;
            let gr = row0 + r;
            let gk = k0 + kk;
            var pv = 0.0;
            if (gr < pr.m && gk < pr.k) {
                pv = mats[pr.p_off + gr * pr.k + gk];
            }
            ps[kk * TM + r] = pv;
            // Q tile: row kq, column c.
            let kq = idx / TN;
            let c = idx % TN;
            let gc = col0 + c;
            let gq = k0 + kq;
            var qv = 0.0;
            if (gc < pr.n && gq < pr.k) {
                if (q_transposed) {
                    qv = mats[pr.q_off + gc * pr.k + gq];
                } else {
                    qv = mats[pr.q_off + gq * pr.n + gc];
                }
            }
            qs[kq * TN + c] = qv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let pa = kk * TM + ty * 4u;
            let qa = kk * TN + tx * 4u;
            let q = vec4<f32>(qs[qa], qs[qa + 1u], qs[qa + 2u], qs[qa + 3u]);
            acc0 += ps[pa] * q;
            acc1 += ps[pa + 1u] * q;
            acc2 += ps[pa + 2u] * q;
            acc3 += ps[pa + 3u] * q;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        var a = acc0;
        if (i == 1u) {
            a = acc1;
        } else if (i == 2u) {
            a = acc2;
        } else if (i == 3u) {
            a = acc3;
        }
        let r = row0 + ty * 4u + i;
        if (r >= pr.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + tx * 4u + j;
            if (c < pr.n) {
                var v = pr.alpha * a[j];
                if (pr.beta != 0.0) {
                    v += pr.beta * mats[pr.d_off + r * pr.n + c];
                }
                mats[pr.c_off + r * pr.n + c] = v;
            }
        }
    }
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
