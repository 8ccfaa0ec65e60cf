//! Per-step cost in resources: what a step creates on the device. Its own test binary: wgpu's
//! resource counters are process-wide, so no other test may run beside it.

mod common;

use common::*;
use fused_optim::*;

/// No bind group, pipeline, shader module or layout is created per step, no buffer beyond the
/// staging buffer wgpu's own `queue.write_buffer` allocates for the uniform, and nothing is
/// left behind once the steps have completed.
/// Counts are read right after 20 submissions, before waiting: a resource made and dropped
/// per step is still held by its in-flight submission then. The control makes a bind group
/// per step the same way and shows the counters see it.
#[test]
fn steps_create_no_gpu_resources() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &vec![0.5f32; 10_001]).unwrap();
    flat.write_grads(&vec![0.1f32; 10_001]).unwrap();
    let mut opt = GpuOptimizer::new(
        &flat,
        AdamConfig {
            amsgrad: true,
            ..Default::default()
        },
    )
    .unwrap();
    opt.step().unwrap();
    ctx.wait().unwrap();
    let snapshot = |ctx: &GpuContext| {
        let c = ctx.device().get_internal_counters();
        [
            c.hal.bind_groups.read(),
            c.hal.compute_pipelines.read(),
            c.hal.shader_modules.read(),
            c.hal.bind_group_layouts.read(),
            c.hal.pipeline_layouts.read(),
            c.hal.buffers.read(),
        ]
    };
    // 20 steps: no GPU object made; buffers: wgpu's queue.write_buffer stages each write in
    // a buffer of its own until that submission completes (`writes_per_step` per step in
    // flight), none of ours; and nothing left once the device is idle.
    let check_steps = |opt: &mut GpuOptimizer, what: &str, writes_per_step: isize| {
        opt.step().unwrap();
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        let before = snapshot(&ctx);
        for _ in 0..20 {
            opt.step().unwrap();
        }
        let after = snapshot(&ctx);
        assert_eq!(
            after[..5],
            before[..5],
            "{what}: [bind groups, pipelines, modules, layouts, pipeline layouts]"
        );
        assert!(
            after[5] <= before[5] + 20 * writes_per_step,
            "{what}: buffers {} -> {}",
            before[5],
            after[5]
        );
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        assert_eq!(snapshot(&ctx), before, "{what}: resources left behind");
    };
    // A plain step writes its uniform slot.
    check_steps(&mut opt, "plain step", 1);
    // Mixed precision entirely on the device (norm pass, device step counter, loss scaler):
    // per step one uniform slot and one step-table row.
    opt.set_device_loss_scaler(Some(LossScaler::default()))
        .unwrap();
    check_steps(&mut opt, "device step counter", 2);

    // Control: a bind group made, used and dropped per submission shows up.
    let layout = ctx
        .device()
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &[],
        });
    let before = snapshot(&ctx);
    for _ in 0..20 {
        let bg = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &[],
        });
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &bg, &[]);
        }
        ctx.queue().submit([encoder.finish()]);
    }
    let after = snapshot(&ctx);
    ctx.wait().unwrap();
    assert!(
        after[0] > before[0],
        "the counters did not see per-step bind groups"
    );
}
