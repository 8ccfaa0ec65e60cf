//! The browser test's check of the kernel variant on the web: f16 params (with f32 masters)
//! stepped by Adam on whatever the device offers — native f16 only with `shader-f16`,
//! otherwise the packed (`pack2x16float`) path — against the f64 reference.

use fused_optim::{
    AdamConfig, GpuContext, GpuOptimizer, LowFormat, LowPrecisionParams, OptimizerConfig,
    ReferenceOptimizer,
};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::gpu::Gpu;

/// Per-step relative tolerance of an f32 implementation against the f64 reference (the
/// library's parity tests and the golden README use the same 1e-5 per step).
const RTOL_PER_STEP: f64 = 1e-5;

async fn f16_adam(ctx: GpuContext) -> Result<serde_json::Value, String> {
    let e = |e: fused_optim::Error| e.to_string();
    const N: usize = 1003;
    const STEPS: usize = 10;
    let config = OptimizerConfig::from(AdamConfig {
        lr: 1e-2,
        ..Default::default()
    });
    let p0: Vec<f32> = (0..N).map(|i| ((i as f32) * 0.731).sin() * 2.0).collect();
    let lp = LowPrecisionParams::new(&ctx, &p0, LowFormat::F16).map_err(e)?;
    let mut opt = GpuOptimizer::new_low_precision(&lp, config, false).map_err(e)?;
    let mut reference = ReferenceOptimizer::new(config, N).map_err(e)?;
    let mut p: Vec<f64> = p0.iter().map(|&v| f64::from(v)).collect();
    let mut worst = 0.0f64;
    for k in 1..=STEPS {
        let bits: Vec<u16> = (0..N)
            .map(|i| LowFormat::F16.round(((i * k) as f32 * 0.377).cos()))
            .collect();
        lp.write_grad_bits(&bits).map_err(e)?;
        opt.step().map_err(e)?;
        let g: Vec<f64> = bits
            .iter()
            .map(|&b| f64::from(LowFormat::F16.value(b)))
            .collect();
        reference.step(&mut p, &g).map_err(e)?;
        let master = lp.master().read_params_async().await.map_err(e)?;
        for (got, want) in master.iter().zip(&p) {
            let bound = RTOL_PER_STEP * k as f64 * want.abs().max(1e-2);
            worst = worst.max((f64::from(*got) - want).abs() / bound);
        }
    }
    let master = lp.master().read_params_async().await.map_err(e)?;
    let bits = lp.read_param_bits_async().await.map_err(e)?;
    let rounded = master
        .iter()
        .zip(&bits)
        .filter(|(m, b)| LowFormat::F16.round(**m) == **b)
        .count();
    Ok(json!({
        "shader_f16": ctx.device().features().contains(wgpu::Features::SHADER_F16),
        "uses_shader_f16": opt.uses_shader_f16(),
        "steps": STEPS,
        "worst_over_tol": worst,
        "params_rounded_from_masters": rounded,
        "n": N,
        "passed": worst <= 1.0 && rounded == N,
    }))
}

#[wasm_bindgen]
impl Gpu {
    /// Adam on f16 params (f32 masters) for 10 steps on this device against the f64
    /// reference: resolves to JSON `{shader_f16, uses_shader_f16, steps, worst_over_tol,
    /// params_rounded_from_masters, n, passed}` (passed: every master within 1e-5 per step,
    /// relative, and every f16 param the nearest-even rounding of its master).
    pub fn f16_check(&self) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            f16_adam(ctx)
                .await
                .map(|v| JsValue::from_str(&v.to_string()))
                .map_err(|e| JsValue::from_str(&e))
        })
    }
}
