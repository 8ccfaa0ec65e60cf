//! `GpuTimer`: device time of a stretch of submitted work, from timestamp queries written
//! before and after it (where the adapter has `TIMESTAMP_QUERY_INSIDE_ENCODERS`).

use std::time::{Duration, Instant};

use super::context::GpuContext;
use crate::error::{Error, Result};

/// Times submitted work with device timestamps, or with the wall clock around submit + wait
/// when the adapter has no timestamp queries.
pub struct GpuTimer {
    ctx: GpuContext,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuTimer {
    /// A timer on `ctx`'s device.
    pub fn new(ctx: &GpuContext) -> Self {
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let queries = ctx.device().features().contains(wanted).then(|| {
            let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("fused-optim timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("timer read"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, read)
        });
        Self {
            ctx: ctx.clone(),
            queries,
        }
    }

    /// True when times come from device timestamps.
    pub fn uses_timestamps(&self) -> bool {
        self.queries.is_some()
    }

    /// Run `submit_work` (which submits to this context's queue) and return the time the
    /// device spent from before its first command to after its last; waits for the device.
    pub fn time(&self, submit_work: impl FnOnce()) -> Result<Duration> {
        let Some((set, resolve, read)) = &self.queries else {
            self.ctx.wait()?;
            let start = Instant::now();
            submit_work();
            self.ctx.wait()?;
            return Ok(start.elapsed());
        };
        let device = self.ctx.device();
        let mut begin = device.create_command_encoder(&Default::default());
        begin.write_timestamp(set, 0);
        self.ctx.queue().submit([begin.finish()]);
        submit_work();
        let mut end = device.create_command_encoder(&Default::default());
        end.write_timestamp(set, 1);
        end.resolve_query_set(set, 0..2, resolve, 0);
        end.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        self.ctx.queue().submit([end.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        read.map_async(wgpu::MapMode::Read, .., move |r| {
            tx.send(r).ok();
        });
        self.ctx.wait()?;
        let mapped = rx.recv().map_err(|e| Error::Wgpu {
            during: "timestamp map",
            message: e.to_string(),
        })?;
        mapped.map_err(|e| Error::Wgpu {
            during: "timestamp map",
            message: e.to_string(),
        })?;
        let ticks: [u64; 2] = {
            let view = read.get_mapped_range(..).map_err(|e| Error::Wgpu {
                during: "timestamp read",
                message: e.to_string(),
            })?;
            *bytemuck::from_bytes(&view[..16])
        };
        read.unmap();
        let period = f64::from(self.ctx.queue().get_timestamp_period());
        let nanos = ticks[1].saturating_sub(ticks[0]) as f64 * period;
        Ok(Duration::from_nanos(nanos as u64))
    }
}
