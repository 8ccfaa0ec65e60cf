//! bf16 state on the fast CPU path (`CpuOptimizer::builder(..).state_format(StateFormat::Bf16)`)
//! against the GPU's bf16 state (lavapipe or any adapter), bit for bit: the CPU runs the same
//! f32 chunk loop as the f32 path (the kernel's operation order) on state widened from bf16,
//! and rounds each stored value to nearest even as `shaders/bf16_round.wgsl` does. The
//! rounding itself is checked against the `half` crate's `bf16::from_f32`.

mod common;

use common::*;
use fused_optim::cpu::fast::{bf16_to_f32, f32_to_bf16};
use fused_optim::*;

#[test]
fn rounding_is_nearest_even_as_the_half_crate_does() {
    let mut rng = Rng::new(3);
    for _ in 0..200_000 {
        let x = f32::from_bits(rng.next_u64() as u32);
        if !x.is_finite() {
            continue;
        }
        let want = half::bf16::from_f32(x).to_bits();
        assert_eq!(f32_to_bf16(x), want, "{x:e} ({:#x})", x.to_bits());
        assert_eq!(bf16_to_f32(want), half::bf16::from_bits(want).to_f32());
    }
    // Ties: exactly half way goes to the even neighbour.
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
}

const N: usize = 70_001; // three CPU chunks, the last partial; not a multiple of 4

fn compare(config: AdamConfig) {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(17);
    let p0 = params0(&mut rng, N);
    let flat = FlatParams::from_slice(&ctx, &p0).unwrap();
    let mut gpu_opt = GpuOptimizer::builder(&flat)
        .config(config)
        .state_format(StateFormat::Bf16)
        .build()
        .unwrap();
    let mut cpu = CpuOptimizer::builder(config, N)
        .state_format(StateFormat::Bf16)
        .build()
        .unwrap();
    assert_eq!(cpu.state_format(), StateFormat::Bf16);
    let mut p = p0.clone();
    let mut f32_path = CpuOptimizer::new(config, N).unwrap();
    let mut pf = p0;
    for (k, lr) in [1e-3, 1e-2, 0.0, 3e-3, 1e-3].into_iter().enumerate() {
        let g = grads(&mut rng, N);
        for o in [&mut cpu as &mut dyn Optimizer, &mut gpu_opt, &mut f32_path] {
            o.set_lr(lr).unwrap();
        }
        cpu.step(&mut p, &g).unwrap();
        f32_path.step(&mut pf, &g).unwrap();
        flat.write_grads(&g).unwrap();
        gpu_opt.step().unwrap();
        let pg = flat.read_params().unwrap();
        let bad = p
            .iter()
            .zip(&pg)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(bad, None, "{config:?} params differ after step {}", k + 1);
        for name in cpu.state_names() {
            let c = cpu.read_state(name).unwrap();
            let gs = gpu_opt.read_state_f32(name).unwrap();
            let bad = c
                .iter()
                .zip(&gs)
                .position(|(a, b)| (*a as f32).to_bits() != b.to_bits());
            assert_eq!(bad, None, "{name} differs after step {}", k + 1);
            // Every stored value is a bf16 value.
            assert!(c
                .iter()
                .all(|&x| f64::from(bf16_to_f32(f32_to_bf16(x as f32))) == x));
        }
    }
    // The bf16 state is not the f32 state (the test would not notice a silent f32 path).
    let m16 = cpu.read_state("exp_avg").unwrap();
    let m32 = f32_path.read_state("exp_avg").unwrap();
    assert!(m16.iter().zip(&m32).any(|(a, b)| a != b));
}

#[test]
fn cpu_bf16_state_equals_the_gpu_bit_for_bit() {
    compare(AdamConfig::default());
    compare(AdamConfig::adamw());
    compare(AdamConfig {
        amsgrad: true,
        weight_decay: 0.01,
        ..AdamConfig::default()
    });
}

#[test]
fn cpu_bf16_checkpoint_round_trip_and_refusals() {
    let dir = std::env::temp_dir().join(format!("bf16ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.safetensors");
    let build = || {
        CpuOptimizer::builder(AdamConfig::adamw(), 1000)
            .state_format(StateFormat::Bf16)
            .build()
            .unwrap()
    };
    let mut rng = Rng::new(8);
    let mut p = params0(&mut rng, 1000);
    let mut a = build();
    a.step(&mut p, &grads(&mut rng, 1000)).unwrap();
    a.save_checkpoint(&path).unwrap();
    let mut b = build();
    b.load_checkpoint(&path).unwrap();
    let g = grads(&mut rng, 1000);
    let (mut pa, mut pb) = (p.clone(), p);
    a.step(&mut pa, &g).unwrap();
    b.step(&mut pb, &g).unwrap();
    assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(matches!(b.state("exp_avg"), Err(Error::Unsupported { .. })));
    assert!(matches!(
        CpuOptimizer::builder(SgdConfig::default(), 10)
            .state_format(StateFormat::Bf16)
            .build(),
        Err(Error::InvalidCombination { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
