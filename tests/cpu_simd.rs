//! The fast CPU path's AVX2 and AVX-512 code (picked at run time) give the same bits as its
//! SSE2 code, for every optimizer and option, on f32 and on bf16 state: all compile the same
//! loops, and Rust never contracts `a * b + c` into an FMA. Own test binary: the switch is
//! process-wide.

mod cases;
mod common;

use common::*;
use fused_optim::cpu::simd::{set_simd_level, SimdLevel};
use fused_optim::*;

/// Whether the fast path keeps bf16 state for `config` (Adam, AdamW, AMSGrad).
fn bf16_capable(config: OptimizerConfig) -> bool {
    CpuOptimizer::builder(config, 8)
        .state_format(StateFormat::Bf16)
        .build()
        .is_ok()
}

fn run(config: OptimizerConfig, n: usize, format: StateFormat) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut rng = Rng::new(77);
    let mut p = params0(&mut rng, n);
    let mut opt = CpuOptimizer::builder(config, n)
        .state_format(format)
        .build()
        .unwrap();
    for _ in 0..5 {
        opt.step(&mut p, &grads(&mut rng, n)).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let states = config
        .state_names()
        .iter()
        .map(|name| {
            let v: Vec<f32> = opt
                .read_state(name)
                .unwrap()
                .iter()
                .map(|&x| x as f32)
                .collect();
            bits(&v)
        })
        .collect();
    (bits(&p), states)
}

#[test]
fn every_simd_level_gives_the_same_bits() {
    // Several 32K-element chunks and an odd tail (not a multiple of 4, 8, 16 or 64).
    let n = 100_003;
    let levels: Vec<SimdLevel> = SimdLevel::ALL
        .into_iter()
        .filter(|&l| {
            let ok = set_simd_level(l) == l;
            if !ok {
                eprintln!("NOT TESTED here: this CPU has no {} code", l.name());
            }
            ok
        })
        .collect();
    assert!(levels.len() >= 2 || SimdLevel::detected() == SimdLevel::Baseline);
    for (desc, config) in cases::all() {
        set_simd_level(SimdLevel::Baseline);
        let baseline = run(config, n, StateFormat::F32);
        let baseline_bf16 = bf16_capable(config).then(|| run(config, n, StateFormat::Bf16));
        for &level in &levels[1..] {
            assert_eq!(set_simd_level(level), level);
            let got = run(config, n, StateFormat::F32);
            assert!(
                got.0 == baseline.0,
                "{desc}: params differ at {}",
                level.name()
            );
            assert!(
                got.1 == baseline.1,
                "{desc}: state differs at {}",
                level.name()
            );
            if let Some(b) = &baseline_bf16 {
                let got = run(config, n, StateFormat::Bf16);
                assert!(got == *b, "{desc}: bf16 run differs at {}", level.name());
            }
        }
    }
    set_simd_level(SimdLevel::detected());
}
