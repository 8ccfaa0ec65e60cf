//! naga parses and validates every kernel; each WGSL uniform struct matches its Rust mirror
//! (size and every member offset).

use fused_optim::gpu::shaders::{
    all_kernels, assemble, assemble_with, with_grad_control, with_lanes, LowPrecision, Variant,
};

/// The roof kernel's state slots (src/roofline.rs).
const ROOF_SLOTS: &[&str] = &["s0", "s1", "s2"];
use fused_optim::optim::*;

fn module(source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)))
}

/// The capabilities the default kernels need: only the f16 pack/unpack builtins of the f16
/// low-precision mode (`SHADER_FLOAT16_IN_FLOAT32`, which wgpu grants on Vulkan and GL
/// here); u64 lanes add `SHADER_INT64` (only used where the device has it).
fn capabilities() -> naga::valid::Capabilities {
    naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32 | naga::valid::Capabilities::SHADER_INT64
}

#[test]
fn every_kernel_parses_and_validates() {
    let extra = [
        (
            "roof.wgsl",
            assemble(include_str!("../shaders/roof.wgsl"), ROOF_SLOTS),
        ),
        (
            "copy.wgsl",
            assemble(include_str!("../shaders/copy.wgsl"), &[]),
        ),
        (
            "norm.wgsl",
            with_lanes(include_str!("../shaders/norm.wgsl"), false),
        ),
        (
            "norm.wgsl (u64 lanes)",
            with_lanes(include_str!("../shaders/norm.wgsl"), true),
        ),
        (
            "device_step.wgsl",
            with_grad_control(include_str!("../shaders/device_step.wgsl")),
        ),
    ];
    for (file, full) in extra {
        let m = module(&full);
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities())
            .validate(&m)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&full)));
    }
    // Lanes and f16 variants of every kernel (native f16: `enable f16;`, capability
    // SHADER_FLOAT16; u64 lanes: SHADER_INT64), the roof and the copy kernel included
    // (tests/portability.rs goes through every variant).
    let all = all_kernels().chain([
        (
            "roof.wgsl",
            include_str!("../shaders/roof.wgsl"),
            ROOF_SLOTS,
        ),
        ("copy.wgsl", include_str!("../shaders/copy.wgsl"), &[][..]),
    ]);
    for (file, source, slots) in all {
        for native_f16 in [false, true] {
            for u64_lanes in [false, true] {
                let full = assemble_with(
                    source,
                    slots,
                    Variant {
                        native_f16,
                        u64_lanes,
                        low_precision: if native_f16 {
                            LowPrecision::F16
                        } else {
                            LowPrecision::Off
                        },
                        ..Variant::default()
                    }
                    .with_all_states(slots.len()),
                );
                let m = module(&full);
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    capabilities()
                        | naga::valid::Capabilities::SHADER_FLOAT16
                        | naga::valid::Capabilities::SHADER_INT64,
                )
                .validate(&m)
                .unwrap_or_else(|e| {
                    panic!(
                        "{file} (f16 {native_f16}, u64 {u64_lanes}): {}",
                        e.emit_to_string(&full)
                    )
                });
            }
        }
    }
    for (file, source, slots) in all_kernels() {
        let full = assemble(source, slots);
        let m = module(&full);
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities())
            .validate(&m)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&full)));
        assert!(
            m.entry_points.iter().any(|e| e.name == "main"),
            "{file}: no main"
        );
    }
}

/// (member name, byte offset) of a WGSL struct, and its size.
fn wgsl_layout(source: &str, slots: &[&str], name: &str) -> (Vec<(String, u32)>, u32) {
    struct_layout(&module(&assemble(source, slots)), name)
}

/// (member names and offsets, size) of struct `name` in a parsed module.
fn struct_layout(m: &naga::Module, name: &str) -> (Vec<(String, u32)>, u32) {
    for (_, ty) in m.types.iter() {
        if ty.name.as_deref() == Some(name) {
            if let naga::TypeInner::Struct { members, span } = &ty.inner {
                let members = members
                    .iter()
                    .map(|mem| (mem.name.clone().unwrap_or_default(), mem.offset))
                    .collect();
                return (members, *span);
            }
        }
    }
    panic!("struct {name} not found");
}

/// Struct `name` of `m` has exactly the Rust mirror's members at its offsets, and its size.
fn assert_mirrors(m: &naga::Module, name: &str, rust: &[(&str, usize)], rust_size: usize) {
    let (members, size) = struct_layout(m, name);
    assert_eq!(size as usize, rust_size, "{name}: size");
    let real = members.iter().filter(|(n, _)| !n.starts_with("_pad"));
    assert_eq!(real.count(), rust.len(), "{name}: member count");
    for (field, offset) in rust {
        let wgsl = members.iter().find(|(n, _)| n == field).expect(field);
        assert_eq!(wgsl.1 as usize, *offset, "{name}: offset of {field}");
    }
}

macro_rules! check_mirror {
    ($file:expr, $ty:ty, [$($field:ident),*]) => {{
        let kernel = all_kernels().find(|k| k.0 == $file).unwrap();
        let (members, size) = wgsl_layout(kernel.1, kernel.2, "StepUniform");
        assert_eq!(size as usize, std::mem::size_of::<$ty>(), "{} size", $file);
        assert!(std::mem::size_of::<$ty>() as u64 <= MAX_UNIFORM_BYTES);
        let rust: Vec<(&str, usize)> = vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*];
        for (name, offset) in rust {
            let wgsl = members.iter().find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{}: WGSL StepUniform lacks `{name}`", $file));
            assert_eq!(wgsl.1 as usize, offset, "{}: offset of {name}", $file);
        }
        let real_members = members.iter().filter(|(n, _)| !n.starts_with("_pad")).count();
        assert_eq!(real_members, [$(stringify!($field)),*].len(), "{}: member count", $file);
        $file
    }};
}

#[test]
fn uniform_structs_match_rust_mirrors() {
    let mut checked: Vec<&str> = Vec::new();
    checked.push(check_mirror!(
        "sgd.wgsl",
        SgdUniform,
        [
            lr,
            grad_sign,
            weight_decay,
            buffer_keep,
            grad_into_buffer,
            momentum
        ]
    ));
    checked.push(check_mirror!(
        "adagrad.wgsl",
        AdagradUniform,
        [grad_sign, weight_decay, clr, eps]
    ));
    checked.push(check_mirror!(
        "rmsprop.wgsl",
        RmspropUniform,
        [
            lr,
            grad_sign,
            weight_decay,
            alpha,
            one_minus_alpha,
            eps,
            momentum
        ]
    ));
    checked.push(check_mirror!(
        "adam.wgsl",
        AdamUniform,
        [
            grad_sign,
            weight_decay,
            decay_factor,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            step_size,
            inv_sqrt_bc2,
            eps
        ]
    ));
    checked.push(check_mirror!(
        "adadelta.wgsl",
        AdadeltaUniform,
        [lr, grad_sign, weight_decay, rho, one_minus_rho, eps]
    ));
    checked.push(check_mirror!(
        "nadam.wgsl",
        NadamUniform,
        [
            grad_sign,
            weight_decay,
            decay_factor,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            inv_sqrt_bc2,
            eps,
            grad_coef,
            avg_coef
        ]
    ));
    checked.push(check_mirror!(
        "adamax.wgsl",
        AdamaxUniform,
        [
            grad_sign,
            weight_decay,
            one_minus_beta1,
            beta2,
            eps,
            step_size
        ]
    ));
    checked.push(check_mirror!(
        "radam.wgsl",
        RadamUniform,
        [
            grad_sign,
            weight_decay,
            decay_factor,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            eps,
            rectified,
            plain_step_size,
            adaptive_step_size
        ]
    ));
    checked.push(check_mirror!(
        "lamb.wgsl",
        LambUniform,
        [
            grad_sign,
            decay,
            flags,
            beta1,
            beta3,
            beta2,
            one_minus_beta2,
            eps,
            step_size,
            trust,
            clamp,
            max_grad_norm
        ]
    ));
    checked.push(check_mirror!(
        "muon.wgsl",
        MuonUniform,
        [
            lr,
            decay,
            momentum,
            one_minus_momentum,
            nesterov,
            adjust,
            adjusted_lr,
            pad
        ]
    ));
    checked.push(check_mirror!(
        "adafactor.wgsl",
        AdafactorUniform,
        [grad_sign, decay, weight, eps1, eps1_sq, coef, rho, eps2, d]
    ));
    checked.push(check_mirror!(
        "lion.wgsl",
        LionUniform,
        [
            lr,
            decay_factor,
            beta1,
            one_minus_beta1,
            beta2,
            one_minus_beta2
        ]
    ));
    checked.push(check_mirror!(
        "schedule_free.wgsl",
        ScheduleFreeUniform,
        [
            pass_kind,
            first_step,
            lr,
            y_step,
            ckp1,
            weight_decay,
            beta2,
            one_minus_beta2,
            inv_bc2,
            eps,
            switch_weight
        ]
    ));
    // Every registered algorithm's uniform has a mirror check here.
    for (file, _, _) in all_kernels() {
        assert!(
            checked.contains(&file),
            "{file}: no uniform mirror check in tests/shaders.rs"
        );
    }
}

/// The gradient control block (declared once, in grad_control.wgsl) as each of its users
/// sees it after assembly: a kernel (common.wgsl), norm.wgsl and device_step.wgsl; all match
/// the Rust mirror.
#[test]
fn grad_control_matches_its_mirror_in_every_shader() {
    use fused_optim::gpu::gradients::GradControl;
    let rust = [
        ("inv_scale", std::mem::offset_of!(GradControl, inv_scale)),
        ("clip_value", std::mem::offset_of!(GradControl, clip_value)),
        ("coef", std::mem::offset_of!(GradControl, coef)),
        ("nonfinite", std::mem::offset_of!(GradControl, nonfinite)),
        ("norm", std::mem::offset_of!(GradControl, norm)),
        ("max_norm", std::mem::offset_of!(GradControl, max_norm)),
        (
            "skip_nonfinite",
            std::mem::offset_of!(GradControl, skip_nonfinite),
        ),
    ];
    let norm_module = module(&with_lanes(include_str!("../shaders/norm.wgsl"), false));
    let sources = [
        module(&{
            let k = all_kernels().next().unwrap();
            assemble(k.1, k.2)
        }),
        norm_module,
        module(&with_grad_control(include_str!(
            "../shaders/device_step.wgsl"
        ))),
    ];
    for m in &sources {
        assert_mirrors(m, "GradControl", &rust, std::mem::size_of::<GradControl>());
    }
}

/// The device step counter block matches its Rust mirror.
#[test]
fn device_step_block_matches_its_mirror() {
    use fused_optim::gpu::device_step::DeviceStepBlock as B;
    let rust = [
        ("calls", std::mem::offset_of!(B, calls)),
        ("steps", std::mem::offset_of!(B, steps)),
        ("scaler_on", std::mem::offset_of!(B, scaler_on)),
        ("growth_tracker", std::mem::offset_of!(B, growth_tracker)),
        ("scale", std::mem::offset_of!(B, scale)),
        ("growth_factor", std::mem::offset_of!(B, growth_factor)),
        ("backoff_factor", std::mem::offset_of!(B, backoff_factor)),
        ("growth_interval", std::mem::offset_of!(B, growth_interval)),
    ];
    let m = module(&with_grad_control(include_str!(
        "../shaders/device_step.wgsl"
    )));
    assert_mirrors(&m, "DeviceStep", &rust, std::mem::size_of::<B>());
    assert_eq!(
        fused_optim::gpu::device_step::SCALE_OFFSET as usize,
        std::mem::offset_of!(B, scale)
    );
}

#[test]
fn window_struct_is_16_bytes() {
    let (members, size) = {
        let k = all_kernels().next().unwrap();
        wgsl_layout(k.1, k.2, "Window")
    };
    assert_eq!(size, 16);
    assert_eq!(members[0], ("n".to_string(), 0));
}

/// Every shader bounds-checks: the common entry point returns when the lane index reaches
/// the window's lane count, and every store is masked by `live` (`select(old, new, live)`);
/// the `store_*` helpers (store_param and the generated state accessors `store_<slot>`) store
/// what their callers masked.
#[test]
fn every_kernel_store_is_masked() {
    for (file, source, _) in all_kernels() {
        let mut current_fn = String::new();
        let mut stores = 0;
        for line in source.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("fn ") {
                current_fn = rest.split('(').next().unwrap_or_default().to_string();
            }
            let is_store = t.contains("] = ") || t.starts_with("store_");
            if !is_store || current_fn.starts_with("store_") {
                continue;
            }
            stores += 1;
            assert!(t.contains("select("), "{file}: unmasked store `{t}`");
        }
        assert!(stores >= 1, "{file}: no store found");
    }
}
