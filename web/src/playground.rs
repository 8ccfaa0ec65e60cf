//! The playground: optimizers stepping [x, y] on a 2-D test function, each step one fused
//! kernel on WebGPU, the gradient computed on the CPU from the parameters read back.

use std::cell::RefCell;
use std::rc::Rc;

use fused_optim::gpu::buffer::read_f32_async;
use fused_optim::{FlatParams, GpuContext, GpuOptimizer, OptimizerConfig};
use fused_optim_tools::playground::functions::TestFunction;
use fused_optim_tools::playground::paths;
use serde_json::{json, Map, Value};
use wasm_bindgen::prelude::*;

use crate::gpu::{function_by_name, function_named, Gpu};

/// A coordinate beyond which a run counts as diverged and stops.
const DIVERGED: f64 = 1e6;

struct Run {
    opt: GpuOptimizer,
    flat: FlatParams,
    x: f64,
    y: f64,
    stopped: bool,
}

struct Inner {
    ctx: GpuContext,
    function: TestFunction,
    runs: Vec<Run>,
    /// Every run's [x, y] is copied here after a step, so that one read-back serves all.
    gather: wgpu::Buffer,
}

/// Optimizers on one test function, from one start point, stepped together.
#[wasm_bindgen]
pub struct Playground {
    /// `None` while a [`Playground::step`] has it.
    inner: Rc<RefCell<Option<Inner>>>,
}

/// The configuration of one optimizer row of the page: `{class, hparams}` with PyTorch's
/// class and keyword names (the library's golden mapping, `OptimizerConfig::from_hparams`).
fn config_of(spec: &Value) -> Result<OptimizerConfig, String> {
    let class = spec
        .get("class")
        .and_then(Value::as_str)
        .ok_or("optimizer without a `class`")?;
    let empty = Map::new();
    let map = match spec.get("hparams") {
        Some(Value::Object(m)) => m,
        None => &empty,
        Some(_) => return Err(format!("{class}: hparams must be an object")),
    };
    let config = OptimizerConfig::from_hparams(class, map)?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// [`Gpu::playground`] with the error as text.
pub(crate) fn new_playground(
    ctx: &GpuContext,
    function: &str,
    optimizers_json: &str,
    x0: f64,
    y0: f64,
) -> Result<Playground, String> {
    let function = function_by_name(function)?;
    let specs: Vec<Value> = serde_json::from_str(optimizers_json).map_err(|e| e.to_string())?;
    if specs.is_empty() {
        return Err("choose at least one optimizer".into());
    }
    if !(x0.is_finite() && y0.is_finite()) {
        return Err("the start point must be finite".into());
    }
    let mut runs = Vec::with_capacity(specs.len());
    for spec in &specs {
        let config = config_of(spec)?;
        let flat =
            FlatParams::from_slice(ctx, &[x0 as f32, y0 as f32]).map_err(|e| e.to_string())?;
        let opt = GpuOptimizer::new(&flat, config).map_err(|e| e.to_string())?;
        runs.push(Run {
            opt,
            flat,
            x: f64::from(x0 as f32),
            y: f64::from(y0 as f32),
            stopped: false,
        });
    }
    let gather = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("playground gather"),
        size: 8 * runs.len() as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    Ok(Playground {
        inner: Rc::new(RefCell::new(Some(Inner {
            ctx: ctx.clone(),
            function,
            runs,
            gather,
        }))),
    })
}

#[wasm_bindgen]
impl Gpu {
    /// A playground on `function` (`rosenbrock`, `himmelblau`, `bowl`) from (`x0`, `y0`) with
    /// the optimizers of `optimizers_json`: `[{class, hparams}, ...]` (PyTorch names, e.g.
    /// `{"class": "Adam", "hparams": {"lr": 0.1}}`). An unknown class, key or an invalid
    /// value is an error naming it.
    pub fn playground(
        &self,
        function: &str,
        optimizers_json: &str,
        x0: f64,
        y0: f64,
    ) -> Result<Playground, JsError> {
        new_playground(&self.ctx, function, optimizers_json, x0, y0).map_err(|e| JsError::new(&e))
    }
}

impl Inner {
    /// One step of every run that has not stopped, and one read-back of all of them.
    async fn step(&mut self) -> fused_optim::Result<()> {
        let function = self.function;
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("playground gather"),
                });
        for (i, run) in self.runs.iter_mut().enumerate() {
            if !run.stopped {
                let (gx, gy) = function.gradient(run.x, run.y);
                run.flat.write_grads(&[gx as f32, gy as f32])?;
                run.opt.step()?;
            }
            encoder.copy_buffer_to_buffer(
                run.flat.params_buffer(),
                0,
                &self.gather,
                8 * i as u64,
                8,
            );
        }
        self.ctx.queue().submit([encoder.finish()]);
        let xy = read_f32_async(&self.ctx, &self.gather, 0, 2 * self.runs.len()).await?;
        for (run, p) in self.runs.iter_mut().zip(xy.chunks_exact(2)) {
            if run.stopped {
                continue;
            }
            (run.x, run.y) = (f64::from(p[0]), f64::from(p[1]));
            if !(run.x.abs() < DIVERGED && run.y.abs() < DIVERGED) {
                run.stopped = true;
            }
        }
        Ok(())
    }
}

#[wasm_bindgen]
impl Playground {
    /// Take `steps` steps of every optimizer; resolves to JSON `{points: [[x, y, x, y, ...]
    /// per optimizer], losses: [[f, ...] per optimizer], stopped: [bool, ...]}` with the
    /// points after each of these steps (a run that diverged stops and gets no more).
    /// Rejects when called again before the last call resolved.
    pub fn step(&self, steps: u32) -> js_sys::Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let taken = inner.borrow_mut().take();
            let mut me =
                taken.ok_or_else(|| JsValue::from_str("the playground is already stepping"))?;
            let n = me.runs.len();
            let mut points = vec![Vec::new(); n];
            let mut losses = vec![Vec::new(); n];
            let mut result = Ok(());
            for _ in 0..steps {
                if me.runs.iter().all(|r| r.stopped) {
                    break;
                }
                let before: Vec<bool> = me.runs.iter().map(|r| r.stopped).collect();
                if let Err(e) = me.step().await {
                    result = Err(e);
                    break;
                }
                let f = me.function;
                for (i, run) in me.runs.iter().enumerate() {
                    if !before[i] {
                        points[i].extend([run.x, run.y]);
                        losses[i].push(f.value(run.x, run.y));
                    }
                }
            }
            let stopped: Vec<bool> = me.runs.iter().map(|r| r.stopped).collect();
            *inner.borrow_mut() = Some(me);
            result.map_err(|e| JsValue::from_str(&e.to_string()))?;
            Ok(JsValue::from_str(
                &json!({"points": points, "losses": losses, "stopped": stopped}).to_string(),
            ))
        })
    }
}

/// The eight classic optimizers with learning rates that behave on `function` from its
/// start (`fused_optim_tools::playground::paths::classic_optimizers`), as JSON
/// `[{name, class, hparams}]` with PyTorch's names: the page's presets.
#[wasm_bindgen]
pub fn classic_optimizers(function: &str) -> Result<String, JsError> {
    let function = function_named(function)?;
    let all: Vec<Value> = paths::classic_optimizers(function)
        .into_iter()
        .map(|(name, config)| {
            json!({"name": name, "class": config.name(), "hparams": config.hparams()})
        })
        .collect();
    Ok(json!(all).to_string())
}

/// f of `function` on an `nx` x `ny` grid over its plot range (row-major, y rows from the
/// top of the plot, x columns from the left), for the contour plot.
#[wasm_bindgen]
pub fn function_grid(function: &str, nx: u32, ny: u32) -> Result<Vec<f64>, JsError> {
    let function = function_named(function)?;
    if nx < 2 || ny < 2 || u64::from(nx) * u64::from(ny) > 1 << 22 {
        return Err(JsError::new(
            "the grid needs 2..=2^22 points, at least 2 per side",
        ));
    }
    let ((x0, x1), (y0, y1)) = function.plot_range();
    let mut out = Vec::with_capacity((nx * ny) as usize);
    for j in 0..ny {
        let y = y1 - (y1 - y0) * f64::from(j) / f64::from(ny - 1);
        for i in 0..nx {
            let x = x0 + (x1 - x0) * f64::from(i) / f64::from(nx - 1);
            out.push(function.value(x, y));
        }
    }
    Ok(out)
}

/// f(`x`, `y`) of `function`.
#[wasm_bindgen]
pub fn function_value(function: &str, x: f64, y: f64) -> Result<f64, JsError> {
    Ok(function_named(function)?.value(x, y))
}
