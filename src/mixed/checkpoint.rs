//! Checkpoints of a mixed optimizer: a folder with one standard checkpoint per group
//! ([`checkpoint`](crate::checkpoint)'s format: the group's algorithm over its tensors back to
//! back, with their shapes) and a manifest `mixed.json` naming them.
//!
//! A save writes the group files under new names (`group<k>-<generation>.safetensors`), then
//! replaces the manifest atomically, then removes the previous generation's files: a writer
//! killed at any moment leaves a folder whose manifest names a complete set. The manifest
//! records each file's CRC-32, so a set mixed from two saves is refused. A group file is an
//! ordinary checkpoint, loadable by a single optimizer of that algorithm over those tensors.

use std::path::{Path, PathBuf};

use super::plan::PlannedGroup;
use crate::checkpoint::{check_fits, check_host, err, write_atomic};
use crate::error::Result;

/// The manifest's `format`.
pub const MIXED_FORMAT: &str = "fused-optim-mixed/1";
const MANIFEST: &str = "mixed.json";

struct Entry {
    optimizer: String,
    segments: Vec<usize>,
    shapes: Vec<Vec<usize>>,
    file: String,
    crc32: u32,
}

struct Manifest {
    generation: u64,
    groups: Vec<Entry>,
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
    let bad = |reason: &str| err(&path, reason.to_string());
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(&path, format!("not JSON: {e}")))?;
    if v["format"].as_str() != Some(MIXED_FORMAT) {
        return Err(bad("format is not fused-optim-mixed/1"));
    }
    let generation = v["generation"]
        .as_u64()
        .ok_or_else(|| bad("no generation"))?;
    let groups = v["groups"]
        .as_array()
        .ok_or_else(|| bad("no groups"))?
        .iter()
        .map(|g| {
            let usizes = |x: &serde_json::Value| -> Option<Vec<usize>> {
                x.as_array()?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            };
            Ok(Entry {
                optimizer: g["optimizer"]
                    .as_str()
                    .ok_or_else(|| bad("a group lacks `optimizer`"))?
                    .to_string(),
                segments: usizes(&g["segments"]).ok_or_else(|| bad("a group lacks `segments`"))?,
                shapes: g["shapes"]
                    .as_array()
                    .ok_or_else(|| bad("a group lacks `shapes`"))?
                    .iter()
                    .map(|s| usizes(s).ok_or_else(|| bad("a shape is not a list of sizes")))
                    .collect::<Result<_>>()?,
                file: g["file"]
                    .as_str()
                    .filter(|f| !f.contains('/') && !f.contains('\\') && !f.starts_with('.'))
                    .ok_or_else(|| bad("a group lacks a plain `file` name"))?
                    .to_string(),
                crc32: g["crc32"]
                    .as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .ok_or_else(|| bad("a group lacks `crc32`"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest { generation, groups })
}

/// Save every planned group into the folder `dir` (created when missing): `save_group(k,
/// path)` writes group `k`'s standard checkpoint to `path`.
pub(crate) fn save(
    dir: &Path,
    groups: &[PlannedGroup],
    save_group: &dyn Fn(usize, &Path) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    let previous = read_manifest(dir).ok();
    let generation = match &previous {
        None => 1,
        Some(m) => m.generation.checked_add(1).ok_or_else(|| {
            err(
                &dir.join(MANIFEST),
                "its generation counter is at u64::MAX: save into a new folder",
            )
        })?,
    };
    let mut entries = Vec::with_capacity(groups.len());
    for (k, group) in groups.iter().enumerate() {
        let file = format!("group{k}-{generation}.safetensors");
        let path = dir.join(&file);
        save_group(k, &path)?;
        let bytes = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        entries.push(serde_json::json!({
            "optimizer": group.config.name(),
            "segments": group.members,
            "shapes": group.shapes,
            "file": file,
            "crc32": crc32fast::hash(&bytes),
        }));
    }
    let manifest = serde_json::json!({
        "format": MIXED_FORMAT,
        "generation": generation,
        "groups": entries,
    });
    write_atomic(&dir.join(MANIFEST), manifest.to_string().as_bytes())?;
    if let Some(old) = previous {
        // Only files this format names (`group<k>-<generation>.safetensors` of another
        // generation): a manifest edited by hand cannot make a save delete anything else.
        for entry in old.groups {
            if generation_of(&entry.file).is_some_and(|g| g != generation) {
                let _ = std::fs::remove_file(dir.join(entry.file));
            }
        }
    }
    Ok(())
}

/// The generation of a group file name `group<k>-<generation>.safetensors` (decimal digits
/// only), `None` for any other name.
fn generation_of(file: &str) -> Option<u64> {
    let rest = file.strip_prefix("group")?.strip_suffix(".safetensors")?;
    let (k, generation) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(k) || !digits(generation) {
        return None;
    }
    generation.parse().ok()
}

/// Load the folder `dir`, group `k` by `load_group(k, path)`: the manifest must list the same groups (algorithm,
/// segments, shapes), every file must match its CRC-32 and fit its group (kind, length,
/// shapes, host scalars); all of it is checked before the first group loads.
pub(crate) fn load(
    dir: &Path,
    groups: &[PlannedGroup],
    load_group: &mut dyn FnMut(usize, &Path) -> Result<()>,
) -> Result<()> {
    let manifest = read_manifest(dir)?;
    let path = dir.join(MANIFEST);
    if manifest.groups.len() != groups.len() {
        return Err(err(
            &path,
            format!(
                "holds {} algorithm groups, this optimizer has {}",
                manifest.groups.len(),
                groups.len()
            ),
        ));
    }
    let mut files: Vec<PathBuf> = Vec::with_capacity(groups.len());
    for (k, (entry, group)) in manifest.groups.iter().zip(groups).enumerate() {
        if entry.optimizer != group.config.name()
            || entry.segments != group.members
            || entry.shapes != group.shapes
        {
            return Err(err(
                &path,
                format!(
                    "group {k} is {} over segments {:?} (shapes {:?}); this optimizer's is {} \
                     over {:?} (shapes {:?})",
                    entry.optimizer,
                    entry.segments,
                    entry.shapes,
                    group.config.name(),
                    group.members,
                    group.shapes
                ),
            ));
        }
        let file = dir.join(&entry.file);
        let bytes = std::fs::read(&file).map_err(|e| err(&file, e.to_string()))?;
        if crc32fast::hash(&bytes) != entry.crc32 {
            return Err(err(
                &file,
                "does not match the manifest's CRC-32 (a file of another save?)",
            ));
        }
        let state = crate::checkpoint::load(&file)?;
        check_fits(&file, &state, &group.config, group.len(), &group.shapes)?;
        if !state.groups.is_empty() {
            return Err(err(
                &file,
                "holds parameter groups; a mixed optimizer's group file has none",
            ));
        }
        check_host(&file, &state.config, &state.host)?;
        files.push(file);
    }
    for (k, file) in files.iter().enumerate() {
        load_group(k, file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::generation_of;

    #[test]
    fn only_group_file_names_have_a_generation() {
        assert_eq!(generation_of("group0-7.safetensors"), Some(7));
        assert_eq!(
            generation_of("group12-18446744073709551615.safetensors"),
            Some(u64::MAX)
        );
        for other in [
            "mixed.json",
            "group0-7.safetensors.bak",
            "group-7.safetensors",
            "group0-.safetensors",
            "group0-+7.safetensors",
            "groupx-7.safetensors",
            "other0-7.safetensors",
            "group0-7-8.safetensors",
        ] {
            assert_eq!(generation_of(other), None, "{other}");
        }
    }
}
