//! The step counter (and optionally the loss scale) kept on the device, for steps that the
//! device may skip (`GradOptions::skip_nonfinite`): the host issues step after step without
//! learning which ones were skipped, and each step still uses the right `t`.
//!
//! How (see `shaders/device_step.wgsl`): every per-step uniform word is classified
//! ([`WordClass`]) as independent of `t`, `lr * f(t)` or `f(t)`. The host writes the step's
//! uniform as usual but with `lr` in the `lr * f(t)` words, and keeps a ring of
//! [`STEP_ROWS`] table rows, row `t % STEP_ROWS` holding the `f(t)` values of step `t`
//! (computed in f64 by the same code as the host path, with `lr = 1`). A one-workgroup pass
//! before the optimizer kernel counts the step (unless the norm pass found inf/NaN) and
//! completes the uniform from row `t`. After the kernel, an optional second pass applies
//! GradScaler's rule to the loss scale on the device.
//!
//! The host needs rows for every `t` the next step might have: from the last count it knows
//! (`confirmed`) to that plus the steps issued since. It learns the count only when it reads
//! anyway (`last_step_skipped`, checkpoints) or, at the latest, once every [`STEP_ROWS`] − 1
//! unconfirmed steps (an 8-byte read that waits for the device: once per ~1000 steps).

use std::num::NonZeroU64;

use super::buffer::read_bytes_async;
use super::context::GpuContext;
use super::groups::Group;
use super::kernel::MAX_GROUPS;
use crate::error::{Error, Result};
use crate::grads::GradControl;
use crate::optim::{HostState, OptimizerConfig, StepUniform, WordClass, MAX_UNIFORM_BYTES};
use crate::scaler::LossScaler;

const SOURCE: &str = include_str!("../../shaders/device_step.wgsl");

/// Rows of the step table: how many steps may be issued between two counts the host knows.
pub const STEP_ROWS: u64 = 1024;

/// Words of one step's uniform (`WORDS` in the shader).
const WORDS: usize = MAX_GROUPS * MAX_UNIFORM_BYTES as usize / 4;

/// The device step counter and loss scaler state. Mirror of `struct DeviceStep` in `shaders/device_step.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DeviceStepBlock {
    /// Steps issued (resolve passes run) since the last reset.
    pub calls: u32,
    /// Steps taken (PyTorch's `step`).
    pub steps: u32,
    /// 1 when the device loss scaler is on.
    pub scaler_on: u32,
    /// Clean steps since the last growth or back-off.
    pub growth_tracker: u32,
    /// The loss scale.
    pub scale: f32,
    /// GradScaler's growth_factor.
    pub growth_factor: f32,
    /// GradScaler's backoff_factor.
    pub backoff_factor: f32,
    /// GradScaler's growth_interval.
    pub growth_interval: u32,
}

/// Byte offset of the f32 loss scale in the counter buffer.
pub const SCALE_OFFSET: u64 = 16;

/// What the host last learnt from the device's counter.
#[derive(Clone, Debug, Default)]
struct Confirmed {
    /// Step calls counted by the device.
    calls: u64,
    /// Steps taken among them.
    steps: u64,
    /// Each group's host state at `steps`.
    hosts: Vec<HostState>,
}

pub(crate) struct DeviceSteps {
    ctx: GpuContext,
    resolve: wgpu::ComputePipeline,
    update_scale: wgpu::ComputePipeline,
    resolve_group: wgpu::BindGroup,
    scale_group: wgpu::BindGroup,
    table: wgpu::Buffer,
    counter: wgpu::Buffer,
    _classes: wgpu::Buffer,
    /// Word classes of one group's uniform.
    classes: &'static [WordClass],
    /// Steps issued since the last reset.
    issued: u64,
    /// The last (calls, steps) pair read from the device, and each group's host state at
    /// that step count. Behind a lock so that a read-back through `&self`
    /// (`last_step_skipped`) can record what it learnt.
    confirmed: std::sync::Mutex<Confirmed>,
    /// Table rows are valid for t up to `rows_through`; `row_hosts` are the groups' host
    /// states (lr = 1) at that step.
    rows_through: u64,
    row_hosts: Vec<HostState>,
    scaler_on: bool,
}

impl DeviceSteps {
    /// Build the passes over the optimizer's uniform ring (`ring`, slots `stride` bytes
    /// apart) and gradient control block, and start counting from the groups' host states.
    pub fn new(
        ctx: &GpuContext,
        ring: &wgpu::Buffer,
        control: &wgpu::Buffer,
        groups: &[Group],
    ) -> Result<Self> {
        let hosts: Vec<HostState> = groups.iter().map(|g| g.host).collect();
        let device = ctx.device();
        super::shaders::check_counts(
            "device_step.wgsl",
            super::shaders::BindingCounts {
                storage: super::shaders::DEVICE_STEP_STORAGE_BUFFERS,
                uniform: 0,
                dynamic_uniform: 0,
            },
            &device.limits(),
        )?;
        let classes = groups[0].config.word_classes().ok_or(Error::Unsupported {
            optimizer: groups[0].config.name(),
            feature: "the device-side step counter (its per-step uniform depends on more \
                          than the step number and the current lr)",
        })?;
        let words_per_group = classes.len();
        let mut class_words = vec![0u32; WORDS];
        for g in 0..groups.len() {
            for (w, c) in classes.iter().enumerate() {
                class_words[g * words_per_group + w] = *c as u32;
            }
        }
        let storage = |label, size, extra| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
                mapped_at_creation: false,
            })
        };
        let table = storage(
            "fused-optim step table",
            STEP_ROWS * WORDS as u64 * 4,
            wgpu::BufferUsages::empty(),
        );
        let class_buffer = storage(
            "fused-optim word classes",
            WORDS as u64 * 4,
            wgpu::BufferUsages::empty(),
        );
        ctx.queue()
            .write_buffer(&class_buffer, 0, bytemuck::cast_slice(&class_words));
        let counter = storage(
            "fused-optim device step",
            std::mem::size_of::<DeviceStepBlock>() as u64,
            wgpu::BufferUsages::COPY_SRC,
        );

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("device_step.wgsl"),
            source: wgpu::ShaderSource::Wgsl(super::shaders::with_grad_control(SOURCE).into()),
        });
        let entry = |binding, read_only, dynamic, size: u64| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: dynamic,
                min_binding_size: NonZeroU64::new(size),
            },
            count: None,
        };
        let block = std::mem::size_of::<DeviceStepBlock>() as u64;
        let control_bytes = std::mem::size_of::<GradControl>() as u64;
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("device step"),
            entries: &[
                entry(0, false, true, WORDS as u64 * 4),
                entry(1, true, false, WORDS as u64 * 4),
                entry(2, true, false, WORDS as u64 * 4),
                entry(3, false, false, control_bytes),
                entry(4, false, false, block),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("device step"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let rows = [("ROWS", STEP_ROWS as f64)];
        let pipeline = |entry| {
            super::kernel::compute_pipeline(
                device,
                entry,
                &module,
                Some(&pipeline_layout),
                entry,
                &rows,
                true,
            )
        };
        let resolve = pipeline("resolve");
        let update_scale = pipeline("update_scale");
        let group = |label| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &layout,
                entries: &[
                    buffer(0, ring, WORDS as u64 * 4),
                    buffer(1, &table, table.size()),
                    buffer(2, &class_buffer, WORDS as u64 * 4),
                    buffer(3, control, control_bytes),
                    buffer(4, &counter, block),
                ],
            })
        };
        let resolve_group = group("device step resolve");
        let scale_group = group("device step scale");
        ctx.pop_scope(scope, "device step pipeline creation")?;
        let mut steps = Self {
            ctx: ctx.clone(),
            resolve,
            update_scale,
            resolve_group,
            scale_group,
            table,
            counter,
            _classes: class_buffer,
            classes,
            issued: 0,
            confirmed: std::sync::Mutex::new(Confirmed::default()),
            rows_through: 0,
            row_hosts: Vec::new(),
            scaler_on: false,
        };
        steps.reset(&hosts)?;
        steps.write_scaler(None);
        Ok(steps)
    }

    /// Start counting again from `hosts` (one per group; e.g. after a checkpoint load). Lands
    /// after every step already submitted.
    pub fn reset(&mut self, hosts: &[HostState]) -> Result<()> {
        let t = hosts[0].step;
        Self::check_countable(t)?;
        self.ctx
            .queue()
            .write_buffer(&self.counter, 0, bytemuck::cast_slice(&[0u32, t as u32]));
        self.issued = 0;
        *self.confirmed() = Confirmed {
            calls: 0,
            steps: t,
            hosts: hosts.to_vec(),
        };
        self.rows_through = t;
        self.row_hosts = hosts.iter().map(|h| HostState { lr: 1.0, ..*h }).collect();
        Ok(())
    }

    /// Refuse a step count the device cannot hold.
    pub fn check_countable(t: u64) -> Result<()> {
        if t >= u64::from(u32::MAX / 2) {
            return Err(Error::InvalidCombination {
                optimizer: "device step counter",
                reason: "the step count must stay below 2^31 to be counted on the device",
            });
        }
        Ok(())
    }

    /// Before encoding a step: make sure the table holds a row for every `t` this step may
    /// have (reading the device count first if the host knows it too little), and count the
    /// step as issued.
    pub fn prepare(&mut self, groups: &[Group]) -> Result<()> {
        if self.issued - self.confirmed().calls + 1 >= STEP_ROWS {
            let block = self.read()?;
            self.confirm(groups, &block);
        }
        let highest = self.step_upper_bound() + 1;
        let mut row = [0u32; WORDS];
        while self.rows_through < highest {
            row.fill(0);
            let words_per_group = self.classes.len();
            for (g, (group, host)) in groups.iter().zip(&mut self.row_hosts).enumerate() {
                let config = &group.config;
                host.lr = 1.0;
                let hyper = config.begin_step(host);
                config.end_step(host);
                let words: &[u32] = bytemuck::cast_slice(hyper.as_bytes());
                row[g * words_per_group..(g + 1) * words_per_group].copy_from_slice(words);
            }
            self.rows_through += 1;
            let offset = (self.rows_through % STEP_ROWS) * WORDS as u64 * 4;
            self.ctx
                .queue()
                .write_buffer(&self.table, offset, bytemuck::cast_slice(&row));
        }
        self.issued += 1;
        Ok(())
    }

    /// The host's uniform words for a device-counted step: `lr` in the `lr * f(t)` words.
    pub fn host_words(&self, hyper: &StepUniform, lr: f64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(hyper.as_bytes());
        let words: &mut [u32] = bytemuck::cast_slice_mut(&mut out[start..]);
        for (w, class) in words.iter_mut().zip(self.classes) {
            if *class == WordClass::LrTimes {
                *w = (lr as f32).to_bits();
            }
        }
    }

    /// Record the counting pass; `slot_offset`: this step's uniform slot in the ring.
    pub fn encode_resolve(&self, encoder: &mut wgpu::CommandEncoder, slot_offset: u64) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("device step"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.resolve);
        pass.set_bind_group(0, &self.resolve_group, &[slot_offset as u32]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Record the loss-scale pass (after the optimizer kernel), when the scaler is on.
    pub fn encode_update_scale(&self, encoder: &mut wgpu::CommandEncoder) {
        if !self.scaler_on {
            return;
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("device loss scale"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.update_scale);
        pass.set_bind_group(0, &self.scale_group, &[0]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// Read the counter block (waits for the device; on the web [`Error::WouldBlock`]).
    pub fn read(&self) -> Result<DeviceStepBlock> {
        super::wait::block_on("DeviceSteps::read", self.read_async())?
    }

    /// [`DeviceSteps::read`] without blocking.
    pub async fn read_async(&self) -> Result<DeviceStepBlock> {
        let bytes = read_bytes_async(
            &self.ctx,
            &self.counter,
            0,
            std::mem::size_of::<DeviceStepBlock>() as u64,
        )
        .await?;
        Ok(bytemuck::pod_read_unaligned(&bytes))
    }

    /// Take a count read from the device as known.
    pub fn confirm(&self, groups: &[Group], block: &DeviceStepBlock) {
        let (calls, steps) = (u64::from(block.calls), u64::from(block.steps));
        let mut known = self.confirmed();
        if calls < known.calls {
            return; // older than what we know
        }
        for (group, host) in groups.iter().zip(&mut known.hosts) {
            *host = advance(&group.config, *host, steps);
        }
        known.calls = calls;
        known.steps = steps;
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, Confirmed> {
        // Nothing panics while holding the lock: a poisoned one still holds a valid count.
        self.confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Steps taken if none of the steps issued since the last known count was skipped:
    /// exact when every issued step has been confirmed.
    pub fn step_upper_bound(&self) -> u64 {
        let known = self.confirmed();
        known.steps + (self.issued - known.calls)
    }

    /// Steps taken, from a fresh read of the counter (every submitted step included).
    pub fn steps_from(&self, block: &DeviceStepBlock) -> u64 {
        u64::from(block.steps) + (self.issued - u64::from(block.calls))
    }

    /// Each group's host state at step `t` (at least the last confirmed count), with the
    /// groups' current learning rates.
    pub fn hosts_at(&self, groups: &[Group], t: u64) -> Vec<HostState> {
        let known = self.confirmed();
        groups
            .iter()
            .zip(&known.hosts)
            .map(|(group, host)| HostState {
                lr: group.host.lr,
                ..advance(&group.config, *host, t)
            })
            .collect()
    }

    /// Turn the device loss scaler on (with its state) or off.
    pub fn write_scaler(&mut self, scaler: Option<&LossScaler>) {
        let block = match scaler {
            Some(s) => [
                1u32,
                s.growth_tracker(),
                (s.scale() as f32).to_bits(),
                (s.growth_factor as f32).to_bits(),
                (s.backoff_factor as f32).to_bits(),
                s.growth_interval,
            ],
            None => [0, 0, 1f32.to_bits(), 2f32.to_bits(), 0.5f32.to_bits(), 2000],
        };
        self.ctx
            .queue()
            .write_buffer(&self.counter, 8, bytemuck::cast_slice(&block));
        self.scaler_on = scaler.is_some();
    }

    /// Whether the device loss scaler is on.
    pub fn scaler_on(&self) -> bool {
        self.scaler_on
    }

    /// The counter buffer (the loss scale is the f32 at [`SCALE_OFFSET`]).
    pub fn counter_buffer(&self) -> &wgpu::Buffer {
        &self.counter
    }
}

fn buffer(binding: u32, buffer: &wgpu::Buffer, size: u64) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: NonZeroU64::new(size),
        }),
    }
}

/// `host` moved forward to step `t` exactly as the host path would have (NAdam's
/// mu_product, SGD's momentum buffer); unchanged if it is already there.
pub(crate) fn advance(config: &OptimizerConfig, host: HostState, t: u64) -> HostState {
    let mut h = host;
    while h.step < t {
        config.begin_step(&mut h);
        config.end_step(&mut h);
    }
    h
}
