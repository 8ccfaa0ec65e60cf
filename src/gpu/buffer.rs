//! Flat device buffers: creation, upload, read-back (staging + map), and named segments.

#[cfg(feature = "ndarray")]
use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use super::context::GpuContext;
use crate::dispatch::padded_len;
use crate::error::{Error, Result};
use crate::segments::{SegmentShape, SegmentTable, BINDING_ALIGN};

/// Usages of every flat buffer fused-optim allocates.
pub(crate) const FLAT_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Bytes a flat buffer of `len` f32 elements occupies (whole vec4 lanes).
/// Saturates at `u64::MAX` (refused by every size check) instead of wrapping: an `n` near
/// `usize::MAX / 4` once wrapped to a tiny buffer.
pub fn flat_bytes(len: usize) -> u64 {
    padded_len(len as u64).saturating_mul(4)
}

/// A zero-filled flat f32 buffer of `len` elements (padded to whole vec4 lanes).
pub(crate) fn create_flat(
    ctx: &GpuContext,
    label: &'static str,
    len: usize,
) -> Result<wgpu::Buffer> {
    crate::dispatch::check_elements(label, len as u64)?;
    let bytes = flat_bytes(len);
    let limit = ctx.device().limits().max_buffer_size;
    if bytes > limit {
        return Err(Error::BufferTooLarge {
            what: label,
            bytes,
            limit,
        });
    }
    // wgpu zero-initialises new buffers. Inside error scopes: an allocation the device
    // cannot back is an out-of-memory error, which the default handler would panic on.
    ctx.scoped(label, || {
        Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: FLAT_USAGE,
            mapped_at_creation: false,
        }))
    })
}

/// Fill elements `[0, len)` of `buffer` with `value` (through the queue; visible to the next
/// submission).
pub(crate) fn fill(ctx: &GpuContext, buffer: &wgpu::Buffer, len: usize, value: f32) {
    if value.to_bits() == 0 {
        return; // already zero
    }
    const CHUNK: usize = 1 << 20;
    let block = vec![value; CHUNK.min(len)];
    let mut start = 0;
    while start < len {
        let n = CHUNK.min(len - start);
        ctx.queue()
            .write_buffer(buffer, start as u64 * 4, bytemuck::cast_slice(&block[..n]));
        start += n;
    }
}

/// Copy elements `[start, start + len)` of any f32 `buffer` (with `COPY_SRC` usage) back to
/// the host. Waits for the device ([`read_f32_async`], waited for; on the web
/// [`Error::WouldBlock`]).
pub fn read_f32(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    start: usize,
    len: usize,
) -> Result<Vec<f32>> {
    super::wait::block_on("read_f32", read_f32_async(ctx, buffer, start, len))?
}

/// [`read_f32`] without blocking: the read-back to await on the web.
pub async fn read_f32_async(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    start: usize,
    len: usize,
) -> Result<Vec<f32>> {
    let bytes = read_bytes_async(ctx, buffer, start as u64 * 4, len as u64 * 4).await?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// Copy `len` bytes from byte `offset` of `buffer` (both multiples of 4; the buffer needs
/// `COPY_SRC`) back to the host. Waits for the device ([`read_bytes_async`], waited for; on
/// the web [`Error::WouldBlock`]).
pub fn read_bytes(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    super::wait::block_on("read_bytes", read_bytes_async(ctx, buffer, offset, len))?
}

/// [`read_bytes`] without blocking. Natively the device is polled until the copy is mapped;
/// on the web the browser maps it from its event loop while this awaits.
pub async fn read_bytes_async(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    ctx.check_alive("read-back")?;
    if len == 0 {
        return Ok(Vec::new());
    }
    require_usage(
        buffer,
        "buffer to read",
        wgpu::BufferUsages::COPY_SRC,
        "COPY_SRC",
    )?;
    let bytes = len;
    let start_byte = offset;
    // Mappable memory cannot be a storage buffer, so the data goes through a staging copy.
    // In error scopes: an allocation failure, or a device destroyed by another thread since
    // the check (its new buffers are invalid and mapping one fails validation), is a typed
    // error rather than a panic of the default handler.
    let scopes = ctx.scopes();
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("fused-optim read-back"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("read-back"),
        });
    encoder.copy_buffer_to_buffer(buffer, start_byte, &staging, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    let map = || {
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            sender.send(r).ok();
        })
    };
    // Natively the map is inside the scopes too (mapping a buffer of a device destroyed
    // meanwhile fails validation). On the web the scopes' answers come first: a caller that
    // stops at that await (the web's one-poll `block_on`) leaves no map pending on a dropped
    // buffer, and a failed map there is reported by its callback.
    #[cfg(not(target_arch = "wasm32"))]
    {
        map();
        scopes.finish_async("read-back").await?;
    }
    #[cfg(target_arch = "wasm32")]
    {
        scopes.finish_async("read-back").await?;
        map();
    }
    // Natively the map callback runs inside a poll; the web needs (and has) no poll.
    #[cfg(not(target_arch = "wasm32"))]
    ctx.wait()?;
    ctx.check_alive("buffer map")?;
    match receiver.receive().await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return Err(Error::Wgpu {
                during: "buffer map",
                message: e.to_string(),
            })
        }
        None => {
            return Err(Error::Wgpu {
                during: "buffer map",
                message: "the map callback never ran".into(),
            })
        }
    }
    let view = staging.get_mapped_range(..).map_err(|e| Error::Wgpu {
        during: "get_mapped_range",
        message: e.to_string(),
    })?;
    let out = view.to_vec();
    drop(view);
    staging.unmap();
    Ok(out)
}

pub(crate) fn require_usage(
    buffer: &wgpu::Buffer,
    what: &'static str,
    usage: wgpu::BufferUsages,
    usage_name: &'static str,
) -> Result<()> {
    if buffer.usage().contains(usage) {
        Ok(())
    } else {
        Err(Error::MissingUsage {
            what,
            usage: usage_name,
            has: format!("{:?}", buffer.usage()),
        })
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its name.
    pub name: String,
    /// First element in the flat buffer.
    pub offset: usize,
    /// Its shape (row-major); the element count is the product.
    pub shape: Vec<usize>,
}

impl Segment {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for a segment of zero elements (never stored: building refuses them).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parameters and gradients of a model on the device: two flat f32 buffers holding named
/// tensors (segments) back to back.
///
/// Each buffer holds `round_up(len, 4)` elements; kernels never write the padding.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`). Clones share the buffers; writes go through the
/// queue, so writes from several threads to the same FlatParams are ordered only by their
/// submissions (give each thread its own FlatParams, as two models would have).
#[derive(Clone, Debug)]
pub struct FlatParams {
    ctx: GpuContext,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    len: usize,
    segments: Vec<Segment>,
    /// The segments' starts and shapes, checked, and their device copy (one
    /// [`DeviceSegment`](crate::DeviceSegment) each), uploaded once when built.
    table: SegmentTable,
    table_buffer: wgpu::Buffer,
}

/// The device copy of a segment table: a storage buffer of `DeviceSegment`s.
fn upload_table(ctx: &GpuContext, table: &SegmentTable) -> Result<wgpu::Buffer> {
    let entries = table.device_entries()?;
    let bytes: &[u8] = bytemuck::cast_slice(&entries);
    ctx.scoped("fused-optim segment table", || {
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("fused-optim segment table"),
            size: bytes.len() as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue().write_buffer(&buffer, 0, bytes);
        Ok(buffer)
    })
}

/// Where the builder starts a segment after `end` elements: `end`, or the next multiple of 4
/// (one vec4 lane) when lane-aligned. In usize: past 2^32 on 64-bit targets.
pub fn segment_start(end: usize, lane_aligned: bool) -> usize {
    if lane_aligned {
        end.next_multiple_of(4)
    } else {
        end
    }
}

/// The offsets [`FlatParamsBuilder`] gives segments of `lens` elements, and the total length
/// (padding included); `None` when the total overflows usize. Pure: nothing is allocated.
pub fn segment_offsets(lens: &[usize], lane_aligned: bool) -> Option<(Vec<usize>, usize)> {
    let mut end = 0usize;
    let mut offsets = Vec::with_capacity(lens.len());
    for &len in lens {
        let start = if lane_aligned {
            end.checked_next_multiple_of(4)?
        } else {
            end
        };
        offsets.push(start);
        end = start.checked_add(len)?;
    }
    Some((offsets, end))
}

/// The most elements a [`FlatParamsBuilder`] collects (`2^32 - 4`, 16 GiB of f32): a segment
/// that would take the set past it is refused before anything is copied or allocated
/// ([`Error::BufferTooLarge`] from [`FlatParamsBuilder::build`]).
pub const MAX_BUILDER_ELEMENTS: usize = (u32::MAX - 3) as usize;

/// Collects named tensors, then uploads them as one [`FlatParams`].
#[derive(Clone, Debug, Default)]
pub struct FlatParamsBuilder {
    segments: Vec<Segment>,
    data: Vec<f32>,
    /// Every segment starts on a multiple of this many elements (1, 4 or
    /// [`BINDING_ALIGN`]); 0 for unaligned (the default).
    align: usize,
    /// Elements asked for when a segment was refused for its size (or its allocation
    /// failed): `build` reports it.
    refused: Option<u64>,
    /// A segment whose explicit shape does not match its values (name, shape, values):
    /// `build` reports it.
    misshaped: Option<(String, Vec<usize>, usize)>,
}

impl FlatParamsBuilder {
    /// Start every segment on a multiple of 4 elements (one vec4 lane), padding with zeros
    /// between segments, as parameter groups need. The padding is part of the flat buffer
    /// (`len()` counts it) and stays 0; address tensors by segment.
    pub fn lane_aligned(mut self) -> Self {
        self.align = self.align.max(4);
        self
    }

    /// Start every segment on a multiple of [`BINDING_ALIGN`] elements (256 bytes, the
    /// largest storage-buffer offset alignment WebGPU allows), padding with zeros between
    /// segments, so that each tensor can be bound at its own offset on every device, as
    /// [`MixedGpuOptimizer`](crate::mixed::MixedGpuOptimizer) needs for its elementwise
    /// groups. Implies [`Self::lane_aligned`]. At most 63 padding elements per segment; the
    /// padding is part of the flat buffer (`len()` counts it) and stays 0.
    pub fn binding_aligned(mut self) -> Self {
        self.align = BINDING_ALIGN;
        self
    }

    /// Append a 1-D tensor.
    pub fn slice(mut self, name: &str, values: &[f32]) -> Self {
        self.push(name, vec![values.len()], values.iter().copied());
        self
    }

    /// Append a tensor of an explicit `shape` (row-major) from its flat `values`; `build`
    /// fails with [`Error::ShapeMismatch`] when the shape's element count is not
    /// `values.len()`.
    pub fn shaped(mut self, name: &str, shape: &[usize], values: &[f32]) -> Self {
        let product = crate::segments::shape_product(shape);
        if product != Some(values.len()) {
            if self.misshaped.is_none() {
                self.misshaped = Some((name.to_string(), shape.to_vec(), values.len()));
            }
            return self;
        }
        self.push(name, shape.to_vec(), values.iter().copied());
        self
    }

    /// Append an ndarray tensor of any shape (copied in logical row-major order).
    #[cfg(feature = "ndarray")]
    pub fn array<S: Data<Elem = f32>, D: Dimension>(
        mut self,
        name: &str,
        values: &ArrayBase<S, D>,
    ) -> Self {
        self.push(name, values.shape().to_vec(), values.iter().copied());
        self
    }

    fn push(&mut self, name: &str, shape: Vec<usize>, values: impl Iterator<Item = f32>) {
        if self.refused.is_some() {
            return;
        }
        let start = self.data.len().next_multiple_of(self.align.max(1));
        // The element count (checked: a shape's product may overflow), then the size check
        // and the reservation, before anything is copied: a refused segment allocates nothing.
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(len);
        if end > MAX_BUILDER_ELEMENTS || self.data.try_reserve_exact(end - self.data.len()).is_err()
        {
            self.refused = Some(end as u64);
            return;
        }
        self.data.resize(start, 0.0);
        let offset = self.data.len();
        self.data.extend(values);
        self.segments.push(Segment {
            name: name.to_string(),
            offset,
            shape,
        });
    }

    /// Upload. Fails on an empty set, an empty or duplicate segment, more than
    /// [`MAX_BUILDER_ELEMENTS`] elements (or host memory for them), or a buffer past the
    /// device limit.
    pub fn build(self, ctx: &GpuContext) -> Result<FlatParams> {
        if let Some(elements) = self.refused {
            return Err(Error::BufferTooLarge {
                what:
                    "flat parameter set (FlatParamsBuilder, at most MAX_BUILDER_ELEMENTS elements)",
                bytes: elements.saturating_mul(4),
                limit: MAX_BUILDER_ELEMENTS as u64 * 4,
            });
        }
        if let Some((segment, shape, len)) = self.misshaped {
            return Err(Error::ShapeMismatch {
                product: crate::segments::shape_product(&shape).unwrap_or(usize::MAX),
                segment,
                shape,
                len,
            });
        }
        if self.data.is_empty() {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        // A set of the names seen so far: linear in the number of segments (the pairwise
        // scan it replaces made 5 * 10^9 comparisons for 10^5 segments).
        let mut seen = std::collections::HashSet::with_capacity(self.segments.len());
        for s in &self.segments {
            if s.is_empty() {
                return Err(Error::Segment {
                    name: s.name.clone(),
                    reason: "has no elements",
                });
            }
            if !seen.insert(s.name.as_str()) {
                return Err(Error::Segment {
                    name: s.name.clone(),
                    reason: "appears twice",
                });
            }
        }
        let table = SegmentTable::new(
            self.data.len(),
            self.segments
                .iter()
                .map(|s| SegmentShape {
                    start: s.offset,
                    shape: s.shape.clone(),
                })
                .collect(),
        )?;
        let mut flat = FlatParams::zeros(ctx, self.data.len())?;
        flat.write_params(&self.data)?;
        flat.table_buffer = upload_table(ctx, &table)?;
        flat.table = table;
        flat.segments = self.segments;
        Ok(flat)
    }
}

impl FlatParams {
    /// Start collecting named tensors.
    pub fn builder() -> FlatParamsBuilder {
        FlatParamsBuilder::default()
    }

    /// One 1-D segment named `"params"` holding `values`; gradients start at 0.
    pub fn from_slice(ctx: &GpuContext, values: &[f32]) -> Result<Self> {
        Self::builder().slice("params", values).build(ctx)
    }

    /// `len` zero parameters in one segment named `"params"`.
    pub fn zeros(ctx: &GpuContext, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        let params = create_flat(ctx, "fused-optim params", len)?;
        let grads = create_flat(ctx, "fused-optim grads", len)?;
        let table = SegmentTable::single(len)?;
        Ok(Self {
            ctx: ctx.clone(),
            params,
            grads,
            len,
            segments: vec![Segment {
                name: "params".into(),
                offset: 0,
                shape: vec![len],
            }],
            table_buffer: upload_table(ctx, &table)?,
            table,
        })
    }

    /// Use buffers the caller already has (e.g. gradients written by its own backward pass).
    ///
    /// Both need `STORAGE` usage (and `COPY_SRC`/`COPY_DST` for reads and writes through this
    /// type) and at least `round_up(len, 4) * 4` bytes: the kernels work on whole `vec4`
    /// lanes but never write elements at or past `len`.
    pub fn from_buffers(
        ctx: &GpuContext,
        params: wgpu::Buffer,
        grads: wgpu::Buffer,
        len: usize,
    ) -> Result<Self> {
        if len == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        ctx.check_alive("FlatParams::from_buffers")?;
        crate::dispatch::check_elements("params buffer", len as u64)?;
        let needed = flat_bytes(len);
        for (what, b) in [("params buffer", &params), ("grads buffer", &grads)] {
            require_usage(b, what, wgpu::BufferUsages::STORAGE, "STORAGE")?;
            if b.size() < needed {
                return Err(Error::BufferTooSmall {
                    what,
                    needed,
                    got: b.size(),
                });
            }
        }
        let table = SegmentTable::single(len)?;
        Ok(Self {
            ctx: ctx.clone(),
            params,
            grads,
            len,
            segments: vec![Segment {
                name: "params".into(),
                offset: 0,
                shape: vec![len],
            }],
            table_buffer: upload_table(ctx, &table)?,
            table,
        })
    }

    /// Number of logical elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (an empty set is refused at construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The named tensors, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment table: every segment's start and shape (checked when built).
    pub fn segment_table(&self) -> &SegmentTable {
        &self.table
    }

    /// The device copy of [`Self::segment_table`]: one
    /// [`DeviceSegment`](crate::DeviceSegment) (start, length, rows, cols; u32) per segment,
    /// uploaded when the params were built.
    pub fn segment_table_buffer(&self) -> &wgpu::Buffer {
        &self.table_buffer
    }

    /// One segment by name.
    pub fn segment(&self, name: &str) -> Result<&Segment> {
        self.segments
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Segment {
                name: name.to_string(),
                reason: "does not exist",
            })
    }

    /// The parameter buffer.
    pub fn params_buffer(&self) -> &wgpu::Buffer {
        &self.params
    }

    /// The gradient buffer.
    pub fn grads_buffer(&self) -> &wgpu::Buffer {
        &self.grads
    }

    /// The context the buffers live on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Overwrite all parameters (takes effect at the next submission).
    pub fn write_params(&self, values: &[f32]) -> Result<()> {
        self.ctx.check_alive("write_params")?;
        check_len("params", self.len, values.len())?;
        require_usage(
            &self.params,
            "params buffer",
            wgpu::BufferUsages::COPY_DST,
            "COPY_DST",
        )?;
        self.ctx
            .queue()
            .write_buffer(&self.params, 0, bytemuck::cast_slice(values));
        Ok(())
    }

    /// Overwrite all gradients (takes effect at the next submission).
    pub fn write_grads(&self, values: &[f32]) -> Result<()> {
        self.ctx.check_alive("write_grads")?;
        check_len("grads", self.len, values.len())?;
        require_usage(
            &self.grads,
            "grads buffer",
            wgpu::BufferUsages::COPY_DST,
            "COPY_DST",
        )?;
        self.ctx
            .queue()
            .write_buffer(&self.grads, 0, bytemuck::cast_slice(values));
        Ok(())
    }

    /// Overwrite the gradient of one segment.
    pub fn write_segment_grads(&self, name: &str, values: &[f32]) -> Result<()> {
        self.ctx.check_alive("write_segment_grads")?;
        let s = self.segment(name)?;
        check_len("segment grads", s.len(), values.len())?;
        require_usage(
            &self.grads,
            "grads buffer",
            wgpu::BufferUsages::COPY_DST,
            "COPY_DST",
        )?;
        self.ctx.queue().write_buffer(
            &self.grads,
            s.offset as u64 * 4,
            bytemuck::cast_slice(values),
        );
        Ok(())
    }

    /// Overwrite the gradient of one segment from an ndarray of the segment's shape.
    #[cfg(feature = "ndarray")]
    pub fn write_segment_grads_array<S: Data<Elem = f32>, D: Dimension>(
        &self,
        name: &str,
        values: &ArrayBase<S, D>,
    ) -> Result<()> {
        let s = self.segment(name)?;
        if values.shape() != s.shape.as_slice() {
            return Err(Error::LengthMismatch {
                what: "segment grads (elements; the shapes differ)",
                expected: s.len(),
                got: values.len(),
            });
        }
        let flat: Vec<f32> = values.iter().copied().collect();
        self.write_segment_grads(name, &flat)
    }

    /// Read all parameters back (waits for the device; on the web
    /// [`Error::WouldBlock`]: use [`FlatParams::read_params_async`]).
    pub fn read_params(&self) -> Result<Vec<f32>> {
        read_f32(&self.ctx, &self.params, 0, self.len)
    }

    /// [`FlatParams::read_params`] without blocking (the read-back to await on the web).
    pub async fn read_params_async(&self) -> Result<Vec<f32>> {
        read_f32_async(&self.ctx, &self.params, 0, self.len).await
    }

    /// Read all gradients back (waits for the device; on the web [`Error::WouldBlock`]).
    pub fn read_grads(&self) -> Result<Vec<f32>> {
        read_f32(&self.ctx, &self.grads, 0, self.len)
    }

    /// [`FlatParams::read_grads`] without blocking.
    pub async fn read_grads_async(&self) -> Result<Vec<f32>> {
        read_f32_async(&self.ctx, &self.grads, 0, self.len).await
    }

    /// Read one segment's parameters back, flat (row-major), without ndarray (waits; on the
    /// web [`Error::WouldBlock`]).
    pub fn read_segment_values(&self, name: &str) -> Result<Vec<f32>> {
        let s = self.segment(name)?;
        read_f32(&self.ctx, &self.params, s.offset, s.len())
    }

    /// [`FlatParams::read_segment_values`] without blocking.
    pub async fn read_segment_values_async(&self, name: &str) -> Result<Vec<f32>> {
        let s = self.segment(name)?;
        read_f32_async(&self.ctx, &self.params, s.offset, s.len()).await
    }

    /// Read one segment's parameters back as an array of its shape (waits; on the web
    /// [`Error::WouldBlock`]).
    #[cfg(feature = "ndarray")]
    pub fn read_segment(&self, name: &str) -> Result<ArrayD<f32>> {
        super::wait::block_on("read_segment", self.read_segment_async(name))?
    }

    /// [`FlatParams::read_segment`] without blocking.
    #[cfg(feature = "ndarray")]
    pub async fn read_segment_async(&self, name: &str) -> Result<ArrayD<f32>> {
        let s = self.segment(name)?.clone();
        let values = self.read_segment_values_async(name).await?;
        ArrayD::from_shape_vec(IxDyn(&s.shape), values).map_err(|e| Error::Wgpu {
            during: "shaping a segment",
            message: e.to_string(),
        })
    }
}
