//! With no usable backend, context creation is a typed error that says how to get an adapter
//! (its own test binary: it changes the process environment).

#[test]
fn missing_adapter_is_a_typed_error() {
    // No adapter name matches this: the same path as a machine without any driver.
    std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-anywhere");
    let err = fused_optim::GpuContext::new().unwrap_err();
    assert!(
        matches!(err, fused_optim::Error::NoAdapter { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("no-such-adapter"),
        "{msg}"
    );
}
