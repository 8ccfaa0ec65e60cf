//! Saving and loading a [`FusedOptimizer`]'s state as a safetensors file keyed by parameter
//! path: tensor `"{path}/{state}"` (f32, the parameter's element count) for every parameter
//! and state tensor, and the metadata `"fused-optim-burn/hosts"` (each group's step count,
//! learning rate, written flag and algorithm scalars, as JSON). A file is loaded into an
//! optimizer after its first step (the slots exist then) by path, whatever the parameters'
//! order; a missing path or state, a wrong length or a wrong group count is a typed error
//! and nothing is loaded.

use std::collections::HashMap;
use std::path::Path;

use fused_optim::optim::HostState;

use crate::{Error, FusedOptimizer, Result};

fn io(reason: String) -> Error {
    Error::Core(fused_optim::Error::Checkpoint {
        file: "fused-optim-burn state".into(),
        reason,
    })
}

const HOSTS: &str = "fused-optim-burn/hosts";

/// Write `opt`'s state to `path` (reads the state back from the device; waits).
pub fn save(opt: &FusedOptimizer, path: &Path) -> Result<()> {
    let inner = opt
        .inner()
        .ok_or_else(|| io("no step taken yet: no state to save".into()))?;
    let mut data: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for (k, p) in opt.paths().iter().enumerate() {
        for name in inner.state_names() {
            let v = inner.read_tensor_state(name, k)?;
            data.push((format!("{p}/{name}"), bytemuck_bytes(&v), v.len()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, bytes, len)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| io(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let hosts: Vec<serde_json::Value> = inner
        .host_states()
        .iter()
        .map(|h| {
            serde_json::json!({
                "step": h.step, "lr": h.lr, "state_written": h.state_written,
                "scalars": h.scalars.to_vec(),
            })
        })
        .collect();
    let meta = HashMap::from([(
        HOSTS.to_string(),
        serde_json::Value::Array(hosts).to_string(),
    )]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| io(e.to_string()))
}

fn bytemuck_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Load the state saved by [`save`] into `opt` (after its first step), by parameter path.
pub fn load(opt: &mut FusedOptimizer, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| io(format!("{}: {e}", path.display())))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io(e.to_string()))?;
    let hosts_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HOSTS))
        .ok_or_else(|| io(format!("no `{HOSTS}` metadata")))?;
    let hosts: Vec<serde_json::Value> =
        serde_json::from_str(hosts_json).map_err(|e| io(e.to_string()))?;
    let paths: Vec<String> = opt.paths().iter().map(|s| s.to_string()).collect();
    let inner = opt
        .inner_mut()
        .ok_or_else(|| io("load into an optimizer after its first step".into()))?;
    let mut host_states = inner.host_states();
    if hosts.len() != host_states.len() {
        return Err(io(format!(
            "{} groups in the file, {} in the optimizer",
            hosts.len(),
            host_states.len()
        )));
    }
    for (h, v) in host_states.iter_mut().zip(&hosts) {
        *h = host_from_json(v).ok_or_else(|| io("malformed host state".into()))?;
    }
    // Everything read and checked before anything is written.
    let mut values = Vec::new();
    for (k, p) in paths.iter().enumerate() {
        for name in inner.state_names() {
            let t = file
                .tensor(&format!("{p}/{name}"))
                .map_err(|e| io(format!("`{p}/{name}`: {e}")))?;
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            values.push((k, *name, v));
        }
    }
    for (k, name, v) in &values {
        if inner.read_tensor_state(name, *k)?.len() != v.len() {
            return Err(io(format!(
                "`{}/{name}`: wrong length {}",
                paths[*k],
                v.len()
            )));
        }
    }
    for (k, name, v) in values {
        inner.write_tensor_state(name, k, &v)?;
    }
    inner.set_host_states(&host_states)?;
    Ok(())
}

fn host_from_json(v: &serde_json::Value) -> Option<HostState> {
    let scalars = v.get("scalars")?.as_array()?;
    let mut h = HostState::new(v.get("lr")?.as_f64()?, &[]);
    h.step = v.get("step")?.as_u64()?;
    h.state_written = v.get("state_written")?.as_bool()?;
    for (slot, s) in h.scalars.iter_mut().zip(scalars) {
        *slot = s.as_f64()?;
    }
    Some(h)
}
