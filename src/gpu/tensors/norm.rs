//! The gradient norm over caller ranges (`clip_grad_norm_` and the non-finite check that
//! `skip_nonfinite` reads): `norm.wgsl`'s `partial_sums_external`, one dispatch per unit of
//! the step's plan (one partial sum per block, in the plan's block order), then its `finish`.

use std::num::NonZeroU64;

use super::layout::Plan;
use crate::dispatch::grid;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::gradients::GradControl;
use crate::gpu::kernel::compute_pipeline;

const NORM: &str = include_str!("../../../shaders/norm.wgsl");

/// The two passes, their partial sums and per-dispatch uniforms (grown as plans grow).
pub(super) struct TensorNorm {
    ctx: GpuContext,
    partial: wgpu::ComputePipeline,
    finish: wgpu::ComputePipeline,
    flag: wgpu::Buffer,
    partials: Option<wgpu::Buffer>,
    passes: Option<wgpu::Buffer>,
    stride: u64,
}

fn entry(binding: u32, buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset,
            size: NonZeroU64::new(size),
        }),
    }
}

impl TensorNorm {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let device = ctx.device();
        crate::gpu::shaders::check_counts(
            "norm.wgsl (caller ranges)",
            crate::gpu::shaders::BindingCounts {
                storage: crate::gpu::shaders::NORM_STORAGE_BUFFERS,
                uniform: 1,
                dynamic_uniform: 0,
            },
            &device.limits(),
        )?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("norm.wgsl"),
            source: wgpu::ShaderSource::Wgsl(
                crate::gpu::shaders::with_lanes(NORM, ctx.uses_u64_lanes()).into(),
            ),
        });
        let constants = [("LOW_PRECISION", 0.0)];
        let pipeline =
            |entry| compute_pipeline(device, entry, &module, None, entry, &constants, true);
        let partial = pipeline("partial_sums_external");
        let finish = pipeline("finish");
        ctx.pop_scope(scope, "norm pipeline creation")?;
        let flag = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("norm nonfinite flag"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let stride = 32u64.next_multiple_of(u64::from(
            device.limits().min_uniform_buffer_offset_alignment,
        ));
        Ok(Self {
            ctx: ctx.clone(),
            partial,
            finish,
            flag,
            partials: None,
            passes: None,
            stride,
        })
    }

    /// Record both passes for `plan`, whose unit `u` reads its gradients from `grads[u]`
    /// (buffer, window), with the optimizer's tensor `table` and `control` block.
    pub fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Plan,
        grads: &[(&wgpu::Buffer, (u64, u64))],
        table: &wgpu::Buffer,
        control: &wgpu::Buffer,
        block_lanes: u64,
    ) {
        let device = self.ctx.device();
        let partial_bytes = u64::from(plan.blocks).max(1) * 4;
        if self
            .partials
            .as_ref()
            .is_none_or(|b| b.size() < partial_bytes)
        {
            self.partials = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("norm partials (caller ranges)"),
                size: partial_bytes.next_power_of_two(),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }));
        }
        let pass_bytes = self.stride * (plan.units.len() as u64 + 1);
        if self.passes.as_ref().is_none_or(|b| b.size() < pass_bytes) {
            self.passes = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("norm passes (caller ranges)"),
                size: pass_bytes.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let (Some(partials), Some(passes)) = (&self.partials, &self.passes) else {
            return;
        };
        let mut info = vec![0u32; (pass_bytes / 4) as usize];
        let words = (self.stride / 4) as usize;
        for (u, unit) in plan.units.iter().enumerate() {
            info[u * words..u * words + 8].copy_from_slice(&[
                0,
                0,
                unit.blocks,
                plan.blocks,
                unit.first_block,
                unit.table_base,
                block_lanes as u32,
                0,
            ]);
        }
        let last = plan.units.len() * words;
        info[last + 3] = plan.blocks;
        self.ctx
            .queue()
            .write_buffer(passes, 0, bytemuck::cast_slice(&info));
        let control_bytes = std::mem::size_of::<GradControl>() as u64;
        let limit = device.limits().max_compute_workgroups_per_dimension;
        let groups: Vec<wgpu::BindGroup> = plan
            .units
            .iter()
            .zip(grads)
            .enumerate()
            .map(|(u, (_, (buffer, window)))| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("norm unit (caller ranges)"),
                    layout: &self.partial.get_bind_group_layout(0),
                    entries: &[
                        entry(0, passes, self.stride * u as u64, 32),
                        entry(1, buffer, window.0, window.1),
                        entry(2, partials, 0, partial_bytes),
                        entry(3, control, 0, control_bytes),
                        entry(4, &self.flag, 0, 4),
                        wgpu::BindGroupEntry {
                            binding: 6,
                            resource: table.as_entire_binding(),
                        },
                    ],
                })
            })
            .collect();
        let finish_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("norm finish (caller ranges)"),
            layout: &self.finish.get_bind_group_layout(0),
            entries: &[
                entry(0, passes, self.stride * plan.units.len() as u64, 32),
                entry(2, partials, 0, partial_bytes),
                entry(3, control, 0, control_bytes),
                entry(4, &self.flag, 0, 4),
            ],
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("grad norm (caller ranges)"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.partial);
        for (unit, bind_group) in plan.units.iter().zip(&groups) {
            let (x, y) = grid(u64::from(unit.blocks), limit);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        pass.set_pipeline(&self.finish);
        pass.set_bind_group(0, &finish_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
}
