//! `GpuContext`: getting a device, kept apart from doing work on one.

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// Launch shape of every optimizer kernel. Both values are WGSL pipeline-overridable
/// constants, so changing them rebuilds nothing at step time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTuning {
    /// Invocations per workgroup (`@workgroup_size`).
    pub workgroup_size: u32,
    /// `vec4<f32>` lanes each invocation updates; consecutive invocations touch consecutive
    /// lanes, so every memory access of a workgroup is contiguous.
    pub vec4_per_invocation: u32,
}

impl Default for KernelTuning {
    fn default() -> Self {
        Self {
            // Measured on lavapipe (BENCHMARKS.md): 256 x 2 was the fastest Adam at 2^22 and
            // 2^24 among 64/256/512/1024 x 1/2/4/8.
            workgroup_size: 256,
            vec4_per_invocation: 2,
        }
    }
}

impl KernelTuning {
    /// Elements updated by one workgroup.
    pub fn elements_per_workgroup(&self) -> u64 {
        u64::from(self.workgroup_size) * u64::from(self.vec4_per_invocation) * 4
    }
}

/// Options for a [`GpuContext`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextOptions {
    /// Cap on the bytes of one storage binding, below the device's own
    /// `max_storage_buffer_binding_size`. `None` uses the device limit. Smaller windows are
    /// useful to exercise the windowed dispatch on small buffers.
    pub max_binding_bytes: Option<u64>,
    /// Kernel launch shape.
    pub tuning: KernelTuning,
    /// Never use the device's `shader-f16` feature: f16 params are then rounded with
    /// `pack2x16float` instead of native f16 conversions (the results are the same; this
    /// exists to compare the two paths on one device).
    pub packed_f16_only: bool,
    /// How kernels move their f32 lanes (see [`LaneTransport`]).
    pub lane_transport: LaneTransport,
}

/// How the kernels load and store their f32 data, 4 elements (a lane) at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LaneTransport {
    /// Two u64 on CPU implementations of WebGPU that have `shader-int64` (lavapipe: half
    /// the memory operations, which are its cost), one `vec4<f32>` elsewhere.
    #[default]
    Auto,
    /// Always one `vec4<f32>` (a 16-byte access: what GPUs do best).
    F32x4,
    /// Two u64 where the device has `shader-int64` (else `vec4<f32>`).
    U64x2,
}

/// A wgpu device and queue plus what fused-optim needs to know about them.
///
/// Cheap to clone: `wgpu::Device` and `wgpu::Queue` are reference-counted handles, and the
/// clones share one device-lost flag.
///
/// **Threads:** `Send + Sync` (compile-tested in `tests/concurrent.rs`). Several threads may
/// build and step optimizers on one context at the same time; wgpu serialises submissions,
/// and each optimizer's results are those of stepping it alone (the buffers are disjoint).
///
/// **Device loss:** the context registers a device-lost callback (replacing one set before
/// [`GpuContext::from_device`]) and checks for loss before every operation of the types
/// built on it, which then return [`Error::DeviceLost`] instead of working on a dead device
/// (whose errors wgpu drops silently). A loss is seen once wgpu reports it: at the next poll
/// after the device's queue is empty (`Device::destroy` is reported at once on an idle
/// device).
#[derive(Clone, Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: Option<wgpu::AdapterInfo>,
    options: ContextOptions,
    /// Set (once) by the device-lost callback: the reason.
    lost: Arc<OnceLock<String>>,
    /// On the web: the first error WebGPU reported after the fact (a popped error scope or
    /// an uncaptured error), handed to the next operation that checks the device.
    #[cfg(target_arch = "wasm32")]
    deferred: Deferred,
}

/// An error WebGPU reported asynchronously (web only): what was being done and the message.
#[cfg(target_arch = "wasm32")]
type Deferred = Arc<std::sync::Mutex<Option<(&'static str, String)>>>;

/// Record `error` in `slot` unless an earlier one is waiting there.
#[cfg(target_arch = "wasm32")]
fn defer(slot: &Deferred, during: &'static str, error: String) {
    if let Ok(mut s) = slot.lock() {
        s.get_or_insert((during, error));
    }
}

/// Register the callback that records a loss of `device` in the returned flag.
fn watch_loss(device: &wgpu::Device) -> Arc<OnceLock<String>> {
    let lost = Arc::new(OnceLock::new());
    let flag = Arc::clone(&lost);
    device.set_device_lost_callback(move |reason, message| {
        let text = if message.is_empty() {
            format!("{reason:?}")
        } else {
            format!("{reason:?}: {message}")
        };
        let _ = flag.set(text);
    });
    lost
}

impl GpuContext {
    /// Blocking constructor: picks an adapter (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
    /// `WGPU_POWER_PREF`) and requests a device with the adapter's own limits.
    ///
    /// Built on [`GpuContext::new_async`]; on the web (wasm32), where nothing can block, it
    /// returns [`Error::WouldBlock`]: await `new_async` there.
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default())
    }

    /// Blocking constructor with options ([`GpuContext::new_async`], waited for; on the web
    /// [`Error::WouldBlock`]).
    pub fn with_options(options: ContextOptions) -> Result<Self> {
        super::wait::block_on("GpuContext::new", Self::new_async(options))?
    }

    /// Async constructor: the one to use on the web (wasm32, wgpu's WebGPU backend, where
    /// the browser's `navigator.gpu` gives the adapter), and what the blocking constructors
    /// wait for natively.
    pub async fn new_async(options: ContextOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = select_adapter(&instance).await?;
        Self::from_adapter(&adapter, options).await
    }

    /// Request a device on an adapter the caller chose, with the adapter's own limits (so a
    /// kernel variant gets every binding the adapter has: WebGPU's defaults would allow only
    /// 8 storage buffers per stage) and those of the features fused-optim uses that it has
    /// (timestamp queries, `shader-f16`, `shader-int64`).
    pub async fn from_adapter(adapter: &wgpu::Adapter, options: ContextOptions) -> Result<Self> {
        let info = adapter.get_info();
        // Ask for exactly what the adapter has: downlevel defaults would cap storage bindings
        // and workgroup counts far below what real devices (and lavapipe) offer.
        let limits = adapter.limits();
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SHADER_INT64;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fused-optim"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let mut ctx = Self::from_device(device, queue).with_context_options(options);
        ctx.adapter_info = Some(info);
        Ok(ctx)
    }

    /// Wrap a device and queue the caller already has (e.g. from its own renderer or
    /// training stack). The limits used are the device's own.
    ///
    /// Registers a device-lost callback on `device` (wgpu keeps one per device, so this
    /// replaces the caller's; wrap a device once and clone the context).
    ///
    /// On the web it also sets the device's uncaptured-error handler: WebGPU reports errors
    /// after the fact, and the first one is returned by the next operation on the context.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let lost = watch_loss(&device);
        #[cfg(target_arch = "wasm32")]
        let deferred = {
            let slot: Deferred = Arc::default();
            let handler = Arc::clone(&slot);
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                defer(
                    &handler,
                    "an earlier operation (uncaptured error)",
                    e.to_string(),
                )
            }));
            slot
        };
        Self {
            device,
            queue,
            adapter_info: None,
            options: ContextOptions::default(),
            lost,
            #[cfg(target_arch = "wasm32")]
            deferred,
        }
    }

    /// Whether the device has been reported lost (polls the device without waiting, so a
    /// `Device::destroy` on an idle device is seen at once).
    pub fn is_lost(&self) -> bool {
        self.check_alive("is_lost").is_err()
    }

    /// [`Error::DeviceLost`] if the device has been reported lost, after a non-blocking poll
    /// (which is when wgpu reports a loss).
    pub(crate) fn check_alive(&self, during: &'static str) -> Result<()> {
        self.lost_error(during)?;
        // A poll error here is not a loss; the operation itself will report it.
        let _ = self.device.poll(wgpu::PollType::Poll);
        self.lost_error(during)
    }

    fn lost_error(&self, during: &'static str) -> Result<()> {
        if let Some(reason) = self.lost.get() {
            return Err(Error::DeviceLost {
                during,
                reason: reason.clone(),
            });
        }
        // On the web, an error WebGPU reported since: returned once, by this operation.
        #[cfg(target_arch = "wasm32")]
        if let Some((during, message)) = self.deferred.lock().ok().and_then(|mut s| s.take()) {
            return Err(Error::Wgpu { during, message });
        }
        Ok(())
    }

    /// Pop one error scope: natively, wait for it and turn a caught error into
    /// [`Error::Wgpu`]; on the web (which cannot wait) the browser's answer arrives later and
    /// the next operation on this context reports it.
    pub(crate) fn pop_scope(
        &self,
        scope: wgpu::ErrorScopeGuard,
        during: &'static str,
    ) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(Error::Wgpu {
                during,
                message: e.to_string(),
            }),
            None => Ok(()),
        }
        #[cfg(target_arch = "wasm32")]
        {
            let slot = Arc::clone(&self.deferred);
            let popped = scope.pop();
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = popped.await {
                    defer(&slot, during, e.to_string());
                }
            });
            Ok(())
        }
    }

    /// Run `f` (resource creation) inside validation, out-of-memory and internal error
    /// scopes, so that what the default handler would turn into a panic becomes a typed
    /// error: [`Error::OutOfMemory`], [`Error::Wgpu`], or [`Error::DeviceLost`] (checked
    /// before and after). On an error the resources `f` made are dropped with its result.
    pub(crate) fn scoped<T>(
        &self,
        during: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.check_alive(during)?;
        let scopes = self.scopes();
        let out = f();
        scopes.finish(during)?;
        out
    }

    /// One step's submission: checks the device is alive, records `encode` into a new
    /// encoder labelled `label` inside error scopes, submits it only when `encode`
    /// succeeded, and turns what the scopes caught into a typed error (`during`).
    pub(crate) fn submit_step<T>(
        &self,
        during: &'static str,
        label: &str,
        encode: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<T>,
    ) -> Result<T> {
        self.check_alive(during)?;
        let scopes = self.scopes();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        let encoded = encode(&mut encoder);
        if encoded.is_ok() {
            self.queue.submit([encoder.finish()]);
        }
        scopes.finish(during)?;
        encoded
    }

    /// Push validation, out-of-memory and internal error scopes on this thread; pop them
    /// with [`Scopes::finish`].
    pub(crate) fn scopes(&self) -> Scopes {
        Scopes {
            validation: self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            oom: self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            internal: self.device.push_error_scope(wgpu::ErrorFilter::Internal),
            device: self.device.clone(),
            lost: Arc::clone(&self.lost),
            #[cfg(target_arch = "wasm32")]
            deferred: Arc::clone(&self.deferred),
        }
    }

    /// The same device with other options.
    pub fn with_context_options(mut self, options: ContextOptions) -> Self {
        self.options = options;
        self
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description, when this context chose the adapter itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.adapter_info.as_ref()
    }

    /// True when the adapter is a CPU implementation (lavapipe, llvmpipe, WARP...).
    pub fn is_software(&self) -> bool {
        self.adapter_info
            .as_ref()
            .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
    }

    /// One line naming the adapter, its backend and its kind.
    pub fn describe(&self) -> String {
        match &self.adapter_info {
            Some(i) => format!(
                "{} ({:?}, {:?}{}; driver {} {})",
                i.name,
                i.backend,
                i.device_type,
                if i.device_type == wgpu::DeviceType::Cpu {
                    ": a CPU implementation, not a GPU"
                } else {
                    ""
                },
                i.driver,
                i.driver_info
            ),
            None => "caller-supplied wgpu device".to_string(),
        }
    }

    /// Whether f16 kernels use native f16 (`enable f16;`): the device has `shader-f16` and
    /// [`ContextOptions::packed_f16_only`] is off.
    ///
    /// ```no_run
    /// # fn main() -> fused_optim::Result<()> {
    /// use fused_optim::{AdamConfig, ContextOptions, GpuContext, GpuOptimizer};
    /// use fused_optim::{LowFormat, LowPrecisionParams};
    /// let ctx = GpuContext::new()?;
    /// let lp = LowPrecisionParams::new(&ctx, &[0.5; 4096], LowFormat::F16)?;
    /// let opt = GpuOptimizer::new_low_precision(&lp, AdamConfig::default(), false)?;
    /// assert_eq!(opt.uses_shader_f16(), ctx.uses_shader_f16()); // native f16 where available
    /// // The same device with packed f16 (pack2x16float) instead:
    /// let packed = ctx.clone().with_context_options(ContextOptions {
    ///     packed_f16_only: true,
    ///     ..*ctx.options()
    /// });
    /// assert!(!packed.uses_shader_f16());
    /// # Ok(()) }
    /// ```
    pub fn uses_shader_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16) && !self.options.packed_f16_only
    }

    /// Whether the kernels move their lanes as two u64 (see [`LaneTransport`]).
    pub fn uses_u64_lanes(&self) -> bool {
        let has = self
            .device
            .features()
            .contains(wgpu::Features::SHADER_INT64);
        match self.options.lane_transport {
            LaneTransport::F32x4 => false,
            LaneTransport::U64x2 => has,
            LaneTransport::Auto => {
                has && self
                    .adapter_info
                    .as_ref()
                    .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
            }
        }
    }

    /// The device-dependent part of the kernel variants this context builds (lanes, native
    /// f16); the bindings are filled in per kernel.
    pub(crate) fn kernel_variant(&self, f16_params: bool) -> super::shaders::Variant {
        super::shaders::Variant {
            native_f16: f16_params && self.uses_shader_f16(),
            u64_lanes: self.uses_u64_lanes(),
            ..Default::default()
        }
    }

    /// The options in force.
    pub fn options(&self) -> &ContextOptions {
        &self.options
    }

    /// Largest storage binding used, in bytes (device limit, possibly capped by the options).
    pub fn max_binding_bytes(&self) -> u64 {
        let limit = self.device.limits().max_storage_buffer_binding_size;
        self.options
            .max_binding_bytes
            .map_or(limit, |cap| cap.min(limit))
    }

    /// Wait until all submitted work has finished.
    /// [`Error::DeviceLost`] if the device is (or turns out to be) lost.
    ///
    /// On the web this returns at once (the browser runs the queue by itself, and nothing
    /// can block): await [`GpuContext::wait_async`] there.
    pub fn wait(&self) -> Result<()> {
        self.lost_error("device poll")?;
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.lost_error("device poll")?;
        polled.map(|_| ()).map_err(|e| Error::Wgpu {
            during: "device poll",
            message: e.to_string(),
        })
    }

    /// Wait until all submitted work has finished, without blocking: natively the same as
    /// [`GpuContext::wait`]; on the web it awaits the queue's `onSubmittedWorkDone`.
    pub async fn wait_async(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        {
            self.lost_error("device poll")?;
            let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
            self.queue.on_submitted_work_done(move || {
                sender.send(()).ok();
            });
            receiver.receive().await;
            self.lost_error("device poll")
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()
    }
}

/// Error scopes pushed by [`GpuContext::scopes`] (innermost last).
pub(crate) struct Scopes {
    // Innermost first: fields drop in declaration order, and scopes must be popped in the
    // reverse order of their pushes (the web's wgpu panics otherwise), also when the scopes
    // are dropped unfinished.
    internal: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
    // The web has no blocking poll to make a loss show.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    device: wgpu::Device,
    lost: Arc<OnceLock<String>>,
    #[cfg(target_arch = "wasm32")]
    deferred: Deferred,
}

impl Scopes {
    /// Pop the scopes: [`Error::DeviceLost`] if the device turned out to be lost (a device
    /// destroyed by another thread meanwhile makes later calls fail validation on its
    /// invalid resources), else [`Error::OutOfMemory`] or [`Error::Wgpu`] for what they
    /// caught.
    ///
    /// On the web, which cannot wait, the scopes are popped and the browser's answers are
    /// handed to the next operation on the context ([`GpuContext::pop_scope`]);
    /// [`Scopes::finish_async`] awaits them instead.
    pub(crate) fn finish(self, during: &'static str) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(self.finish_async(during));
        #[cfg(target_arch = "wasm32")]
        {
            let slot = self.deferred;
            for scope in [self.internal, self.oom, self.validation] {
                let popped = scope.pop();
                let slot = Arc::clone(&slot);
                wasm_bindgen_futures::spawn_local(async move {
                    if let Some(e) = popped.await {
                        defer(&slot, during, e.to_string());
                    }
                });
            }
            match self.lost.get() {
                Some(reason) => Err(Error::DeviceLost {
                    during,
                    reason: reason.clone(),
                }),
                None => Ok(()),
            }
        }
    }

    /// [`Scopes::finish`], awaiting the scopes' answers (what the blocking version waits
    /// for natively; on the web the way to get them as this operation's error).
    pub(crate) async fn finish_async(self, during: &'static str) -> Result<()> {
        // All three popped before the first await: a caller that drops this future midway
        // (the web's one-poll `block_on`) leaves no scope behind.
        let (internal, oom, validation) =
            (self.internal.pop(), self.oom.pop(), self.validation.pop());
        let internal = internal.await;
        let oom = oom.await;
        let validation = validation.await;
        let caught = oom.is_some() || validation.is_some() || internal.is_some();
        if caught && self.lost.get().is_none() {
            // Let wgpu report a loss that happened meanwhile: it does once the queue has
            // drained, so wait for that (bounded: this is an error path already).
            #[cfg(not(target_arch = "wasm32"))]
            let _ = self.device.poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(std::time::Duration::from_secs(10)),
            });
        }
        if let Some(reason) = self.lost.get() {
            return Err(Error::DeviceLost {
                during,
                reason: reason.clone(),
            });
        }
        if let Some(e) = oom {
            return Err(Error::OutOfMemory {
                during,
                message: e.to_string(),
            });
        }
        if let Some(e) = validation.or(internal) {
            return Err(Error::Wgpu {
                during,
                message: e.to_string(),
            });
        }
        Ok(())
    }
}

async fn select_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| Error::NoAdapter {
                reason: format!(
                    "WGPU_ADAPTER_NAME={wanted} matches none of the adapters found: {names:?}"
                ),
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter {
            reason: e.to_string(),
        })
}
