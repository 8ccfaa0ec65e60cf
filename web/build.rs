//! Lists the golden case files (`golden/v1`, `golden/v2`, `*.json.gz`) the page replays, so
//! that the wasm knows every case the repository carries without a directory listing.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("golden");
    let mut files = Vec::new();
    for version in ["v1", "v2"] {
        let dir = root.join(version);
        println!("cargo:rerun-if-changed={}", dir.display());
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("golden folder {}: {e}", dir.display()));
        for entry in entries {
            let name = entry.expect("golden folder entry").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json.gz") {
                files.push(format!("{version}/{name}"));
            }
        }
    }
    files.sort();
    let mut out = String::from("/// Every golden case file, relative to `golden/`, sorted.\n");
    out.push_str("pub const GOLDEN_FILES: &[&str] = &[\n");
    for f in &files {
        writeln!(out, "    {f:?},").unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("golden_files.rs");
    std::fs::write(dest, out).expect("write golden_files.rs");
}
