//! Replays of `optim-golden/2` cases through the library's implementations, for the
//! algorithms the registry has: the f64 reference against the float64 run, the fast CPU
//! path and the GPU kernels against the float32 run, with the golden README's metrics and
//! tolerances (M1 1e-5 for f32, 1e-12 for f64; final states 1e-5 / 1e-12), Schedule-Free's
//! eval params (M1 at k = steps) and group scalars (`lr_max`, `weight_sum`, `k`).
//!
//! bitsandbytes' 8-bit cases (`bnb8bit`) have a float32 run only and go through
//! [`super::bnb8`]: [`Implementation::Reference`] is then the serial f32 oracle of the 8-bit
//! step and [`Implementation::CpuFast`] the fast path with
//! [`StateFormat::Blockwise8`](fused_optim::StateFormat), both against the float32 run; the
//! GPU replays them with 8-bit state too ([`super::bnb8::replay_gpu`]).

use serde_json::Value;

use super::v2::{params_error, Case2, Check, Dtype, LrUnit, Metric, ParamsCheck, Report2, Worst};
use crate::error::{Error, Result};
use fused_optim::FlatParams;
use fused_optim::GpuContext;
use fused_optim::GpuOptimizer;
use fused_optim::OptimizerConfig;
use fused_optim::{CpuOptimizer, Optimizer, ReferenceOptimizer};

/// Which implementation replays a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The f64 reference, against the float64 run.
    Reference,
    /// The fast CPU path (f32), against the float32 run.
    CpuFast,
    /// The GPU kernels (f32), against the float32 run.
    Gpu,
}

impl Implementation {
    /// The run it is compared with.
    pub fn dtype(self) -> Dtype {
        match self {
            Implementation::Reference => Dtype::F64,
            _ => Dtype::F32,
        }
    }

    /// The README's recommended tolerance (M1, and the final-state metric).
    pub fn tolerance(self) -> f64 {
        match self {
            Implementation::Reference => 1e-12,
            _ => 1e-5,
        }
    }

    /// The README's tolerance for `config`: as [`Self::tolerance`], except LAMB with
    /// `pre_norm` against the float64 run, 1e-6 (the package rounds the global gradient
    /// scale to float32 in both runs, ~1e-7 relative noise in the float64 trajectory).
    pub fn tolerance_for(self, config: &OptimizerConfig) -> f64 {
        match (self, config) {
            (Implementation::Reference, OptimizerConfig::Lamb(c)) if c.pre_norm => 1e-6,
            _ => self.tolerance(),
        }
    }
}

/// The README's metric and tolerance of the parameter trajectory for `config`: M1 at `tol`,
/// except Adafactor (M2 at `tol`) and Muon: M3 with c = 0.1 in units of the largest lr times each tensor's adjust ratio
/// (torch's Newton–Schulz is bfloat16 in both runs, this crate's f32 or f64: a few percent
/// of the update per step either way; the README measured 2.1e-2 for an f32 NS).
pub fn trajectory_metric(case: &Case2, config: &OptimizerConfig, tol: f64) -> (Metric, f64) {
    match config {
        OptimizerConfig::Muon(c) => {
            let units = case
                .tensors
                .iter()
                .map(|t| {
                    let (rows, cols) = match t.shape[..] {
                        [.., r, c] => (r, c),
                        [c] => (1, c),
                        [] => (1, 1),
                    };
                    (
                        t.name.clone(),
                        case.lr_unit() * c.adjust_lr.ratio(rows, cols),
                    )
                })
                .collect();
            (Metric::M3(LrUnit::PerTensor(units)), 0.1)
        }
        // The step is RMS(p)-relative and the update RMS-normalised: every element carries
        // rounding of order u * RMS(p) (the README's M2).
        OptimizerConfig::Adafactor(_) => (Metric::M2, tol),
        _ => (Metric::M1, tol),
    }
}

fn golden_err(case: &Case2, reason: impl Into<String>) -> Error {
    Error::Golden {
        file: case.file.display().to_string(),
        reason: reason.into(),
    }
}

/// The configuration of `case` when the registry knows its class (`Ok(None)` otherwise):
/// the class's last path segment with `hparams`, plus the settings the package keeps outside
/// the param group (lion-pytorch's `decoupled_wd`; pytorch_optimizer Lamb's `pre_norm`,
/// `maximize`, `clamp`, whose `defaults.eps` / `defaults.max_grad_norm` must equal the
/// group's, as the library's `pre_norm` uses the group's).
pub fn config_of(case: &Case2) -> Result<Option<OptimizerConfig>> {
    let class = case.class.rsplit('.').next().unwrap_or(&case.class);
    let mut map = case
        .hparams
        .as_object()
        .cloned()
        .ok_or_else(|| golden_err(case, "hparams is not an object"))?;
    if let Some(Value::Object(attrs)) = &case.instance_attributes {
        if let Some(d) = attrs.get("decoupled_wd") {
            map.insert("decoupled_weight_decay".into(), d.clone());
        }
        if class == "Lamb" {
            for key in ["pre_norm", "maximize", "clamp"] {
                if let Some(v) = attrs.get(key) {
                    map.insert(key.into(), v.clone());
                }
            }
            for key in ["eps", "max_grad_norm"] {
                let default = attrs.get(&format!("defaults.{key}"));
                if default.is_some() && default != map.get(key) {
                    return Err(golden_err(
                        case,
                        format!("Lamb: defaults.{key} differs from the group's {key}"),
                    ));
                }
            }
        }
    }
    match OptimizerConfig::from_hparams(class, &map) {
        Ok(c) => {
            c.validate()?;
            Ok(Some(c))
        }
        Err(e) if e.starts_with("unsupported optimizer") => Ok(None),
        Err(e) => Err(golden_err(case, e)),
    }
}

/// One of the three implementations, over the case's flat concatenation of tensors.
enum Runner {
    Reference(ReferenceOptimizer, Vec<f64>),
    CpuFast(CpuOptimizer, Vec<f32>),
    Gpu(Box<GpuOptimizer>, Box<FlatParams>),
}

impl Runner {
    /// Over the case's tensors, with their shapes (back to back, in file order).
    fn new(
        which: Implementation,
        config: OptimizerConfig,
        case: &Case2,
        p0: &[f64],
        ctx: Option<&GpuContext>,
    ) -> Result<Self> {
        let p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
        let shapes: Vec<Vec<usize>> = case.tensors.iter().map(|t| t.shape.clone()).collect();
        Ok(match which {
            Implementation::Reference => Runner::Reference(
                ReferenceOptimizer::with_shapes(config, &shapes)?,
                p0.to_vec(),
            ),
            Implementation::CpuFast => Runner::CpuFast(
                CpuOptimizer::builder(config, p0.len())
                    .shapes(&shapes)
                    .build()?,
                p32,
            ),
            Implementation::Gpu => {
                let ctx = ctx.ok_or(fused_optim::Error::NoAdapter {
                    reason: "the GPU replay needs a context".into(),
                })?;
                let mut builder = FlatParams::builder();
                for (t, r) in case.tensors.iter().zip(case.offsets()) {
                    builder = builder.shaped(&t.name, &t.shape, &p32[r]);
                }
                let flat = builder.build(ctx)?;
                Runner::Gpu(Box::new(GpuOptimizer::new(&flat, config)?), Box::new(flat))
            }
        })
    }

    /// The last step's per-tensor scalar `name` (LAMB's `weight_norm`, ...), per tensor.
    async fn segment_scalar(&self, name: &str) -> Result<Option<Vec<f64>>> {
        Ok(match self {
            Runner::Reference(o, _) => o.segment_scalar(name),
            Runner::CpuFast(o, _) => o.segment_scalar(name),
            Runner::Gpu(o, _) => o.segment_scalar_async(name).await?,
        })
    }

    async fn step(&mut self, lr: f64, p: &mut [f64], g: &[f64]) -> Result<()> {
        match self {
            Runner::Reference(o, own) => {
                o.set_lr(lr)?;
                o.step(own, g)?;
                p.copy_from_slice(own);
            }
            Runner::CpuFast(o, own) => {
                o.set_lr(lr)?;
                let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                o.step(own, &g)?;
                p.iter_mut()
                    .zip(own.iter())
                    .for_each(|(d, s)| *d = f64::from(*s));
            }
            Runner::Gpu(o, flat) => {
                o.set_lr(lr)?;
                let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                flat.write_grads(&g)?;
                o.step()?;
                let got = flat.read_params_async().await?;
                p.iter_mut().zip(got).for_each(|(d, s)| *d = f64::from(s));
            }
        }
        Ok(())
    }

    async fn params(&self) -> Result<Vec<f64>> {
        Ok(match self {
            Runner::Reference(_, own) => own.clone(),
            Runner::CpuFast(_, own) => own.iter().map(|&x| f64::from(x)).collect(),
            Runner::Gpu(_, flat) => flat
                .read_params_async()
                .await?
                .into_iter()
                .map(f64::from)
                .collect(),
        })
    }

    async fn state(&self, name: &str) -> Result<Vec<f64>> {
        Ok(match self {
            Runner::Reference(o, _) => o.state(name)?.to_vec(),
            Runner::CpuFast(o, _) => o.state(name)?.iter().map(|&x| f64::from(x)).collect(),
            Runner::Gpu(o, _) => o
                .read_state_f32_async(name)
                .await?
                .into_iter()
                .map(f64::from)
                .collect(),
        })
    }

    fn set_train_mode(&mut self, train: bool) -> Result<()> {
        match self {
            Runner::Reference(o, own) => o.set_train_mode(own, train),
            Runner::CpuFast(o, own) => o.set_train_mode(own, train),
            Runner::Gpu(o, _) => o.set_train_mode(train),
        }
        .map_err(Error::from)
    }

    fn host(&self) -> fused_optim::HostState {
        match self {
            Runner::Reference(o, _) => o.host_state(),
            Runner::CpuFast(o, _) => o.host_state(),
            Runner::Gpu(o, _) => o.host_state(),
        }
    }
}

/// A scalar compared relatively: |got - want| <= tol * max(|want|, 1e-30).
fn scalar_check(name: &str, got: f64, want: f64, tol: f64) -> Check {
    let bound = tol * want.abs().max(1e-30);
    let err = (got - want).abs();
    Check {
        quantity: name.to_string(),
        worst: Worst {
            ratio: if err == 0.0 {
                0.0
            } else if bound > 0.0 {
                err / bound
            } else {
                f64::INFINITY
            },
            at: None,
        },
    }
}

/// Replay `case` through `which`; `Ok(None)` when the registry has no such class (the
/// caller reports a SKIP). A `bnb8bit` case on the GPU reads back after every step and
/// waits (native only).
/// Waits for the device ([`replay_async`], waited for): on the web the GPU replay must be
/// awaited with [`replay_async`].
pub fn replay(
    case: &Case2,
    which: Implementation,
    ctx: Option<&GpuContext>,
) -> Result<Option<Report2>> {
    fused_optim::gpu::wait::block_on("golden replay", replay_async(case, which, ctx))?
}

/// [`replay`] without blocking: every read-back of the GPU path is awaited (what the
/// browser needs); the same metrics, tolerances and checks.
pub async fn replay_async(
    case: &Case2,
    which: Implementation,
    ctx: Option<&GpuContext>,
) -> Result<Option<Report2>> {
    if case.algorithm == "bnb8bit" {
        return match which {
            Implementation::Reference => {
                super::bnb8::replay(case, super::bnb8::Which::Oracle).map(|(r, _)| Some(r))
            }
            Implementation::CpuFast => {
                super::bnb8::replay(case, super::bnb8::Which::Fast).map(|(r, _)| Some(r))
            }
            // The 8-bit GPU replay reads back blocking: on the web it is left out (`None`).
            Implementation::Gpu if cfg!(target_arch = "wasm32") => Ok(None),
            Implementation::Gpu => match ctx {
                Some(ctx) => super::bnb8::replay_gpu(case, ctx).map(|(r, _)| Some(r)),
                None => Err(fused_optim::Error::NoAdapter {
                    reason: "the GPU replay needs a context".into(),
                }
                .into()),
            },
        };
    }
    let Some(config) = config_of(case)? else {
        return Ok(None);
    };
    replay_config_async(case, which, ctx, config, None)
        .await
        .map(Some)
}

/// [`replay`] of `case` with a given `config` (e.g. [`config_of`]'s with an option the
/// package lacks, such as Muon's `NsArithmetic::Bf16`), and when `trajectory_tol` is given,
/// that tolerance of the trajectory metric instead of the README's (the final state keeps
/// the README's). Blocks; the GPU path's read-backs are awaited inside.
pub fn replay_config(
    case: &Case2,
    which: Implementation,
    ctx: Option<&GpuContext>,
    config: OptimizerConfig,
    trajectory_tol: Option<f64>,
) -> Result<Report2> {
    fused_optim::gpu::wait::block_on(
        "golden replay",
        replay_config_async(case, which, ctx, config, trajectory_tol),
    )?
}

async fn replay_config_async(
    case: &Case2,
    which: Implementation,
    ctx: Option<&GpuContext>,
    config: OptimizerConfig,
    trajectory_tol: Option<f64>,
) -> Result<Report2> {
    let dtype = which.dtype();
    let tol = which.tolerance_for(&config);
    let run = case.run(dtype)?;
    let p0: Vec<f64> = case
        .flat_params0()
        .into_iter()
        .map(|x| dtype.round(x))
        .collect();
    let mut runner = Runner::new(which, config, case, &p0, ctx)?;
    let (metric, params_tol) = trajectory_metric(case, &config, tol);
    let params_tol = trajectory_tol.unwrap_or(params_tol);
    let mut report = super::v2::replay_trajectory_async(
        case,
        dtype,
        &metric,
        params_tol,
        async |_, lr, p: &mut [f64], g: &[f64]| runner.step(lr, p, g).await,
    )
    .await?;
    let offsets = case.offsets();
    let y = runner.params().await?;
    let has_modes = matches!(config, OptimizerConfig::ScheduleFree(_));
    let x = if has_modes {
        runner.set_train_mode(false)?;
        Some(runner.params().await?)
    } else {
        None
    };
    // Final state, under the package's keys: our state tensors by name (read here, after
    // the mode switch, so that the check below needs no read-back), and for the
    // Schedule-Free reference classes x (the eval params) and y (the training params).
    let names = config.state_names();
    let mut states = Vec::with_capacity(names.len());
    for &name in &names {
        states.push((name, runner.state(name).await?));
    }
    let mut scalars: Vec<(&str, Vec<f64>)> = Vec::new();
    for &name in config.segment_scalar_names() {
        if let Some(values) = runner.segment_scalar(name).await? {
            scalars.push((name, values));
        }
    }
    // Each tensor's part of each state tensor (Adafactor's factored state is not one element
    // per parameter).
    let shapes: Vec<Vec<usize>> = case.tensors.iter().map(|t| t.shape.clone()).collect();
    let layout =
        fused_optim::StateLayout::new(&config, &fused_optim::SegmentTable::contiguous(&shapes)?);
    let host = runner.host();
    let checks = case.check_final_state(dtype, tol, |tensor, key| {
        let t = case.tensors.iter().position(|t| t.name == tensor)?;
        if let Some((_, per_tensor)) = scalars.iter().find(|(n, _)| *n == key) {
            return Some(vec![per_tensor[t]]);
        }
        let r = offsets[t].clone();
        let flat = match key {
            "y" if has_modes => y.clone(),
            "x" => x.clone()?,
            // Adafactor's per-tensor step counter.
            "step" if matches!(config, OptimizerConfig::Adafactor(_)) => {
                return Some(vec![host.step as f64]);
            }
            _ => {
                let k = names.iter().position(|n| *n == key)?;
                let values = &states[k].1;
                return Some(values[layout.range(k, t)].to_vec());
            }
        };
        Some(flat[r].to_vec())
    })?;
    report.checks.extend(checks);
    // LAMB's group step counter.
    if let (OptimizerConfig::Lamb(_), Some(Value::Object(g))) = (config, &run.group_state) {
        if let Some(step) = g.get("step").and_then(Value::as_f64) {
            report
                .checks
                .push(scalar_check("group.step", host.step as f64, step, 0.0));
        }
    }
    // Schedule-Free: eval params (M1 at k = steps) and the group scalars.
    if let Some(x) = &x {
        if let Some(Value::Object(eval)) = run.extra.as_ref().and_then(|e| e.get("eval_params")) {
            for (t, r) in case.tensors.iter().zip(&offsets) {
                let want: Vec<f64> = eval
                    .get(&t.name)
                    .and_then(Value::as_array)
                    .ok_or_else(|| golden_err(case, format!("eval_params lacks `{}`", t.name)))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect();
                let c = ParamsCheck {
                    metric: &Metric::M1,
                    tol,
                    dtype,
                    tensor: &t.name,
                    step: case.steps,
                    params0: &t.params0,
                };
                report.checks.push(Check {
                    quantity: format!("eval_params.{}", t.name),
                    worst: params_error(&c, &x[r.clone()], &want)?,
                });
            }
        }
        if let Some(Value::Object(g)) = &run.group_state {
            for name in ["lr_max", "weight_sum"] {
                if let (Some(want), Some(got)) = (
                    g.get(name).and_then(Value::as_f64),
                    config.host_scalar(&host, name),
                ) {
                    report
                        .checks
                        .push(scalar_check(&format!("group.{name}"), got, want, 1e-12));
                }
            }
            if let Some(k) = g.get("k").and_then(Value::as_f64) {
                report
                    .checks
                    .push(scalar_check("group.k", host.step as f64, k, 0.0));
            }
        }
    }
    Ok(report)
}
