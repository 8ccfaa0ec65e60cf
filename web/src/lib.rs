//! # fused-optim-web
//!
//! fused-optim in the browser: the library's WGSL kernels on WebGPU through wgpu's WebGPU
//! backend (`wasm32-unknown-unknown`), exported with wasm-bindgen to the page in `web/www`
//! (a plain ES module, no bundler):
//!
//! - [`init_gpu`] — a [`GpuContext`](fused_optim::GpuContext) from the browser's adapter,
//!   awaited ([`GpuContext::new_async`](fused_optim::GpuContext::new_async)): the limits
//!   requested are the adapter's, the kernel variant follows them (vec4 lanes where there
//!   is no `shader-int64`, native f16 only with `shader-f16`, binding counts checked).
//! - [`Playground`] — optimizers stepping [x, y] on a 2-D test function
//!   (`fused_optim_tools::playground::functions`), every step a fused kernel on WebGPU.
//! - [`Gpu::replay_golden`] — a golden case (`golden/v1`, `golden/v2`, `.json.gz` bytes the
//!   page fetched) replayed through the GPU path with the same code and tolerances as the
//!   native `golden` example (`fused_optim_tools::golden`), as JSON with PASS/FAIL.
//! - [`Gpu::bench`] — Adam at 2^n parameters against the copy-kernel roof, timed in the
//!   browser.
//!
//! Natively this crate is empty on purpose: it is the web page's module, and every item is
//! `cfg(target_arch = "wasm32")` (its dependencies too), so the workspace's native builds,
//! tests, clippy and rustdoc are unaffected. It is not a default member of the workspace;
//! build it with `cargo build -p fused-optim-web --target wasm32-unknown-unknown --release`
//! (`scripts/browser_test.sh` and `scripts/serve_web.sh` do, then run `wasm-bindgen`).
//!
//! On the web, rayon has no threads: the fast CPU path (used only by the `cpu(f32)` golden
//! replays here) runs on the calling thread (rayon-core falls back to a one-thread pool when
//! threads are unsupported).

#![warn(missing_docs)]

#[cfg(target_arch = "wasm32")]
mod bench;
#[cfg(target_arch = "wasm32")]
mod checks;
#[cfg(target_arch = "wasm32")]
mod golden;
#[cfg(target_arch = "wasm32")]
mod gpu;
#[cfg(target_arch = "wasm32")]
mod playground;

#[cfg(target_arch = "wasm32")]
pub use gpu::{golden_files, init_gpu, test_functions, Gpu};
#[cfg(target_arch = "wasm32")]
pub use playground::{classic_optimizers, function_grid, function_value, Playground};
