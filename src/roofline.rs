//! Roofline kernels: the memory-traffic cost of each optimizer's access pattern, measured on
//! the same device. A fused optimizer kernel is judged by its time relative to its roof, a
//! ratio that carries across machines where absolute times do not.
//!
//! - GPU: [`GpuRoof`] (same bindings, vector width, elements per invocation and masking as
//!   the optimizer kernels; trivial arithmetic), [`GpuRoof::copy`] (a WGSL vec4 copy) and
//!   [`gpu_buffer_copy`] (`copy_buffer_to_buffer`, the driver's own copy).
//! - CPU: [`cpu_roof`] (same access pattern and threading as [`CpuOptimizer`](crate::CpuOptimizer))
//!   and [`cpu_copy`] (a parallel memcpy).

use rayon::prelude::*;

use crate::cpu::staggered::StaggeredVec;
use crate::error::Result;
use crate::gpu::buffer::{create_flat, FlatParams};
use crate::gpu::gradients::{control_buffer, GradOptions};
use crate::gpu::kernel::{KernelRunner, KernelSpec, Specialization};

const ROOF: &str = include_str!("../shaders/roof.wgsl");
const COPY: &str = include_str!("../shaders/copy.wgsl");
const SLOTS: &[&str] = &["s0", "s1", "s2"];

/// A roofline kernel on the device over a [`FlatParams`].
pub struct GpuRoof {
    runner: KernelRunner,
    _control: wgpu::Buffer,
    _states: Vec<wgpu::Buffer>,
    launches: u64,
}

impl GpuRoof {
    /// Reads p, g and `states` state tensors, writes p and the states: the access pattern of
    /// an optimizer with that many state tensors (at most 3).
    pub fn new(params: &FlatParams, states: usize) -> Result<Self> {
        let states = states.min(3);
        let control = control_buffer(params.context(), &GradOptions::default());
        let buffers: Vec<wgpu::Buffer> = (0..states)
            .map(|_| create_flat(params.context(), "roof state", params.len()))
            .collect::<Result<_>>()?;
        let runner = KernelRunner::new(
            params,
            KernelSpec {
                file: "roof.wgsl",
                source: ROOF,
                slots: SLOTS,
                active: SLOTS.iter().copied().zip(buffers.iter()).collect(),
                constants: vec![("STATES", states as f64)],
                specialization: Specialization::GENERAL,
                trusted: true,
                control: &control,
                lane_groups: None,
                low: None,
                packed_states: None,
            },
        )?;
        Ok(Self {
            runner,
            _control: control,
            _states: buffers,
            launches: 0,
        })
    }

    /// A vec4 copy kernel (grads -> params) with the same launch geometry.
    pub fn copy(params: &FlatParams) -> Result<Self> {
        let control = control_buffer(params.context(), &GradOptions::default());
        let runner = KernelRunner::new(
            params,
            KernelSpec {
                file: "copy.wgsl",
                source: COPY,
                slots: &[],
                active: vec![],
                constants: vec![],
                specialization: Specialization::GENERAL,
                trusted: true,
                control: &control,
                lane_groups: None,
                low: None,
                packed_states: None,
            },
        )?;
        Ok(Self {
            runner,
            _control: control,
            _states: vec![],
            launches: 0,
        })
    }

    /// One launch (one submission, no wait).
    pub fn step(&mut self) {
        // Small enough to keep the values bounded, large enough that every store changes p.
        let hyper = [1e-6f32, 0.0, 0.0, 0.0];
        self.runner
            .submit(self.launches, bytemuck::cast_slice(&hyper));
        self.launches += 1;
    }
}

/// `copy_buffer_to_buffer` of the grads into the params buffer (one submission, no wait).
pub fn gpu_buffer_copy(params: &FlatParams) {
    let ctx = params.context();
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("copy"),
        });
    encoder.copy_buffer_to_buffer(
        params.grads_buffer(),
        0,
        params.params_buffer(),
        0,
        params.len() as u64 * 4,
    );
    ctx.queue().submit([encoder.finish()]);
}

/// Allocate a throw-away state-sized device buffer (used by benchmarks to size memory).
pub fn scratch_buffer(params: &FlatParams) -> Result<wgpu::Buffer> {
    create_flat(params.context(), "scratch", params.len())
}

/// The CPU roof: p += s * (g + sum(states)); state += g, over the same chunks, threads and
/// vector code (AVX2 where the CPU has it) as the fast CPU path. `states` should be allocated
/// as [`CpuOptimizer`](crate::CpuOptimizer) allocates its own:
/// `StaggeredVec::filled(n, 0.0, k + 1)` for state k.
pub fn cpu_roof(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec]) {
    // As the GPU roof: every store changes p.
    crate::cpu::fast::roof_step(p, g, states, 1e-6)
}

/// A parallel memcpy.
pub fn cpu_copy(dst: &mut [f32], src: &[f32]) {
    const CHUNK: usize = 1 << 16;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// The optimizer configurations the benchmarks measure, by short name: one per distinct
/// access pattern and kernel variant of every registered algorithm
/// ([`Algorithm::benchmark_configs`](crate::optim::Algorithm::benchmark_configs)).
pub fn benchmark_suite() -> Vec<(&'static str, crate::OptimizerConfig)> {
    crate::OptimizerConfig::benchmark_suite()
}
