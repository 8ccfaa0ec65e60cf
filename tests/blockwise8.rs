//! Block-wise 8-bit state (`StateFormat::Blockwise8`, bitsandbytes' `Adam8bit` CPU
//! backend): the maps and quantiser against the facts the golden README states, the fast
//! path against the separately written oracle (`cpu::reference::blockwise8`) bit for bit on
//! seeded inputs with odd sizes, exact zeros, mixed magnitudes, all-zero blocks and huge
//! neighbours of a partial last block, and the typed refusals. The golden cases themselves
//! are replayed in `tools/tests/golden_q8.rs`.

mod common;

use common::*;
use fused_optim::cpu::blockwise8::{dynamic_map, Quantizer, SegmentState, BLOCK};
use fused_optim::cpu::reference::blockwise8::{
    oracle_quantize_block, oracle_step_32bit, oracle_step_8bit, OracleHparams,
};
use fused_optim::*;

#[test]
fn maps_have_the_shape_the_readme_states() {
    let s = dynamic_map(true);
    let u = dynamic_map(false);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "signed map ascending");
    assert!(u.windows(2).all(|w| w[0] < w[1]), "unsigned map ascending");
    assert_eq!(s.iter().filter(|&&x| x < 0.0).count(), 127);
    assert_eq!(s[127], 0.0);
    assert_eq!(s[255], 1.0);
    assert_eq!(s[0], -0.992_968_74_f32);
    assert_eq!(u[0], 0.0);
    assert_eq!(u[255], 1.0);
    // README: signed codes 123 / 131 = -/+2.125e-5, unsigned code 7 = 1.5625e-5.
    // (The README prints them rounded.)
    let near = |x: f32, want: f64| (f64::from(x) - want).abs() <= 1e-6 * want.abs();
    assert!(near(s[131], 2.125e-5), "{}", s[131]);
    assert!(near(s[123], -2.125e-5), "{}", s[123]);
    assert!(near(u[7], 1.5625e-5), "{}", u[7]);
    assert_eq!(s[123], -s[131]);
}

#[test]
fn zero_and_tiny_values_go_where_the_readme_says() {
    let (qs, qu) = (Quantizer::signed(), Quantizer::unsigned());
    let mut c = [0u8; 4];
    // absmax 1 (the 1.0 entry), then 0 and values below half a grid step.
    assert_eq!(qs.quantize_block(&[1.0, 0.0, 1.4e-5, -1.4e-5], &mut c), 1.0);
    assert_eq!(c, [255, 131, 131, 123]);
    assert_eq!(qu.quantize_block(&[1.0, 0.0, 0.0, 1.0], &mut c), 1.0);
    assert_eq!(c, [255, 7, 7, 255]);
    // An all-zero block: absmax 0, every code 0.
    assert_eq!(qs.quantize_block(&[0.0; 4], &mut c), 0.0);
    assert_eq!(c, [0; 4]);
    // Codes 124..=130 of the signed map are never produced.
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..BLOCK)
        .map(|i| {
            if i == 0 {
                1.0
            } else {
                (rng.normal() * 1e-4) as f32
            }
        })
        .collect();
    let mut codes = vec![0u8; BLOCK];
    qs.quantize_block(&x, &mut codes);
    assert!(codes.iter().all(|c| !(124..=130).contains(c)), "{codes:?}");
}

/// Values spread over many magnitudes, exact zeros, values on and next to code midpoints.
fn tricky_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let map = dynamic_map(true);
    (0..n)
        .map(|i| match i % 7 {
            0 => 0.0,
            1 => {
                let j = (rng.next_u64() % 255) as usize;
                (map[j] + map[j + 1]) / 2.0
            }
            2 => {
                let j = (rng.next_u64() % 255) as usize;
                let m = (map[j] + map[j + 1]) / 2.0;
                f32::from_bits(m.to_bits().wrapping_add(1))
            }
            _ => (rng.normal() * 10f64.powf(rng.uniform() * 8.0 - 6.0)) as f32,
        })
        .collect()
}

#[test]
fn table_quantiser_equals_the_counting_oracle() {
    let mut rng = Rng::new(11);
    for (signed, q) in [(true, Quantizer::signed()), (false, Quantizer::unsigned())] {
        let map = dynamic_map(signed);
        for len in [1, 7, 255, 256] {
            for _ in 0..40 {
                let mut x = tricky_values(&mut rng, len);
                if !signed {
                    x.iter_mut().for_each(|v| *v = v.abs());
                }
                let mut got = vec![0u8; len];
                let a = q.quantize_block(&x, &mut got);
                let (want, wa) = oracle_quantize_block(&map, &x);
                assert_eq!(a.to_bits(), wa.to_bits());
                assert_eq!(got, want, "signed {signed} len {len}");
            }
        }
    }
}

/// Gradients with mixed magnitudes, exact zeros and all-zero blocks (every 3rd block of the
/// first segment on step 1 and 2, the whole gradient of block 1 always).
fn grads_for(rng: &mut Rng, n: usize, step: usize) -> Vec<f32> {
    let mut g = grads(rng, n);
    for (b, block) in g.chunks_mut(BLOCK).enumerate() {
        if b == 1 || (step <= 2 && b % 3 == 0) {
            block.fill(0.0);
        }
    }
    g
}

enum OracleSeg {
    Q(Vec<u8>, Vec<u8>, Vec<f32>, Vec<f32>),
    F(Vec<f32>, Vec<f32>),
}

fn fast_matches_oracle(config: AdamConfig, lens: &[usize], min_size: usize, seed: u64) {
    fast_matches_oracle_on(config, lens, min_size, seed, grads_for, true);
    // The all-zero block 1 of a quantised first segment keeps a tiny non-zero state (0 is
    // not a code), so its parameters drift slightly, as in bitsandbytes; nothing overflows.
}

/// Gradients that take the moments to the edges of f32 (on top of [`grads_for`]): per
/// block, by its index mod 5: 2 — one element 1e30 (v = (1 - b2) g^2 overflows to +inf,
/// so sqrt(v) = inf and the block's absmax2 is inf) and one -3e19; 3 — one NaN; 4 — every
/// element 1e-30 (v underflows to 0 or a subnormal).
fn extreme_grads_for(rng: &mut Rng, n: usize, step: usize) -> Vec<f32> {
    let mut g = grads_for(rng, n, step);
    for (b, block) in g.chunks_mut(BLOCK).enumerate() {
        let at = (b * 37 + step * 11) % block.len();
        match b % 5 {
            2 => {
                block[at] = 1e30;
                block[(at + 1) % block.len()] = -3e19;
            }
            3 => block[at] = f32::NAN,
            4 => block.fill(1e-30),
            _ => {}
        }
    }
    g
}

fn fast_matches_oracle_on(
    config: AdamConfig,
    lens: &[usize],
    min_size: usize,
    seed: u64,
    grads_for: fn(&mut Rng, usize, usize) -> Vec<f32>,
    stays_finite: bool,
) {
    let n: usize = lens.iter().sum();
    let mut rng = Rng::new(seed);
    let mut p = params0(&mut rng, n);
    let mut po = p.clone();
    let mut opt = CpuOptimizer::builder(config, n)
        .segments(lens)
        .state_format(StateFormat::Blockwise8 { min_size })
        .build()
        .unwrap();
    let (q1, q2) = (dynamic_map(true), dynamic_map(false));
    let mut oracle: Vec<OracleSeg> = lens
        .iter()
        .map(|&l| {
            if l >= min_size {
                let b = l.div_ceil(BLOCK);
                OracleSeg::Q(vec![0; l], vec![0; l], vec![0.0; b], vec![0.0; b])
            } else {
                OracleSeg::F(vec![0.0; l], vec![0.0; l])
            }
        })
        .collect();
    let lrs = [1e-3, 3e-3, 0.0, 1e-2, 1e-3, 5e-4];
    for (k, &lr) in lrs.iter().enumerate() {
        let g = grads_for(&mut rng, n, k + 1);
        opt.set_lr(lr).unwrap();
        opt.step(&mut p, &g).unwrap();
        let h = OracleHparams {
            lr,
            beta1: config.betas.0,
            beta2: config.betas.1,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        let mut start = 0;
        for (seg, &l) in oracle.iter_mut().zip(lens) {
            let r = start..start + l;
            start += l;
            let t = k as u64 + 1;
            match seg {
                OracleSeg::Q(s1, s2, a1, a2) => {
                    oracle_step_8bit(&h, t, &q1, &q2, &mut po[r.clone()], &g[r], s1, s2, a1, a2)
                }
                OracleSeg::F(m, v) => oracle_step_32bit(&h, t, &mut po[r.clone()], &g[r], m, v),
            }
        }
        let bad = p
            .iter()
            .zip(&po)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            bad,
            None,
            "params differ after step {} (lens {lens:?})",
            k + 1
        );
        let st = opt.blockwise8_state().unwrap();
        for (i, (got, want)) in st.segments().iter().zip(&oracle).enumerate() {
            match (got, want) {
                (
                    SegmentState::Quantized {
                        state1,
                        state2,
                        absmax1,
                        absmax2,
                    },
                    OracleSeg::Q(s1, s2, a1, a2),
                ) => {
                    assert_eq!(state1, s1, "segment {i} state1 step {}", k + 1);
                    assert_eq!(state2, s2, "segment {i} state2 step {}", k + 1);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(absmax1), bits(a1));
                    assert_eq!(bits(absmax2), bits(a2));
                }
                (SegmentState::Full { state1, state2 }, OracleSeg::F(m, v)) => {
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(state1), bits(m));
                    assert_eq!(bits(state2), bits(v));
                }
                _ => panic!("segment {i} has the wrong kind of state"),
            }
        }
    }
    if stays_finite {
        assert!(p.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn fast_path_equals_the_oracle_bit_for_bit() {
    // Odd sizes, one segment spanning several parallel tasks (32768 elements each), and a
    // partial last block followed by a segment of huge values: a block that leaked across
    // the segment boundary would take their absmax.
    fast_matches_oracle(AdamConfig::default(), &[1000], 0, 1);
    fast_matches_oracle(AdamConfig::adamw(), &[300, 5000, 11, 4100], 4096, 2);
    fast_matches_oracle(AdamConfig::adamw(), &[70_001, 257], 256, 3);
    fast_matches_oracle(
        AdamConfig {
            weight_decay: 0.1,
            decoupled_weight_decay: true,
            betas: (0.8, 0.99),
            eps: 1e-6,
            ..AdamConfig::default()
        },
        &[1, 255, 256, 257, 513],
        0,
        4,
    );
}

#[test]
fn segments_do_not_share_blocks() {
    // Segment 0 has 300 elements (blocks of 256 and 44); segment 1 holds gradients 1e6
    // times larger. Its absmax must not reach segment 0's second block.
    let n = 300 + 200;
    let mut opt = CpuOptimizer::builder(AdamConfig::default(), n)
        .segments(&[300, 200])
        .state_format(StateFormat::Blockwise8 { min_size: 0 })
        .build()
        .unwrap();
    let mut p = vec![1.0f32; n];
    let g: Vec<f32> = (0..n).map(|i| if i < 300 { 1e-3 } else { 1e3 }).collect();
    opt.step(&mut p, &g).unwrap();
    let st = opt.blockwise8_state().unwrap();
    match &st.segments()[0] {
        SegmentState::Quantized { absmax1, .. } => {
            assert_eq!(absmax1.len(), 2);
            assert!((absmax1[1] - 1e-4).abs() < 1e-9, "{absmax1:?}");
        }
        _ => panic!("segment 0 not quantised"),
    }
}

#[test]
fn read_and_load_state_go_through_the_quantiser() {
    let n = 600;
    let mut opt = CpuOptimizer::builder(AdamConfig::default(), n)
        .segments(&[500, 100])
        .state_format(StateFormat::Blockwise8 { min_size: 256 })
        .build()
        .unwrap();
    let mut rng = Rng::new(9);
    let m: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    opt.load_state_f32("exp_avg", &m).unwrap();
    let back = opt.read_state("exp_avg").unwrap();
    // The f32 segment comes back exactly, the 8-bit one within the map's resolution
    // (relative spacing of the signed map's top decade: < 0.1 of absmax).
    for i in 0..n {
        let d = (back[i] - f64::from(m[i])).abs();
        if i >= 500 {
            assert_eq!(d, 0.0);
        } else {
            assert!(d <= 0.05 * 4.5, "{i}: {} vs {}", back[i], m[i]);
        }
    }
    assert!(matches!(
        opt.load_state_f32("exp_avg", &m[..10]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        opt.state("exp_avg"),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        opt.read_state("max_exp_avg_sq"),
        Err(Error::UnknownState { .. })
    ));
}

#[test]
fn bad_combinations_are_typed_errors() {
    let b8 = StateFormat::Blockwise8 { min_size: 4096 };
    let e = |r: Result<CpuOptimizer>| r.expect_err("must be refused");
    assert!(matches!(
        e(CpuOptimizer::builder(AdamConfig::default(), 10)
            .segments(&[4, 5])
            .state_format(b8)
            .build()),
        Error::LengthMismatch { .. }
    ));
    assert!(matches!(
        e(CpuOptimizer::builder(AdamConfig::default(), 10)
            .segments(&[10, 0])
            .state_format(b8)
            .build()),
        Error::Empty { .. }
    ));
    assert!(matches!(
        e(CpuOptimizer::builder(SgdConfig::default(), 10)
            .state_format(b8)
            .build()),
        Error::InvalidCombination { .. }
    ));
    for c in [
        AdamConfig {
            amsgrad: true,
            ..AdamConfig::default()
        },
        AdamConfig {
            maximize: true,
            ..AdamConfig::default()
        },
        AdamConfig {
            weight_decay: 0.1,
            ..AdamConfig::default()
        },
    ] {
        assert!(matches!(
            e(CpuOptimizer::builder(c, 10).state_format(b8).build()),
            Error::InvalidCombination { .. }
        ));
    }
    let opt = CpuOptimizer::builder(AdamConfig::default(), 10)
        .state_format(b8)
        .build()
        .unwrap();
    assert_eq!(opt.state_format(), b8);
    let mut p = vec![0.0f32; 3];
    let mut o2 = opt.clone();
    assert!(matches!(
        o2.step(&mut p, &[0.0; 3]),
        Err(Error::LengthMismatch { .. })
    ));
}

#[test]
fn the_gpu_refuses_8bit_state_for_other_algorithms() {
    // 8-bit Adam/AdamW runs on the GPU too (tests/blockwise8_gpu.rs); other algorithms are
    // refused there as on the CPU.
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[1.0f32; 8]).unwrap();
    let r = GpuOptimizer::builder(&flat)
        .config(RmspropConfig::default())
        .state_format(StateFormat::Blockwise8 { min_size: 0 })
        .build();
    match r {
        Err(Error::InvalidCombination { reason, .. }) => {
            assert!(
                reason.contains("implemented for Adam/AdamW, Lion and SGD"),
                "{reason}"
            )
        }
        other => panic!("expected InvalidCombination, got {:?}", other.map(|_| ())),
    }
}

fn q8_opt(lens: &[usize]) -> CpuOptimizer {
    CpuOptimizer::builder(AdamConfig::adamw(), lens.iter().sum())
        .segments(lens)
        .state_format(StateFormat::Blockwise8 { min_size: 300 })
        .build()
        .unwrap()
}

#[test]
fn checkpoints_round_trip_to_the_bit_identical_next_step() {
    let dir = std::env::temp_dir().join(format!("q8ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q8.safetensors");
    let lens = [700, 40, 300];
    let n: usize = lens.iter().sum();
    let mut rng = Rng::new(31);
    let mut p = params0(&mut rng, n);
    let mut a = q8_opt(&lens);
    for _ in 0..3 {
        a.step(&mut p, &grads(&mut rng, n)).unwrap();
    }
    a.set_lr(2e-3).unwrap();
    a.save_checkpoint(&path).unwrap();
    let mut b = q8_opt(&lens);
    b.load_checkpoint(&path).unwrap();
    assert_eq!(b.step_count(), 3);
    assert_eq!(b.lr(), 2e-3);
    assert_eq!(a.blockwise8_state(), b.blockwise8_state());
    let g = grads(&mut rng, n);
    let (mut pa, mut pb) = (p.clone(), p.clone());
    a.step(&mut pa, &g).unwrap();
    b.step(&mut pb, &g).unwrap();
    assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(a.blockwise8_state(), b.blockwise8_state());

    // Refusals leave the optimizer as it was.
    let before = b.blockwise8_state().cloned();
    let mut other = q8_opt(&[700, 340]);
    assert!(matches!(
        other.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.safetensors");
    // Flip one bit in the last byte (tensor data) and in the middle of the header.
    for at in [bytes.len() - 1, 8 + 40] {
        let mut c = bytes.clone();
        c[at] ^= 0x10;
        std::fs::write(&bad, &c).unwrap();
        assert!(b.load_checkpoint(&bad).is_err(), "flip at {at}");
        assert_eq!(b.blockwise8_state().cloned(), before);
        assert_eq!(b.step_count(), 4);
    }
    // An f32 checkpoint is not 8-bit state, and the other way round.
    let mut f = CpuOptimizer::new(AdamConfig::adamw(), n).unwrap();
    let f32_path = dir.join("f32.safetensors");
    f.save_checkpoint(&f32_path).unwrap();
    assert!(matches!(
        b.load_checkpoint(&f32_path),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        f.load_checkpoint(&path),
        Err(Error::Checkpoint { .. })
    ));
    assert_eq!(b.blockwise8_state().cloned(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every build of the 8-bit loops (baseline SSE2, AVX2, AVX-512: those this CPU has) gives
/// the same bits as the oracle (process-wide switch; the other tests here give the same bits
/// with any build).
#[test]
fn every_simd_build_equals_the_oracle() {
    use fused_optim::cpu::simd::{set_simd_level, SimdLevel};
    let before = fused_optim::cpu::simd::simd_level();
    for level in SimdLevel::ALL {
        if set_simd_level(level) != level {
            eprintln!("NOT TESTED here: this CPU has no {} code", level.name());
            continue;
        }
        fast_matches_oracle(AdamConfig::adamw(), &[300, 5000, 11], 256, 12);
        fast_matches_oracle(AdamConfig::default(), &[70_001, 257], 4096, 3);
        fast_matches_oracle_on(
            AdamConfig::adamw(),
            &[9_001, 300],
            256,
            5,
            extreme_grads_for,
            false,
        );
    }
    set_simd_level(before);
}

/// The one-state 8-bit loops (Lion, SGD with momentum; decay on and off, the first momentum
/// step) equal the one-state oracle bit for bit, params, codes and absmax after every step,
/// at every SIMD build this CPU has: lengths crossing blocks and parallel tasks, a partial
/// last block, all-zero blocks, an lr of 0 mid-run, and on every other step the gradients of
/// [`extreme_grads_for`] (infinite and NaN moments, underflow).
#[test]
fn one_state_loops_equal_the_oracle_at_every_simd_build() {
    use fused_optim::cpu::reference::blockwise8_1state::{oracle_step_8bit_1state, OneState};
    use fused_optim::cpu::simd::{set_simd_level, SimdLevel};
    // (configuration, the oracle's hyper-parameters at a given lr)
    type Case = (OptimizerConfig, fn(f64) -> OneState);
    let configs: [Case; 4] = [
        (
            LionConfig {
                betas: (0.9, 0.99),
                weight_decay: 0.0,
                ..Default::default()
            }
            .into(),
            |lr| OneState::Lion {
                lr,
                beta1: 0.9,
                beta2: 0.99,
                weight_decay: 0.0,
            },
        ),
        (
            LionConfig {
                betas: (0.95, 0.98),
                weight_decay: 0.1,
                ..Default::default()
            }
            .into(),
            |lr| OneState::Lion {
                lr,
                beta1: 0.95,
                beta2: 0.98,
                weight_decay: 0.1,
            },
        ),
        (
            SgdConfig {
                momentum: 0.9,
                ..Default::default()
            }
            .into(),
            |lr| OneState::Momentum {
                lr,
                momentum: 0.9,
                weight_decay: 0.0,
            },
        ),
        (
            SgdConfig {
                momentum: 0.8,
                weight_decay: 0.01,
                ..Default::default()
            }
            .into(),
            |lr| OneState::Momentum {
                lr,
                momentum: 0.8,
                weight_decay: 0.01,
            },
        ),
    ];
    let qmap = dynamic_map(true);
    let before = fused_optim::cpu::simd::simd_level();
    let lens = [70_001usize, 257, 300];
    let n: usize = lens.iter().sum();
    for level in SimdLevel::ALL {
        if set_simd_level(level) != level {
            eprintln!("NOT TESTED here: this CPU has no {} code", level.name());
            continue;
        }
        for (c, (config, one_state)) in configs.iter().enumerate() {
            let mut rng = Rng::new(0x1517 + c as u64);
            let mut p = params0(&mut rng, n);
            let mut po = p.clone();
            let mut opt = CpuOptimizer::builder(*config, n)
                .segments(&lens)
                .state_format(StateFormat::Blockwise8 { min_size: 256 })
                .build()
                .unwrap();
            let mut codes: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l]).collect();
            let mut absmax: Vec<Vec<f32>> =
                lens.iter().map(|&l| vec![0.0; l.div_ceil(BLOCK)]).collect();
            for (k, &lr) in [1e-3, 3e-3, 0.0, 1e-2, 5e-4].iter().enumerate() {
                let t = k as u64 + 1;
                // Every other step with moments at the edges of f32 (inf, NaN, underflow).
                let g = if k % 2 == 1 {
                    extreme_grads_for(&mut rng, n, k + 1)
                } else {
                    grads_for(&mut rng, n, k + 1)
                };
                opt.set_lr(lr).unwrap();
                opt.step(&mut p, &g).unwrap();
                let mut start = 0;
                for (j, &l) in lens.iter().enumerate() {
                    let r = start..start + l;
                    start += l;
                    oracle_step_8bit_1state(
                        &one_state(lr),
                        t,
                        &qmap,
                        &mut po[r.clone()],
                        &g[r],
                        &mut codes[j],
                        &mut absmax[j],
                    );
                }
                let label = format!("{} config {c} step {t}", level.name());
                let bad = p
                    .iter()
                    .zip(&po)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(bad, None, "{label}: params differ");
                let st = opt.blockwise8_state().unwrap();
                for (j, seg) in st.segments().iter().enumerate() {
                    match seg {
                        SegmentState::Quantized {
                            state1, absmax1, ..
                        } => {
                            assert_eq!(state1, &codes[j], "{label}: codes of segment {j}");
                            assert_eq!(
                                absmax1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                                absmax[j].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                                "{label}: absmax of segment {j}"
                            );
                        }
                        other => panic!("{label}: segment {j} not 8-bit: {other:?}"),
                    }
                }
            }
        }
    }
    set_simd_level(before);
}
