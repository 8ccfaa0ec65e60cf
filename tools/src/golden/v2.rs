//! Golden trajectories of format version 2 (`"schema": "optim-golden/2"`): multi-tensor models
//! run by third-party reference packages (Lion, Schedule-Free, Adafactor, Muon, LAMB,
//! bitsandbytes 8-bit; `golden/v2/README.md`).
//!
//! This module only reads the files and measures errors; it knows no optimizer. A replay
//! supplies its own step function to [`replay_trajectory`], which feeds it the flat
//! concatenation of all tensors (in file order) and scores each step's parameters with one of
//! the README's metrics ([`Metric`]). Final states are scored with [`state_error`] or
//! [`Case2::check_final_state`]. Every comparison yields the worst error/tolerance ratio and
//! where it occurred ([`Worst`]), so a failure message names the tensor, step and element.
//!
//! Numbers are kept as f64 as parsed; comparisons against float32 expectations cast the
//! expected value to f32 first (README, "Number formats").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::golden_err;
use crate::error::{Error, Result};

/// The schema tag this module reads.
pub const SCHEMA: &str = "optim-golden/2";

/// Which of a case's runs: PyTorch's float32 or float64 run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// The `expected.float32` run.
    F32,
    /// The `expected.float64` run.
    F64,
}

impl Dtype {
    /// The run's key under `expected` (`"float32"` or `"float64"`).
    pub fn key(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    /// `x` rounded to this dtype (f32: to nearest f32, widened back exactly).
    pub fn round(self, x: f64) -> f64 {
        match self {
            Dtype::F32 => f64::from(x as f32),
            Dtype::F64 => x,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One tensor of a case's model, with its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor2 {
    /// Tensor name (`w1`, `b1`, ...).
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Element count (the product of `shape`; checked when loading).
    pub numel: usize,
    /// Initial values, flattened row-major (exact f32 values).
    pub params0: Vec<f64>,
    /// `grads[k-1]`: the gradient fed before step k, flattened row-major.
    pub grads: Vec<Vec<f64>>,
}

/// One value of `final_state`: a number (0-dim tensor or Python number) or a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum StateValue {
    /// A 0-dim tensor or a plain number (`step`, `weight_norm`, ...).
    Number(f64),
    /// A tensor.
    Tensor {
        /// `float32`, `float64` or `uint8`.
        dtype: String,
        /// Its shape (e.g. `[15, 1]` for an Adafactor `col_var`).
        shape: Vec<usize>,
        /// Its values, flattened row-major (uint8 codes as integers).
        data: Vec<f64>,
    },
}

/// What one run (float32 or float64) of the reference package produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Run2 {
    /// `params[name][k-1]`: the tensor after step k.
    pub params: BTreeMap<String, Vec<Vec<f64>>>,
    /// `final_state[name][key]`: the optimizer state after the last step, by the package's keys.
    pub final_state: BTreeMap<String, BTreeMap<String, StateValue>>,
    /// Schedule-Free's and LAMB's param-group bookkeeping after the last step.
    pub group_state: Option<Value>,
    /// Algorithm-specific outputs (`eval_params`, `ns_step1`, `per_step`, ...).
    pub extra: Option<Value>,
}

/// One `optim-golden/2` case.
#[derive(Clone, Debug, PartialEq)]
pub struct Case2 {
    /// Where it was read from.
    pub file: PathBuf,
    /// Case name (`case`).
    pub name: String,
    /// `lion`, `schedulefree`, `adafactor`, `muon`, `lamb`, `bnb8bit`, ...
    pub algorithm: String,
    /// What the case exercises.
    pub description: String,
    /// Import path of the reference class (`reference.class`).
    pub class: String,
    /// Reference package (`reference.package`).
    pub package: String,
    /// Its version (`reference.version`).
    pub version: String,
    /// The constructor's keyword arguments, exactly as passed.
    pub kwargs: Value,
    /// `param_groups[0]` minus `params` right after construction.
    pub hparams: Value,
    /// Settings the package keeps outside the param group, when there are any.
    pub instance_attributes: Option<Value>,
    /// Which tensor list (`mlp3d`, `mat2d`, `q8`, `q8big`).
    pub model: String,
    /// Number of optimizer steps.
    pub steps: usize,
    /// lr before each step (`hparams.lr` throughout when the file has `null`).
    pub lr_per_step: Vec<f64>,
    /// The tensors in the order they were passed to the optimizer.
    pub tensors: Vec<Tensor2>,
    /// The float32 run.
    pub float32: Option<Run2>,
    /// The float64 run, where the package supports float64.
    pub float64: Option<Run2>,
}

/// Read a file (`.json` or `.json.gz`). `Ok(None)` when it is JSON of another schema or an
/// index of cases.
pub fn load(file: &Path) -> Result<Option<Case2>> {
    let v = super::read_json(file)?;
    if v.get("schema").and_then(Value::as_str) != Some(SCHEMA) || super::is_index(&v) {
        return Ok(None);
    }
    parse(file, &v).map(Some)
}

/// Parse an `optim-golden/2` case from its JSON (`file` names it in errors). Every count,
/// shape and name is checked against the others; a malformed case is an [`Error::Golden`].
pub fn parse(file: &Path, v: &Value) -> Result<Case2> {
    parse_inner(file, v).map_err(|reason| golden_err(file, reason))
}

type Parse<T> = std::result::Result<T, String>;

fn obj<'a>(v: &'a Value, what: &str) -> Parse<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| format!("`{what}` is not an object"))
}

/// `what.key`, or `key` alone at the top level (`what` empty).
fn path(what: &str, key: &str) -> String {
    if what.is_empty() {
        key.to_string()
    } else {
        format!("{what}.{key}")
    }
}

fn field<'a>(m: &'a Map<String, Value>, key: &str, what: &str) -> Parse<&'a Value> {
    m.get(key)
        .ok_or_else(|| format!("missing field `{}`", path(what, key)))
}

fn string(m: &Map<String, Value>, key: &str, what: &str) -> Parse<String> {
    field(m, key, what)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` is not a string", path(what, key)))
}

fn uint(v: &Value, what: &str) -> Parse<usize> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| format!("`{what}` is not a non-negative integer: {v}"))
}

fn number(v: &Value, what: &str) -> Parse<f64> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{what}` is not a finite number: {v}"))
}

fn vector(v: &Value, len: usize, what: &str) -> Parse<Vec<f64>> {
    let a = v
        .as_array()
        .ok_or_else(|| format!("`{what}` is not an array"))?;
    if a.len() != len {
        return Err(format!(
            "`{what}` holds {} values where {len} are expected",
            a.len()
        ));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| number(x, &format!("{what}[{i}]")))
        .collect()
}

fn matrix(v: &Value, rows: usize, cols: usize, what: &str) -> Parse<Vec<Vec<f64>>> {
    let a = v
        .as_array()
        .ok_or_else(|| format!("`{what}` is not an array of arrays"))?;
    if a.len() != rows {
        return Err(format!(
            "`{what}` holds {} rows where {rows} (one per step) are expected",
            a.len()
        ));
    }
    a.iter()
        .enumerate()
        .map(|(k, r)| vector(r, cols, &format!("{what}[{k}]")))
        .collect()
}

fn shape(v: &Value, what: &str) -> Parse<(Vec<usize>, usize)> {
    let dims: Vec<usize> = v
        .as_array()
        .ok_or_else(|| format!("`{what}` is not an array"))?
        .iter()
        .enumerate()
        .map(|(i, d)| uint(d, &format!("{what}[{i}]")))
        .collect::<Parse<_>>()?;
    let numel = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("`{what}` {dims:?} overflows"))?;
    Ok((dims, numel))
}

fn optional_object(m: &Map<String, Value>, key: &str, what: &str) -> Parse<Option<Value>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(v) => Err(format!("`{}` is not an object: {v}", path(what, key))),
    }
}

fn parse_tensor(v: &Value, i: usize, steps: usize) -> Parse<Tensor2> {
    let what = format!("tensors[{i}]");
    let m = obj(v, &what)?;
    let name = string(m, "name", &what)?;
    let what = format!("tensors[{i}] ({name})");
    let (dims, product) = shape(field(m, "shape", &what)?, &format!("{what}.shape"))?;
    let numel = uint(field(m, "numel", &what)?, &format!("{what}.numel"))?;
    if product != numel {
        return Err(format!(
            "{what}: shape {dims:?} has {product} elements but numel is {numel}"
        ));
    }
    let params0 = vector(
        field(m, "params0", &what)?,
        numel,
        &format!("{what}.params0"),
    )?;
    let grads = matrix(
        field(m, "grads", &what)?,
        steps,
        numel,
        &format!("{what}.grads"),
    )?;
    // The README: inputs are exact float32 values, used unchanged by both runs.
    let inexact = |x: &f64| f64::from(*x as f32) != *x;
    if let Some(i) = params0.iter().position(inexact) {
        return Err(format!(
            "{what}.params0[{i}] = {:e} is not a float32 value",
            params0[i]
        ));
    }
    for (k, g) in grads.iter().enumerate() {
        if let Some(i) = g.iter().position(inexact) {
            return Err(format!(
                "{what}.grads[{k}][{i}] = {:e} is not a float32 value",
                g[i]
            ));
        }
    }
    Ok(Tensor2 {
        name,
        shape: dims,
        numel,
        params0,
        grads,
    })
}

fn parse_state_value(v: &Value, what: &str) -> Parse<StateValue> {
    match v {
        Value::Number(_) => Ok(StateValue::Number(number(v, what)?)),
        Value::Object(m) => {
            let dtype = string(m, "dtype", what)?;
            let (dims, len) = shape(field(m, "shape", what)?, &format!("{what}.shape"))?;
            let data = vector(field(m, "data", what)?, len, &format!("{what}.data"))?;
            match dtype.as_str() {
                "float32" | "float64" => {}
                "uint8" => {
                    if let Some((i, x)) = data
                        .iter()
                        .enumerate()
                        .find(|(_, &x)| !(0.0..=255.0).contains(&x) || x.fract() != 0.0)
                    {
                        return Err(format!("`{what}.data[{i}]` = {x} is not a uint8 code"));
                    }
                }
                other => return Err(format!("`{what}.dtype` `{other}` is not known")),
            }
            Ok(StateValue::Tensor {
                dtype,
                shape: dims,
                data,
            })
        }
        other => Err(format!(
            "`{what}` is neither a number nor a tensor: {other}"
        )),
    }
}

fn parse_run(v: &Value, dtype: Dtype, tensors: &[Tensor2], steps: usize) -> Parse<Run2> {
    let what = format!("expected.{}", dtype.key());
    let m = obj(v, &what)?;
    if let Some(d) = m.get("default_dtype") {
        if d.as_str() != Some(dtype.key()) {
            return Err(format!(
                "`{what}.default_dtype` is {d}, not the run's dtype"
            ));
        }
    }
    let pm = obj(field(m, "params", &what)?, &format!("{what}.params"))?;
    let mut params = BTreeMap::new();
    for t in tensors {
        let rows = pm
            .get(&t.name)
            .ok_or_else(|| format!("`{what}.params` has no tensor `{}`", t.name))?;
        let w = format!("{what}.params.{}", t.name);
        params.insert(t.name.clone(), matrix(rows, steps, t.numel, &w)?);
    }
    if let Some(k) = pm.keys().find(|k| !params.contains_key(*k)) {
        return Err(format!("`{what}.params` has an unknown tensor `{k}`"));
    }
    let sm = obj(
        field(m, "final_state", &what)?,
        &format!("{what}.final_state"),
    )?;
    let mut final_state = BTreeMap::new();
    for (name, entries) in sm {
        if !params.contains_key(name) {
            return Err(format!(
                "`{what}.final_state` has an unknown tensor `{name}`"
            ));
        }
        let w = format!("{what}.final_state.{name}");
        let mut state = BTreeMap::new();
        for (key, value) in obj(entries, &w)? {
            state.insert(
                key.clone(),
                parse_state_value(value, &format!("{w}.{key}"))?,
            );
        }
        final_state.insert(name.clone(), state);
    }
    Ok(Run2 {
        params,
        final_state,
        group_state: optional_object(m, "group_state", &what)?,
        extra: optional_object(m, "extra", &what)?,
    })
}

fn parse_inner(file: &Path, v: &Value) -> Parse<Case2> {
    let top = obj(v, "the file")?;
    let schema = string(top, "schema", "")?;
    if schema != SCHEMA {
        return Err(format!("schema `{schema}` is not `{SCHEMA}`"));
    }
    let t = "";
    let name = string(top, "case", t)?;
    let algorithm = string(top, "algorithm", t)?;
    let description = string(top, "description", t)?;
    let model = string(top, "model", t)?;
    let steps = uint(field(top, "steps", t)?, "steps")?;
    if steps == 0 {
        return Err("`steps` is 0: a case has at least one step".into());
    }
    let r = obj(field(top, "reference", t)?, "reference")?;
    let class = string(r, "class", "reference")?;
    let package = string(r, "package", "reference")?;
    let version = string(r, "version", "reference")?;
    let kwargs = field(r, "kwargs", "reference")?.clone();
    obj(&kwargs, "reference.kwargs")?;
    let hparams = field(r, "hparams", "reference")?.clone();
    let hp = obj(&hparams, "reference.hparams")?;
    let instance_attributes = optional_object(r, "instance_attributes", "reference")?;
    let lr_per_step = match field(top, "lr_per_step", t)? {
        Value::Null => {
            let lr = number(
                field(hp, "lr", "reference.hparams")?,
                "reference.hparams.lr",
            )?;
            vec![lr; steps]
        }
        l => vector(l, steps, "lr_per_step")?,
    };
    let list = field(top, "tensors", t)?
        .as_array()
        .ok_or("`tensors` is not an array")?;
    if list.is_empty() {
        return Err("`tensors` is empty".into());
    }
    let tensors: Vec<Tensor2> = list
        .iter()
        .enumerate()
        .map(|(i, x)| parse_tensor(x, i, steps))
        .collect::<Parse<_>>()?;
    let mut names = BTreeSet::new();
    if let Some(dup) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(format!("tensor name `{}` appears twice", dup.name));
    }
    let expected = obj(field(top, "expected", t)?, "expected")?;
    let run = |d: Dtype| -> Parse<Option<Run2>> {
        expected
            .get(d.key())
            .map(|x| parse_run(x, d, &tensors, steps))
            .transpose()
    };
    let float32 = run(Dtype::F32)?;
    let float64 = run(Dtype::F64)?;
    if float32.is_none() && float64.is_none() {
        return Err("`expected` holds neither a float32 nor a float64 run".into());
    }
    if let Some(k) = expected
        .keys()
        .find(|k| k.as_str() != "float32" && k.as_str() != "float64")
    {
        return Err(format!("`expected` has an unknown run `{k}`"));
    }
    match r.get("float64") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) if *b == float64.is_some() => {}
        Some(f) => {
            return Err(format!(
                "`reference.float64` is {f} but `expected.float64` is {}",
                if float64.is_some() {
                    "present"
                } else {
                    "absent"
                }
            ))
        }
    }
    Ok(Case2 {
        file: file.to_path_buf(),
        name,
        algorithm,
        description,
        class,
        package,
        version,
        kwargs,
        hparams,
        instance_attributes,
        model,
        steps,
        lr_per_step,
        tensors,
        float32,
        float64,
    })
}

impl Case2 {
    /// Total number of elements over all tensors.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel).sum()
    }

    /// Each tensor's range in the flat concatenation (file order).
    pub fn offsets(&self) -> Vec<Range<usize>> {
        let mut start = 0;
        self.tensors
            .iter()
            .map(|t| {
                let r = start..start + t.numel;
                start = r.end;
                r
            })
            .collect()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor2> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// All tensors' `params0`, concatenated in file order.
    pub fn flat_params0(&self) -> Vec<f64> {
        self.tensors
            .iter()
            .flat_map(|t| t.params0.iter().copied())
            .collect()
    }

    /// All tensors' gradients fed before step `k` (1-based), concatenated in file order.
    pub fn flat_grads(&self, k: usize) -> Result<Vec<f64>> {
        self.check_step(k)?;
        Ok(self
            .tensors
            .iter()
            .flat_map(|t| t.grads[k - 1].iter().copied())
            .collect())
    }

    /// Split a flat vector (the concatenation in file order) back into `(name, values)` per
    /// tensor.
    pub fn split<'a>(&'a self, flat: &'a [f64]) -> Result<Vec<(&'a str, &'a [f64])>> {
        if flat.len() != self.numel() {
            return Err(Error::LengthMismatch {
                what: "flat vector of a golden case",
                expected: self.numel(),
                got: flat.len(),
            });
        }
        Ok(self
            .tensors
            .iter()
            .zip(self.offsets())
            .map(|(t, r)| (t.name.as_str(), &flat[r]))
            .collect())
    }

    /// The run of `dtype`; an error when the file has none (bitsandbytes has no float64 run).
    pub fn run(&self, dtype: Dtype) -> Result<&Run2> {
        match dtype {
            Dtype::F32 => self.float32.as_ref(),
            Dtype::F64 => self.float64.as_ref(),
        }
        .ok_or_else(|| golden_err(&self.file, format!("the case has no {dtype} run")))
    }

    /// The README's `lr_unit` for M3: the largest lr of the case (`max(lr_per_step)`, which is
    /// `hparams.lr` when the lr never changes). Muon's per-tensor adjust ratio is the caller's.
    pub fn lr_unit(&self) -> f64 {
        self.lr_per_step.iter().copied().fold(0.0, f64::max)
    }

    fn check_step(&self, k: usize) -> Result<()> {
        if k == 0 || k > self.steps {
            return Err(golden_err(
                &self.file,
                format!("step {k} is outside 1..={}", self.steps),
            ));
        }
        Ok(())
    }

    /// Score a replay's final state against the run of `dtype` with the README's final-state
    /// metric at tolerance `tol`: one [`Check`] per tensor and state key of the file, named
    /// `state.<tensor>.<key>`. `got(tensor, key)` returns the replay's value (a number is a
    /// 1-element vector), or `None` when the replay keeps no such state, which fails that check.
    pub fn check_final_state(
        &self,
        dtype: Dtype,
        tol: f64,
        mut got: impl FnMut(&str, &str) -> Option<Vec<f64>>,
    ) -> Result<Vec<Check>> {
        let run = self.run(dtype)?;
        let mut out = Vec::new();
        for (tensor, state) in &run.final_state {
            for (key, expected) in state {
                let worst = match got(tensor, key) {
                    Some(values) => state_error(tol, self.steps, tensor, key, &values, expected)
                        .map_err(|e| golden_err(&self.file, e.to_string()))?,
                    None => Worst::missing(tensor, Some(key)),
                };
                out.push(Check {
                    quantity: format!("state.{tensor}.{key}"),
                    worst,
                });
            }
        }
        Ok(out)
    }
}

impl Run2 {
    /// All tensors' parameters after step `k` (1-based), concatenated in the case's file order.
    pub fn flat_params(&self, case: &Case2, k: usize) -> Result<Vec<f64>> {
        case.check_step(k)?;
        case.tensors
            .iter()
            .map(|t| {
                self.params
                    .get(&t.name)
                    .map(|rows| rows[k - 1].as_slice())
                    .ok_or_else(|| {
                        golden_err(&case.file, format!("the run has no tensor `{}`", t.name))
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(|parts| parts.concat())
    }
}

/// The scale M3 measures errors in.
#[derive(Clone, Debug, PartialEq)]
pub enum LrUnit {
    /// One lr unit for every tensor (usually [`Case2::lr_unit`]).
    Same(f64),
    /// One per tensor name (Muon: the largest lr times the tensor's adjust ratio).
    PerTensor(BTreeMap<String, f64>),
}

/// The README's per-step parameter metrics. For step k (1-based), element i of a tensor:
/// the error |got − exp| is divided by `tol · k · scale`, where scale is
/// - M1: max(|exp_i|, |params0_i|, 1e-2);
/// - M2: max(|exp_i|, |params0_i|, 1e-2, RMS_k) with RMS_k the RMS of the expected tensor
///   after step k;
/// - M3: lr_unit (the bound is c · k · lr_unit with c = `tol`).
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// Relative error with the |params0| and 1e-2 floors.
    M1,
    /// M1 with the tensor's RMS as another floor (Adafactor).
    M2,
    /// Error in units of the step size (Muon, 8-bit).
    M3(LrUnit),
}

impl Metric {
    fn lr_unit(&self, tensor: &str) -> Result<f64> {
        let unit = match self {
            Metric::M3(LrUnit::Same(u)) => *u,
            Metric::M3(LrUnit::PerTensor(m)) => *m.get(tensor).ok_or_else(|| Error::Golden {
                file: "<metric>".into(),
                reason: format!("M3 has no lr unit for tensor `{tensor}`"),
            })?,
            _ => return Ok(0.0),
        };
        if !(unit.is_finite() && unit >= 0.0) {
            return Err(Error::Golden {
                file: "<metric>".into(),
                reason: format!("M3 lr unit {unit} for `{tensor}` is not a finite number ≥ 0"),
            });
        }
        Ok(unit)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::M1 => "M1",
            Metric::M2 => "M2",
            Metric::M3(_) => "M3",
        })
    }
}

/// Where the worst error of a comparison occurred.
#[derive(Clone, Debug, PartialEq)]
pub struct Location {
    /// Tensor name.
    pub tensor: String,
    /// State key for a final-state comparison, `None` for parameters.
    pub key: Option<String>,
    /// Step (1-based) after which the values were compared.
    pub step: usize,
    /// Flat (row-major) element index within the tensor.
    pub index: usize,
    /// The replay's value.
    pub got: f64,
    /// The expected value, as compared (cast to f32 for float32 data).
    pub expected: f64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}.{k}[{}]", self.tensor, self.index)?,
            None => write!(f, "{}[{}]", self.tensor, self.index)?,
        }
        write!(
            f,
            " after step {}: got {:e} expected {:e}",
            self.step, self.got, self.expected
        )
    }
}

/// The worst error/tolerance ratio of a comparison (≤ 1 passes) and where it occurred.
/// A NaN error, or any error where the bound is 0, counts as an infinite ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct Worst {
    /// max over the compared elements of |got − exp| / bound.
    pub ratio: f64,
    /// The element with that ratio (`None` when nothing was compared, or the value was missing).
    pub at: Option<Location>,
}

impl Default for Worst {
    fn default() -> Self {
        Worst {
            ratio: 0.0,
            at: None,
        }
    }
}

impl Worst {
    /// True when the ratio is within tolerance (≤ 1).
    pub fn passed(&self) -> bool {
        self.ratio <= 1.0
    }

    /// Keep the larger of the two.
    pub fn merge(&mut self, other: Worst) {
        if other.ratio > self.ratio || self.at.is_none() {
            *self = other;
        }
    }

    /// The value was not produced: an infinite ratio at `tensor` (`key`).
    pub fn missing(tensor: &str, key: Option<&str>) -> Worst {
        Worst {
            ratio: f64::INFINITY,
            at: Some(Location {
                tensor: tensor.to_string(),
                key: key.map(str::to_string),
                step: 0,
                index: 0,
                got: f64::NAN,
                expected: f64::NAN,
            }),
        }
    }
}

fn ratio(err: f64, bound: f64) -> f64 {
    if err.is_nan() {
        f64::INFINITY
    } else if err == 0.0 {
        0.0
    } else if bound > 0.0 {
        err / bound
    } else {
        f64::INFINITY
    }
}

fn check_tol(tol: f64) -> Result<()> {
    if tol.is_finite() && tol >= 0.0 {
        Ok(())
    } else {
        Err(Error::Golden {
            file: "<metric>".into(),
            reason: format!("tolerance {tol} is not a finite number ≥ 0"),
        })
    }
}

/// What a per-step parameter comparison compares, besides the values.
#[derive(Clone, Copy, Debug)]
pub struct ParamsCheck<'a> {
    /// M1, M2 or M3.
    pub metric: &'a Metric,
    /// The tolerance (M3: c).
    pub tol: f64,
    /// The run's dtype: float32 expectations are cast to f32 before comparing.
    pub dtype: Dtype,
    /// Tensor name (for M3's per-tensor lr unit and the location).
    pub tensor: &'a str,
    /// Step k (1-based).
    pub step: usize,
    /// The tensor's initial values.
    pub params0: &'a [f64],
}

/// Score one tensor's parameters after one step: the worst |got − exp| / bound over its
/// elements under `c.metric` (see [`Metric`]). `expected` is the file's value (cast to f32 here
/// for a float32 run). Lengths must agree.
pub fn params_error(c: &ParamsCheck, got: &[f64], expected: &[f64]) -> Result<Worst> {
    check_tol(c.tol)?;
    for (what, len) in [("got", got.len()), ("params0", c.params0.len())] {
        if len != expected.len() {
            return Err(Error::LengthMismatch {
                what: if what == "got" {
                    "golden params compared"
                } else {
                    "golden params0"
                },
                expected: expected.len(),
                got: len,
            });
        }
    }
    if c.step == 0 {
        return Err(Error::Golden {
            file: "<metric>".into(),
            reason: "steps are 1-based; step 0 has no expected values".into(),
        });
    }
    let exp: Vec<f64> = expected.iter().map(|&x| c.dtype.round(x)).collect();
    let k = c.step as f64;
    let rms = if exp.is_empty() {
        0.0
    } else {
        (exp.iter().map(|x| x * x).sum::<f64>() / exp.len() as f64).sqrt()
    };
    let lr_unit = c.metric.lr_unit(c.tensor)?;
    let mut worst = Worst::default();
    for (i, (&g, &e)) in got.iter().zip(&exp).enumerate() {
        let scale = match c.metric {
            Metric::M1 => e.abs().max(c.params0[i].abs()).max(1e-2),
            Metric::M2 => e.abs().max(c.params0[i].abs()).max(1e-2).max(rms),
            Metric::M3(_) => lr_unit,
        };
        let r = ratio((g - e).abs(), c.tol * k * scale);
        if r > worst.ratio || worst.at.is_none() {
            worst = Worst {
                ratio: r,
                at: Some(Location {
                    tensor: c.tensor.to_string(),
                    key: None,
                    step: c.step,
                    index: i,
                    got: g,
                    expected: e,
                }),
            };
        }
    }
    Ok(worst)
}

/// Score one final-state value with the README's state metric:
/// |got − exp| ≤ tol · steps · max(|exp_i|, 1e-3 · max_j |exp_j|). float32 tensors are cast to
/// f32 before comparing, uint8 codes must be equal (any difference is an infinite ratio), and a
/// number is compared as a 1-element tensor (`got` then holds one value).
pub fn state_error(
    tol: f64,
    steps: usize,
    tensor: &str,
    key: &str,
    got: &[f64],
    expected: &StateValue,
) -> Result<Worst> {
    check_tol(tol)?;
    let (exp, exact): (Vec<f64>, bool) = match expected {
        StateValue::Number(x) => (vec![*x], false),
        StateValue::Tensor { dtype, data, .. } => match dtype.as_str() {
            "float32" => (data.iter().map(|&x| Dtype::F32.round(x)).collect(), false),
            "uint8" => (data.clone(), true),
            _ => (data.clone(), false),
        },
    };
    if got.len() != exp.len() {
        return Err(Error::LengthMismatch {
            what: "golden final state compared",
            expected: exp.len(),
            got: got.len(),
        });
    }
    let max = exp.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let mut worst = Worst::default();
    for (i, (&g, &e)) in got.iter().zip(&exp).enumerate() {
        let bound = if exact {
            0.0
        } else {
            tol * steps as f64 * e.abs().max(1e-3 * max)
        };
        let r = ratio((g - e).abs(), bound);
        if r > worst.ratio || worst.at.is_none() {
            worst = Worst {
                ratio: r,
                at: Some(Location {
                    tensor: tensor.to_string(),
                    key: Some(key.to_string()),
                    step: steps,
                    index: i,
                    got: g,
                    expected: e,
                }),
            };
        }
    }
    Ok(worst)
}

/// One checked quantity of a replay (`params.w1`, `state.w1.exp_avg`, ...) and its worst point.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What was checked.
    pub quantity: String,
    /// Its worst error/tolerance ratio and where.
    pub worst: Worst,
}

impl Check {
    /// True when within tolerance.
    pub fn passed(&self) -> bool {
        self.worst.passed()
    }
}

/// The outcome of replaying one case in one dtype: every checked quantity with its worst ratio.
#[derive(Clone, Debug, PartialEq)]
pub struct Report2 {
    /// Case name.
    pub case: String,
    /// The run compared against.
    pub dtype: Dtype,
    /// The metric of the parameter checks.
    pub metric: String,
    /// The tolerance of the parameter checks.
    pub tol: f64,
    /// One entry per checked quantity, in the order checked.
    pub checks: Vec<Check>,
}

impl Report2 {
    /// True when at least one quantity was checked and every one is within tolerance.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }

    /// The check with the largest ratio.
    pub fn worst(&self) -> Option<&Check> {
        self.checks
            .iter()
            .fold(None, |best: Option<&Check>, c| match best {
                Some(b) if b.worst.ratio >= c.worst.ratio => Some(b),
                _ => Some(c),
            })
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed())
    }
}

impl fmt::Display for Report2 {
    /// `PASS case float64 M1 1e-12: worst 1.2e-3 (params.w1 at w1[17] after step 3: ...)`,
    /// then one line per failed check.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {:e}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.case,
            self.dtype,
            self.metric,
            self.tol
        )?;
        match self.worst() {
            None => write!(f, ": nothing checked")?,
            Some(c) => {
                write!(f, ": worst {:.3e} ({}", c.worst.ratio, c.quantity)?;
                if let Some(at) = &c.worst.at {
                    write!(f, " at {at}")?;
                }
                write!(f, ")")?;
            }
        }
        for c in self.failures() {
            write!(f, "\n  {}: ratio {:.3e}", c.quantity, c.worst.ratio)?;
            if let Some(at) = &c.worst.at {
                write!(f, " at {at}")?;
            }
        }
        Ok(())
    }
}

/// Replay a case's parameter trajectory through a caller's optimizer step and score every step
/// against the run of `dtype`.
///
/// The parameters and gradients are the flat concatenation of all tensors in file order
/// ([`Case2::offsets`]). Before step k (1-based) `step(k, lr_per_step[k-1], params, grads_k)`
/// must update `params` in place; after it each tensor is compared with
/// `params[name][k-1]` under `metric` and `tol` ([`params_error`]). For a float32 run the
/// stepper works in f32: its inputs are f32 values and every value it writes back must be
/// exactly representable as f32 (an error otherwise, since f64 arithmetic would go unnoticed).
/// The report has one check per tensor, `params.<name>`; an error from `step` ends the replay
/// with that error. Final states can be added with [`Case2::check_final_state`].
pub fn replay_trajectory(
    case: &Case2,
    dtype: Dtype,
    metric: &Metric,
    tol: f64,
    mut step: impl FnMut(usize, f64, &mut [f64], &[f64]) -> Result<()>,
) -> Result<Report2> {
    // The stepper is synchronous, so the future is ready at its first poll: no waiting,
    // also on the web.
    fused_optim::gpu::wait::block_on(
        "replay_trajectory",
        replay_trajectory_async(
            case,
            dtype,
            metric,
            tol,
            async |k, lr, p: &mut [f64], g: &[f64]| step(k, lr, p, g),
        ),
    )?
}

/// [`replay_trajectory`] with an async stepper (one that awaits a read-back, as the GPU
/// path must on the web); the same checks, metrics and report.
pub async fn replay_trajectory_async(
    case: &Case2,
    dtype: Dtype,
    metric: &Metric,
    tol: f64,
    mut step: impl AsyncFnMut(usize, f64, &mut [f64], &[f64]) -> Result<()>,
) -> Result<Report2> {
    check_tol(tol)?;
    let run = case.run(dtype)?;
    let offsets = case.offsets();
    let mut p: Vec<f64> = case
        .flat_params0()
        .into_iter()
        .map(|x| dtype.round(x))
        .collect();
    let mut worst: Vec<Worst> = vec![Worst::default(); case.tensors.len()];
    for k in 1..=case.steps {
        let g: Vec<f64> = case
            .flat_grads(k)?
            .into_iter()
            .map(|x| dtype.round(x))
            .collect();
        step(k, case.lr_per_step[k - 1], &mut p, &g).await?;
        if dtype == Dtype::F32 {
            if let Some(i) = p
                .iter()
                .position(|&x| !x.is_nan() && Dtype::F32.round(x) != x)
            {
                let t = offsets.iter().position(|r| r.contains(&i)).unwrap_or(0);
                return Err(golden_err(
                    &case.file,
                    format!(
                        "float32 replay: step {k} wrote {:e} to {}[{}], which is not an f32 value",
                        p[i],
                        case.tensors[t].name,
                        i - offsets[t].start
                    ),
                ));
            }
        }
        for ((t, r), w) in case.tensors.iter().zip(&offsets).zip(&mut worst) {
            let expected = run.params.get(&t.name).ok_or_else(|| {
                golden_err(&case.file, format!("the run has no tensor `{}`", t.name))
            })?;
            let c = ParamsCheck {
                metric,
                tol,
                dtype,
                tensor: &t.name,
                step: k,
                params0: &t.params0,
            };
            w.merge(params_error(&c, &p[r.clone()], &expected[k - 1])?);
        }
    }
    Ok(Report2 {
        case: case.name.clone(),
        dtype,
        metric: metric.to_string(),
        tol,
        checks: case
            .tensors
            .iter()
            .zip(worst)
            .map(|(t, worst)| Check {
                quantity: format!("params.{}", t.name),
                worst,
            })
            .collect(),
    })
}
