//! bitsandbytes 0.50.2's own `Lion8bit` and `SGD8bit` (CPU backend; `golden/bnb8`, made by
//! `scripts/bnb8_lion_sgd.py`) against the library's one-state 8-bit oracle
//! (`cpu::reference::blockwise8_1state`), the fast CPU path and the GPU kernel: the params
//! after every step, the final codes (`state1`), `absmax1`, `qmap1` and the 32-bit state of
//! small tensors. Agreement is counted; the bound asked for is the exact one (0 differing
//! params, codes, absmax), since bitsandbytes' CPU step is plain f32 arithmetic that the
//! library reproduces operation by operation.

mod common;

use std::io::Read;
use std::path::PathBuf;

use fused_optim::cpu::blockwise8::{dynamic_map, SegmentState, BLOCK, DEFAULT_MIN_8BIT_SIZE};
use fused_optim::cpu::reference::blockwise8_1state::{
    oracle_step_32bit_1state, oracle_step_8bit_1state, OneState,
};
use fused_optim::{
    CpuOptimizer, FlatParams, GpuOptimizer, LionConfig, Optimizer, OptimizerConfig, SgdConfig,
    StateFormat,
};
use serde_json::Value;

const CASES: [&str; 4] = [
    "lion8bit_default",
    "lion8bit_wd_min_size",
    "sgd8bit_default",
    "sgd8bit_wd_min_size",
];

fn load(name: &str) -> Value {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../golden/bnb8")
        .join(format!("{name}.json.gz"));
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&f).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    let doc: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(doc["format"], "fused-optim-bnb8-compare/1");
    doc["case"].clone()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// One step: lr, grads and params after the step, per tensor.
type Step = (f64, Vec<Vec<f32>>, Vec<Vec<f32>>);

struct Case {
    optimizer: String,
    args: Value,
    tensors: Vec<(String, usize)>,
    min_size: usize,
    params0: Vec<Vec<f32>>,
    /// Per step: lr, grads and params after the step, per tensor.
    steps: Vec<Step>,
    final_state: Value,
}

fn case(name: &str) -> Case {
    let c = load(name);
    let tensors: Vec<(String, usize)> = c["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["numel"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let per = |v: &Value| -> Vec<Vec<f32>> { tensors.iter().map(|(n, _)| f32s(&v[n])).collect() };
    Case {
        optimizer: c["optimizer"].as_str().unwrap().to_string(),
        min_size: c["args"]["min_8bit_size"]
            .as_u64()
            .map_or(DEFAULT_MIN_8BIT_SIZE, |x| x as usize),
        args: c["args"].clone(),
        params0: per(&c["params0"]),
        steps: c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["lr"].as_f64().unwrap(),
                    per(&s["grads"]),
                    per(&s["params"]),
                )
            })
            .collect(),
        final_state: c["final_state"].clone(),
        tensors,
    }
}

impl Case {
    fn one_state(&self, lr: f64) -> OneState {
        let a = &self.args;
        let wd = a["weight_decay"].as_f64().unwrap_or(0.0);
        match self.optimizer.as_str() {
            "Lion8bit" => OneState::Lion {
                lr,
                beta1: a["betas"][0].as_f64().unwrap(),
                beta2: a["betas"][1].as_f64().unwrap(),
                weight_decay: wd,
            },
            "SGD8bit" => OneState::Momentum {
                lr,
                momentum: a["momentum"].as_f64().unwrap(),
                weight_decay: wd,
            },
            other => panic!("unknown optimizer {other}"),
        }
    }

    fn config(&self) -> OptimizerConfig {
        match self.one_state(self.steps[0].0) {
            OneState::Lion {
                lr,
                beta1,
                beta2,
                weight_decay,
            } => LionConfig {
                lr,
                betas: (beta1, beta2),
                weight_decay,
                ..LionConfig::default()
            }
            .into(),
            OneState::Momentum {
                lr,
                momentum,
                weight_decay,
            } => SgdConfig {
                lr,
                momentum,
                weight_decay,
                ..SgdConfig::default()
            }
            .into(),
        }
    }
}

/// Differing elements of two f32 slices (bitwise) and the largest difference in ulps.
fn diff(a: &[f32], b: &[f32]) -> (usize, u32) {
    assert_eq!(a.len(), b.len());
    let mut count = 0;
    let mut ulps = 0u32;
    for (x, y) in a.iter().zip(b) {
        if x.to_bits() != y.to_bits() {
            count += 1;
            ulps = ulps.max((x.to_bits() as i64 - y.to_bits() as i64).unsigned_abs() as u32);
        }
    }
    (count, ulps)
}

enum St {
    Q(Vec<u8>, Vec<f32>),
    F(Vec<f32>),
}

/// The file's final state of tensor `name` as the library's [`St`].
fn file_state(c: &Case, name: &str) -> St {
    let s = &c.final_state[name];
    match s["state1"]["dtype"].as_str().unwrap() {
        "uint8" => {
            let codes: Vec<u8> = s["state1"]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect();
            let q = f32s(&s["qmap1"]);
            let want = dynamic_map(true);
            assert!(q.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
            St::Q(codes, f32s(&s["absmax1"]))
        }
        _ => St::F(f32s(&s["state1"]["data"])),
    }
}

/// Compare a final state with the file's: (codes equal, codes differing).
fn compare_state(c: &Case, label: &str, got: &[St]) -> (usize, usize) {
    let (mut eq, mut ne) = (0, 0);
    for ((name, _), g) in c.tensors.iter().zip(got) {
        match (g, file_state(c, name)) {
            (St::Q(codes, absmax), St::Q(wc, wa)) => {
                let d = codes.iter().zip(&wc).filter(|(a, b)| a != b).count();
                ne += d;
                eq += codes.len() - d;
                assert_eq!(diff(absmax, &wa).0, 0, "{label} {name}: absmax1 differs");
            }
            (St::F(m), St::F(wm)) => {
                assert_eq!(
                    diff(m, &wm),
                    (0, 0),
                    "{label} {name}: 32-bit state1 differs"
                )
            }
            _ => panic!("{label} {name}: the kind of state differs from bitsandbytes'"),
        }
    }
    (eq, ne)
}

#[test]
fn the_oracle_reproduces_bitsandbytes_bit_for_bit() {
    let q = dynamic_map(true);
    for name in CASES {
        let c = case(name);
        let mut p = c.params0.clone();
        let mut st: Vec<St> = c
            .tensors
            .iter()
            .map(|&(_, n)| {
                if n >= c.min_size {
                    St::Q(vec![0; n], vec![0.0; n.div_ceil(BLOCK)])
                } else {
                    St::F(vec![0.0; n])
                }
            })
            .collect();
        let mut param_diffs = 0;
        for (k, (lr, g, want)) in c.steps.iter().enumerate() {
            let o = c.one_state(*lr);
            let t = k as u64 + 1;
            for ((p, g), s) in p.iter_mut().zip(g).zip(st.iter_mut()) {
                match s {
                    St::Q(codes, absmax) => oracle_step_8bit_1state(&o, t, &q, p, g, codes, absmax),
                    St::F(m) => oracle_step_32bit_1state(&o, t, p, g, m),
                }
            }
            for (i, (p, w)) in p.iter().zip(want).enumerate() {
                let (d, ulps) = diff(p, w);
                assert_eq!(
                    d, 0,
                    "{name}: tensor {i} step {t}: {d} params differ, up to {ulps} ulp"
                );
                param_diffs += d;
            }
        }
        let (eq, ne) = compare_state(&c, name, &st);
        eprintln!("oracle {name}: params differ 0 of every step; codes equal {eq} differ {ne}");
        assert!(eq > 0);
        assert_eq!((ne, param_diffs), (0, 0), "{name}");
    }
}
/// The final state of a library optimizer with 8-bit state in the [`St`] form.
fn lib_state(segments: &[SegmentState]) -> Vec<St> {
    segments
        .iter()
        .map(|s| match s {
            SegmentState::Quantized {
                state1, absmax1, ..
            } => St::Q(state1.clone(), absmax1.clone()),
            SegmentState::Full { state1, .. } => St::F(state1.clone()),
        })
        .collect()
}

#[test]
fn the_fast_path_and_the_gpu_reproduce_bitsandbytes_bit_for_bit() {
    let ctx = common::gpu();
    for name in CASES {
        let c = case(name);
        let lens: Vec<usize> = c.tensors.iter().map(|t| t.1).collect();
        let format = StateFormat::Blockwise8 {
            min_size: c.min_size,
        };
        let mut fast = CpuOptimizer::builder(c.config(), lens.iter().sum())
            .segments(&lens)
            .state_format(format)
            .build()
            .unwrap();
        let mut p: Vec<f32> = c.params0.concat();
        let gpu = ctx.as_ref().map(|ctx| {
            let mut b = FlatParams::builder();
            for ((n, _), p0) in c.tensors.iter().zip(&c.params0) {
                b = b.slice(n, p0);
            }
            let flat = b.build(ctx).unwrap();
            let opt = GpuOptimizer::builder(&flat)
                .config(c.config())
                .state_format(format)
                .build()
                .unwrap();
            (flat, opt)
        });
        let mut gpu = gpu;
        for (k, (lr, g, want)) in c.steps.iter().enumerate() {
            let g = g.concat();
            let want = want.concat();
            fast.set_lr(*lr).unwrap();
            fast.step(&mut p, &g).unwrap();
            let (d, ulps) = diff(&p, &want);
            assert_eq!(
                d,
                0,
                "{name} fast step {}: {d} params differ (<= {ulps} ulp)",
                k + 1
            );
            if let Some((flat, opt)) = &mut gpu {
                flat.write_grads(&g).unwrap();
                opt.set_lr(*lr).unwrap();
                opt.step().unwrap();
                let (d, ulps) = diff(&flat.read_params().unwrap(), &want);
                assert_eq!(
                    d,
                    0,
                    "{name} gpu step {}: {d} params differ (<= {ulps} ulp)",
                    k + 1
                );
            }
        }
        let (eq, ne) = compare_state(
            &c,
            name,
            &lib_state(fast.blockwise8_state().unwrap().segments()),
        );
        eprintln!("fast {name}: codes equal {eq} differ {ne}");
        assert_eq!(ne, 0, "{name} fast");
        if let Some((_, opt)) = &gpu {
            let st = opt.blockwise8_state().unwrap().unwrap();
            let (eq, ne) = compare_state(&c, name, &lib_state(st.segments()));
            eprintln!("gpu {name}: codes equal {eq} differ {ne}");
            assert_eq!(ne, 0, "{name} gpu");
        }
    }
}
