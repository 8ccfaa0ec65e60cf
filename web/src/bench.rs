//! The browser's benchmark: Adam at 2^n parameters, its roof (the same access pattern with
//! trivial arithmetic) and the copy kernel, on the same device, timed with
//! `performance.now()` around batches of submitted steps and an awaited
//! `onSubmittedWorkDone`, as the native `throughput` example times them around a wait.

use fused_optim::roofline::GpuRoof;
use fused_optim::{AdamConfig, FlatParams, GpuContext, GpuOptimizer, OptimizerConfig};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::gpu::Gpu;

/// Bytes a copy kernel moves per element: read g, write p.
const COPY_BYTES: u64 = 8;

/// Batches (of each kernel) measured after calibration; the median is reported.
const BATCHES: usize = 5;

fn now_ms() -> Result<f64, String> {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .ok_or_else(|| "no window.performance (the benchmark runs on a page)".to_string())
}

/// Deterministic values in [-1, 1) that differ per element and per `seed`.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Milliseconds per step of `k` submitted steps, waited for.
async fn batch(
    ctx: &GpuContext,
    k: usize,
    step: &mut dyn FnMut() -> fused_optim::Result<()>,
) -> Result<f64, String> {
    let t = now_ms()?;
    for _ in 0..k {
        step().map_err(|e| e.to_string())?;
    }
    ctx.wait_async().await.map_err(|e| e.to_string())?;
    Ok((now_ms()? - t) / k as f64)
}

/// Batch length for which one batch takes about `target_ms / BATCHES` (after one warm-up
/// batch: pipeline compilation and first-touch costs stay out).
async fn calibrate(
    ctx: &GpuContext,
    target_ms: f64,
    step: &mut dyn FnMut() -> fused_optim::Result<()>,
) -> Result<usize, String> {
    batch(ctx, 1, step).await?;
    let mut k = 1;
    loop {
        let per = batch(ctx, k, step).await?;
        if per * k as f64 * BATCHES as f64 >= target_ms || k >= 1 << 12 {
            return Ok(k);
        }
        k *= 2;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(ctx: GpuContext, log2: u32, target_ms: f64) -> Result<serde_json::Value, String> {
    if !(10..=24).contains(&log2) {
        return Err(format!("log2 size {log2} outside 10..=24"));
    }
    if !(target_ms.is_finite() && target_ms > 0.0) {
        return Err("the target time must be positive".into());
    }
    let n = 1usize << log2;
    let e = |e: fused_optim::Error| e.to_string();
    let (p0, g) = (values(n, 1), values(n, 2));
    let config = OptimizerConfig::from(AdamConfig::default());
    let adam_bytes = config.minimal_bytes_per_param();
    let states = config.state_names().len();

    let flat = FlatParams::from_slice(&ctx, &p0).map_err(e)?;
    flat.write_grads(&g).map_err(e)?;
    let mut adam = GpuOptimizer::new(&flat, config).map_err(e)?;
    let roof_params = FlatParams::from_slice(&ctx, &p0).map_err(e)?;
    roof_params.write_grads(&g).map_err(e)?;
    let mut roof = GpuRoof::new(&roof_params, states).map_err(e)?;
    let copy_params = FlatParams::from_slice(&ctx, &p0).map_err(e)?;
    copy_params.write_grads(&g).map_err(e)?;
    let mut copy = GpuRoof::copy(&copy_params).map_err(e)?;

    let mut adam_step = || adam.step();
    let mut roof_step = || {
        roof.step();
        Ok(())
    };
    let mut copy_step = || {
        copy.step();
        Ok(())
    };
    let ka = calibrate(&ctx, target_ms, &mut adam_step).await?;
    let kr = calibrate(&ctx, target_ms, &mut roof_step).await?;
    let kc = calibrate(&ctx, target_ms, &mut copy_step).await?;
    // Interleaved, so that a slow stretch of the machine hits all three alike.
    let (mut ta, mut tr, mut tc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        ta.push(batch(&ctx, ka, &mut adam_step).await?);
        tr.push(batch(&ctx, kr, &mut roof_step).await?);
        tc.push(batch(&ctx, kc, &mut copy_step).await?);
    }
    let (a, r, c) = (median(ta), median(tr), median(tc));
    let gbps = |bytes: u64, ms: f64| n as f64 * bytes as f64 / (ms * 1e-3) / 1e9;
    Ok(json!({
        "n": n,
        "adapter": ctx.describe(),
        "lanes": if ctx.uses_u64_lanes() { "2 x u64" } else { "vec4<f32>" },
        "adam": {"seconds_per_step": a * 1e-3, "gbps": gbps(adam_bytes, a), "bytes_per_param": adam_bytes, "batch": ka},
        "adam_roof": {"seconds_per_step": r * 1e-3, "gbps": gbps(adam_bytes, r), "bytes_per_param": adam_bytes, "batch": kr},
        "copy_kernel": {"seconds_per_step": c * 1e-3, "gbps": gbps(COPY_BYTES, c), "bytes_per_param": COPY_BYTES, "batch": kc},
        "adam_fraction_of_roof": r / a,
        "adam_gbps_over_copy_gbps": gbps(adam_bytes, a) / gbps(COPY_BYTES, c),
    }))
}

#[wasm_bindgen]
impl Gpu {
    /// Time Adam (defaults) at 2^`log2` parameters, its roof and the copy kernel, each for
    /// about `target_ms` after calibration. Resolves to JSON `{n, adapter, lanes, adam,
    /// adam_roof, copy_kernel: {seconds_per_step, gbps, bytes_per_param, batch},
    /// adam_fraction_of_roof, adam_gbps_over_copy_gbps}`; rejects with the error.
    pub fn bench(&self, log2: u32, target_ms: f64) -> js_sys::Promise {
        let ctx = self.ctx.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            run(ctx, log2, target_ms)
                .await
                .map(|v| JsValue::from_str(&v.to_string()))
                .map_err(|e| JsValue::from_str(&e))
        })
    }
}
