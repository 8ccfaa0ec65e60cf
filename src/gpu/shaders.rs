//! The WGSL sources, assembled per kernel [`Variant`]: the lane transport, the gradient
//! control block, a header of source-level constants, `common.wgsl` (launch geometry), the
//! files of the bindings the variant uses (or stubs), generated state accessors, and one
//! algorithm file.
//!
//! A variant declares exactly the bindings it uses ([`required_bindings`]), so that a plain
//! Adam step binds 5 storage buffers (param, grad, two states, control) and every variant fits
//! WebGPU's default of 8 storage buffers per shader stage; [`check_fits`] refuses a variant
//! that does not fit a device's limits or needs a feature it lacks, before any pipeline is
//! created.

use crate::error::{Error, Result};
use crate::optim::{KernelSource, OptimizerConfig};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const GRAD_CONTROL: &str = include_str!("../../shaders/grad_control.wgsl");
const GRAD_F32: &str = include_str!("../../shaders/grad_f32.wgsl");
const F16_PACKED: &str = include_str!("../../shaders/f16_packed.wgsl");
const BF16_PACKED: &str = include_str!("../../shaders/bf16_packed.wgsl");
const F16_NATIVE: &str = include_str!("../../shaders/f16_native.wgsl");
const BF16_ROUND: &str = include_str!("../../shaders/bf16_round.wgsl");
const GROUPS: &str = include_str!("../../shaders/groups.wgsl");
const GROUPS_NONE: &str = include_str!("../../shaders/groups_none.wgsl");
const LANE_F32: &str = include_str!("../../shaders/lane_f32.wgsl");
const LANE_U64: &str = include_str!("../../shaders/lane_u64.wgsl");
const TENSORS: &str = include_str!("../../shaders/tensors.wgsl");

/// Every registered algorithm's kernel, in registry order.
pub fn kernels() -> Vec<KernelSource> {
    OptimizerConfig::all_kernels()
}

/// Every optimizer kernel as (file name, source without the prelude, state slots in binding
/// order): what the portability tests iterate. One line to change when the kernels come from
/// elsewhere (a registry).
pub fn all_kernels() -> impl Iterator<Item = (&'static str, &'static str, &'static [&'static str])>
{
    kernels().into_iter().map(|k| (k.file, k.source, k.slots))
}

/// The full module source of a kernel file with the defaults (`vec4<f32>` lanes, f32 params,
/// one parameter group, f32 state) and every state slot bound.
pub fn assemble(kernel_source: &str, slots: &[&str]) -> String {
    assemble_with(
        kernel_source,
        slots,
        Variant::default().with_all_states(slots.len()),
    )
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

/// 16-bit params and gradients of a kernel variant (`LOW_PRECISION` in `common.wgsl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LowPrecision {
    /// f32 gradients (binding 3), no 16-bit params.
    #[default]
    Off,
    /// f16 gradients and params (bindings 9, 10), f32 master weights.
    F16,
    /// bf16 gradients and params (bindings 9, 10), f32 master weights.
    Bf16,
}

impl LowPrecision {
    /// Every value.
    pub const ALL: [Self; 3] = [Self::Off, Self::F16, Self::Bf16];

    /// `LOW_PRECISION` in `common.wgsl`: 0 off, 1 f16, 2 bf16.
    pub fn code(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::F16 => 1,
            Self::Bf16 => 2,
        }
    }

    /// The value of a `LOW_PRECISION` code (0 and unknown codes: off).
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::F16,
            2 => Self::Bf16,
            _ => Self::Off,
        }
    }
}

/// Source variants of a kernel, chosen once per pipeline from what the device has and what
/// the optimizer binds. A variant decides which bindings the module declares (and the bind
/// group layout holds): see [`required_bindings`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// f16 params through native f16 (`enable f16;`, needs `shader-f16`), else packed. Only
    /// matters with [`LowPrecision::F16`].
    pub native_f16: bool,
    /// Lanes moved as two u64 (needs `shader-int64`), else as `vec4<f32>`.
    pub u64_lanes: bool,
    /// Parameter groups: a lane-to-group table (binding 8) picks each lane's scalars.
    pub grouped: bool,
    /// 16-bit params and gradients with f32 master weights.
    pub low_precision: LowPrecision,
    /// State tensors packed as bf16 (bindings 12+) instead of f32 (bindings 4+).
    pub bf16_state: bool,
    /// Which state slots are bound: bit k for slot k (binding 4 + k, or 12 + k with
    /// `bf16_state`). A slot not bound gets stub accessors (its option is off).
    pub state_slots: u8,
    /// Params and gradients are ranges of caller buffers, many tensors per bound window,
    /// found through a tensor table (binding 15, `tensors.wgsl`); the state is flat. With
    /// `grouped`, each tensor's entry names its group (no lane table). Needs f32 params and
    /// gradients and f32 state ([`crate::gpu::tensors`]).
    pub external: bool,
    /// (`external`) The gradients live in the params' buffer and are read through the
    /// read-write param binding: binding 3 is absent (a buffer may not be bound read-only
    /// and read-write in one dispatch).
    pub grad_in_param: bool,
}

impl Variant {
    /// The same variant with the first `count` state slots bound (and no others).
    pub fn with_all_states(self, count: usize) -> Self {
        Self {
            state_slots: ((1u32 << count.min(8)) - 1) as u8,
            ..self
        }
    }

    /// Whether the module uses native f16 (`enable f16;`): f16 params with `native_f16`.
    pub fn uses_native_f16(&self) -> bool {
        self.native_f16 && self.low_precision == LowPrecision::F16
    }

    /// Whether the module stores bf16 values (and binds the stochastic-rounding seed).
    pub fn stores_bf16(&self) -> bool {
        self.bf16_state || self.low_precision == LowPrecision::Bf16
    }

    /// Number of state slots bound.
    pub fn state_count(&self) -> u32 {
        self.state_slots.count_ones()
    }

    /// A short description, e.g. `u64 lanes, grouped, bf16 params, bf16 state, 3 state
    /// tensors`.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.u64_lanes {
            "u64 lanes"
        } else {
            "vec4<f32> lanes"
        }];
        if self.grouped {
            parts.push("grouped");
        }
        match self.low_precision {
            LowPrecision::Off => {}
            LowPrecision::F16 if self.native_f16 => parts.push("f16 params (native)"),
            LowPrecision::F16 => parts.push("f16 params (packed)"),
            LowPrecision::Bf16 => parts.push("bf16 params"),
        }
        if self.bf16_state {
            parts.push("bf16 state");
        }
        if self.external {
            parts.push(if self.grad_in_param {
                "caller ranges (grads in the params' buffer)"
            } else {
                "caller ranges"
            });
        }
        let states = format!("{} state tensors", self.state_count());
        let mut s = parts.join(", ");
        s.push_str(", ");
        s.push_str(&states);
        s
    }
}

/// What a binding of a kernel holds (group 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingRole {
    /// 0: per-step scalars of every group (uniform, dynamic offset).
    Hyper,
    /// 1: the binding window (uniform).
    Window,
    /// 2: f32 params (master weights), read-write storage.
    Param,
    /// 3: f32 gradients, read-only storage (without low precision).
    Grad,
    /// 4 + k: f32 state slot k, read-write storage.
    State(u8),
    /// 7: the gradient control block, read-only storage.
    Control,
    /// 8: the parameter group of every lane, read-only storage (grouped).
    LaneGroups,
    /// 9: 16-bit gradients, read-only storage (low precision).
    LowGrad,
    /// 10: 16-bit params, read-write storage (low precision).
    LowParam,
    /// 11: the stochastic-rounding seed (uniform, dynamic offset; variants storing bf16).
    StepInfo,
    /// 12 + k: bf16 state slot k, read-write storage.
    Bf16State(u8),
    /// 15: the tensor table of a kernel over caller ranges, read-only storage (external).
    TensorTable,
}

/// How a binding is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// `var<uniform>`.
    Uniform {
        /// Bound with a dynamic offset.
        dynamic: bool,
    },
    /// `var<storage>`.
    Storage {
        /// `read` (else `read_write`).
        read_only: bool,
    },
}

impl BindingRole {
    /// The binding number in group 0.
    pub fn binding(self) -> u32 {
        match self {
            Self::Hyper => 0,
            Self::Window => 1,
            Self::Param => 2,
            Self::Grad => 3,
            Self::State(k) => 4 + u32::from(k),
            Self::Control => 7,
            Self::LaneGroups => 8,
            Self::LowGrad => 9,
            Self::LowParam => 10,
            Self::StepInfo => 11,
            Self::Bf16State(k) => 12 + u32::from(k),
            Self::TensorTable => 15,
        }
    }

    /// How it is declared.
    pub fn kind(self) -> BindingKind {
        match self {
            Self::Hyper | Self::StepInfo => BindingKind::Uniform { dynamic: true },
            Self::Window => BindingKind::Uniform { dynamic: false },
            Self::Grad | Self::Control | Self::LaneGroups | Self::LowGrad | Self::TensorTable => {
                BindingKind::Storage { read_only: true }
            }
            Self::Param | Self::State(_) | Self::LowParam | Self::Bf16State(_) => {
                BindingKind::Storage { read_only: false }
            }
        }
    }
}

/// Every binding the module of `variant` declares and its layout must hold, in binding
/// order. Pure: depends on the variant only (no device).
pub fn required_bindings(variant: &Variant) -> Vec<BindingRole> {
    let mut b = vec![BindingRole::Hyper, BindingRole::Window, BindingRole::Param];
    if variant.low_precision == LowPrecision::Off && !(variant.external && variant.grad_in_param) {
        b.push(BindingRole::Grad);
    }
    let slots = (0..8u8).filter(|k| variant.state_slots & (1 << k) != 0);
    if !variant.bf16_state {
        b.extend(slots.clone().map(BindingRole::State));
    }
    b.push(BindingRole::Control);
    if variant.grouped && !variant.external {
        b.push(BindingRole::LaneGroups);
    }
    if variant.external {
        b.push(BindingRole::TensorTable);
    }
    if variant.low_precision != LowPrecision::Off {
        b.push(BindingRole::LowGrad);
        b.push(BindingRole::LowParam);
    }
    if variant.stores_bf16() {
        b.push(BindingRole::StepInfo);
    }
    if variant.bf16_state {
        b.extend(slots.map(BindingRole::Bf16State));
    }
    b
}

/// How many buffers of each kind a variant binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingCounts {
    /// Storage buffers (all in the compute stage).
    pub storage: u32,
    /// Uniform buffers.
    pub uniform: u32,
    /// Uniform buffers with a dynamic offset.
    pub dynamic_uniform: u32,
}

/// The counts of [`required_bindings`].
pub fn binding_counts(variant: &Variant) -> BindingCounts {
    let mut c = BindingCounts::default();
    for role in required_bindings(variant) {
        match role.kind() {
            BindingKind::Storage { .. } => c.storage += 1,
            BindingKind::Uniform { dynamic } => {
                c.uniform += 1;
                c.dynamic_uniform += u32::from(dynamic);
            }
        }
    }
    c
}

/// Refuse a variant the device cannot run, as a typed error and before any pipeline is
/// created: more storage or uniform buffers than `limits` allow per shader stage (or dynamic
/// uniform buffers per pipeline layout), u64 lanes without `shader-int64`, native f16
/// without `shader-f16`. `kernel` names the kernel in the error. Pure (no device needed).
pub fn check_fits(
    kernel: &str,
    variant: &Variant,
    limits: &wgpu::Limits,
    features: wgpu::Features,
) -> Result<()> {
    let name = || format!("{kernel} ({})", variant.describe());
    if variant.external && (variant.low_precision != LowPrecision::Off || variant.bf16_state) {
        return Err(Error::InvalidCombination {
            optimizer: "kernel over caller ranges",
            reason: "needs f32 params and gradients and f32 state",
        });
    }
    if variant.u64_lanes && !features.contains(wgpu::Features::SHADER_INT64) {
        return Err(Error::KernelNeedsFeature {
            kernel: name(),
            feature: "shader-int64 (u64 lanes)",
        });
    }
    if variant.uses_native_f16() && !features.contains(wgpu::Features::SHADER_F16) {
        return Err(Error::KernelNeedsFeature {
            kernel: name(),
            feature: "shader-f16 (native f16 params)",
        });
    }
    check_counts(&name(), binding_counts(variant), limits)
}

/// Storage buffers of `norm.wgsl` (the gradient-norm pass: grad, partials, control,
/// non-finite flag, 16-bit grads), checked by `tests/portability.rs`.
pub const NORM_STORAGE_BUFFERS: u32 = 5;

/// Storage buffers of `device_step.wgsl` (the device step counter: uniform slot, table,
/// word classes, control, counter), checked by `tests/portability.rs`.
pub const DEVICE_STEP_STORAGE_BUFFERS: u32 = 5;

/// Refuse a shader with `counts` bindings that `limits` cannot hold, naming it `kernel`.
pub fn check_counts(kernel: &str, counts: BindingCounts, limits: &wgpu::Limits) -> Result<()> {
    let checks = [
        (
            counts.storage,
            limits.max_storage_buffers_per_shader_stage,
            "storage buffers per shader stage (max_storage_buffers_per_shader_stage)",
        ),
        (
            counts.uniform,
            limits.max_uniform_buffers_per_shader_stage,
            "uniform buffers per shader stage (max_uniform_buffers_per_shader_stage)",
        ),
        (
            counts.dynamic_uniform,
            limits.max_dynamic_uniform_buffers_per_pipeline_layout,
            "dynamic uniform buffers per pipeline layout \
             (max_dynamic_uniform_buffers_per_pipeline_layout)",
        ),
    ];
    for (needs, limit, what) in checks {
        if needs > limit {
            return Err(Error::KernelDoesNotFit {
                kernel: kernel.to_string(),
                needs,
                limit,
                what,
            });
        }
    }
    Ok(())
}

/// The full module source of a kernel file in the given variant. `slots` names the kernel's
/// state slots in binding order; each gets `load_<name>(i) -> vec4<f32>` and
/// `store_<name>(i, x)`, reading and writing its binding in the variant's format, or stubs
/// (zero, no-op) when the variant does not bind it.
pub fn assemble_with(kernel_source: &str, slots: &[&str], variant: Variant) -> String {
    let mut out = String::new();
    if variant.uses_native_f16() {
        out.push_str("enable f16;\n");
    }
    out.push_str(if variant.u64_lanes {
        LANE_U64
    } else {
        LANE_F32
    });
    out.push('\n');
    out.push_str(GRAD_CONTROL);
    out.push_str(&format!(
        "\n// Variant: {}.\nconst GROUPED: bool = {};\nconst LOW_PRECISION: u32 = {}u;\n\
         const BF16_STATE: bool = {};\nconst EXTERNAL: bool = {};\n\
         const GRAD_IN_PARAM: bool = {};\n\n",
        variant.describe(),
        variant.grouped,
        variant.low_precision.code(),
        variant.bf16_state,
        variant.external,
        variant.external && variant.grad_in_param,
    ));
    out.push_str(COMMON);
    out.push('\n');
    if variant.external {
        out.push_str(TENSORS);
        out.push_str(&external_accessors(&variant));
    } else {
        out.push_str(match variant.low_precision {
            LowPrecision::Off => GRAD_F32,
            LowPrecision::F16 if variant.native_f16 => F16_NATIVE,
            LowPrecision::F16 => F16_PACKED,
            LowPrecision::Bf16 => BF16_PACKED,
        });
        out.push_str(EXTERNAL_STUBS);
        out.push('\n');
        out.push_str(if variant.grouped { GROUPS } else { GROUPS_NONE });
    }
    out.push('\n');
    if variant.stores_bf16() {
        out.push_str(BF16_ROUND);
        out.push('\n');
    }
    out.push_str(&state_accessors(slots, &variant));
    out.push_str(kernel_source);
    out
}

/// What the flat variants define in place of `tensors.wgsl` (never called: EXTERNAL is off).
const EXTERNAL_STUBS: &str = "
// Not a kernel over caller ranges (EXTERNAL is off): never called.
fn tensor_word(k: u32) -> u32 {
    return 0u;
}
fn store_param_external(i: u32, p: vec4<f32>) {}
";

/// The gradient load and the group lookup of an external variant (after `tensors.wgsl`).
fn external_accessors(variant: &Variant) -> String {
    let grad = if variant.grad_in_param {
        "// The gradients are in the params' buffer (GRAD_IN_PARAM): read through `param`.\n\
         fn raw_grad(i: u32) -> vec4<f32> {\n    return unpack_lane(param[i + ext_grad_delta]);\n}\n"
    } else {
        "@group(0) @binding(3) var<storage, read> grad: array<Lane>;\n\
         fn raw_grad(i: u32) -> vec4<f32> {\n    return unpack_lane(grad[i + ext_grad_delta]);\n}\n"
    };
    // The params' store. vec4<f32> lanes: only the live elements of a tensor's last lane
    // are written. u64 lanes (two elements per scalar) cannot store one element: the lane is
    // written whole, its dead elements with the bits this invocation read from them (`p`
    // keeps the old value where `live` is false); they are no tensor's (every range starts
    // on a 16-byte boundary) and nothing else writes them during the dispatch.
    let store = if variant.u64_lanes {
        "fn store_param_external(i: u32, p: vec4<f32>) {\n    param[i] = pack_lane(p);\n}\n"
    } else {
        "fn store_param_external(i: u32, p: vec4<f32>) {\n    if (all(ext_live)) {\n        \
         param[i] = p;\n        return;\n    }\n    if (ext_live.x) {\n        param[i].x = p.x;\n    }\n    \
         if (ext_live.y) {\n        param[i].y = p.y;\n    }\n    if (ext_live.z) {\n        \
         param[i].z = p.z;\n    }\n    if (ext_live.w) {\n        param[i].w = p.w;\n    }\n}\n"
    };
    let groups = if variant.grouped {
        "// Parameter groups: the group of the lane's tensor, from its table entry.\n\
         fn hyper_of(i: u32) -> StepUniform {\n    return hps[ext_group];\n}\n"
    } else {
        "// One parameter group: group 0's scalars, read once per invocation.\n\
         fn hyper_of(i: u32) -> StepUniform {\n    return group0;\n}\n"
    };
    format!("{grad}{store}{groups}")
}

/// The declarations and accessors of a kernel's state slots in `variant`.
fn state_accessors(slots: &[&str], variant: &Variant) -> String {
    let mut s = String::from("// State slots (generated by src/gpu/shaders.rs).\n");
    for (k, name) in slots.iter().enumerate() {
        let bound = k < 8 && variant.state_slots & (1 << k) != 0;
        if !bound {
            s.push_str(&format!(
                "// {name}: not bound in this variant (its option is off).\n\
                 fn load_{name}(i: u32) -> vec4<f32> {{\n    return vec4<f32>(0.0);\n}}\n\
                 fn store_{name}(i: u32, x: vec4<f32>) {{}}\n"
            ));
        } else if variant.bf16_state {
            let binding = BindingRole::Bf16State(k as u8).binding();
            let stream = k + 1;
            s.push_str(&format!(
                "@group(0) @binding({binding}) var<storage, read_write> {name}_bf16: \
                 array<vec2<u32>>;\n\
                 fn load_{name}(i: u32) -> vec4<f32> {{\n    \
                 return unpack_bf16({name}_bf16[window.first_lane + i]);\n}}\n\
                 fn store_{name}(i: u32, x: vec4<f32>) {{\n    \
                 let j = window.first_lane + i;\n    \
                 let packed = pack_bf16(x, i, {stream}u);\n    \
                 {name}_bf16[j] = packed;\n}}\n"
            ));
        } else {
            let binding = BindingRole::State(k as u8).binding();
            // External: the state lane is the param lane plus the tensor's offset.
            let j = if variant.external {
                "i + ext_state_delta"
            } else {
                "i"
            };
            s.push_str(&format!(
                "@group(0) @binding({binding}) var<storage, read_write> {name}: array<Lane>;\n\
                 fn load_{name}(i: u32) -> vec4<f32> {{\n    return unpack_lane({name}[{j}]);\n}}\n\
                 fn store_{name}(i: u32, x: vec4<f32>) {{\n    {name}[{j}] = pack_lane(x);\n}}\n"
            ));
        }
    }
    s.push('\n');
    s
}

/// (file name, source without the common prelude, state slots) of the kernel serving
/// `config`.
pub fn kernel_source_for(
    config: &OptimizerConfig,
) -> (&'static str, &'static str, &'static [&'static str]) {
    let k = config.kernel();
    (k.file, k.source, k.slots)
}

/// (file name, full source, state slots) of the kernel serving `config`, in `variant`.
pub fn kernel_for(
    config: &OptimizerConfig,
    variant: Variant,
) -> (&'static str, String, &'static [&'static str]) {
    let (name, source, slots) = kernel_source_for(config);
    (name, assemble_with(source, slots, variant), slots)
}
