//! Sharded checkpoints: one file per rank, a merge into the single-process checkpoint, and
//! loading any range (re-sharding to another world size).
//!
//! A shard file is an ordinary [`crate::checkpoint`] (atomic write, CRC-32 over
//! every tensor and over the metadata, PyTorch's state names) of the shard's `len` elements,
//! named `shard-RRRRR-of-WWWWW.safetensors`, with extra metadata `shard.rank`,
//! `shard.world`, `shard.offset`, `shard.len`, `shard.n` (all shards together) and
//! `shard.layout`. A complete set is `world` files of one world size, ranks `0..world`,
//! whose ranges tile `[0, n)` and whose optimizer, hyper-parameters and host state (step,
//! lr, scalars) agree: a set where one rank saved a later step than another is refused.
//!
//! [`merge`] concatenates a set into the state a single-process optimizer of `n` elements
//! holds (its `load_checkpoint` reads the file [`merge_to_file`] writes); [`load_range`]
//! cuts any range out of a set of any world size, or out of a single-process checkpoint,
//! reading only the files that overlap it: that is how a sharded optimizer resumes at
//! another world size.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::layout::{shard_error, ShardLayout};
use crate::checkpoint::{self, OptimizerState, TensorValues};
use crate::error::{Error, Result};

/// Where a shard sits in the whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The rank that wrote it.
    pub rank: usize,
    /// The world size it was written at.
    pub world: usize,
    /// Its elements, `[offset, offset + len)` of the whole.
    pub range: Range<usize>,
    /// Elements of the whole.
    pub n: usize,
    /// The layout of the plan.
    pub layout: ShardLayout,
}

impl ShardInfo {
    fn to_metadata(&self) -> BTreeMap<String, String> {
        [
            ("shard.rank", self.rank.to_string()),
            ("shard.world", self.world.to_string()),
            ("shard.offset", self.range.start.to_string()),
            ("shard.len", self.range.len().to_string()),
            ("shard.n", self.n.to_string()),
            ("shard.layout", self.layout.to_text()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn from_metadata(path: &Path, meta: &BTreeMap<String, String>) -> Result<Self> {
        let number = |k: &str| -> Result<usize> {
            meta.get(k)
                .ok_or_else(|| file_error(path, format!("not a shard file: no `{k}`")))?
                .parse()
                .map_err(|e| file_error(path, format!("`{k}`: {e}")))
        };
        let offset = number("shard.offset")?;
        let info = Self {
            rank: number("shard.rank")?,
            world: number("shard.world")?,
            range: offset..offset + number("shard.len")?,
            n: number("shard.n")?,
            layout: ShardLayout::from_text(
                meta.get("shard.layout")
                    .ok_or_else(|| file_error(path, "not a shard file: no `shard.layout`"))?,
            )?,
        };
        if info.rank >= info.world || info.range.end > info.n || info.range.is_empty() {
            return Err(file_error(
                path,
                format!("inconsistent shard description {info:?}"),
            ));
        }
        Ok(info)
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        file: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The file rank `rank` of `world` writes in `dir`.
pub fn shard_path(dir: &Path, rank: usize, world: usize) -> PathBuf {
    dir.join(format!("shard-{rank:05}-of-{world:05}.safetensors"))
}

/// Write one rank's shard (`state.n == info.range.len()`) into `dir` (created if missing),
/// atomically.
pub fn save_shard(dir: &Path, info: &ShardInfo, state: &OptimizerState) -> Result<()> {
    let path = shard_path(dir, info.rank, info.world);
    if state.n != info.range.len() {
        return Err(file_error(
            &path,
            format!(
                "a state of {} elements for a shard of {}",
                state.n,
                info.range.len()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e.to_string()))?;
    checkpoint::save_with_metadata(&path, state, &info.to_metadata())
}

/// Read and validate one shard file.
pub fn read_shard(path: &Path) -> Result<(ShardInfo, OptimizerState)> {
    let (state, extra) = checkpoint::load_with_metadata(path)?;
    let info = ShardInfo::from_metadata(path, &extra)?;
    if state.n != info.range.len() {
        return Err(file_error(path, "the tensors' length is not the shard's"));
    }
    Ok((info, state))
}

/// The shard description from a file's header alone (no tensor data read; the full read
/// validates the checksums).
fn peek_shard(path: &Path) -> Result<ShardInfo> {
    let mut f = std::fs::File::open(path).map_err(|e| file_error(path, e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| file_error(path, e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(file_error(path, format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| file_error(path, e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| file_error(path, format!("header: {e}")))?;
    let meta: BTreeMap<String, String> = v
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    ShardInfo::from_metadata(path, &meta)
}

/// The complete shard set in `dir`, in rank order: exactly one world size, every rank
/// once, ranges tiling `[0, n)`.
pub fn shard_set(dir: &Path) -> Result<Vec<(ShardInfo, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e.to_string()))?;
    let mut shards = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| file_error(dir, e.to_string()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("shard-") && name.ends_with(".safetensors") {
            shards.push((peek_shard(&path)?, path));
        }
    }
    let mut worlds: Vec<usize> = shards.iter().map(|(i, _)| i.world).collect();
    worlds.sort_unstable();
    worlds.dedup();
    let world = match worlds.as_slice() {
        [] => return Err(file_error(dir, "no shard files")),
        [w] => *w,
        _ => {
            return Err(file_error(
                dir,
                format!("shard files of several world sizes {worlds:?}: keep one set per folder"),
            ))
        }
    };
    shards.sort_by_key(|(i, _)| i.rank);
    let ranks: Vec<usize> = shards.iter().map(|(i, _)| i.rank).collect();
    if ranks != (0..world).collect::<Vec<_>>() {
        return Err(file_error(
            dir,
            format!("shards of ranks {ranks:?} found, a world of {world} needs 0..{world}"),
        ));
    }
    let n = shards[0].0.n;
    let mut expected = 0;
    for (info, path) in &shards {
        if info.n != n || info.range.start != expected {
            return Err(file_error(
                path,
                format!(
                    "shard {:?} of {} does not follow [0, {expected})",
                    info.range, info.n
                ),
            ));
        }
        expected = info.range.end;
    }
    if expected != n {
        return Err(file_error(
            dir,
            format!("the shards cover [0, {expected}) of {n}"),
        ));
    }
    Ok(shards)
}

fn check_same(path: &Path, first: &OptimizerState, other: &OptimizerState) -> Result<()> {
    if other.config != first.config || other.host != first.host {
        return Err(file_error(
            path,
            format!(
                "disagrees with shard 0 (step {} vs {}, lr {} vs {}, or hyper-parameters): \
                 not one consistent save",
                other.host.step, first.host.step, other.host.lr, first.host.lr
            ),
        ));
    }
    if !other.groups.is_empty() {
        return Err(file_error(path, "parameter groups in a shard file"));
    }
    Ok(())
}

/// Concatenate `pieces` (states of consecutive ranges) into one state.
fn concatenate(pieces: Vec<OptimizerState>) -> OptimizerState {
    let mut pieces = pieces.into_iter();
    let mut whole = pieces.next().expect("at least one piece");
    // A piece's shapes describe a range, not the whole: not recorded.
    whole.shapes = Vec::new();
    for piece in pieces {
        whole.n += piece.n;
        for ((_, acc), (_, part)) in whole.tensors.iter_mut().zip(piece.tensors) {
            match (acc, part) {
                (TensorValues::F32(a), TensorValues::F32(p)) => a.extend(p),
                (TensorValues::F64(a), TensorValues::F64(p)) => a.extend(p),
                (a, p) => {
                    let mut wide = a.to_f64();
                    wide.extend(p.to_f64());
                    *a = TensorValues::F64(wide);
                }
            }
        }
    }
    whole
}

fn slice(state: OptimizerState, within: Range<usize>) -> OptimizerState {
    OptimizerState {
        n: within.len(),
        shapes: Vec::new(),
        tensors: state
            .tensors
            .into_iter()
            .map(|(name, v)| {
                let v = match v {
                    TensorValues::F32(v) => TensorValues::F32(v[within.clone()].to_vec()),
                    TensorValues::F64(v) => TensorValues::F64(v[within.clone()].to_vec()),
                };
                (name, v)
            })
            .collect(),
        ..state
    }
}

/// The single-process state of the whole shard set in `dir` (validated file by file, then
/// for consistency).
pub fn merge(dir: &Path) -> Result<OptimizerState> {
    let set = shard_set(dir)?;
    let n = set[0].0.n;
    load_from_set(&set, 0..n)
}

/// [`merge`] and write the result as a single-process checkpoint at `out` (atomically);
/// `GpuOptimizer`, `CpuOptimizer` and `ReferenceOptimizer` load it.
pub fn merge_to_file(dir: &Path, out: &Path) -> Result<()> {
    checkpoint::save(out, &merge(dir)?)
}

fn load_from_set(set: &[(ShardInfo, PathBuf)], range: Range<usize>) -> Result<OptimizerState> {
    let mut pieces: Vec<OptimizerState> = Vec::new();
    for (info, path) in set {
        let lo = range.start.max(info.range.start);
        let hi = range.end.min(info.range.end);
        if lo >= hi {
            continue;
        }
        let (read_info, state) = read_shard(path)?;
        if read_info != *info {
            return Err(file_error(path, "changed while it was read"));
        }
        if let Some(first) = pieces.first() {
            check_same(path, first, &state)?;
        } else {
            check_same(path, &state, &state)?;
        }
        pieces.push(slice(state, lo - info.range.start..hi - info.range.start));
    }
    if pieces.is_empty() {
        return Err(shard_error(format!("no shard overlaps {range:?}")));
    }
    Ok(concatenate(pieces))
}

/// The state of elements `range` of the whole, from a shard folder (any world size; only
/// the overlapping files are read) or a single-process checkpoint file.
pub fn load_range(source: &Path, range: Range<usize>) -> Result<OptimizerState> {
    if source.is_dir() {
        let set = shard_set(source)?;
        let n = set[0].0.n;
        if range.end > n || range.is_empty() {
            return Err(file_error(
                source,
                format!("range {range:?} of a whole of {n}"),
            ));
        }
        return load_from_set(&set, range);
    }
    let state = checkpoint::load(source)?;
    if !state.groups.is_empty() {
        return Err(file_error(source, "parameter groups cannot be sharded"));
    }
    if range.end > state.n || range.is_empty() {
        return Err(file_error(
            source,
            format!("range {range:?} of a checkpoint of {} elements", state.n),
        ));
    }
    Ok(slice(state, range))
}
