//! Soak: 10^4 steps of every benchmarked configuration (`roofline::benchmark_suite()`) and of
//! the per-tensor algorithms the suite leaves out (LAMB: its roof has two passes), together
//! every registered algorithm ([`soak_configs`]), on the GPU and on the fast CPU path against the f64
//! reference, on seeded gradients; the largest drift over all steps and elements is printed
//! and bounded. Two runs of the same inputs are bitwise identical on each path (params and
//! every state tensor). Figures and the argument for each bound: `docs/reliability/soak.md`.

mod common;

use common::*;
use fused_optim::*;

/// Steps per run.
const STEPS: u64 = 10_000;
/// Elements: odd, not a multiple of 4 (a partial last lane), one CPU chunk.
const N: usize = 1031;
/// States are compared (drift) every this many steps, and after the last.
const STATE_EVERY: u64 = 250;
/// f32 unit roundoff.
const U: f64 = 5.96e-8;

/// The drift bound of a run of `k` steps, relative to max(|ref|, peak, 1e-2) as
/// `common::check_params` scales it (see `docs/reliability/soak.md`).
///
/// Contractions (every algorithm but Lion): each step adds at most `OPS` rounding errors of
/// relative size `u` to values no larger than the running peak, and the update is
/// non-expansive in the old error, so the error is at most linear in k: OPS * u * k. OPS = 16
/// covers the longest chain (NAdam, RAdam: 12 rounded operations per element, WGSL `/` and
/// `sqrt` a few ulp more). At k = 10^4 that is 9.5e-3, 10x tighter than the suite's
/// `RTOL_PER_STEP * k` (0.1).
fn linear_bound(k: u64) -> f64 {
    const OPS: f64 = 16.0;
    OPS * U * k as f64
}

/// Lion's update is `lr * sign(c)` (plus decay): a rounding error in `c` flips the sign
/// where `c` is within rounding of 0, and each flip moves that element by 2 lr for good (the
/// params do not feed back into `c`, so nothing pulls them together again): not a
/// contraction of the error. Its drift is bounded in step-size units instead: with `F_i(k)`
/// the steps up to k at which element i moved the other way (or not at all) on one side,
/// `|err_i(k)| <= LION_LR_PER_FLIP * lr * F_i(k) + linear_bound(k) * scale_i`, checked at
/// every step and element; and flips must stay rare (`LION_MAX_FLIP_RATE`).
const LION_LR_PER_FLIP: f64 = 2.5;
/// Flipping element-steps over all element-steps: sign(c) differs only where |c| is within
/// rounding of 0. A wrong beta or a missing term flips about half of them.
const LION_MAX_FLIP_RATE: f64 = 1e-2;

/// What one run against the reference measured.
#[derive(Clone, Copy, Debug, Default)]
struct Drift {
    /// max over steps and elements of |got - ref| / max(|ref|, peak, 1e-2).
    params: f64,
    /// The step of that maximum.
    at: u64,
    /// max over the state checkpoints of |got - ref| / max(|ref|, peak, 1e-3 max|ref|).
    states: f64,
    /// max over steps and elements of |got - ref| / lr (step-size units).
    lr_units: f64,
    /// Element-steps whose move went the other way (or only one side moved by >= lr/2).
    flips: u64,
    /// The most flips of one element.
    max_flips: u64,
    /// Lion: the bound in step-size units failed at (step, element).
    lion_violation: Option<(u64, usize)>,
}

/// The direction of a move of `delta`: +-1 for a step of at least lr/2, else 0.
fn direction(delta: f64, lr: f64) -> i8 {
    if delta >= 0.5 * lr {
        1
    } else if delta <= -0.5 * lr {
        -1
    } else {
        0
    }
}

/// The drift of `got` against `want`, scaled as `common::check_params` does.
fn param_drift(got: &[f32], want: &[f64], peak: &[f64]) -> (f64, f64) {
    let mut rel = 0.0f64;
    let mut abs = 0.0f64;
    for i in 0..got.len() {
        let err = (f64::from(got[i]) - want[i]).abs();
        assert!(
            err.is_finite(),
            "params[{i}]: got {} want {}",
            got[i],
            want[i]
        );
        rel = rel.max(err / want[i].abs().max(peak[i]).max(1e-2));
        abs = abs.max(err);
    }
    (rel, abs)
}

/// The drift of a state tensor, scaled as `common::check_state` does.
fn state_drift(name: &str, got: &[f32], want: &[f64], peak: &[f64]) -> f64 {
    let max = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let mut rel = 0.0f64;
    for i in 0..got.len() {
        let err = (f64::from(got[i]) - want[i]).abs();
        assert!(
            err.is_finite(),
            "{name}[{i}]: got {} want {}",
            got[i],
            want[i]
        );
        if err != 0.0 {
            rel = rel.max(err / want[i].abs().max(peak[i]).max(1e-3 * max));
        }
    }
    rel
}

/// Params and every state tensor of a finished run, as bits.
type Bits = (Vec<u32>, Vec<Vec<u32>>);

fn bits(p: &[f32]) -> Vec<u32> {
    p.iter().map(|x| x.to_bits()).collect()
}

/// One path (GPU or fast CPU) of one configuration.
trait Path {
    fn step(&mut self, g: &[f32]);
    fn params(&mut self) -> Vec<f32>;
    fn state(&mut self, name: &str) -> Vec<f32>;
}

struct Gpu {
    flat: FlatParams,
    opt: GpuOptimizer,
}

impl Path for Gpu {
    fn step(&mut self, g: &[f32]) {
        self.flat.write_grads(g).unwrap();
        self.opt.step().unwrap();
    }
    fn params(&mut self) -> Vec<f32> {
        self.flat.read_params().unwrap()
    }
    fn state(&mut self, name: &str) -> Vec<f32> {
        self.opt.read_state_f32(name).unwrap()
    }
}

struct Cpu {
    p: Vec<f32>,
    opt: CpuOptimizer,
}

impl Path for Cpu {
    fn step(&mut self, g: &[f32]) {
        self.opt.step(&mut self.p, g).unwrap();
    }
    fn params(&mut self) -> Vec<f32> {
        self.p.clone()
    }
    fn state(&mut self, name: &str) -> Vec<f32> {
        self.opt.state(name).unwrap().to_vec()
    }
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0x5EED_u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    })
}

/// `STEPS` steps of `path` against the reference: the drift, and the final bits.
fn soak_against_reference(
    name: &str,
    config: OptimizerConfig,
    mut path: impl Path,
    p0: &[f32],
) -> (Drift, Bits) {
    let mut rng = Rng::new(seed_of(name) ^ 1);
    let mut run = ReferenceRun::new(config, p0);
    let lr = config.lr();
    let mut d = Drift::default();
    let mut flips = vec![0u64; N];
    let mut prev_got = p0.to_vec();
    let mut prev_ref = run.p.clone();
    for k in 1..=STEPS {
        let g = grads(&mut rng, N);
        path.step(&g);
        run.step(&g);
        let got = path.params();
        for i in 0..N {
            let dg = direction(f64::from(got[i]) - f64::from(prev_got[i]), lr);
            let dr = direction(run.p[i] - prev_ref[i], lr);
            if dg != dr {
                flips[i] += 1;
                d.flips += 1;
            }
            let scale = run.p[i].abs().max(run.peak[i]).max(1e-2);
            let err = (f64::from(got[i]) - run.p[i]).abs();
            let bound = LION_LR_PER_FLIP * lr * flips[i] as f64 + linear_bound(k) * scale;
            if err > bound && d.lion_violation.is_none() {
                d.lion_violation = Some((k, i));
            }
        }
        prev_got.clone_from(&got);
        prev_ref.clone_from(&run.p);
        let (rel, abs) = param_drift(&got, &run.p, &run.peak);
        if rel > d.params {
            d.params = rel;
            d.at = k;
        }
        d.lr_units = d.lr_units.max(abs / lr);
        if k % STATE_EVERY == 0 {
            for (s, peak) in run.reference.state_names().iter().zip(&run.state_peaks.0) {
                let want = run.reference.state(s).unwrap();
                d.states = d.states.max(state_drift(s, &path.state(s), want, peak));
            }
        }
    }
    d.max_flips = flips.iter().copied().max().unwrap_or(0);
    let names = run.reference.state_names();
    let final_bits = (
        bits(&path.params()),
        names.iter().map(|s| bits(&path.state(s))).collect(),
    );
    (d, final_bits)
}

/// The same `STEPS` steps, no reference, no reads until the end: the final bits.
fn soak_alone(name: &str, config: OptimizerConfig, mut path: impl Path) -> Bits {
    let mut rng = Rng::new(seed_of(name) ^ 1);
    for _ in 0..STEPS {
        let g = grads(&mut rng, N);
        path.step(&g);
    }
    let names = config.state_names();
    (
        bits(&path.params()),
        names.iter().map(|s| bits(&path.state(s))).collect(),
    )
}

fn p0_of(name: &str) -> Vec<f32> {
    params0(&mut Rng::new(seed_of(name)), N)
}

/// Checks the measured drift of `name` against its bound; returns the table row.
fn judge(path: &str, name: &str, config: OptimizerConfig, d: Drift) -> String {
    let flips = if matches!(config, OptimizerConfig::Lion(_)) {
        format!(
            "{} ({:.1e}), max {} per element",
            d.flips,
            d.flips as f64 / (STEPS as f64 * N as f64),
            d.max_flips
        )
    } else {
        "-".to_string()
    };
    let row = format!(
        "| {path} | {name} | {:.3e} (step {}) | {:.3e} | {:.3} | {flips} |",
        d.params, d.at, d.states, d.lr_units
    );
    eprintln!("SOAK {row}");
    if matches!(config, OptimizerConfig::Lion(_)) {
        assert_eq!(
            d.lion_violation, None,
            "{path} {name}: drift past {LION_LR_PER_FLIP} lr per flip (step, element)"
        );
        let rate = d.flips as f64 / (STEPS as f64 * N as f64);
        assert!(
            rate <= LION_MAX_FLIP_RATE,
            "{path} {name}: flip rate {rate:.2e}"
        );
        assert!(
            d.states <= linear_bound(STEPS),
            "{path} {name}: state drift {:.3e}",
            d.states
        );
    } else {
        let bound = linear_bound(STEPS);
        assert!(
            d.params <= bound,
            "{path} {name}: params drift {:.3e} > {bound:.3e}",
            d.params
        );
        assert!(
            d.states <= bound,
            "{path} {name}: state drift {:.3e} > {bound:.3e}",
            d.states
        );
    }
    row
}

fn gpu_path(ctx: &GpuContext, config: OptimizerConfig, p0: &[f32]) -> Gpu {
    let flat = FlatParams::builder()
        .shaped("t", &one_tensor(config, N), p0)
        .build(ctx)
        .unwrap();
    let opt = GpuOptimizer::new(&flat, config).unwrap();
    Gpu { flat, opt }
}

fn cpu_path(config: OptimizerConfig, p0: &[f32]) -> Cpu {
    Cpu {
        p: p0.to_vec(),
        opt: CpuOptimizer::builder(config, N)
            .shapes(&[one_tensor(config, N)])
            .build()
            .unwrap(),
    }
}

/// What the soak iterates: the benchmark suite, plus LAMB, Muon and Adafactor (default
/// options; one tensor: Muon's a 1 x N matrix; Adafactor has no GPU path, its GPU soak is
/// left out).
fn soak_configs() -> Vec<(&'static str, OptimizerConfig)> {
    let mut v = fused_optim::roofline::benchmark_suite();
    v.push(("lamb", OptimizerConfig::Lamb(LambConfig::default())));
    v.push(("muon", OptimizerConfig::Muon(MuonConfig::default())));
    v.push((
        "adafactor",
        OptimizerConfig::Adafactor(AdafactorConfig::default()),
    ));
    v
}

#[test]
fn soak_gpu_drift_and_bitwise_repeatability() {
    let Some(ctx) = gpu() else { return };
    let mut rows = Vec::new();
    for (name, config) in soak_configs().into_iter().filter(|(_, c)| c.runs_on_gpu()) {
        let p0 = p0_of(name);
        let (d, first) = soak_against_reference(name, config, gpu_path(&ctx, config, &p0), &p0);
        let second = soak_alone(name, config, gpu_path(&ctx, config, &p0));
        assert!(first == second, "gpu {name}: two runs differ");
        rows.push(judge("gpu", name, config, d));
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn soak_cpu_drift_and_bitwise_repeatability() {
    let mut rows = Vec::new();
    for (name, config) in soak_configs() {
        let p0 = p0_of(name);
        let (d, first) = soak_against_reference(name, config, cpu_path(config, &p0), &p0);
        let second = soak_alone(name, config, cpu_path(config, &p0));
        assert!(first == second, "cpu {name}: two runs differ");
        rows.push(judge("cpu", name, config, d));
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn soak_suite_covers_every_algorithm() {
    // soak_configs is the list the soak iterates; it must hold every registered algorithm
    // (`defaults()` has one configuration per registry line).
    let suite = soak_configs();
    for d in OptimizerConfig::defaults() {
        assert!(
            suite
                .iter()
                .any(|(_, c)| std::mem::discriminant(c) == std::mem::discriminant(&d)),
            "no soak configuration for {d:?}"
        );
    }
}
