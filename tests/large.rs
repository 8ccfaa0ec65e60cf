//! Buffers past one storage binding (128 MiB on lavapipe: N > 33.5M f32) and dispatches past
//! 65535 workgroups per dimension, on the real device limits.

mod common;

use common::*;
use fused_optim::*;

fn run(ctx: &GpuContext, config: OptimizerConfig, n: usize, steps: u64) -> usize {
    let mut rng = Rng::new(n as u64);
    let p0 = params0(&mut rng, n);
    let flat = FlatParams::from_slice(ctx, &p0).unwrap();
    let mut opt = GpuOptimizer::new(&flat, config).unwrap();
    let mut run = ReferenceRun::new(config, &p0);
    drop(p0);
    for _ in 0..steps {
        let g = grads(&mut rng, n);
        flat.write_grads(&g).unwrap();
        opt.step().unwrap();
        run.step(&g);
    }
    run.check("large", &flat.read_params().unwrap());
    run.check_states("large", RTOL_PER_STEP, |name| {
        opt.read_state_f32(name).unwrap()
    });
    opt.windows()
}

/// N = 40M + 3: two binding windows on lavapipe (the second starts at element 32Mi).
#[test]
fn adam_past_one_binding_window() {
    let Some(ctx) = gpu() else { return };
    let n = 40_000_003;
    let windows = run(
        &ctx,
        AdamConfig {
            amsgrad: true,
            ..AdamConfig::default()
        }
        .into(),
        n,
        3,
    );
    let expected = (n as u64 * 4).div_ceil(ctx.max_binding_bytes()) as usize;
    assert!(windows >= 2 && windows >= expected, "{windows} windows");
}

/// 16 invocations x 1 vec4 per workgroup: N = 4.2M needs 65.6K workgroups, above the 65535
/// per-dimension limit, so the grid is 2-D.
#[test]
fn more_than_65535_workgroups_use_a_2d_grid() {
    let Some(shared) = gpu() else { return };
    let ctx = shared.with_context_options(ContextOptions {
        max_binding_bytes: None,
        tuning: KernelTuning {
            workgroup_size: 16,
            vec4_per_invocation: 1,
        },
        ..ContextOptions::default()
    });
    let n = 4_200_001;
    assert!((n as u64).div_ceil(64) > 65_535);
    run(
        &ctx,
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .into(),
        n,
        3,
    );
}
