//! The library's modules import each other without cycles: a test reads every `crate::`
//! path in `src/` (comments left out) and checks the graph of top-level modules, and of the
//! submodules of `gpu` and `cpu`, for cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a` -> modules `a`'s code names, at the granularity of `depth` path segments for `gpu`
/// and `cpu` (their submodules) and 1 otherwise.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let key = |segments: &[&str]| -> String {
        match segments {
            [top @ ("gpu" | "cpu"), sub, ..] => format!("{top}::{sub}"),
            [top, ..] => top.to_string(),
            [] => "lib".into(),
        }
    };
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut segments: Vec<&str> = rel.iter().map(|s| s.to_str().unwrap()).collect();
        if matches!(segments.last(), Some(&"mod") | Some(&"lib")) {
            segments.pop();
        }
        let from = key(&segments);
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            // In a direct submodule of gpu/ or cpu/, `super::x` is its sibling `x`.
            if segments.len() == 2 && matches!(segments[0], "gpu" | "cpu") {
                let mut rest = line;
                while let Some(i) = rest.find("super::") {
                    rest = &rest[i + 7..];
                    let sibling: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let to = format!("{}::{sibling}", segments[0]);
                    if !sibling.is_empty() && to != from {
                        g.entry(from.clone()).or_default().insert(to);
                    }
                }
            }
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                let path: Vec<&str> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                let to = key(&path);
                let from_top = from.split("::").next().unwrap();
                let to_top = to.split("::").next().unwrap();
                // Submodule edges only within gpu/cpu; everything else at the top level.
                let (a, b) = if from_top == to_top {
                    (from.clone(), to)
                } else {
                    (from_top.to_string(), to_top.to_string())
                };
                if a != b && b.chars().next().is_some_and(|c| c.is_lowercase()) {
                    g.entry(a).or_default().insert(b);
                }
            }
        }
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_import_each_other_without_cycles() {
    let g = graph();
    assert!(
        g.contains_key("gpu::optimizer") && g.contains_key("cpu::fast"),
        "{g:?}"
    );
    assert_eq!(find_cycle(&g), None, "module graph: {g:#?}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
}
