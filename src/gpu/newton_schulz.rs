//! Newton–Schulz orthogonalisation (Muon's inner step) of a batch of matrices on the device:
//! `shaders/newton_schulz.wgsl`, the same iteration as [`crate::cpu::newton_schulz`] in f32.
//!
//! [`GpuNewtonSchulz::new`] lays out every matrix of the batch and its workspace in one
//! buffer and builds every table and bind group once; [`GpuNewtonSchulz::encode`] then records
//! the whole orthogonalisation — a `prepare` dispatch (norms and scaling, one workgroup per
//! matrix), three batched tiled-matmul dispatches per iteration (A = X Xᵀ, B = c A A + b A,
//! Y = B X + a X, each over the tiles of every matrix at once) and a `finish` dispatch — into
//! one compute pass: 2 + 3·steps dispatches for the whole batch, whatever its size, and no
//! allocation per call.

use wgpu::util::DeviceExt;

use super::buffer::{create_flat, read_f32};
use super::context::GpuContext;
use super::kernel::compute_pipeline;
use crate::cpu::newton_schulz::{ns_shape, NewtonSchulz};
use crate::error::{Error, Result};

const SHADER: &str = include_str!("../../shaders/newton_schulz.wgsl");
/// Output tile of one matmul workgroup (`TM` x `TN` in the shader).
const TILE: usize = 64;
/// Problems per bind-group range are padded to this many (64 bytes each: 256-byte offsets).
const PROBLEM_ALIGN: usize = 4;
/// Tile entries per range are padded to this many (4 bytes each: 256-byte offsets).
const TILE_ALIGN: usize = 64;
const NONE: u32 = u32::MAX;

/// `struct Problem` of the shader: `C = alpha P op(Q) + beta D`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
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
    pad: [u32; 4],
}

/// `struct Mat` of the shader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Mat {
    u_off: u32,
    x_off: u32,
    rows: u32,
    cols: u32,
    transposed: u32,
    eps: f32,
    pad: [u32; 2],
}

/// Where one matrix and its workspace live in the batch buffer (element offsets).
#[derive(Clone, Copy, Debug)]
struct Layout {
    rows: usize,
    cols: usize,
    r: usize,
    c: usize,
    transposed: bool,
    u: usize,
    x: usize,
    y: usize,
    a: usize,
    b: usize,
}

/// One matmul dispatch: its bind group and its workgroup grid.
struct MatmulDispatch {
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

/// A batch of matrices orthogonalised together on the device (see the module docs).
pub struct GpuNewtonSchulz {
    ctx: GpuContext,
    ns: NewtonSchulz,
    layouts: Vec<Layout>,
    mats: wgpu::Buffer,
    matmul: wgpu::ComputePipeline,
    prepare: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    prepare_group: wgpu::BindGroup,
    finish_group: wgpu::BindGroup,
    dispatches: Vec<MatmulDispatch>,
    _tables: Vec<wgpu::Buffer>,
}

fn u32_of(what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooManyElements {
        what,
        len: v as u64,
        limit: u64::from(u32::MAX),
    })
}

impl GpuNewtonSchulz {
    /// A batch of matrices of the given (rows, cols) shapes with `ns`'s iteration.
    /// Errors: an empty batch or a zero dimension ([`Error::Empty`]), offsets past u32 or
    /// the device's buffer limits ([`Error::TooManyElements`], [`Error::BufferTooLarge`]),
    /// eps not finite and >= 0 ([`Error::InvalidHyperParameter`]), bf16 arithmetic
    /// ([`Error::InvalidCombination`]: the WGSL matmul is f32; use the fast CPU path for
    /// torch's bf16 arithmetic).
    pub fn new(ctx: &GpuContext, shapes: &[(usize, usize)], ns: &NewtonSchulz) -> Result<Self> {
        if ns.arithmetic != crate::optim::NsArithmetic::F32 {
            return Err(Error::InvalidCombination {
                optimizer: "Muon",
                reason: "the GPU path runs Newton-Schulz in f32 only (NsArithmetic::F32); \
                         NsArithmetic::Bf16 (torch's arithmetic) runs on the fast CPU path",
            });
        }
        if shapes.is_empty() {
            return Err(Error::Empty {
                what: "Newton-Schulz batch",
            });
        }
        if !(ns.eps.is_finite() && ns.eps >= 0.0) {
            return Err(Error::InvalidHyperParameter {
                optimizer: "Muon",
                name: "eps",
                value: ns.eps,
                requirement: "finite and >= 0",
            });
        }
        let mut layouts = Vec::with_capacity(shapes.len());
        let mut end = 0usize;
        let mut take = |len: usize| {
            let at = end;
            end = end.saturating_add(len);
            at
        };
        for &(rows, cols) in shapes {
            let (r, c, transposed) = ns_shape(rows.saturating_mul(cols), rows, cols)?;
            layouts.push(Layout {
                rows,
                cols,
                r,
                c,
                transposed,
                u: take(r * c),
                x: take(r * c),
                y: take(r * c),
                a: take(r * r),
                b: take(r * r),
            });
        }
        u32_of("Newton-Schulz workspace", end)?;
        // One binding holds the whole batch: split larger batches (`Self::split`).
        let bytes = (end as u64).saturating_mul(4);
        if bytes > ctx.max_binding_bytes() {
            return Err(Error::BufferTooLarge {
                what: "Newton-Schulz batch (matrices and workspace)",
                bytes,
                limit: ctx.max_binding_bytes(),
            });
        }
        let device = ctx.device();
        let mats = create_flat(ctx, "Newton-Schulz matrices", end)?;
        let module = ctx.scoped("Newton-Schulz shader", || {
            Ok(device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("newton_schulz.wgsl"),
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            }))
        })?;
        let pipeline = |entry: &str| {
            ctx.scoped("Newton-Schulz pipeline", || {
                Ok(compute_pipeline(
                    device,
                    "newton_schulz",
                    &module,
                    None,
                    entry,
                    &[],
                    false,
                ))
            })
        };
        let (matmul, prepare, finish) = (
            pipeline("matmul")?,
            pipeline("prepare")?,
            pipeline("finish")?,
        );

        // The problems of every matmul dispatch: 3 per step, over every matrix.
        let (ca, cb, cc) = ns.coefficients;
        let (ca, cb, cc) = (ca as f32, cb as f32, cc as f32);
        let mut problems: Vec<Problem> = Vec::new();
        let mut tiles: Vec<u32> = Vec::new();
        let mut ranges = Vec::new(); // (problem start, count, tile start, tile count)
        let tiles_of = |m: usize, n: usize| (m.div_ceil(TILE), n.div_ceil(TILE));
        for step in 0..ns.steps {
            for stage in 0..3 {
                let (p0, t0) = (problems.len(), tiles.len());
                for (i, l) in layouts.iter().enumerate() {
                    let (x, y) = if step % 2 == 0 {
                        (l.x, l.y)
                    } else {
                        (l.y, l.x)
                    };
                    let (p, q, c, d, m, n, k, flags, alpha, beta) = match stage {
                        // A = X Xᵀ
                        0 => (x, x, l.a, l.a, l.r, l.r, l.c, 1, 1.0, 0.0),
                        // B = c A A + b A
                        1 => (l.a, l.a, l.b, l.a, l.r, l.r, l.r, 0, cc, cb),
                        // Y = B X + a X
                        _ => (l.b, x, y, x, l.r, l.c, l.r, 0, 1.0, ca),
                    };
                    let (tm, tn) = tiles_of(m, n);
                    let tile_start = tiles.len() - t0;
                    let index = u32_of("Newton-Schulz problems", problems.len() - p0)?;
                    tiles.extend(std::iter::repeat_n(index, tm * tn));
                    let _ = i;
                    problems.push(Problem {
                        p_off: u32_of("offset", p)?,
                        q_off: u32_of("offset", q)?,
                        c_off: u32_of("offset", c)?,
                        d_off: u32_of("offset", d)?,
                        m: u32_of("rows", m)?,
                        n: u32_of("cols", n)?,
                        k: u32_of("inner", k)?,
                        flags,
                        alpha,
                        beta,
                        tile_start: u32_of("tiles", tile_start)?,
                        tiles_n: u32_of("tiles", tn)?,
                        pad: [0; 4],
                    });
                }
                let (pc, tc) = (problems.len() - p0, tiles.len() - t0);
                problems.resize(p0 + pc.next_multiple_of(PROBLEM_ALIGN), Problem::default());
                tiles.resize(t0 + tc.next_multiple_of(TILE_ALIGN), NONE);
                ranges.push((p0, pc.next_multiple_of(PROBLEM_ALIGN), t0, tc));
            }
        }
        if problems.is_empty() {
            problems.resize(PROBLEM_ALIGN, Problem::default());
        }
        if tiles.is_empty() {
            tiles.resize(TILE_ALIGN, NONE);
        }
        let final_in_y = ns.steps % 2 == 1;
        let mat_table = |final_table: bool| -> Vec<Mat> {
            layouts
                .iter()
                .map(|l| Mat {
                    u_off: l.u as u32,
                    x_off: if final_table && final_in_y { l.y } else { l.x } as u32,
                    rows: l.rows as u32,
                    cols: l.cols as u32,
                    transposed: u32::from(l.transposed),
                    eps: ns.eps as f32,
                    pad: [0; 2],
                })
                .collect()
        };
        let storage = wgpu::BufferUsages::STORAGE;
        let table = |label: &str, bytes: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: storage,
            })
        };
        let (problem_buf, tile_buf, prep_buf, fin_buf) =
            ctx.scoped("Newton-Schulz tables", || {
                Ok((
                    table("ns problems", bytemuck::cast_slice(&problems)),
                    table("ns tiles", bytemuck::cast_slice(&tiles)),
                    table("ns prepare", bytemuck::cast_slice(&mat_table(false))),
                    table("ns finish", bytemuck::cast_slice(&mat_table(true))),
                ))
            })?;
        fn whole(b: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
            b.as_entire_binding()
        }
        fn range(
            b: &wgpu::Buffer,
            start: usize,
            count: usize,
            size: usize,
        ) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: b,
                offset: (start * size) as u64,
                size: std::num::NonZeroU64::new((count * size) as u64),
            })
        }
        let max_x = device.limits().max_compute_workgroups_per_dimension as usize;
        let group = |layout: &wgpu::BindGroupLayout, entries: &[wgpu::BindGroupEntry]| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("newton_schulz"),
                layout,
                entries,
            })
        };
        let (dispatches, prepare_group, finish_group) =
            ctx.scoped("Newton-Schulz bind groups", || {
                let mm_layout = matmul.get_bind_group_layout(0);
                let dispatches = ranges
                    .iter()
                    .map(|&(p0, pc, t0, tc)| {
                        let padded = tc.next_multiple_of(TILE_ALIGN);
                        let bind_group = group(
                            &mm_layout,
                            &[
                                wgpu::BindGroupEntry {
                                    binding: 0,
                                    resource: whole(&mats),
                                },
                                wgpu::BindGroupEntry {
                                    binding: 1,
                                    resource: range(&problem_buf, p0, pc, 64),
                                },
                                wgpu::BindGroupEntry {
                                    binding: 2,
                                    resource: range(&tile_buf, t0, padded, 4),
                                },
                            ],
                        );
                        let x = tc.min(max_x).max(1);
                        let y = tc.div_ceil(x).max(1);
                        MatmulDispatch {
                            bind_group,
                            grid: (x as u32, y as u32),
                        }
                    })
                    .collect::<Vec<_>>();
                let per_matrix = |pipe: &wgpu::ComputePipeline, buf: &wgpu::Buffer| {
                    group(
                        &pipe.get_bind_group_layout(0),
                        &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: whole(&mats),
                            },
                            wgpu::BindGroupEntry {
                                binding: 3,
                                resource: whole(buf),
                            },
                        ],
                    )
                };
                Ok((
                    dispatches,
                    per_matrix(&prepare, &prep_buf),
                    per_matrix(&finish, &fin_buf),
                ))
            })?;
        if layouts.len() > max_x {
            return Err(Error::TooManyElements {
                what: "Newton-Schulz matrices per batch",
                len: layouts.len() as u64,
                limit: max_x as u64,
            });
        }
        Ok(Self {
            ctx: ctx.clone(),
            ns: *ns,
            layouts,
            mats,
            matmul,
            prepare,
            finish,
            prepare_group,
            finish_group,
            dispatches,
            _tables: vec![problem_buf, tile_buf, prep_buf, fin_buf],
        })
    }

    /// Bytes of device memory a batch of `shapes` takes: each matrix (r x c, r = min) with
    /// its workspace, 3 r·c + 2 r² f32.
    pub fn batch_bytes(shapes: &[(usize, usize)]) -> u64 {
        shapes
            .iter()
            .map(|&(rows, cols)| {
                let (r, c) = (rows.min(cols) as u64, rows.max(cols) as u64);
                4 * (3 * r * c + 2 * r * r)
            })
            .sum()
    }

    /// Split `shapes` (in order) into consecutive batches of at most `max_bytes` each
    /// ([`Self::batch_bytes`]); a matrix larger than `max_bytes` gets a batch of its own
    /// (which [`Self::new`] then refuses with [`Error::BufferTooLarge`]).
    pub fn split(shapes: &[(usize, usize)], max_bytes: u64) -> Vec<Vec<(usize, usize)>> {
        let mut out: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut used = 0u64;
        for &s in shapes {
            let b = Self::batch_bytes(&[s]);
            match out.last_mut() {
                Some(last) if used + b <= max_bytes => {
                    last.push(s);
                    used += b;
                }
                _ => {
                    out.push(vec![s]);
                    used = b;
                }
            }
        }
        out
    }

    /// The buffer holding every matrix (and the workspace).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.mats
    }

    /// Element offset in [`Self::buffer`] of matrix `i` (row-major, rows x cols): the
    /// input before [`Self::encode`]'s work runs, the result after.
    pub fn matrix_offset(&self, i: usize) -> Option<usize> {
        self.layouts.get(i).map(|l| l.u)
    }

    /// Matrices in the batch.
    pub fn len(&self) -> usize {
        self.layouts.len()
    }

    /// Whether the batch is empty (never: [`Self::new`] refuses an empty batch).
    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }

    /// Multiply-adds times 2 of one orthogonalisation of the whole batch.
    pub fn flops(&self) -> f64 {
        self.layouts
            .iter()
            .map(|l| self.ns.flops(l.rows, l.cols))
            .sum()
    }

    /// Record the orthogonalisation of every matrix (in place) into `pass`.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        let n = self.layouts.len() as u32;
        pass.set_pipeline(&self.prepare);
        pass.set_bind_group(0, &self.prepare_group, &[]);
        pass.dispatch_workgroups(n, 1, 1);
        pass.set_pipeline(&self.matmul);
        for d in &self.dispatches {
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.grid.0, d.grid.1, 1);
        }
        pass.set_pipeline(&self.finish);
        pass.set_bind_group(0, &self.finish_group, &[]);
        pass.dispatch_workgroups(n, 1, 1);
    }

    /// Upload `inputs` (one row-major matrix per shape), orthogonalise them in one
    /// submission and read the results back. Errors: a wrong count or length
    /// ([`Error::LengthMismatch`]), device errors.
    pub fn run(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if inputs.len() != self.layouts.len() {
            return Err(Error::LengthMismatch {
                what: "Newton-Schulz inputs",
                expected: self.layouts.len(),
                got: inputs.len(),
            });
        }
        for (l, u) in self.layouts.iter().zip(inputs) {
            if u.len() != l.rows * l.cols {
                return Err(Error::LengthMismatch {
                    what: "Newton-Schulz input matrix",
                    expected: l.rows * l.cols,
                    got: u.len(),
                });
            }
        }
        for (l, u) in self.layouts.iter().zip(inputs) {
            self.ctx
                .queue()
                .write_buffer(&self.mats, l.u as u64 * 4, bytemuck::cast_slice(u));
        }
        self.submit();
        self.layouts
            .iter()
            .map(|l| read_f32(&self.ctx, &self.mats, l.u, l.rows * l.cols))
            .collect()
    }

    /// Submit one orthogonalisation of the batch as it is in the buffer (for timing).
    pub fn submit(&self) {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("newton_schulz"),
                });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("newton_schulz"),
                timestamp_writes: None,
            });
            self.encode(&mut pass);
        }
        self.ctx.queue().submit([encoder.finish()]);
    }
}
