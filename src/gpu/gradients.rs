//! The gradient pipeline applied inside every optimizer kernel: unscale (mixed-precision loss
//! scale), clip by value (`clip_grad_value_`) and clip by global norm (`clip_grad_norm_`),
//! the norm computed on the device by a fixed-order reduction (`shaders/norm.wgsl`) in the
//! same submission as the step: no read-back.
//!
//! ```text
//! g = clamp(g * grad_scale, -clip_value, clip_value)
//! norm = sqrt(sum g^2);  coef = min(1, max_norm / (norm + 1e-6))      (clip by norm)
//! g = g * coef
//! ```

use std::num::NonZeroU64;

use super::buffer::FlatParams;
use crate::dispatch::{grid, padded_len, window_header, windows};
use crate::error::Result;

const NORM: &str = include_str!("../../shaders/norm.wgsl");

pub use crate::grads::{GradControl, GradOptions};

/// A storage buffer holding a [`GradControl`].
pub(crate) fn control_buffer(
    ctx: &super::context::GpuContext,
    options: &GradOptions,
) -> wgpu::Buffer {
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("fused-optim grad control"),
        size: std::mem::size_of::<GradControl>() as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buffer, 0, bytemuck::bytes_of(&options.control()));
    buffer
}

/// The two norm passes, built once.
pub(crate) struct NormClipper {
    partial: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    launches: Vec<(wgpu::BindGroup, (u32, u32))>,
    finish_group: wgpu::BindGroup,
    _pass_buffer: wgpu::Buffer,
    _partials: wgpu::Buffer,
    _flag: wgpu::Buffer,
    _low_dummy: wgpu::Buffer,
}

const LANES_PER_GROUP: u64 = 256 * 4;

impl NormClipper {
    /// `low`: (LOW_PRECISION code, packed gradient buffer) when the gradients are f16/bf16.
    pub fn new(
        params: &FlatParams,
        control: &wgpu::Buffer,
        low: Option<(u32, &wgpu::Buffer)>,
    ) -> Result<Self> {
        let ctx = params.context();
        super::kernel::check_launch(ctx)?;
        let device = ctx.device();
        let limits = device.limits();
        super::shaders::check_counts(
            "norm.wgsl",
            super::shaders::BindingCounts {
                storage: super::shaders::NORM_STORAGE_BUFFERS,
                uniform: 1,
                dynamic_uniform: 0,
            },
            &limits,
        )?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let source = super::shaders::with_lanes(NORM, ctx.uses_u64_lanes());
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("norm.wgsl"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let constants = [("LOW_PRECISION", f64::from(low.map_or(0, |l| l.0)))];
        let pipeline = |entry| {
            super::kernel::compute_pipeline(device, entry, &module, None, entry, &constants, true)
        };
        let partial = pipeline("partial_sums");
        let finish = pipeline("finish");
        ctx.pop_scope(scope, "norm pipeline creation")?;
        let wins = windows(
            params.len() as u64,
            ctx.max_binding_bytes(),
            u64::from(limits.min_storage_buffer_offset_alignment),
        );
        let stride = 32u64.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let groups: Vec<u64> = wins
            .iter()
            .map(|w| (padded_len(w.len) / 4).div_ceil(LANES_PER_GROUP))
            .collect();
        let total: u64 = groups.iter().sum();
        let pass_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm passes"),
            size: stride * (wins.len() as u64 + 1),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let partials = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm partials"),
            size: total.max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let low_dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm f32 grads"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let low_grads = low.map_or(&low_dummy, |l| l.1);
        let flag = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm nonfinite flag"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let entry = |binding, buffer, offset, size| wgpu::BindGroupEntry {
            binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset,
                size: NonZeroU64::new(size),
            }),
        };
        let mut first = 0u64;
        let mut launches = Vec::new();
        for (k, w) in wins.iter().enumerate() {
            // Workgroup counts are at most the lanes (< 2^32, `window_header`).
            let [n, first_lane, _, _] = window_header(w)?;
            let info: [u32; 8] = [
                n,
                first as u32,
                groups[k] as u32,
                total as u32,
                first_lane,
                0,
                0,
                0,
            ];
            ctx.queue()
                .write_buffer(&pass_buffer, stride * k as u64, bytemuck::cast_slice(&info));
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("norm window"),
                layout: &partial.get_bind_group_layout(0),
                entries: &[
                    entry(0, &pass_buffer, stride * k as u64, 32),
                    entry(1, params.grads_buffer(), w.byte_offset(), w.bound_bytes()),
                    entry(2, &partials, 0, total.max(1) * 4),
                    entry(3, control, 0, std::mem::size_of::<GradControl>() as u64),
                    entry(4, &flag, 0, 4),
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: low_grads.as_entire_binding(),
                    },
                ],
            });
            launches.push((
                bind_group,
                grid(groups[k], limits.max_compute_workgroups_per_dimension),
            ));
            first += groups[k];
        }
        let last = stride * wins.len() as u64;
        let info: [u32; 8] = [0, 0, 0, total as u32, 0, 0, 0, 0];
        ctx.queue()
            .write_buffer(&pass_buffer, last, bytemuck::cast_slice(&info));
        let finish_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("norm finish"),
            layout: &finish.get_bind_group_layout(0),
            entries: &[
                entry(0, &pass_buffer, last, 32),
                entry(2, &partials, 0, total.max(1) * 4),
                entry(3, control, 0, std::mem::size_of::<GradControl>() as u64),
                entry(4, &flag, 0, 4),
            ],
        });
        Ok(Self {
            partial,
            finish,
            launches,
            finish_group,
            _pass_buffer: pass_buffer,
            _partials: partials,
            _flag: flag,
            _low_dummy: low_dummy,
        })
    }

    /// Record both passes (before the optimizer pass, in the same encoder).
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("grad norm"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.partial);
        for (bind_group, (x, y)) in &self.launches {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
        pass.set_pipeline(&self.finish);
        pass.set_bind_group(0, &self.finish_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
}
