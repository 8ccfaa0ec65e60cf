//! The fast CPU path's AVX2 code (picked at run time) gives the same bits as its SSE2 code,
//! for every optimizer and option: both compile the same loops, and Rust never contracts
//! `a * b + c` into an FMA. Own test binary: the switch is process-wide.

mod cases;
mod common;

use common::*;
use fused_optim::cpu::fast::set_avx2;
use fused_optim::*;

fn run(config: OptimizerConfig, n: usize) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut rng = Rng::new(77);
    let mut p = params0(&mut rng, n);
    let mut opt = CpuOptimizer::new(config, n).unwrap();
    for _ in 0..5 {
        opt.step(&mut p, &grads(&mut rng, n)).unwrap();
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let states = config
        .state_names()
        .iter()
        .map(|name| bits(opt.state(name).unwrap()))
        .collect();
    (bits(&p), states)
}

#[test]
fn avx2_and_sse2_loops_give_the_same_bits() {
    // Several 32K-element chunks and an odd tail (not a multiple of 4, 8 or 64).
    let n = 100_003;
    if !set_avx2(true) {
        eprintln!("NOT TESTED: this CPU has no AVX2 + FMA, only the SSE2 loops exist here");
        return;
    }
    for (desc, config) in cases::all() {
        assert!(set_avx2(true));
        let avx2 = run(config, n);
        set_avx2(false);
        let sse2 = run(config, n);
        assert!(avx2.0 == sse2.0, "{desc}: params differ");
        assert!(avx2.1 == sse2.1, "{desc}: state differs");
    }
    set_avx2(true);
}
