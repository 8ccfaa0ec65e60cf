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
    TestFunction::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| JsError::new(&format!("unknown test function `{name}`")))
}
