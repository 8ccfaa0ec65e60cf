//! Replays of the bitsandbytes 8-bit cases (`"algorithm": "bnb8bit"`, `Adam8bit` /
//! `AdamW8bit` of bitsandbytes 0.50.2's CPU backend) through the library's block-wise 8-bit
//! state ([`fused_optim::cpu::blockwise8`]): the oracle
//! ([`fused_optim::cpu::reference::blockwise8`], with the file's own `qmap1`/`qmap2`) and the
//! fast CPU path ([`CpuOptimizer`] with [`StateFormat::Blockwise8`]) and the GPU
//! ([`GpuOptimizer`] with [`StateFormat::Blockwise8`], [`replay_gpu`]), all against the
//! float32 run (there is no float64 run). Checked: the parameters after every step (M1, 1e-5: the
//! README's tolerance for a LUT-faithful kernel), the final state under bitsandbytes' names
//! (`step`; `state1`/`state2` codes exactly, `absmax1`/`absmax2`, `qmap1`/`qmap2` with the
//! state metric; f32 `state1`/`state2` of the 32-bit tensors), and the quantiser alone on
//! `extra.prequant_last_step` (codes and absmax bit for bit).

use serde_json::Value;

use super::v2::{Case2, Check, Dtype, Metric, Report2, StateValue, Worst};
use crate::error::{Error, Result};
use fused_optim::cpu::blockwise8::{Quantizer, SegmentState, BLOCK, DEFAULT_MIN_8BIT_SIZE};
use fused_optim::cpu::reference::blockwise8::{oracle_step_32bit, oracle_step_8bit, OracleHparams};
use fused_optim::{
    AdamConfig, CpuOptimizer, FlatParams, GpuContext, GpuOptimizer, Optimizer, StateFormat,
};

/// The tolerance of the parameter and final-state checks (README: M1 1e-5 for a
/// LUT-faithful kernel).
pub const TOL: f64 = 1e-5;

fn golden_err(case: &Case2, reason: impl Into<String>) -> Error {
    Error::Golden {
        file: case.file.display().to_string(),
        reason: reason.into(),
    }
}

/// What a bitsandbytes 8-bit case configures: the Adam hyper-parameters (weight decay
/// decoupled, as in both `Adam8bit` and `AdamW8bit`) and `min_8bit_size` (bitsandbytes'
/// `optim_bits = 32` is `usize::MAX`: every tensor 32-bit). Options the library does not
/// implement (`max_unorm`, `skip_zeros`, AdEMAMix's `alpha`, `percentile_clipping`, another
/// `optimizer_name`) are a [`Error::Golden`] naming them, never ignored.
pub fn config_of(case: &Case2) -> Result<(AdamConfig, usize)> {
    let h = case
        .hparams
        .as_object()
        .ok_or_else(|| golden_err(case, "hparams is not an object"))?;
    let num = |k: &str, d: f64| -> Result<f64> {
        match h.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| golden_err(case, format!("hparams.{k} is not a number: {v}"))),
        }
    };
    let betas = match h.get("betas") {
        None | Some(Value::Null) => (0.9, 0.999),
        Some(Value::Array(a)) if a.len() >= 2 => {
            if let Some(b3) = a.get(2).and_then(Value::as_f64) {
                if b3 != 0.0 {
                    return Err(golden_err(
                        case,
                        "a third beta (AdEMAMix) is not implemented",
                    ));
                }
            }
            (
                a[0].as_f64().ok_or_else(|| golden_err(case, "betas[0]"))?,
                a[1].as_f64().ok_or_else(|| golden_err(case, "betas[1]"))?,
            )
        }
        Some(v) => return Err(golden_err(case, format!("betas: {v}"))),
    };
    for key in h.keys() {
        let ok = matches!(
            key.as_str(),
            "lr" | "betas" | "eps" | "weight_decay" | "alpha" | "t_alpha" | "t_beta3"
        );
        if !ok {
            return Err(golden_err(
                case,
                format!("unsupported hyper-parameter `{key}` = {}", h[key]),
            ));
        }
    }
    if num("alpha", 0.0)? != 0.0 {
        return Err(golden_err(case, "AdEMAMix's alpha is not implemented"));
    }
    for k in ["t_alpha", "t_beta3"] {
        if !matches!(h.get(k), None | Some(Value::Null)) {
            return Err(golden_err(case, format!("`{k}` is not implemented")));
        }
    }
    let config = AdamConfig {
        lr: num("lr", 1e-3)?,
        betas,
        eps: num("eps", 1e-8)?,
        weight_decay: num("weight_decay", 0.0)?,
        decoupled_weight_decay: true,
        amsgrad: false,
        maximize: false,
    };
    config.validate()?;
    let mut min_size = DEFAULT_MIN_8BIT_SIZE;
    if let Some(Value::Object(attrs)) = &case.instance_attributes {
        for (k, v) in attrs {
            match k.as_str() {
                "optimizer_name" if v.as_str() == Some("adam") => {}
                "args.optim_bits" => match v.as_u64() {
                    Some(8) => {}
                    Some(32) => min_size = usize::MAX,
                    _ => return Err(golden_err(case, format!("optim_bits = {v}"))),
                },
                "args.min_8bit_size" => {
                    if min_size != usize::MAX {
                        min_size = v
                            .as_u64()
                            .ok_or_else(|| golden_err(case, "min_8bit_size"))?
                            as usize;
                    }
                }
                "args.max_unorm" if v.as_f64() == Some(0.0) => {}
                "args.skip_zeros" if v.as_bool() == Some(false) => {}
                "args.percentile_clipping" if v.as_f64() == Some(100.0) => {}
                _ => {
                    return Err(golden_err(
                        case,
                        format!("unsupported bitsandbytes setting `{k}` = {v}"),
                    ))
                }
            }
        }
    }
    Ok((config, min_size))
}

/// The oracle's state of one tensor.
enum OracleTensor {
    Quantized {
        s1: Vec<u8>,
        s2: Vec<u8>,
        a1: Vec<f32>,
        a2: Vec<f32>,
    },
    Full {
        m: Vec<f32>,
        v: Vec<f32>,
    },
}

fn golden_map(case: &Case2, key: &str) -> Result<Option<[f32; 256]>> {
    let run = case.run(Dtype::F32)?;
    for state in run.final_state.values() {
        if let Some(StateValue::Tensor { data, .. }) = state.get(key) {
            if data.len() != 256 {
                return Err(golden_err(case, format!("{key} has {} values", data.len())));
            }
            let mut m = [0.0f32; 256];
            for (d, &x) in m.iter_mut().zip(data) {
                *d = x as f32;
            }
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The oracle over all tensors of a case.
struct Oracle {
    h: OracleHparams,
    t: u64,
    q1: [f32; 256],
    q2: [f32; 256],
    tensors: Vec<OracleTensor>,
}

impl Oracle {
    fn step(&mut self, lr: f64, offsets: &[std::ops::Range<usize>], p: &mut [f32], g: &[f32]) {
        self.t += 1;
        self.h.lr = lr;
        for (r, t) in offsets.iter().zip(&mut self.tensors) {
            let (p, g) = (&mut p[r.clone()], &g[r.clone()]);
            match t {
                OracleTensor::Quantized { s1, s2, a1, a2 } => {
                    oracle_step_8bit(&self.h, self.t, &self.q1, &self.q2, p, g, s1, s2, a1, a2)
                }
                OracleTensor::Full { m, v } => oracle_step_32bit(&self.h, self.t, p, g, m, v),
            }
        }
    }

    fn state(&self, t: usize, key: &str) -> Option<Vec<f64>> {
        let f = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect();
        let u = |x: &[u8]| x.iter().map(|&v| f64::from(v)).collect();
        match (&self.tensors[t], key) {
            (_, "step") => Some(vec![self.t as f64]),
            (OracleTensor::Quantized { s1, .. }, "state1") => Some(u(s1)),
            (OracleTensor::Quantized { s2, .. }, "state2") => Some(u(s2)),
            (OracleTensor::Quantized { a1, .. }, "absmax1") => Some(f(a1)),
            (OracleTensor::Quantized { a2, .. }, "absmax2") => Some(f(a2)),
            (OracleTensor::Quantized { .. }, "qmap1") => Some(f(&self.q1)),
            (OracleTensor::Quantized { .. }, "qmap2") => Some(f(&self.q2)),
            (OracleTensor::Full { m, .. }, "state1") => Some(f(m)),
            (OracleTensor::Full { v, .. }, "state2") => Some(f(v)),
            _ => None,
        }
    }
}

/// bitsandbytes' final state of one tensor from the fast path's [`SegmentState`].
fn fast_state(seg: &SegmentState, step: u64, key: &str) -> Option<Vec<f64>> {
    let f = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect();
    let u = |x: &[u8]| x.iter().map(|&v| f64::from(v)).collect();
    match (seg, key) {
        (_, "step") => Some(vec![step as f64]),
        (SegmentState::Quantized { state1, .. }, "state1") => Some(u(state1)),
        (SegmentState::Quantized { state2, .. }, "state2") => Some(u(state2)),
        (SegmentState::Quantized { absmax1, .. }, "absmax1") => Some(f(absmax1)),
        (SegmentState::Quantized { absmax2, .. }, "absmax2") => Some(f(absmax2)),
        (SegmentState::Quantized { .. }, "qmap1") => Some(f(Quantizer::signed().map())),
        (SegmentState::Quantized { .. }, "qmap2") => Some(f(Quantizer::unsigned().map())),
        (SegmentState::Full { state1, .. }, "state1") => Some(f(state1)),
        (SegmentState::Full { state2, .. }, "state2") => Some(f(state2)),
        _ => None,
    }
}

/// Which of the two CPU implementations replays a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The serial oracle with the file's maps.
    Oracle,
    /// The fast CPU path ([`CpuOptimizer`], [`StateFormat::Blockwise8`]).
    Fast,
}

enum Runner {
    Oracle(Box<Oracle>),
    Fast(Box<CpuOptimizer>),
    Gpu(Box<GpuOptimizer>, Box<FlatParams>),
}

/// The number of final codes (`state1`, `state2` of every quantised tensor) of a replay
/// that equal the file's, and the number that differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeAgreement {
    /// Codes equal to bitsandbytes'.
    pub equal: usize,
    /// Codes that differ.
    pub differ: usize,
}

/// Replay a `bnb8bit` case through `which` against the float32 run; also returns the code
/// agreement of the final state.
pub fn replay(case: &Case2, which: Which) -> Result<(Report2, CodeAgreement)> {
    replay_through(case, Some(which), None)
}

/// Replay a `bnb8bit` case on the GPU of `ctx` (8-bit state, one segment per tensor, the
/// same checks and tolerance as [`replay`]); reads back after every step (waits: native
/// only).
pub fn replay_gpu(case: &Case2, ctx: &GpuContext) -> Result<(Report2, CodeAgreement)> {
    replay_through(case, None, Some(ctx))
}

fn replay_through(
    case: &Case2,
    which: Option<Which>,
    ctx: Option<&GpuContext>,
) -> Result<(Report2, CodeAgreement)> {
    let (config, min_size) = config_of(case)?;
    let offsets = case.offsets();
    let lens: Vec<usize> = case.tensors.iter().map(|t| t.numel).collect();
    let which = match (which, ctx) {
        (Some(w), _) => w,
        (None, Some(ctx)) => {
            // Segments back to back, one per tensor, at the case's offsets.
            let p0: Vec<f32> = case.flat_params0().iter().map(|&x| x as f32).collect();
            let mut b = FlatParams::builder();
            for (t, r) in case.tensors.iter().zip(&offsets) {
                b = b.slice(&t.name, &p0[r.clone()]);
            }
            let flat = b.build(ctx)?;
            if flat
                .segments()
                .iter()
                .zip(&offsets)
                .any(|(s, r)| s.offset != r.start)
            {
                return Err(golden_err(
                    case,
                    "tensor offsets differ from the flat params'",
                ));
            }
            let opt = GpuOptimizer::builder(&flat)
                .config(config)
                .state_format(StateFormat::Blockwise8 { min_size })
                .build()?;
            return finish(case, Runner::Gpu(Box::new(opt), Box::new(flat)));
        }
        (None, None) => return Err(golden_err(case, "no implementation to replay")),
    };
    let runner = match which {
        Which::Oracle => {
            let q1 = golden_map(case, "qmap1")?;
            let q2 = golden_map(case, "qmap2")?;
            let any_q = lens.iter().any(|&l| l >= min_size);
            let (q1, q2) = match (q1, q2) {
                (Some(a), Some(b)) => (a, b),
                _ if !any_q => ([0.0; 256], [0.0; 256]),
                _ => return Err(golden_err(case, "no qmap1/qmap2 in the final state")),
            };
            Runner::Oracle(Box::new(Oracle {
                h: OracleHparams {
                    lr: config.lr,
                    beta1: config.betas.0,
                    beta2: config.betas.1,
                    eps: config.eps,
                    weight_decay: config.weight_decay,
                },
                t: 0,
                q1,
                q2,
                tensors: lens
                    .iter()
                    .map(|&l| {
                        if l >= min_size {
                            let b = l.div_ceil(BLOCK);
                            OracleTensor::Quantized {
                                s1: vec![0; l],
                                s2: vec![0; l],
                                a1: vec![0.0; b],
                                a2: vec![0.0; b],
                            }
                        } else {
                            OracleTensor::Full {
                                m: vec![0.0; l],
                                v: vec![0.0; l],
                            }
                        }
                    })
                    .collect(),
            }))
        }
        Which::Fast => Runner::Fast(Box::new(
            CpuOptimizer::builder(config, case.numel())
                .segments(&lens)
                .state_format(StateFormat::Blockwise8 { min_size })
                .build()?,
        )),
    };
    finish(case, runner)
}

/// Run the trajectory and the final-state checks through `runner`.
fn finish(case: &Case2, mut runner: Runner) -> Result<(Report2, CodeAgreement)> {
    let run = case.run(Dtype::F32)?;
    let offsets = case.offsets();
    let mut report =
        super::v2::replay_trajectory(case, Dtype::F32, &Metric::M1, TOL, |_, lr, p, g| {
            let mut p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
            let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            match &mut runner {
                Runner::Oracle(o) => o.step(lr, &offsets, &mut p32, &g32),
                Runner::Fast(o) => {
                    o.set_lr(lr)?;
                    o.step(&mut p32, &g32)?;
                }
                Runner::Gpu(o, flat) => {
                    flat.write_params(&p32)?;
                    flat.write_grads(&g32)?;
                    o.set_lr(lr)?;
                    o.step()?;
                    p32 = flat.read_params()?;
                }
            }
            p.iter_mut().zip(&p32).for_each(|(d, &s)| *d = f64::from(s));
            Ok(())
        })?;
    let mut agreement = CodeAgreement::default();
    let checks = case.check_final_state(Dtype::F32, TOL, |tensor, key| {
        let t = case.tensors.iter().position(|t| t.name == tensor)?;
        let got = match &runner {
            Runner::Oracle(o) => o.state(t, key),
            Runner::Fast(o) => {
                let st = o.blockwise8_state()?;
                fast_state(&st.segments()[t], o.step_count(), key)
            }
            Runner::Gpu(o, _) => {
                let st = o.blockwise8_state().ok()??;
                fast_state(&st.segments()[t], o.step_count(), key)
            }
        }?;
        if let ("state1" | "state2", Some(StateValue::Tensor { dtype, data, .. })) =
            (key, run.final_state.get(tensor).and_then(|s| s.get(key)))
        {
            if dtype == "uint8" && data.len() == got.len() {
                for (a, b) in got.iter().zip(data) {
                    if a == b {
                        agreement.equal += 1;
                    } else {
                        agreement.differ += 1;
                    }
                }
            }
        }
        Some(got)
    })?;
    report.checks.extend(checks);
    report.checks.extend(prequant_checks(case)?);
    Ok((report, agreement))
}

/// The quantiser alone: `extra.prequant_last_step` (the moments bitsandbytes handed to its
/// quantiser on the last step) quantised with the library's [`Quantizer`] must give the
/// final codes and absmax bit for bit. One check per tensor and key
/// (`prequant.<tensor>.<state1|state2|absmax1|absmax2>`); none when the file has no such
/// extra.
pub fn prequant_checks(case: &Case2) -> Result<Vec<Check>> {
    let run = case.run(Dtype::F32)?;
    let Some(Value::Object(pre)) = run.extra.as_ref().and_then(|e| e.get("prequant_last_step"))
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (tensor, moments) in pre {
        let state = run
            .final_state
            .get(tensor)
            .ok_or_else(|| golden_err(case, format!("prequant of unknown tensor `{tensor}`")))?;
        for (k, key, q) in [
            (1, "state1", Quantizer::signed()),
            (2, "state2", Quantizer::unsigned()),
        ] {
            let x: Vec<f32> = moments
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| golden_err(case, format!("prequant `{tensor}.{key}`")))?
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                .collect();
            let mut codes = vec![0u8; x.len()];
            let mut absmax = vec![0.0f32; x.len().div_ceil(BLOCK)];
            q.quantize(&x, &mut codes, &mut absmax)?;
            let akey = format!("absmax{k}");
            for (name, got) in [
                (
                    key.to_string(),
                    codes.iter().map(|&c| f64::from(c)).collect::<Vec<_>>(),
                ),
                (akey.clone(), absmax.iter().map(|&a| f64::from(a)).collect()),
            ] {
                let want = match state.get(&name) {
                    Some(StateValue::Tensor { data, .. }) => data,
                    _ => return Err(golden_err(case, format!("no final `{tensor}.{name}`"))),
                };
                out.push(Check {
                    quantity: format!("prequant.{tensor}.{name}"),
                    worst: exact(tensor, &name, case.steps, &got, want),
                });
            }
        }
    }
    Ok(out)
}

/// Bit-for-bit comparison as a [`Worst`]: ratio 0 when equal, infinite otherwise.
fn exact(tensor: &str, key: &str, step: usize, got: &[f64], want: &[f64]) -> Worst {
    if got.len() != want.len() {
        return Worst::missing(tensor, Some(key));
    }
    let bad = got
        .iter()
        .zip(want)
        .position(|(a, b)| (*b as f32).to_bits() != (*a as f32).to_bits());
    match bad {
        None => Worst {
            ratio: 0.0,
            at: None,
        },
        Some(i) => Worst {
            ratio: f64::INFINITY,
            at: Some(super::v2::Location {
                tensor: tensor.to_string(),
                key: Some(key.to_string()),
                step,
                index: i,
                got: got[i],
                expected: want[i],
            }),
        },
    }
}
