//! The WGSL sources, assembled: `common.wgsl` (launch geometry) + one algorithm file.

use crate::optim::{KernelSource, OptimizerConfig};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const GRAD_CONTROL: &str = include_str!("../../shaders/grad_control.wgsl");
const F16_PACKED: &str = include_str!("../../shaders/f16_packed.wgsl");
const F16_NATIVE: &str = include_str!("../../shaders/f16_native.wgsl");
const LANE_F32: &str = include_str!("../../shaders/lane_f32.wgsl");
const LANE_U64: &str = include_str!("../../shaders/lane_u64.wgsl");

/// Every registered algorithm's kernel, in registry order.
pub fn kernels() -> Vec<KernelSource> {
    OptimizerConfig::all_kernels()
}

/// The full module source of a kernel file (lane transport + prelude + f16 helpers +
/// algorithm) with the defaults: `vec4<f32>` lanes, packed f16.
pub fn assemble(kernel_source: &str) -> String {
    assemble_with(kernel_source, Variant::default())
}

/// A standalone shader (e.g. `norm.wgsl`) with the lane transport and the gradient control
/// block (`grad_control.wgsl`) prepended.
pub fn with_lanes(source: &str, u64_lanes: bool) -> String {
    let lanes = if u64_lanes { LANE_U64 } else { LANE_F32 };
    format!("{lanes}\n{GRAD_CONTROL}\n{source}")
}

/// A standalone shader (e.g. `device_step.wgsl`) with the gradient control block
/// (`grad_control.wgsl`, one declaration for every shader that binds it) prepended.
pub fn with_grad_control(source: &str) -> String {
    format!("{GRAD_CONTROL}\n{source}")
}

/// Source variants of a kernel, chosen once per pipeline from what the device has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    /// f16 params through native f16 (`enable f16;`, needs `shader-f16`), else packed.
    pub native_f16: bool,
    /// Lanes moved as two u64 (needs `shader-int64`), else as `vec4<f32>`.
    pub u64_lanes: bool,
}

/// The full module source of a kernel file in the given variant.
pub fn assemble_with(kernel_source: &str, variant: Variant) -> String {
    let lanes = if variant.u64_lanes {
        LANE_U64
    } else {
        LANE_F32
    };
    if variant.native_f16 {
        format!("enable f16;\n{lanes}\n{GRAD_CONTROL}\n{COMMON}\n{F16_NATIVE}\n{kernel_source}")
    } else {
        format!("{lanes}\n{GRAD_CONTROL}\n{COMMON}\n{F16_PACKED}\n{kernel_source}")
    }
}

/// (file name, full source, state slots) of the kernel serving `config`, in `variant`.
pub fn kernel_for(
    config: &OptimizerConfig,
    variant: Variant,
) -> (&'static str, String, &'static [&'static str]) {
    let k = config.kernel();
    (k.file, assemble_with(k.source, variant), k.slots)
}
