//! Optimizer checkpoints as safetensors files, with PyTorch's state names.
//!
//! Tensors: one tensor of shape `[n]` per state tensor (`exp_avg`, `exp_avg_sq`, ...): F32
//! from the GPU and fast CPU paths, F64 from the f64 reference
//! ([`ReferenceOptimizer`](crate::ReferenceOptimizer)). Every implementation loads either:
//! an F32 file into the reference is widened exactly, an F64 file into an f32 path is rounded
//! to nearest f32 (as [`Optimizer::load_state`](crate::Optimizer::load_state) does).
//! Metadata (strings): `format` = `fused-optim-checkpoint/2`, `optimizer` (PyTorch's class
//! name), `hparams` (JSON, PyTorch's names), `step`, `lr`, `state_written`, each of the
//! algorithm's host scalars under its name (NAdam's `mu_product`, ...), `n`, `crc32.<name>` for every tensor and `crc32.metadata` over every other metadata entry,
//! so that a corrupted file (tensor data or a hyper-parameter's digits) is refused even where
//! the safetensors framing survives. Version 1 files (no `crc32.metadata`) still load.
//!
//! Writes are atomic (a temporary file `.<name>.tmp-<pid>` in the same folder, synced, then
//! renamed over the target): a writer killed at any moment leaves the previous file intact
//! (`tests/concurrent.rs` kills saves with SIGKILL). The temporary files of killed writers
//! never end in the target's name, and the next successful save to the same target removes
//! those whose process is gone (Linux). Loading validates everything (framing, checksums, kind, names, shapes, dtypes,
//! the lr as `set_lr` checks it, finite host scalars)
//! before anything is changed: a refused file leaves the optimizer as it was.
//!
//! ```no_run
//! # fn main() -> fused_optim::Result<()> {
//! use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, Optimizer};
//! let ctx = GpuContext::new()?;
//! let params = FlatParams::from_slice(&ctx, &[1.0, 2.0, 3.0])?;
//! let mut opt = GpuOptimizer::new(&params, AdamConfig::default())?;
//! opt.step()?;
//! let path = std::path::Path::new("opt.safetensors");
//! opt.save_checkpoint(path)?;
//! let mut resumed = GpuOptimizer::new(&params, AdamConfig::default())?;
//! resumed.load_checkpoint(path)?; // same state, step count and hyper-parameters
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::optim::{HostState, OptimizerConfig};

/// Format tag written into every checkpoint.
pub const FORMAT: &str = "fused-optim-checkpoint/2";

/// The previous format tag: the same layout without `crc32.metadata` (still loaded). A
/// single bit flip cannot turn `/2` into `/1` (`'2'` and `'1'` differ in two bits).
pub const FORMAT_V1: &str = "fused-optim-checkpoint/1";

/// Metadata key of the checksum over every other metadata entry.
const META_CRC: &str = "crc32.metadata";

/// CRC-32 of the metadata entries except `crc32.metadata`, in key order, each key and value
/// length-prefixed (so that no two different maps hash the same bytes).
pub(crate) fn metadata_crc(meta: &HashMap<String, String>) -> u32 {
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != META_CRC).collect();
    keys.sort();
    let mut h = crc32fast::Hasher::new();
    for k in keys {
        for part in [k.as_bytes(), meta[k].as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize()
}

/// Everything an optimizer checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Kind and hyper-parameters.
    pub config: OptimizerConfig,
    /// Step counter, lr, NAdam's mu_product, SGD's buffer flag.
    pub host: HostState,
    /// Parameters covered.
    pub n: usize,
    /// Per-element state tensors by PyTorch's names, in `config.state_names()` order.
    pub tensors: Vec<(String, TensorValues)>,
    /// Parameter groups (empty for an optimizer without groups; otherwise every group,
    /// group 0 repeating `config` and `host`).
    pub groups: Vec<GroupState>,
    /// The shapes of the tensors the flat vector holds, in order (metadata `shapes`); empty
    /// when not recorded (older files, ZeRO shards). Loading into an optimizer whose
    /// segments have other shapes fails.
    pub shapes: Vec<Vec<usize>>,
}

/// The values of one state tensor, in the precision the optimizer keeps them.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorValues {
    /// From an f32 implementation (GPU, fast CPU): an F32 tensor.
    F32(Vec<f32>),
    /// From the f64 reference: an F64 tensor.
    F64(Vec<f64>),
}

impl TensorValues {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32: F32 as is, F64 rounded to nearest.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as f64: F64 as is, F32 widened (exact).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Self::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::F64(v) => v.clone(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::F64(_) => Dtype::F64,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::F32(v) => bytemuck::cast_slice(v),
            Self::F64(v) => bytemuck::cast_slice(v),
        }
    }
}

/// One parameter group of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    /// Its segments.
    pub segments: Vec<String>,
    /// Its hyper-parameters.
    pub config: OptimizerConfig,
    /// Its host scalars (step, lr, mu_product).
    pub host: HostState,
}

fn host_json(config: &OptimizerConfig, h: &HostState) -> serde_json::Value {
    let mut v = serde_json::json!({
        "step": h.step,
        "lr": h.lr,
        "state_written": h.state_written,
    });
    for ((name, _), value) in config.host_scalars().iter().zip(h.scalars) {
        v[*name] = serde_json::json!(value);
    }
    v
}

/// The host state of `config` from named values (`number`: a scalar by name; `flag`:
/// `state_written`, or the name older checkpoints used, `momentum_buffer_ready`).
fn host_from(
    config: &OptimizerConfig,
    step: u64,
    number: impl Fn(&str) -> Result<f64>,
    state_written: bool,
) -> Result<HostState> {
    let mut host = config.initial_host_state();
    host.step = step;
    host.lr = number("lr")?;
    host.state_written = state_written;
    for (slot, (name, _)) in host.scalars.iter_mut().zip(config.host_scalars()) {
        *slot = number(name)?;
    }
    Ok(host)
}

fn groups_json(groups: &[GroupState]) -> String {
    serde_json::Value::Array(
        groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "segments": g.segments,
                    "optimizer": g.config.name(),
                    "hparams": g.config.hparams(),
                    "host": host_json(&g.config, &g.host),
                })
            })
            .collect(),
    )
    .to_string()
}

fn parse_groups(path: &Path, text: &str) -> Result<Vec<GroupState>> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(path, format!("groups: {e}")))?;
    let items = v
        .as_array()
        .ok_or_else(|| err(path, "groups is not an array"))?;
    items
        .iter()
        .map(|g| {
            let field = |k: &str| {
                g.get(k)
                    .ok_or_else(|| err(path, format!("group lacks `{k}`")))
            };
            let optimizer = field("optimizer")?
                .as_str()
                .ok_or_else(|| err(path, "group optimizer is not a string"))?;
            let hparams = field("hparams")?
                .as_object()
                .ok_or_else(|| err(path, "group hparams is not an object"))?;
            let config =
                OptimizerConfig::from_hparams(optimizer, hparams).map_err(|e| err(path, e))?;
            config.validate()?;
            let h = field("host")?;
            let num = |k: &str| {
                h.get(k)
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| err(path, format!("group host lacks `{k}`")))
            };
            let segments = field("segments")?
                .as_array()
                .ok_or_else(|| err(path, "group segments is not an array"))?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(path, "a segment name is not a string"))?;
            let host = host_from(
                &config,
                h.get("step")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| err(path, "group host lacks `step`"))?,
                num,
                h.get("state_written")
                    .or_else(|| h.get("momentum_buffer_ready"))
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
            )?;
            check_host(path, &config, &host)?;
            Ok(GroupState {
                segments,
                config,
                host,
            })
        })
        .collect()
}

/// A loaded host state must be one a live optimizer can hold: the lr as `set_lr` checks it,
/// and the algorithm's scalars finite.
pub(crate) fn check_host(path: &Path, config: &OptimizerConfig, host: &HostState) -> Result<()> {
    config.validate_lr(host.lr)?;
    for ((name, _), value) in config.host_scalars().iter().zip(host.scalars) {
        if !value.is_finite() {
            return Err(err(
                path,
                format!("host scalar `{name}` = {value} is not finite"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        file: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Write `state` to `path` atomically.
pub fn save(path: &Path, state: &OptimizerState) -> Result<()> {
    save_with_metadata(path, state, &BTreeMap::new())
}

/// Prefix of the extra metadata keys a caller may add ([`save_with_metadata`]): the shard
/// description of [`zero`](crate::zero)'s shard files.
pub const EXTRA_PREFIX: &str = "shard.";

/// [`save`] with extra metadata entries, each key starting with [`EXTRA_PREFIX`] (covered
/// by `crc32.metadata` like every other entry; [`load_with_metadata`] returns them).
pub fn save_with_metadata(
    path: &Path,
    state: &OptimizerState,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = HashMap::new();
    for (k, v) in extra {
        if !k.starts_with(EXTRA_PREFIX) {
            return Err(err(
                path,
                format!("extra metadata key `{k}` does not start with `{EXTRA_PREFIX}`"),
            ));
        }
        meta.insert(k.clone(), v.clone());
    }
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("optimizer".to_string(), state.config.name().to_string());
    meta.insert("hparams".to_string(), state.config.hparams().to_string());
    meta.insert("step".to_string(), state.host.step.to_string());
    meta.insert("lr".to_string(), format!("{:?}", state.host.lr));
    for ((name, _), value) in state.config.host_scalars().iter().zip(state.host.scalars) {
        meta.insert(name.to_string(), format!("{value:?}"));
    }
    meta.insert(
        "state_written".to_string(),
        state.host.state_written.to_string(),
    );
    meta.insert("n".to_string(), state.n.to_string());
    if !state.groups.is_empty() {
        meta.insert("groups".to_string(), groups_json(&state.groups));
    }
    if !state.shapes.is_empty() {
        meta.insert(
            "shapes".to_string(),
            serde_json::json!(state.shapes).to_string(),
        );
    }
    let mut views = Vec::new();
    for (name, values) in &state.tensors {
        let bytes = values.bytes();
        meta.insert(format!("crc32.{name}"), crc32fast::hash(bytes).to_string());
        let view = TensorView::new(values.dtype(), vec![values.len()], bytes)
            .map_err(|e| err(path, e.to_string()))?;
        views.push((name.clone(), view));
    }
    meta.insert(META_CRC.to_string(), metadata_crc(&meta).to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` atomically (a synced temporary file in the same folder, renamed
/// over the target), then remove stale temporary files of killed writers.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path, e.to_string())
    })?;
    remove_stale_temp_files(dir, &file_name);
    Ok(())
}

/// Remove the temporary files of saves to the same target by processes that no longer run
/// (killed mid-save: SIGKILL, OOM killer, power loss), which would otherwise pile up, one
/// per killed process. Linux only (a process is alive while `/proc/<pid>` exists); a file
/// whose writer may still run, or that cannot be removed, is left alone.
fn remove_stale_temp_files(dir: &Path, file_name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!(".{file_name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Read and validate a checkpoint file (framing, checksums, metadata, dtypes, shapes).
pub fn load(path: &Path) -> Result<OptimizerState> {
    load_with_metadata(path).map(|(state, _)| state)
}

/// [`load`], also returning the extra metadata entries (keys starting with
/// [`EXTRA_PREFIX`]), validated by the same checksum.
pub fn load_with_metadata(path: &Path) -> Result<(OptimizerState, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    // The header is parsed once (it checks every tensor's offsets against the file) and its
    // metadata borrowed: a header of many small entries costs ~5x its size as a map.
    let (header_len, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let data = &bytes[8 + header_len..];
    let meta = metadata
        .metadata()
        .as_ref()
        .ok_or_else(|| err(path, "no metadata: not a fused-optim checkpoint"))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| err(path, format!("metadata lacks `{k}`")))
    };
    let format = get("format")?;
    if format != FORMAT && format != FORMAT_V1 {
        return Err(err(
            path,
            format!("format is `{format}`, expected `{FORMAT}` (or `{FORMAT_V1}`)"),
        ));
    }
    match meta.get(META_CRC) {
        Some(crc) if *crc == metadata_crc(meta).to_string() => {}
        Some(_) => {
            return Err(err(
                path,
                "the metadata fails its checksum: the file is corrupted",
            ))
        }
        None if format == FORMAT_V1 => {}
        None => return Err(err(path, format!("metadata lacks `{META_CRC}`"))),
    }
    let optimizer = get("optimizer")?;
    let hparams: serde_json::Value =
        serde_json::from_str(get("hparams")?).map_err(|e| err(path, format!("hparams: {e}")))?;
    let map = hparams
        .as_object()
        .ok_or_else(|| err(path, "hparams is not an object"))?;
    let config = OptimizerConfig::from_hparams(optimizer, map).map_err(|e| err(path, e))?;
    config.validate()?;
    if config.name() != optimizer {
        return Err(err(
            path,
            format!("hparams describe {}, not {optimizer}", config.name()),
        ));
    }
    let number = |k: &str| -> Result<f64> {
        get(k)?
            .parse::<f64>()
            .map_err(|e| err(path, format!("`{k}`: {e}")))
    };
    let n: usize = get("n")?
        .parse()
        .map_err(|e| err(path, format!("`n`: {e}")))?;
    let written = meta
        .get("state_written")
        .or_else(|| meta.get("momentum_buffer_ready"))
        .ok_or_else(|| err(path, "metadata lacks `state_written`"))?;
    let host = host_from(
        &config,
        get("step")?
            .parse()
            .map_err(|e| err(path, format!("`step`: {e}")))?,
        number,
        written == "true",
    )?;
    check_host(path, &config, &host)?;
    let names = config.state_names();
    let mut found: Vec<String> = metadata.offset_keys();
    found.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    if found != expected {
        return Err(err(
            path,
            format!(
                "{optimizer} with these options has state {expected:?}, the file holds {found:?}"
            ),
        ));
    }
    let shapes = match meta.get("shapes") {
        Some(text) => parse_shapes(path, text, n)?,
        None => Vec::new(),
    };
    // Each state tensor's length: n, or (a state that is not one element per parameter)
    // what the tensors' shapes give.
    let whole = [vec![n]];
    let lens = crate::optim::StateLayout::lens_for_shapes(
        &config,
        if shapes.is_empty() { &whole } else { &shapes },
        n,
    );
    let mut out = Vec::with_capacity(names.len());
    for (name, &len) in names.into_iter().zip(&lens) {
        let t = metadata
            .info(name)
            .ok_or_else(|| err(path, format!("no tensor `{name}`")))?;
        // (read_metadata has checked the offsets; `get` keeps a panic out regardless.)
        let t_data = data
            .get(t.data_offsets.0..t.data_offsets.1)
            .ok_or_else(|| err(path, format!("`{name}` lies outside the file")))?;
        if t.dtype != Dtype::F32 && t.dtype != Dtype::F64 {
            return Err(err(
                path,
                format!("`{name}` is {:?}, expected F32 or F64", t.dtype),
            ));
        }
        if t.shape.as_slice() != [len] {
            return Err(err(
                path,
                format!("`{name}` has shape {:?}, expected [{len}]", t.shape),
            ));
        }
        let crc = get(&format!("crc32.{name}"))?;
        if crc32fast::hash(t_data).to_string() != *crc {
            return Err(err(
                path,
                format!("`{name}` fails its checksum: the file is corrupted"),
            ));
        }
        let values = if t.dtype == Dtype::F64 {
            TensorValues::F64(
                t_data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            )
        } else {
            TensorValues::F32(
                t_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect(),
            )
        };
        out.push((name.to_string(), values));
    }
    let groups = match meta.get("groups") {
        Some(text) => parse_groups(path, text)?,
        None => Vec::new(),
    };
    let extra = meta
        .iter()
        .filter(|(k, _)| k.starts_with(EXTRA_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((
        OptimizerState {
            config,
            host,
            n,
            tensors: out,
            groups,
            shapes,
        },
        extra,
    ))
}

/// The `shapes` metadata: a JSON array of shapes, each non-empty in elements, together at
/// most `n` elements.
fn parse_shapes(path: &Path, text: &str, n: usize) -> Result<Vec<Vec<usize>>> {
    let shapes: Vec<Vec<usize>> =
        serde_json::from_str(text).map_err(|e| err(path, format!("shapes: {e}")))?;
    let mut total = 0usize;
    for shape in &shapes {
        match crate::segments::shape_product(shape) {
            Some(k) if k > 0 => total = total.saturating_add(k),
            _ => return Err(err(path, format!("shapes: {shape:?} holds no elements"))),
        }
    }
    if total > n {
        return Err(err(
            path,
            format!("shapes hold {total} elements, the file covers {n}"),
        ));
    }
    Ok(shapes)
}

/// Check that a loaded checkpoint fits an optimizer of `config` over `n` parameters whose
/// tensors have `shapes`: same kind and the same state tensors (the structural options), and
/// the same shapes when the file records them; hyper-parameters may differ and are taken
/// from the checkpoint, as PyTorch's `load_state_dict` does.
pub(crate) fn check_fits(
    path: &Path,
    state: &OptimizerState,
    config: &OptimizerConfig,
    n: usize,
    shapes: &[Vec<usize>],
) -> Result<()> {
    if !state.shapes.is_empty() && state.shapes != shapes {
        return Err(err(
            path,
            format!(
                "holds tensors of shapes {:?}, this optimizer's are {shapes:?}",
                state.shapes
            ),
        ));
    }
    if state.config.name() != config.name() {
        return Err(err(
            path,
            format!(
                "holds a {} state, this optimizer is {}",
                state.config.name(),
                config.name()
            ),
        ));
    }
    if state.config.state_names() != config.state_names() {
        return Err(err(
            path,
            format!(
                "holds state {:?}, this optimizer has {:?}",
                state.config.state_names(),
                config.state_names()
            ),
        ));
    }
    if state.config.overrides() != config.overrides() {
        return Err(err(
            path,
            format!(
                "structural options differ (kernel flags {:?} vs {:?})",
                state.config.overrides(),
                config.overrides()
            ),
        ));
    }
    if state.n != n {
        return Err(err(
            path,
            format!("covers {} parameters, this optimizer {n}", state.n),
        ));
    }
    Ok(())
}
