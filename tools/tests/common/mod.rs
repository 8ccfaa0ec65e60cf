//! The GPU context of a test binary (shared), as in the library's tests.
#![allow(dead_code)]

use std::sync::OnceLock;

use fused_optim::GpuContext;

static CONTEXT: OnceLock<Option<GpuContext>> = OnceLock::new();

/// The shared GPU context of this test binary. With `FUSED_OPTIM_REQUIRE_GPU=1` a missing
/// adapter fails the test; otherwise the test says loudly that it is skipped.
pub fn gpu() -> Option<GpuContext> {
    CONTEXT
        .get_or_init(|| match GpuContext::new() {
            Ok(ctx) => {
                eprintln!("GPU tests run on: {}", ctx.describe());
                Some(ctx)
            }
            Err(e) => {
                if std::env::var("FUSED_OPTIM_REQUIRE_GPU").as_deref() == Ok("1") {
                    panic!("FUSED_OPTIM_REQUIRE_GPU=1 but no adapter: {e}");
                }
                eprintln!("SKIPPING GPU TEST: no adapter ({e}); set FUSED_OPTIM_REQUIRE_GPU=1 to fail instead");
                None
            }
        })
        .clone()
}
