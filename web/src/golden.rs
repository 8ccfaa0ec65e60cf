//! The golden replay in the browser: a case file's bytes (fetched by the page) through the
//! library's implementations with the native `golden` example's code and tolerances
//! (`fused_optim_tools::golden`): `optim-golden/1` cases through the f64 reference and the
//! GPU kernels, `optim-golden/2` cases through the reference, the fast CPU path and the GPU
//! kernels. The GPU replays await every read-back (`replay_gpu_async`, `replay_async`).

use std::path::Path;

use fused_optim::GpuContext;
use fused_optim_tools::golden::replay2::{replay_async, Implementation};
use fused_optim_tools::golden::{self, Golden, PathReport};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use crate::gpu::Gpu;

/// One implementation's result: its label, whether it passed, the worst error relative
/// to the tolerance (or the largest errors), and what failed.
fn v1_part(label: &str, r: &Result<PathReport, fused_optim_tools::Error>) -> Value {
    match r {
        Ok(r) => json!({
            "impl": label,
            "passed": r.passed(),
            "text": format!(
                "params abs {:.2e} rel {:.2e}, state abs {:.2e} rel {:.2e}",
                r.params_abs, r.params_rel, r.state_abs, r.state_rel
            ),
            "params_rel": r.params_rel,
            "state_rel": r.state_rel,
            "failures": r.failure.iter().collect::<Vec<_>>(),
        }),
        Err(e) => json!({"impl": label, "passed": false, "text": format!("error: {e}"),
                         "failures": [e.to_string()]}),
    }
}

async fn replay_v1(case: &golden::GoldenCase, ctx: &GpuContext) -> Vec<Value> {
    vec![
        v1_part("ref(f64)", &case.replay_reference()),
        v1_part("gpu(f32)", &case.replay_gpu_async(ctx).await),
    ]
}

/// `None` when the library does not have the case's algorithm (a SKIP, as natively).
async fn replay_v2(case: &golden::v2::Case2, ctx: &GpuContext) -> Option<Vec<Value>> {
    let mut parts = Vec::new();
    for (label, which) in [
        ("ref(f64)", Implementation::Reference),
        ("cpu(f32)", Implementation::CpuFast),
        ("gpu(f32)", Implementation::Gpu),
    ] {
        parts.push(match replay_async(case, which, Some(ctx)).await {
            // The 8-bit GPU replay reads back blocking and is native-only: the GPU column
            // is left out here, the CPU ones count.
            Ok(None) if which == Implementation::Gpu && !parts.is_empty() => continue,
            Ok(None) => return None,
            Ok(Some(r)) => {
                let worst = r.worst().map_or(0.0, |c| c.worst.ratio);
                json!({
                    "impl": label,
                    "passed": r.passed(),
                    "text": format!("worst/tol {worst:.2e}"),
                    "worst_over_tol": worst,
                    "failures": r.failures()
                        .map(|f| format!("{}: {:?}", f.quantity, f.worst))
                        .collect::<Vec<_>>(),
                })
            }
            Err(e) => json!({"impl": label, "passed": false, "text": format!("error: {e}"),
                             "failures": [e.to_string()]}),
        });
    }
    Some(parts)
}

/// Replay one file; the JSON the page shows (see [`Gpu::replay_golden`]).
async fn replay_file(ctx: &GpuContext, file: &str, bytes: &[u8]) -> Value {
    let path = Path::new(file);
    let parsed = golden::json_from_bytes(path, bytes).and_then(|v| golden::parse_any(path, &v));
    let (name, parts) = match parsed {
        Ok(Golden::V1(case)) => (case.name.clone(), Some(replay_v1(&case, ctx).await)),
        Ok(Golden::V2(case)) => match replay_v2(&case, ctx).await {
            Some(parts) => (case.name.clone(), Some(parts)),
            None => {
                return json!({"file": file, "case": case.name, "status": "SKIP",
                    "detail": format!("{}: not in the library yet", case.algorithm), "parts": []})
            }
        },
        Ok(Golden::NotACase) => {
            return json!({"file": file, "case": file, "status": "SKIP",
                          "detail": "not a golden case", "parts": []})
        }
        Err(e) => {
            return json!({"file": file, "case": file, "status": "FAIL",
                          "detail": e.to_string(), "parts": []})
        }
    };
    let parts = parts.unwrap_or_default();
    let passed = !parts.is_empty()
        && parts
            .iter()
            .all(|p| p.get("passed").and_then(Value::as_bool) == Some(true));
    let detail = parts
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["impl"].as_str().unwrap_or("?"),
                p["text"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(" | ");
    json!({
        "file": file,
        "case": name,
        "status": if passed { "PASS" } else { "FAIL" },
        "detail": detail,
        "parts": parts,
    })
}

#[wasm_bindgen]
impl Gpu {
    /// Replay the golden case file `file` (its name, e.g. `"v1/adam_default.json.gz"`) from
    /// its `bytes` (`.json` or `.json.gz`). Resolves to JSON `{file, case, status: "PASS" |
    /// "FAIL" | "SKIP", detail, parts: [{impl, passed, text, failures}]}`: PASS when every
    /// implementation is within the native tolerances, SKIP for an algorithm the library
    /// does not have (as the native example reports it). Never rejects: a malformed file is
    /// a FAIL with the parser's error.
    pub fn replay_golden(&self, file: String, bytes: Vec<u8>) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let out = replay_file(&ctx, &file, &bytes).await;
            Ok(JsValue::from_str(&out.to_string()))
        })
    }
}
