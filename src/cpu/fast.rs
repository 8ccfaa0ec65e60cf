//! The fast CPU path: the same configs, host scalars and order of operations as the WGSL
//! kernels, over `&mut [f32]`, split across threads (rayon) in contiguous chunks whose inner
//! loops the compiler vectorises.

use ndarray::{ArrayBase, Data, DataMut, Dimension};
use rayon::prelude::*;

use super::staggered::StaggeredVec;
use crate::error::{Error, Result};
use crate::gpu::gradients::GradOptions;
use crate::optim::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 15;

/// Multi-threaded f32 optimizer over host slices. Same API shape as
/// [`GpuOptimizer`](crate::GpuOptimizer); state is kept inside.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: OptimizerConfig,
    host: HostState,
    n: usize,
    names: Vec<&'static str>,
    states: Vec<StaggeredVec>,
    grad_options: GradOptions,
    scratch: Vec<f32>,
    last_grad_norm: Option<f64>,
    last_skipped: bool,
}

impl CpuOptimizer {
    /// A fresh optimizer over `n` parameters.
    pub fn new(config: impl Into<OptimizerConfig>, n: usize) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if n == 0 {
            return Err(Error::Empty {
                what: "parameter set",
            });
        }
        let names = config.state_names();
        // Slots 1, 2, 3: params and grads usually sit at slot 0 (see `StaggeredVec`).
        let states = names
            .iter()
            .enumerate()
            .map(|(k, name)| StaggeredVec::filled(n, config.initial_state_value(name), k + 1))
            .collect();
        Ok(Self {
            host: HostState::new(config.lr()),
            config,
            n,
            names,
            states,
            grad_options: GradOptions::default(),
            scratch: Vec::new(),
            last_grad_norm: None,
            last_skipped: false,
        })
    }

    /// One step over `params` with `grads` (both of the optimizer's length).
    ///
    /// Any slices work. For large models allocate them as
    /// [`StaggeredVec`]`::filled(n, x, 0)` (params) and `(n, x, 4)` (grads), the layout of the
    /// optimizer's own state: huge pages and staggered start addresses made Adam's step at
    /// 2^24 about 25% faster here (`BENCHMARKS.md`).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        for (what, len) in [("params", params.len()), ("grads", grads.len())] {
            if len != self.n {
                return Err(Error::LengthMismatch {
                    what,
                    expected: self.n,
                    got: len,
                });
            }
        }
        self.last_skipped = false;
        if self.grad_options.skip_nonfinite && grads.par_iter().any(|g| !g.is_finite()) {
            // Mixed precision: skip the whole step; nothing changes.
            self.last_skipped = true;
            return Ok(());
        }
        let grads = if self.grad_options == GradOptions::default() {
            grads
        } else {
            self.last_grad_norm = preprocess(&self.grad_options, grads, &mut self.scratch);
            &self.scratch[..]
        };
        let hyper = self.config.begin_step(&mut self.host);
        par_apply(
            params,
            grads,
            &mut self.states,
            Kernel::new(hyper, &self.config),
        );
        self.config.end_step(&mut self.host);
        Ok(())
    }

    /// One step over ndarray views (any shape, standard layout).
    pub fn step_array<S1, S2, D>(
        &mut self,
        params: &mut ArrayBase<S1, D>,
        grads: &ArrayBase<S2, D>,
    ) -> Result<()>
    where
        S1: DataMut<Elem = f32>,
        S2: Data<Elem = f32>,
        D: Dimension,
    {
        let g = grads.as_slice().ok_or(Error::Empty {
            what: "contiguous grads view (the array is not in standard layout)",
        })?;
        let p = params.as_slice_mut().ok_or(Error::Empty {
            what: "contiguous params view (the array is not in standard layout)",
        })?;
        self.step(p, g)
    }

    /// Gradient pre-processing (unscale, clip by value, clip by global norm), as on the GPU.
    pub fn set_grad_options(&mut self, options: GradOptions) -> Result<()> {
        options.validate()?;
        self.grad_options = options;
        Ok(())
    }

    /// The global norm of the last step's gradients (with norm clipping on).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// Whether the last step was skipped for non-finite gradients
    /// (`GradOptions::skip_nonfinite`).
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        validate_lr(self.config.name(), lr)?;
        self.host.lr = lr;
        Ok(())
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.host.lr
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.host.step
    }

    /// Host-side scalar state.
    pub fn host_state(&self) -> HostState {
        self.host
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Names of the state tensors.
    pub fn state_names(&self) -> &[&'static str] {
        &self.names
    }

    /// One state tensor.
    pub fn state(&self, name: &str) -> Result<&[f32]> {
        Ok(&self.states[self.config.state_index(name)?])
    }

    /// Overwrite one state tensor; on error nothing changes.
    pub fn load_state(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let k = self.config.state_index(name)?;
        if values.len() != self.n {
            return Err(Error::LengthMismatch {
                what: "state",
                expected: self.n,
                got: values.len(),
            });
        }
        self.states[k].copy_from_slice(values);
        if name == "momentum_buffer" {
            self.host.momentum_buffer_ready = true;
        }
        Ok(())
    }
}

impl CpuOptimizer {
    /// Save the optimizer state as a safetensors checkpoint, atomically.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let tensors = self
            .names
            .iter()
            .zip(&self.states)
            .map(|(name, s)| (name.to_string(), s.to_vec()))
            .collect();
        crate::checkpoint::save(
            path.as_ref(),
            &crate::checkpoint::OptimizerState {
                config: self.config,
                host: self.host,
                n: self.n,
                tensors,
                groups: Vec::new(),
            },
        )
    }

    /// Load a checkpoint; validated completely first, so on any error nothing changes.
    pub fn load_checkpoint(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let state = crate::checkpoint::load(path)?;
        crate::checkpoint::check_fits(path, &state, &self.config, self.n)?;
        if !state.groups.is_empty() {
            return Err(Error::Checkpoint {
                file: path.display().to_string(),
                reason: "it holds parameter groups, which CpuOptimizer does not have".into(),
            });
        }
        for ((_, values), s) in state.tensors.iter().zip(self.states.iter_mut()) {
            s.copy_from_slice(values);
        }
        self.config = state.config;
        self.host = state.host;
        Ok(())
    }
}

/// `out = clamp(g * scale, +-clip) * coef` in parallel; returns the norm when norm clipping
/// is on. The norm sums fixed chunks in a fixed order (deterministic).
fn preprocess(o: &GradOptions, grads: &[f32], out: &mut Vec<f32>) -> Option<f64> {
    let control = o.control();
    let (scale, clip) = (control.inv_scale, control.clip_value);
    out.resize(grads.len(), 0.0);
    out.par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .for_each(|(o, g)| {
            for (o, g) in o.iter_mut().zip(g) {
                *o = (g * scale).clamp(-clip, clip);
            }
        });
    let max_norm = o.max_norm?;
    let partials: Vec<f64> = out
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .collect();
    let norm = partials.iter().sum::<f64>().sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
    out.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
    Some(norm)
}

/// Runs `f` over matching chunks of params, grads and every state, in parallel.
/// One optimizer's per-chunk loop with its step scalars and structural flags.
#[derive(Clone, Copy)]
enum Kernel {
    Sgd(SgdHyper, bool, bool),
    Adagrad(AdagradHyper),
    Rmsprop(RmspropHyper, bool, bool),
    Adam(AdamHyper, bool),
    Adadelta(AdadeltaHyper),
    Nadam(NadamHyper),
    Adamax(AdamaxHyper),
    Radam(RadamHyper),
    /// The CPU roof (`roofline::cpu_roof`): the access pattern with trivial arithmetic.
    Roof(f32),
}

impl Kernel {
    fn new(hyper: Hyper, config: &OptimizerConfig) -> Self {
        match (hyper, config) {
            (Hyper::Sgd(h), OptimizerConfig::Sgd(c)) => {
                Kernel::Sgd(h, c.momentum != 0.0, c.nesterov)
            }
            (Hyper::Adagrad(h), _) => Kernel::Adagrad(h),
            (Hyper::Rmsprop(h), OptimizerConfig::Rmsprop(c)) => {
                Kernel::Rmsprop(h, c.centered, c.momentum > 0.0)
            }
            (Hyper::Adam(h), OptimizerConfig::Adam(c)) => Kernel::Adam(h, c.amsgrad),
            (Hyper::Adadelta(h), _) => Kernel::Adadelta(h),
            (Hyper::Nadam(h), _) => Kernel::Nadam(h),
            (Hyper::Adamax(h), _) => Kernel::Adamax(h),
            (Hyper::Radam(h), _) => Kernel::Radam(h),
            _ => unreachable!("begin_step returns the hyper of the config's own kind"),
        }
    }

    /// The loop over one chunk; always inlined, so that it is compiled into both the SSE2
    /// and the AVX2 entry points.
    #[inline(always)]
    fn run(&self, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        // Monomorphise on (weight decay in the gradient, decoupled decay factor).
        macro_rules! shaped {
            ($l2:expr, $decay:expr, $f:ident($($arg:expr),*)) => {
                match ($l2 != 0.0, $decay != 1.0) {
                    (false, false) => kernels::$f::<false, false>($($arg),*),
                    (true, false) => kernels::$f::<true, false>($($arg),*),
                    (false, true) => kernels::$f::<false, true>($($arg),*),
                    (true, true) => kernels::$f::<true, true>($($arg),*),
                }
            };
        }
        match self {
            Kernel::Sgd(h, momentum, nesterov) => {
                shaped!(h.weight_decay, 1.0, sgd(h, *momentum, *nesterov, p, g, s))
            }
            Kernel::Adagrad(h) => shaped!(h.weight_decay, 1.0, adagrad(h, p, g, s)),
            Kernel::Rmsprop(h, centered, momentum) => {
                shaped!(
                    h.weight_decay,
                    1.0,
                    rmsprop(h, *centered, *momentum, p, g, s)
                )
            }
            Kernel::Adam(h, amsgrad) => {
                shaped!(h.weight_decay, h.decay_factor, adam(h, *amsgrad, p, g, s))
            }
            Kernel::Adadelta(h) => shaped!(h.weight_decay, 1.0, adadelta(h, p, g, s)),
            Kernel::Nadam(h) => shaped!(h.weight_decay, h.decay_factor, nadam(h, p, g, s)),
            Kernel::Adamax(h) => shaped!(h.weight_decay, 1.0, adamax(h, p, g, s)),
            Kernel::Radam(h) => shaped!(h.weight_decay, h.decay_factor, radam(h, p, g, s)),
            Kernel::Roof(scale) => kernels::roof(*scale, p, g, s),
        }
    }

    fn run_sse2(&self, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        self.run(p, g, s)
    }
}

/// The CPU roof: `p += scale * (g + sum(states)); state += g` over the same chunks, threads
/// and vector code (AVX2 where available) as the optimizers.
pub(crate) fn roof_step(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], scale: f32) {
    par_apply(p, g, states, Kernel::Roof(scale))
}

fn par_apply(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], k: Kernel) {
    #[cfg(target_arch = "x86_64")]
    if simd::avx2_enabled() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time by `avx2_enabled`).
        return par_chunks(p, g, states, move |p, g, s| unsafe {
            simd::avx2(&k, p, g, s)
        });
    }
    par_chunks(p, g, states, move |p, g, s| k.run_sse2(p, g, s))
}

/// Runtime dispatch of the per-chunk loops to AVX2 code on CPUs that have it (the default
/// x86_64 target only assumes SSE2). The loops are the same source compiled twice; Rust never
/// contracts `a * b + c` into an FMA, so both versions give the same bits.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0 = not checked yet, 1 = off, 2 = on.
    static STATE: AtomicU8 = AtomicU8::new(0);

    /// Whether the AVX2 loops are used: the CPU has AVX2 and FMA, and neither
    /// `FUSED_OPTIM_CPU_SIMD=sse2` nor [`super::set_avx2`] turned them off.
    pub fn avx2_enabled() -> bool {
        match STATE.load(Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => {
                let on = std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::env::var("FUSED_OPTIM_CPU_SIMD").as_deref() != Ok("sse2");
                STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
                on
            }
        }
    }

    pub fn set(on: bool) -> bool {
        let available =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        STATE.store(if on && available { 2 } else { 1 }, Ordering::Relaxed);
        on && available
    }

    /// The kernel's loop compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(k: &super::Kernel, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        k.run(p, g, s)
    }
}

/// Use (`true`) or avoid the AVX2 code of the fast CPU path from now on, process-wide;
/// returns whether AVX2 is in use (false on CPUs without AVX2 + FMA). For comparisons: both
/// versions give the same bits. The environment variable `FUSED_OPTIM_CPU_SIMD=sse2` turns it
/// off from the start.
pub fn set_avx2(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd::set(on)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = on;
        false
    }
}

fn par_chunks<F>(p: &mut [f32], g: &[f32], states: &mut [StaggeredVec], f: F)
where
    F: Fn(&mut [f32], &[f32], &mut [&mut [f32]]) + Sync + Send,
{
    let pg = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
    match states {
        [] => pg.for_each(|(p, g)| f(p, g, &mut [])),
        [a] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .for_each(|((p, g), a)| f(p, g, &mut [a])),
        [a, b] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), a), b)| f(p, g, &mut [a, b])),
        [a, b, c] => pg
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .zip(c.par_chunks_mut(CHUNK))
            .for_each(|((((p, g), a), b), c)| f(p, g, &mut [a, b, c])),
        _ => unreachable!("no optimizer has more than 3 state tensors"),
    }
}

/// Per-chunk loops: the same operations, in the same order, as the WGSL `update` functions,
/// except that terms PyTorch skips are skipped (monomorphised on `L2`: weight decay added to
/// the gradient; `DECAY`: decoupled decay factor): no `+ 0 * p`, no `p * 1`. Where this
/// VM's large L3 holds the data, instructions, not bytes, set the pace.
mod kernels {
    use crate::optim::*;

    /// `sign * g (+ wd * p)`.
    #[inline(always)]
    fn grad_term<const L2: bool>(g: f32, p: f32, sign: f32, wd: f32) -> f32 {
        if L2 {
            g * sign + wd * p
        } else {
            g * sign
        }
    }

    /// `p (* decay_factor)`.
    #[inline(always)]
    fn decay<const DECAY: bool>(p: f32, factor: f32) -> f32 {
        if DECAY {
            p * factor
        } else {
            p
        }
    }

    #[inline(always)]
    pub fn roof(scale: f32, p: &mut [f32], g: &[f32], s: &mut [&mut [f32]]) {
        let n = p.len();
        let g = &g[..n];
        match s {
            [] => {
                for i in 0..n {
                    p[i] += scale * g[i];
                }
            }
            [a] => {
                let a = &mut a[..n];
                for i in 0..n {
                    p[i] += scale * (g[i] + a[i]);
                    a[i] += g[i];
                }
            }
            [a, b] => {
                let (a, b) = (&mut a[..n], &mut b[..n]);
                for i in 0..n {
                    p[i] += scale * (g[i] + a[i] + b[i]);
                    a[i] += g[i];
                    b[i] += g[i];
                }
            }
            [a, b, c, ..] => {
                let (a, b, c) = (&mut a[..n], &mut b[..n], &mut c[..n]);
                for i in 0..n {
                    p[i] += scale * (g[i] + a[i] + b[i] + c[i]);
                    a[i] += g[i];
                    b[i] += g[i];
                    c[i] += g[i];
                }
            }
        }
    }

    #[inline(always)]
    pub fn sgd<const L2: bool, const DECAY: bool>(
        h: &SgdHyper,
        has_momentum: bool,
        nesterov: bool,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        if !has_momentum {
            for i in 0..n {
                let d = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                p[i] -= h.lr * d;
            }
            return;
        }
        let buf = &mut s[0][..n];
        for i in 0..n {
            let d = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let b = h.buffer_keep * buf[i] + h.grad_into_buffer * d;
            buf[i] = b;
            let d = if nesterov { d + h.momentum * b } else { b };
            p[i] -= h.lr * d;
        }
    }

    #[inline(always)]
    pub fn adagrad<const L2: bool, const DECAY: bool>(
        h: &AdagradHyper,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let (g, sum) = (&g[..n], &mut s[0][..n]);
        for i in 0..n {
            let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let si = sum[i] + gi * gi;
            sum[i] = si;
            p[i] -= h.clr * gi / (si.sqrt() + h.eps);
        }
    }

    #[inline(always)]
    pub fn rmsprop<const L2: bool, const DECAY: bool>(
        h: &RmspropHyper,
        centered: bool,
        has_momentum: bool,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        match (s, centered, has_momentum) {
            ([v], false, false) => {
                let v = &mut v[..n];
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                    v[i] = vi;
                    p[i] -= h.lr * gi / (vi.sqrt() + h.eps);
                }
            }
            ([v, ga], true, false) => {
                let (v, ga) = (&mut v[..n], &mut ga[..n]);
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                    let a = ga[i] + h.one_minus_alpha * (gi - ga[i]);
                    v[i] = vi;
                    ga[i] = a;
                    p[i] -= h.lr * gi / ((vi - a * a).sqrt() + h.eps);
                }
            }
            ([v, buf], false, true) => {
                let (v, buf) = (&mut v[..n], &mut buf[..n]);
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                    v[i] = vi;
                    let b = h.momentum * buf[i] + gi / (vi.sqrt() + h.eps);
                    buf[i] = b;
                    p[i] -= h.lr * b;
                }
            }
            ([v, buf, ga], true, true) => {
                let (v, buf, ga) = (&mut v[..n], &mut buf[..n], &mut ga[..n]);
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let vi = h.alpha * v[i] + h.one_minus_alpha * gi * gi;
                    let a = ga[i] + h.one_minus_alpha * (gi - ga[i]);
                    v[i] = vi;
                    ga[i] = a;
                    let b = h.momentum * buf[i] + gi / ((vi - a * a).sqrt() + h.eps);
                    buf[i] = b;
                    p[i] -= h.lr * b;
                }
            }
            _ => unreachable!("state count matches the RMSprop options"),
        }
    }

    #[inline(always)]
    pub fn adam<const L2: bool, const DECAY: bool>(
        h: &AdamHyper,
        amsgrad: bool,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        match s {
            [m, v] if !amsgrad => {
                let (m, v) = (&mut m[..n], &mut v[..n]);
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
                    let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() * h.inv_sqrt_bc2 + h.eps;
                    p[i] = decay::<DECAY>(p[i], h.decay_factor) - h.step_size * mi / denom;
                }
            }
            [m, v, vmax] => {
                let (m, v, vmax) = (&mut m[..n], &mut v[..n], &mut vmax[..n]);
                for i in 0..n {
                    let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
                    let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
                    let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    let vv = vmax[i].max(vi);
                    vmax[i] = vv;
                    let denom = vv.sqrt() * h.inv_sqrt_bc2 + h.eps;
                    p[i] = decay::<DECAY>(p[i], h.decay_factor) - h.step_size * mi / denom;
                }
            }
            _ => unreachable!("state count matches the Adam options"),
        }
    }

    #[inline(always)]
    pub fn adadelta<const L2: bool, const DECAY: bool>(
        h: &AdadeltaHyper,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        let [v, u] = s else {
            unreachable!("Adadelta has two states")
        };
        let (v, u) = (&mut v[..n], &mut u[..n]);
        for i in 0..n {
            let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let vi = h.rho * v[i] + h.one_minus_rho * gi * gi;
            let delta = ((u[i] + h.eps) / (vi + h.eps)).sqrt() * gi;
            u[i] = h.rho * u[i] + h.one_minus_rho * delta * delta;
            v[i] = vi;
            p[i] -= h.lr * delta;
        }
    }

    #[inline(always)]
    pub fn nadam<const L2: bool, const DECAY: bool>(
        h: &NadamHyper,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        let [m, v] = s else {
            unreachable!("NAdam has two states")
        };
        let (m, v) = (&mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
            let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let inv = 1.0 / (vi.sqrt() * h.inv_sqrt_bc2 + h.eps);
            let mut pi = decay::<DECAY>(p[i], h.decay_factor);
            pi -= h.grad_coef * gi * inv;
            pi -= h.avg_coef * mi * inv;
            p[i] = pi;
        }
    }

    #[inline(always)]
    pub fn adamax<const L2: bool, const DECAY: bool>(
        h: &AdamaxHyper,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        let [m, u] = s else {
            unreachable!("Adamax has two states")
        };
        let (m, u) = (&mut m[..n], &mut u[..n]);
        for i in 0..n {
            let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
            let ui = (h.beta2 * u[i]).max(gi.abs() + h.eps);
            m[i] = mi;
            u[i] = ui;
            p[i] -= h.step_size * mi / ui;
        }
    }

    #[inline(always)]
    pub fn radam<const L2: bool, const DECAY: bool>(
        h: &RadamHyper,
        p: &mut [f32],
        g: &[f32],
        s: &mut [&mut [f32]],
    ) {
        let n = p.len();
        let g = &g[..n];
        let [m, v] = s else {
            unreachable!("RAdam has two states")
        };
        let (m, v) = (&mut m[..n], &mut v[..n]);
        let rectified = h.rectified != 0;
        for i in 0..n {
            let gi = grad_term::<L2>(g[i], p[i], h.grad_sign, h.weight_decay);
            let mi = m[i] + h.one_minus_beta1 * (gi - m[i]);
            let vi = h.beta2 * v[i] + h.one_minus_beta2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let pi = decay::<DECAY>(p[i], h.decay_factor);
            p[i] = if rectified {
                pi - h.adaptive_step_size * mi / (vi.sqrt() + h.eps)
            } else {
                pi - h.plain_step_size * mi
            };
        }
    }
}
