//! The device: [`init_gpu`] and what the page asks of it.

use fused_optim::{ContextOptions, GpuContext};
use fused_optim_tools::playground::functions::TestFunction;
use serde_json::json;
use wasm_bindgen::prelude::*;

mod files {
    include!(concat!(env!("OUT_DIR"), "/golden_files.rs"));
}

/// A fused-optim context on the browser's WebGPU device.
#[wasm_bindgen]
pub struct Gpu {
    pub(crate) ctx: GpuContext,
}

/// A library error as a JavaScript `Error`.
pub(crate) fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Request the browser's WebGPU adapter and a device with the adapter's limits. Rejects
/// (with the library's error message) when the browser has no WebGPU adapter.
#[wasm_bindgen]
pub async fn init_gpu() -> Result<Gpu, JsError> {
    // A panic (a bug: every bad input is a typed error) traps the module with only
    // "unreachable"; print its message to the console first.
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&JsValue::from_str(&format!(
            "fused-optim-web panicked: {info}"
        )));
    }));
    let ctx = GpuContext::new_async(ContextOptions::default())
        .await
        .map_err(js_error)?;
    Ok(Gpu { ctx })
}

#[wasm_bindgen]
impl Gpu {
    /// The adapter and the kernel variant its limits and features give, as JSON:
    /// `{adapter, lanes, native_f16, shader_f16, shader_int64, max_storage_buffers_per_stage,
    /// max_storage_binding_bytes}`.
    pub fn describe(&self) -> String {
        let device = self.ctx.device();
        let features = device.features();
        json!({
            "adapter": self.ctx.describe(),
            "lanes": if self.ctx.uses_u64_lanes() { "2 x u64" } else { "vec4<f32>" },
            "native_f16": self.ctx.uses_shader_f16(),
            "shader_f16": features.contains(wgpu::Features::SHADER_F16),
            "shader_int64": features.contains(wgpu::Features::SHADER_INT64),
            "max_storage_buffers_per_stage": device.limits().max_storage_buffers_per_shader_stage,
            "max_storage_binding_bytes": self.ctx.max_binding_bytes(),
        })
        .to_string()
    }
}

#[wasm_bindgen]
impl Gpu {
    /// What the web's rules give, for the browser test: a blocking read-back and the
    /// blocking constructor return the library's `WouldBlock` error (no hang, no panic), and
    /// bad playground input is a typed error. JSON `{blocking_read, blocking_new, bad_lr,
    /// bad_class, bad_key}`, each the error message (or `"no error"`).
    pub fn self_check(&self) -> String {
        let message = |r: Result<(), String>| r.err().unwrap_or_else(|| "no error".into());
        let blocking_read = message(
            fused_optim::FlatParams::from_slice(&self.ctx, &[1.0, 2.0])
                .and_then(|p| p.read_params())
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
        let blocking_new = message(GpuContext::new().map(|_| ()).map_err(|e| e.to_string()));
        let playground = |optimizers: &str| {
            message(
                crate::playground::new_playground(&self.ctx, "rosenbrock", optimizers, 0.0, 0.0)
                    .map(|_| ()),
            )
        };
        json!({
            "blocking_read": blocking_read,
            "blocking_new": blocking_new,
            "bad_lr": playground(r#"[{"class": "Adam", "hparams": {"lr": -1}}]"#),
            "bad_class": playground(r#"[{"class": "NoSuchOptimizer"}]"#),
            "bad_key": playground(r#"[{"class": "SGD", "hparams": {"lr": 0.1, "momentun": 0.9}}]"#),
        })
        .to_string()
    }
}

/// Every golden case file the repository carries (relative to `golden/`, e.g.
/// `"v1/adam_default.json.gz"`), as a JSON array: the list the page fetches and replays.
#[wasm_bindgen]
pub fn golden_files() -> String {
    json!(files::GOLDEN_FILES).to_string()
}

/// The 2-D test functions as JSON: `[{name, range: [[x0, x1], [y0, y1]], start: [x, y],
/// minima: [[x, y], ...]}]`.
#[wasm_bindgen]
pub fn test_functions() -> String {
    let all: Vec<_> = TestFunction::ALL
        .iter()
        .map(|f| {
            let ((x0, x1), (y0, y1)) = f.plot_range();
            let (sx, sy) = f.start();
            json!({
                "name": f.name(),
                "range": [[x0, x1], [y0, y1]],
                "start": [sx, sy],
                "minima": f.minima().iter().map(|&(x, y)| [x, y]).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(all).to_string()
}

/// The test function called `name` (`rosenbrock`, `himmelblau`, `bowl`).
pub(crate) fn function_named(name: &str) -> Result<TestFunction, JsError> {
    function_by_name(name).map_err(|e| JsError::new(&e))
}

/// [`function_named`] with the error as text.
pub(crate) fn function_by_name(name: &str) -> Result<TestFunction, String> {
    TestFunction::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| format!("unknown test function `{name}`"))
}
