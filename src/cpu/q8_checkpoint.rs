//! Checkpoints of block-wise 8-bit state ([`StateFormat::Blockwise8`](crate::StateFormat)),
//! laid out so that a bitsandbytes `Adam8bit` `state_dict()` maps onto them tensor by tensor.
//!
//! A safetensors file, format tag [`FORMAT`]. Segment `i` (the i-th tensor, bitsandbytes'
//! `state_dict()["state"][i]`) has the tensors
//!
//! | name | quantised segment (len >= `min_8bit_size`) | 32-bit segment |
//! |---|---|---|
//! | `<i>.state1` | U8 `[len]`: `exp_avg` codes into `qmap1` | F32 `[len]`: `exp_avg` |
//! | `<i>.state2` | U8 `[len]`: `exp_avg_sq` codes into `qmap2` | F32 `[len]`: `exp_avg_sq` |
//! | `<i>.absmax1`, `<i>.absmax2` | F32 `[ceil(len / 256)]` | — |
//! | `<i>.qmap1`, `<i>.qmap2` | F32 `[256]`: the signed / unsigned dynamic map | — |
//!
//! (flattened: bitsandbytes' `state1`/`state2` have the parameter's shape; reshape when
//! converting). The one-state optimizers (`Lion8bit`, `SGD8bit`: the update direction's
//! momentum only) have `state1`, `absmax1` and `qmap1` alone, as bitsandbytes' own
//! `state_dict()` of those classes. Metadata: `format`, `optimizer` (`Adam` / `AdamW` /
//! `Lion` / `SGD`), `hparams` (JSON,
//! PyTorch's names), `step` (bitsandbytes keeps it per tensor; here once), `lr`,
//! `state_written`, `n`, `min_8bit_size`, `blocksize` (256), `segments` (JSON list of
//! lengths), `crc32.<tensor>` for every tensor and `crc32.metadata` over the other entries.
//! Writes are atomic. Loading validates everything (framing, checksums, names, dtypes,
//! shapes, segment lengths and `min_8bit_size` against the optimizer, the maps bit for bit
//! against bitsandbytes' maps, finite non-negative absmax, finite f32 state, the lr) before
//! anything changes.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::blockwise8::{
    check_config, check_config_1state, Blockwise8State, Quantizer, SegmentState, BLOCK,
};
use crate::checkpoint::{check_host, err, metadata_crc, write_atomic};
use crate::error::Result;
use crate::optim::{HostState, OptimizerConfig};

/// Format tag of 8-bit state checkpoints.
pub const FORMAT: &str = "fused-optim-blockwise8/1";

enum Data<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}

/// Write the 8-bit `state` of an optimizer of `config` with host state `host` to `path`.
pub(crate) fn save(
    path: &Path,
    config: &OptimizerConfig,
    host: &HostState,
    state: &Blockwise8State,
) -> Result<()> {
    let (q1, q2) = (Quantizer::signed().map(), Quantizer::unsigned().map());
    let two = !is_one_state(config);
    let mut tensors: Vec<(String, Data<'_>)> = Vec::new();
    for (i, seg) in state.segments.iter().enumerate() {
        match seg {
            SegmentState::Quantized {
                state1,
                state2,
                absmax1,
                absmax2,
            } => {
                tensors.push((format!("{i}.state1"), Data::U8(state1)));
                tensors.push((format!("{i}.absmax1"), Data::F32(absmax1)));
                tensors.push((format!("{i}.qmap1"), Data::F32(q1)));
                if two {
                    tensors.push((format!("{i}.state2"), Data::U8(state2)));
                    tensors.push((format!("{i}.absmax2"), Data::F32(absmax2)));
                    tensors.push((format!("{i}.qmap2"), Data::F32(q2)));
                }
            }
            SegmentState::Full { state1, state2 } => {
                tensors.push((format!("{i}.state1"), Data::F32(state1)));
                if two {
                    tensors.push((format!("{i}.state2"), Data::F32(state2)));
                }
            }
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("optimizer".to_string(), config.name().to_string());
    meta.insert("hparams".to_string(), config.hparams().to_string());
    meta.insert("step".to_string(), host.step.to_string());
    meta.insert("lr".to_string(), format!("{:?}", host.lr));
    meta.insert("state_written".to_string(), host.state_written.to_string());
    meta.insert("n".to_string(), state.len().to_string());
    meta.insert("min_8bit_size".to_string(), state.min_size.to_string());
    meta.insert("blocksize".to_string(), BLOCK.to_string());
    let lens: Vec<usize> = state.ranges.iter().map(|r| r.len()).collect();
    meta.insert(
        "segments".to_string(),
        serde_json::to_string(&lens).map_err(|e| err(path, e.to_string()))?,
    );
    let mut views = Vec::new();
    for (name, data) in &tensors {
        let (dtype, bytes, len): (Dtype, &[u8], usize) = match data {
            Data::U8(v) => (Dtype::U8, v, v.len()),
            Data::F32(v) => (Dtype::F32, bytemuck::cast_slice(v), v.len()),
        };
        meta.insert(format!("crc32.{name}"), crc32fast::hash(bytes).to_string());
        let view =
            TensorView::new(dtype, vec![len], bytes).map_err(|e| err(path, e.to_string()))?;
        views.push((name.clone(), view));
    }
    meta.insert(
        "crc32.metadata".to_string(),
        metadata_crc(&meta).to_string(),
    );
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Whether `config` keeps one state tensor in 8 bits (Lion, SGD with momentum) rather than
/// two (Adam, AdamW).
fn is_one_state(config: &OptimizerConfig) -> bool {
    matches!(config, OptimizerConfig::Lion(_) | OptimizerConfig::Sgd(_))
}

/// Read and validate an 8-bit state checkpoint for an optimizer of `ours` (the file must hold
/// the same algorithm: Adam/AdamW, Lion or SGD) whose state is shaped like `like` (same
/// segment lengths and `min_8bit_size`); returns the configuration, host state and state to
/// install. Nothing is changed by a refused file.
pub(crate) fn load(
    path: &Path,
    ours: &OptimizerConfig,
    like: &Blockwise8State,
) -> Result<(OptimizerConfig, HostState, Blockwise8State)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(path, format!("not a valid safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .ok_or_else(|| err(path, "no metadata: not a fused-optim checkpoint"))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| err(path, format!("metadata lacks `{k}`")))
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(err(
            path,
            format!("format is `{format}`, expected `{FORMAT}` (8-bit state)"),
        ));
    }
    if *get("crc32.metadata")? != metadata_crc(meta).to_string() {
        return Err(err(
            path,
            "the metadata fails its checksum: the file is corrupted",
        ));
    }
    let optimizer = get("optimizer")?;
    let hparams: serde_json::Value =
        serde_json::from_str(get("hparams")?).map_err(|e| err(path, format!("hparams: {e}")))?;
    let map = hparams
        .as_object()
        .ok_or_else(|| err(path, "hparams is not an object"))?;
    let config = OptimizerConfig::from_hparams(optimizer, map).map_err(|e| err(path, e))?;
    config.validate()?;
    match (&config, ours) {
        (OptimizerConfig::Adam(adam), OptimizerConfig::Adam(_)) => check_config(adam)?,
        (OptimizerConfig::Lion(_), OptimizerConfig::Lion(_))
        | (OptimizerConfig::Sgd(_), OptimizerConfig::Sgd(_)) => check_config_1state(&config)?,
        _ => {
            return Err(err(
                path,
                format!(
                    "holds {optimizer} state; this optimizer is {} (8-bit state is Adam/AdamW, \
                     Lion or SGD, loaded into the same algorithm)",
                    ours.name()
                ),
            ))
        }
    }
    let two = !is_one_state(&config);
    let parse_u64 = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| err(path, format!("`{k}`: {e}")))
    };
    let mut host = config.initial_host_state();
    host.step = parse_u64("step")?;
    host.lr = get("lr")?
        .parse::<f64>()
        .map_err(|e| err(path, format!("`lr`: {e}")))?;
    host.state_written = get("state_written")? == "true";
    check_host(path, &config, &host)?;
    if parse_u64("blocksize")? != BLOCK as u64 {
        return Err(err(path, format!("blocksize is not {BLOCK}")));
    }
    let min_size = parse_u64("min_8bit_size")?;
    if min_size != like.min_size as u64 {
        return Err(err(
            path,
            format!(
                "min_8bit_size is {min_size}, this optimizer's {}",
                like.min_size
            ),
        ));
    }
    let lens: Vec<usize> =
        serde_json::from_str(get("segments")?).map_err(|e| err(path, format!("segments: {e}")))?;
    let ours: Vec<usize> = like.ranges.iter().map(|r| r.len()).collect();
    if lens != ours {
        return Err(err(
            path,
            format!("segment lengths {lens:?}, this optimizer has {ours:?}"),
        ));
    }
    if parse_u64("n")? != like.len() as u64 {
        return Err(err(path, "`n` does not match the segments"));
    }
    let mut expected_names = Vec::new();
    for (i, l) in lens.iter().enumerate() {
        let keys: &[&str] = match (*l >= like.min_size, two) {
            (true, true) => &["state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"],
            (true, false) => &["state1", "absmax1", "qmap1"],
            (false, true) => &["state1", "state2"],
            (false, false) => &["state1"],
        };
        expected_names.extend(keys.iter().map(|k| format!("{i}.{k}")));
    }
    let mut found: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    found.sort();
    let mut want = expected_names.clone();
    want.sort();
    if found != want {
        return Err(err(
            path,
            format!("holds tensors {found:?}, expected {want:?}"),
        ));
    }
    let tensor = |name: &str, dtype: Dtype, len: usize| -> Result<Vec<u8>> {
        let t = st
            .tensor(name)
            .map_err(|e| err(path, format!("`{name}`: {e}")))?;
        if t.dtype() != dtype || t.shape() != [len] {
            return Err(err(
                path,
                format!(
                    "`{name}` is {:?} {:?}, expected {dtype:?} [{len}]",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        if *get(&format!("crc32.{name}"))? != crc32fast::hash(t.data()).to_string() {
            return Err(err(
                path,
                format!("`{name}` fails its checksum: the file is corrupted"),
            ));
        }
        Ok(t.data().to_vec())
    };
    let f32s = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut segments = Vec::with_capacity(lens.len());
    for (i, &l) in lens.iter().enumerate() {
        if l >= like.min_size {
            let blocks = l.div_ceil(BLOCK);
            let maps = [
                ("qmap1", Quantizer::signed()),
                ("qmap2", Quantizer::unsigned()),
            ];
            for (k, q) in &maps[..if two { 2 } else { 1 }] {
                let m = f32s(tensor(&format!("{i}.{k}"), Dtype::F32, 256)?);
                if m.iter()
                    .zip(q.map())
                    .any(|(a, b)| a.to_bits() != b.to_bits())
                {
                    return Err(err(
                        path,
                        format!(
                            "`{i}.{k}` is not bitsandbytes' dynamic map (the only one supported)"
                        ),
                    ));
                }
            }
            let state1 = tensor(&format!("{i}.state1"), Dtype::U8, l)?;
            let absmax1 = f32s(tensor(&format!("{i}.absmax1"), Dtype::F32, blocks)?);
            // One-state optimizers keep the second tensors zero (never read).
            let (state2, absmax2) = if two {
                (
                    tensor(&format!("{i}.state2"), Dtype::U8, l)?,
                    f32s(tensor(&format!("{i}.absmax2"), Dtype::F32, blocks)?),
                )
            } else {
                (vec![0; l], vec![0.0; blocks])
            };
            if let Some(a) = absmax1
                .iter()
                .chain(&absmax2)
                .find(|a| !(a.is_finite() && **a >= 0.0))
            {
                return Err(err(
                    path,
                    format!("segment {i}: absmax {a} is not finite and >= 0"),
                ));
            }
            segments.push(SegmentState::Quantized {
                state1,
                state2,
                absmax1,
                absmax2,
            });
        } else {
            let state1 = f32s(tensor(&format!("{i}.state1"), Dtype::F32, l)?);
            let state2 = if two {
                f32s(tensor(&format!("{i}.state2"), Dtype::F32, l)?)
            } else {
                vec![0.0; l]
            };
            if state1.iter().chain(&state2).any(|x| !x.is_finite())
                || state2.iter().any(|&v| v < 0.0)
            {
                return Err(err(
                    path,
                    format!("segment {i}: non-finite state or negative exp_avg_sq"),
                ));
            }
            segments.push(SegmentState::Full { state1, state2 });
        }
    }
    Ok((
        config,
        host,
        Blockwise8State {
            min_size: like.min_size,
            ranges: like.ranges.clone(),
            segments,
        },
    ))
}
