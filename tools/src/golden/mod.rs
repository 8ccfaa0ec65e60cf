//! Golden trajectories made by PyTorch (`optim-golden/1` JSON files): loading, mapping
//! PyTorch's hyper-parameters to configs, and replaying a case through the CPU reference (f64,
//! against the file's float64 run) and the GPU path (f32, against its float32 run) with the
//! tolerances the golden README gives.
//!
//! Files are read as plain `.json` or gzip-compressed `.json.gz` (the repository keeps its
//! copies in `golden/v1` and `golden/v2` compressed). [`v2`] reads the multi-tensor
//! `optim-golden/2` format; [`load_any`] tells the two apart.

pub mod bnb8;
pub mod expr;
pub mod replay2;
pub mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use expr::GradientProgram;
use fused_optim::optim::*;
use fused_optim::FlatParams;
use fused_optim::GpuContext;
use fused_optim::GpuOptimizer;
use fused_optim::Optimizer;
use fused_optim::ReferenceOptimizer;

/// The schema tag this module reads.
pub const SCHEMA: &str = "optim-golden/1";

/// Per-step relative tolerance for an f32 implementation (golden README).
pub const F32_TOLERANCE: f64 = 1e-5;
/// Per-step relative tolerance for an f64 implementation (golden README).
pub const F64_TOLERANCE: f64 = 1e-12;

/// What one run (float32 or float64) of PyTorch produced.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Params after each step.
    pub params: Vec<Vec<f64>>,
    /// Path cases: the gradient fed before each step.
    pub grads: Option<Vec<Vec<f64>>>,
    /// Per-element state tensors after the last step, by PyTorch's names.
    pub tensors: BTreeMap<String, Vec<f64>>,
    /// Scalar state after the last step (`step`, `mu_product`).
    pub scalars: BTreeMap<String, f64>,
}

/// How the gradients of a case are made.
#[derive(Clone, Debug)]
pub enum Gradients {
    /// Given in the file, one vector per step.
    Recorded(Vec<Vec<f64>>),
    /// Computed from the current [x, y] before each step (closed loop).
    Path(GradientProgram),
}

/// One golden case.
#[derive(Clone, Debug)]
pub struct GoldenCase {
    /// Where it was read from.
    pub file: PathBuf,
    /// Case name.
    pub name: String,
    /// PyTorch class name.
    pub optimizer: String,
    /// The configuration, from `hparams`.
    pub config: OptimizerConfig,
    /// Number of elements.
    pub n: usize,
    /// Number of steps.
    pub steps: usize,
    /// lr before each step (the constant lr when the file has none).
    pub lr_per_step: Vec<f64>,
    /// Initial parameters.
    pub params0: Vec<f64>,
    /// Gradients.
    pub gradients: Gradients,
    /// The float32 run.
    pub expected_f32: Expected,
    /// The float64 run.
    pub expected_f64: Expected,
}

fn golden_err(file: &Path, reason: impl Into<String>) -> Error {
    Error::Golden {
        file: file.display().to_string(),
        reason: reason.into(),
    }
}

/// Read a golden file as JSON: plain text, or gzip-compressed (recognised by its magic bytes,
/// whatever the name).
pub fn read_json(file: &Path) -> Result<Value> {
    let bytes = std::fs::read(file).map_err(|e| golden_err(file, e.to_string()))?;
    json_from_bytes(file, &bytes)
}

/// Parse a golden file's bytes as JSON: plain text, or gzip-compressed (recognised by its
/// magic bytes). `file` names it in errors. For callers that have the bytes but no file
/// system (the browser, which fetches them).
pub fn json_from_bytes(file: &Path, bytes: &[u8]) -> Result<Value> {
    use std::io::Read;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| golden_err(file, format!("gzip: {e}")))?;
        text
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|e| golden_err(file, e.to_string()))?
    };
    serde_json::from_str(&text).map_err(|e| golden_err(file, e.to_string()))
}

/// True for a folder's index of cases (`index.json`): it shares the schema tag but lists cases
/// instead of being one.
fn is_index(v: &Value) -> bool {
    v.get("case").is_none() && v.get("cases").is_some()
}

/// Read a file (`.json` or `.json.gz`). `Ok(None)` when it is JSON of another schema or an
/// index of cases (`index.json`).
pub fn load(file: &Path) -> Result<Option<GoldenCase>> {
    let v = read_json(file)?;
    if v.get("schema").and_then(Value::as_str) != Some(SCHEMA) || is_index(&v) {
        return Ok(None);
    }
    parse_case(file, &v).map(Some)
}

/// A golden file of either schema.
#[derive(Clone, Debug)]
pub enum Golden {
    /// An `optim-golden/1` case.
    V1(GoldenCase),
    /// An `optim-golden/2` case.
    V2(v2::Case2),
    /// Valid JSON that is not a case: an index of cases or another schema.
    NotACase,
}

/// Read a file (`.json` or `.json.gz`) of either schema. Malformed JSON and malformed cases are
/// errors; JSON that is not a case is [`Golden::NotACase`].
pub fn load_any(file: &Path) -> Result<Golden> {
    parse_any(file, &read_json(file)?)
}

/// [`load_any`] on JSON already read (`file` names it in errors and reports), e.g. from
/// [`json_from_bytes`].
pub fn parse_any(file: &Path, v: &Value) -> Result<Golden> {
    if is_index(v) {
        return Ok(Golden::NotACase);
    }
    match v.get("schema").and_then(Value::as_str) {
        Some(SCHEMA) => parse_case(file, v).map(Golden::V1),
        Some(v2::SCHEMA) => v2::parse(file, v).map(Golden::V2),
        _ => Ok(Golden::NotACase),
    }
}

fn parse_case(file: &Path, v: &Value) -> Result<GoldenCase> {
    let err = |r: String| golden_err(file, r);
    let field = |k: &str| v.get(k).ok_or_else(|| err(format!("missing field `{k}`")));
    let string = |k: &str| -> Result<String> {
        field(k)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| err(format!("`{k}` is not a string")))
    };
    let uint = |k: &str| -> Result<usize> {
        field(k)?
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| err(format!("`{k}` is not an integer")))
    };
    let name = string("case")?;
    let optimizer = string("optimizer")?;
    let kind = string("kind")?;
    let n = uint("n")?;
    let steps = uint("steps")?;
    let hparams = field("hparams")?
        .as_object()
        .ok_or_else(|| err("`hparams` is not an object".into()))?;
    let config = config_from_hparams(&optimizer, hparams).map_err(err)?;
    config.validate()?;
    let params0 = vector(field("params0")?, n).map_err(err)?;
    let lr_per_step = match field("lr_per_step")? {
        Value::Null => vec![config.lr(); steps],
        l => vector(l, steps).map_err(err)?,
    };
    let gradients = match kind.as_str() {
        "lattice" => Gradients::Recorded(matrix(field("grads")?, steps, n).map_err(err)?),
        "path" => {
            if n != 2 {
                return Err(err(format!("a path case has 2 elements, not {n}")));
            }
            let lines: Vec<String> = field("function")?
                .get("gradient")
                .and_then(Value::as_array)
                .ok_or_else(|| err("path case without `function.gradient`".into()))?
                .iter()
                .map(|l| l.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| err("`function.gradient` holds a non-string".into()))?;
            Gradients::Path(GradientProgram::parse(&lines).map_err(err)?)
        }
        other => return Err(err(format!("unknown kind `{other}`"))),
    };
    let expected = field("expected")?;
    let run = |dtype: &str| -> Result<Expected> {
        let e = expected
            .get(dtype)
            .ok_or_else(|| err(format!("missing `expected.{dtype}`")))?;
        let params = matrix(
            e.get("params")
                .ok_or_else(|| err("missing params".into()))?,
            steps,
            n,
        )
        .map_err(err)?;
        let grads = match e.get("grads") {
            Some(g) => Some(matrix(g, steps, n).map_err(err)?),
            None => None,
        };
        let mut tensors = BTreeMap::new();
        let mut scalars = BTreeMap::new();
        let state = e
            .get("final_state")
            .and_then(Value::as_object)
            .ok_or_else(|| err(format!("missing `expected.{dtype}.final_state`")))?;
        for (k, s) in state {
            match s {
                Value::Number(x) => {
                    scalars.insert(k.clone(), x.as_f64().unwrap_or(f64::NAN));
                }
                a => {
                    tensors.insert(k.clone(), vector(a, n).map_err(err)?);
                }
            }
        }
        Ok(Expected {
            params,
            grads,
            tensors,
            scalars,
        })
    };
    Ok(GoldenCase {
        file: file.to_path_buf(),
        name,
        optimizer,
        config,
        n,
        steps,
        lr_per_step,
        params0,
        gradients,
        expected_f32: run("float32")?,
        expected_f64: run("float64")?,
    })
}

fn vector(v: &Value, len: usize) -> Result<Vec<f64>, String> {
    let a = v.as_array().ok_or("expected an array")?;
    if a.len() != len {
        return Err(format!(
            "array of {} values where {len} are expected",
            a.len()
        ));
    }
    a.iter()
        .map(|x| x.as_f64().ok_or_else(|| format!("not a number: {x}")))
        .collect()
}

fn matrix(v: &Value, rows: usize, cols: usize) -> Result<Vec<Vec<f64>>, String> {
    let a = v.as_array().ok_or("expected an array of arrays")?;
    if a.len() != rows {
        return Err(format!("{} rows where {rows} are expected", a.len()));
    }
    a.iter().map(|r| vector(r, cols)).collect()
}

/// Map PyTorch's resolved `param_groups[0]` (minus params) to a config: the registry's
/// mapping ([`OptimizerConfig::from_hparams`]), the one checkpoints use too.
pub fn config_from_hparams(
    optimizer: &str,
    h: &serde_json::Map<String, Value>,
) -> Result<OptimizerConfig, String> {
    OptimizerConfig::from_hparams(optimizer, h)
}

/// Largest errors of one replay and whether all were within tolerance.
#[derive(Clone, Debug, Default)]
pub struct PathReport {
    /// Max |got - exp| over steps and elements of the params.
    pub params_abs: f64,
    /// Max |got - exp| / max(|exp|, |p0|, 1e-2) over steps and elements.
    pub params_rel: f64,
    /// Max |got - exp| over the final state tensors and scalars.
    pub state_abs: f64,
    /// Max |got - exp| / max(|exp|, 1e-3 max|exp|) over the final state.
    pub state_rel: f64,
    /// First failure, if any.
    pub failure: Option<String>,
}

impl PathReport {
    /// True when every value was within tolerance.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    fn fail(&mut self, msg: String) {
        if self.failure.is_none() {
            self.failure = Some(msg);
        }
    }

    fn params(&mut self, k: usize, got: &[f64], exp: &[f64], p0: &[f64], tol: f64) {
        for i in 0..exp.len() {
            let err = (got[i] - exp[i]).abs();
            let scale = exp[i].abs().max(p0[i].abs()).max(1e-2);
            self.params_abs = self.params_abs.max(err);
            self.params_rel = self.params_rel.max(err / scale);
            if !within(err, tol * k as f64 * scale) {
                self.fail(format!(
                    "params[{i}] after step {k}: got {} expected {} (|err| {err:.3e} > {:.3e})",
                    got[i],
                    exp[i],
                    tol * k as f64 * scale
                ));
            }
        }
    }

    fn state(&mut self, name: &str, got: &[f64], exp: &[f64], steps: usize, tol: f64) {
        let max = exp.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for i in 0..exp.len() {
            let err = (got[i] - exp[i]).abs();
            let scale = exp[i].abs().max(1e-3 * max);
            self.state_abs = self.state_abs.max(err);
            if scale > 0.0 {
                self.state_rel = self.state_rel.max(err / scale);
            }
            if !within(err, tol * steps as f64 * scale) && err != 0.0 {
                self.fail(format!(
                    "state {name}[{i}]: got {} expected {} (|err| {err:.3e})",
                    got[i], exp[i]
                ));
            }
        }
    }

    fn scalar(&mut self, name: &str, got: f64, exp: f64, tol: f64) {
        let err = (got - exp).abs();
        self.state_abs = self.state_abs.max(err);
        let scale = exp.abs();
        if scale > 0.0 {
            self.state_rel = self.state_rel.max(err / scale);
        }
        if !within(err, tol * scale) {
            self.fail(format!("state {name}: got {got} expected {exp}"));
        }
    }
}

/// `err <= bound`, false when either is NaN (a NaN never passes).
fn within(err: f64, bound: f64) -> bool {
    err <= bound
}

/// Scalar state of a replay to compare with PyTorch's.
struct Scalars {
    step: u64,
    mu_product: f64,
    /// The float32 run rounds `mu_product` to f32 after each product.
    round_to_f32: bool,
}

impl GoldenCase {
    fn gradient(&self, k: usize, p: &[f64], round_to_f32: bool) -> Result<Vec<f64>> {
        match &self.gradients {
            Gradients::Recorded(g) => Ok(g[k - 1].clone()),
            Gradients::Path(prog) => {
                let (dx, dy) = prog
                    .eval(p[0], p[1])
                    .map_err(|e| golden_err(&self.file, e))?;
                Ok(if round_to_f32 {
                    vec![f64::from(dx as f32), f64::from(dy as f32)]
                } else {
                    vec![dx, dy]
                })
            }
        }
    }

    /// Compare the final state of a replay with an expected run.
    fn compare_state(
        &self,
        report: &mut PathReport,
        exp: &Expected,
        tol: f64,
        state: &mut dyn FnMut(&str) -> Result<Vec<f64>>,
        scalars: Scalars,
    ) {
        let Scalars {
            step,
            mu_product,
            round_to_f32,
        } = scalars;
        let ours = self.config.state_names();
        for name in &ours {
            if !exp.tensors.contains_key(*name) {
                report.fail(format!("we keep state `{name}` which PyTorch does not"));
            }
        }
        for (name, values) in &exp.tensors {
            match state(name) {
                Ok(got) => report.state(name, &got, values, self.steps, tol),
                Err(e) => report.fail(e.to_string()),
            }
        }
        for (name, &value) in &exp.scalars {
            match name.as_str() {
                "step" => report.scalar("step", step as f64, value, 0.0),
                // The float32 run rounds mu_product to f32 after each product; ours is f64.
                "mu_product" => {
                    let got = if round_to_f32 {
                        f64::from(mu_product as f32)
                    } else {
                        mu_product
                    };
                    report.scalar("mu_product", got, value, tol * self.steps as f64)
                }
                other => report.fail(format!("unknown scalar state `{other}`")),
            }
        }
    }

    /// Replay through the f64 CPU reference and compare with the float64 run.
    pub fn replay_reference(&self) -> Result<PathReport> {
        let exp = &self.expected_f64;
        let mut opt = ReferenceOptimizer::new(self.config, self.n)?;
        let mut p = self.params0.clone();
        let mut report = PathReport::default();
        for k in 1..=self.steps {
            opt.set_lr(self.lr_per_step[k - 1])?;
            let g = self.gradient(k, &p, false)?;
            opt.step(&mut p, &g)?;
            report.params(k, &p, &exp.params[k - 1], &self.params0, F64_TOLERANCE);
        }
        let mut state = |name: &str| -> Result<Vec<f64>> { Ok(opt.state(name)?.to_vec()) };
        self.compare_state(
            &mut report,
            exp,
            F64_TOLERANCE,
            &mut state,
            Scalars {
                step: opt.step_count(),
                mu_product: opt.mu_product(),
                round_to_f32: false,
            },
        );
        Ok(report)
    }

    /// Replay through the GPU kernels (f32) and compare with the float32 run. Path cases run
    /// closed-loop: the gradient is computed from the GPU's own parameters each step.
    /// Waits for the device ([`GoldenCase::replay_gpu_async`], waited for; on the web await
    /// that one).
    pub fn replay_gpu(&self, ctx: &GpuContext) -> Result<PathReport> {
        fused_optim::gpu::wait::block_on("replay_gpu", self.replay_gpu_async(ctx))?
    }

    /// [`GoldenCase::replay_gpu`] without blocking: every read-back is awaited (what the
    /// browser needs); the same tolerances and checks.
    pub async fn replay_gpu_async(&self, ctx: &GpuContext) -> Result<PathReport> {
        let exp = &self.expected_f32;
        let p0: Vec<f32> = self.params0.iter().map(|&x| x as f32).collect();
        let flat = FlatParams::from_slice(ctx, &p0)?;
        let mut opt = GpuOptimizer::new(&flat, self.config)?;
        let mut p: Vec<f64> = p0.iter().map(|&x| f64::from(x)).collect();
        let mut report = PathReport::default();
        for k in 1..=self.steps {
            opt.set_lr(self.lr_per_step[k - 1])?;
            let g: Vec<f32> = self
                .gradient(k, &p, true)?
                .iter()
                .map(|&x| x as f32)
                .collect();
            flat.write_grads(&g)?;
            opt.step()?;
            p = flat
                .read_params_async()
                .await?
                .iter()
                .map(|&x| f64::from(x))
                .collect();
            // Expected f32 values are compared as f32 (the README's instruction).
            let want: Vec<f64> = exp.params[k - 1]
                .iter()
                .map(|&x| f64::from(x as f32))
                .collect();
            report.params(k, &p, &want, &self.params0, F32_TOLERANCE);
        }
        // Every state tensor the float32 run has, read here (the check below cannot await).
        let mut read = Vec::with_capacity(exp.tensors.len());
        for name in exp.tensors.keys() {
            let got = opt.read_state_f32_async(name).await.map_err(Error::from);
            read.push((name.clone(), Some(got)));
        }
        let mut state = |name: &str| -> Result<Vec<f64>> {
            let slot = read
                .iter_mut()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| r.take());
            Ok(slot
                .ok_or_else(|| golden_err(&self.file, format!("state `{name}` asked twice")))??
                .iter()
                .map(|&x| f64::from(x))
                .collect())
        };
        let exp32 = Expected {
            tensors: exp
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|&x| f64::from(x as f32)).collect()))
                .collect(),
            ..exp.clone()
        };
        let host = opt.host_state();
        self.compare_state(
            &mut report,
            &exp32,
            F32_TOLERANCE,
            &mut state,
            Scalars {
                step: host.step,
                mu_product: self.config.host_scalar(&host, "mu_product").unwrap_or(1.0),
                round_to_f32: true,
            },
        );
        Ok(report)
    }
}

/// True for a name a golden case can have: `*.json` or `*.json.gz`.
fn is_json_name(f: &Path) -> bool {
    f.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.gz"))
}

/// Every `*.json` and `*.json.gz` under each path (a file or a folder, not recursive), sorted;
/// a file given by name is taken whatever its name. Non-case JSON such as `index.json` is
/// listed too: [`load`] and [`load_any`] recognise and skip it.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| golden_err(p, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_json_name(f))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}
