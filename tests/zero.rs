//! ZeRO sharding under `mpirun` (feature `mpi`; `harness = false`).
//!
//! Run by `cargo test --features mpi --test zero`, this binary is the orchestrator: it
//! launches itself under `mpirun --allow-run-as-root --oversubscribe -np N` for each
//! scenario below (N = 1, 2, 3, 4), with a wall-clock limit, and checks every rank's
//! report. Under `mpirun` (`FUSED_OPTIM_ZERO_SCENARIO` set) it runs one scenario:
//!
//! * `identical`: every algorithm (the rows of `tests/cases`), both layouts, both stages,
//!   several buckets, CPU shards: the all-gathered parameters and every rank's shard state
//!   are bit-identical to the single-process `CpuOptimizer` stepping the rank-order mean of
//!   the ranks' gradients (the tree written out below per world size, not the library's);
//!   with value and norm clipping (aligned to 2^15: the global norm is the same sum) and a
//!   non-finite gradient on one rank skipping the step everywhere; GPU shards against the
//!   single-process `GpuOptimizer`.
//! * `save` (4 ranks) then `resume` (2 ranks): a checkpoint written at 4 ranks, loaded at 2
//!   (and its merged single-process file loaded by `CpuOptimizer`), gives the identical next
//!   step.
//! * `fail`: a rank whose gradient closure fails (then one that panics) makes itself return
//!   `LocalFailure` and every other `PeerFailed`; nothing changes and training goes on.
//! * `hang`: a rank that does not step makes the others return `CollectiveTimeout` within
//!   the timeout instead of hanging.

#[path = "cases/mod.rs"]
mod cases;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Rng;
use fused_optim::mpi::traits::*;
use fused_optim::zero::*;
use fused_optim::*;

const SCENARIO: &str = "FUSED_OPTIM_ZERO_SCENARIO";
const DIR: &str = "FUSED_OPTIM_ZERO_DIR";

fn main() {
    match std::env::var(SCENARIO) {
        Ok(scenario) => child(&scenario),
        Err(_) => parent(),
    }
}

// ---------------------------------------------------------------- the orchestrator

fn parent() {
    let exe = std::env::current_exe().expect("own path");
    let dir = std::env::temp_dir().join(format!("fused-optim-zero-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runs: &[(&str, usize, bool)] = &[
        // (scenario, ranks, whether the run must exit 0)
        ("identical", 1, true),
        ("identical", 2, true),
        ("identical", 3, true),
        ("identical", 4, true),
        ("save", 4, true),
        ("resume", 2, true),
        ("fail", 2, true),
        ("fail", 4, true),
        ("hang", 2, false),
        ("hang", 3, false),
    ];
    let mut failed = 0;
    for &(scenario, np, must_succeed) in runs {
        let start = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "5", "300", "mpirun"])
            .args([
                "--allow-run-as-root",
                "--oversubscribe",
                "-np",
                &np.to_string(),
            ])
            .arg(&exe)
            .env(SCENARIO, scenario)
            .env(DIR, &dir)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("mpirun (install openmpi-bin)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
        let bad: Vec<&&str> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
        // Every rank reports its "done" line: a rank that died silently fails the run.
        let done = stdout
            .lines()
            .filter(|l| l.starts_with("DONE rank"))
            .count();
        let ok = bad.is_empty()
            && !checks.is_empty()
            && done == np
            && (!must_succeed || out.status.success());
        println!(
            "zero {scenario} -np {np}: {} checks, {} failed, {done}/{np} ranks done, exit {:?}, {:.1} s: {}",
            checks.len(),
            bad.len(),
            out.status.code(),
            start.elapsed().as_secs_f64(),
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed += 1;
            println!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "test result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        runs.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- one rank

struct Report {
    rank: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            println!("CHECK rank {} {name} ok", self.rank);
        } else {
            self.failed += 1;
            println!("CHECK rank {} {name} FAILED: {}", self.rank, detail());
        }
    }
}

fn child(scenario: &str) {
    let universe = fused_optim::mpi::initialize().expect("MPI init");
    let world = universe.world();
    let rank = world.rank() as usize;
    let size = world.size() as usize;
    let mut report = Report { rank, failed: 0 };
    let dir = std::path::PathBuf::from(std::env::var(DIR).expect("dir"));
    match scenario {
        "identical" => identical(&world, size, &mut report),
        "save" => save(&world, &dir, &mut report),
        "resume" => resume(&world, &dir, &mut report),
        "fail" => fail(&world, size, &mut report),
        "hang" => {
            // Every rank reports (DONE included) before the closing barrier inside, so that
            // the first rank to exit cannot cut another's report short.
            hang(&world, &mut report);
            // Requests are left pending on purpose: MPI_Finalize could wait for them.
            std::process::exit(0);
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("DONE rank {rank}");
    if report.failed > 0 {
        std::process::exit(1);
    }
}

const SEGMENTS: [usize; 4] = [3001, 17, 4096, 2893];
const STEPS: u64 = 4;

/// Rank `r`'s gradients at step `t` (1-based): seeded, mixed magnitudes, exact zeros.
fn rank_grads(r: usize, t: u64, n: usize) -> Vec<f32> {
    common::grads(&mut Rng::new(1000 * t + r as u64), n)
}

/// The rank-order mean of the ranks' gradients, the tree written out per world size.
fn mean_grads(world: usize, t: u64, n: usize) -> Vec<f32> {
    let g: Vec<Vec<f32>> = (0..world).map(|r| rank_grads(r, t, n)).collect();
    (0..n)
        .map(|i| match world {
            1 => g[0][i] / 1.0,
            2 => (g[0][i] + g[1][i]) / 2.0,
            3 => ((g[0][i] + g[1][i]) + g[2][i]) / 3.0,
            4 => ((g[0][i] + g[1][i]) + (g[2][i] + g[3][i])) / 4.0,
            _ => panic!("the tests run 1 to 4 ranks"),
        })
        .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("lengths {} and {}", a.len(), b.len()));
    }
    match a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
    {
        None => Ok(()),
        Some(i) => Err(format!("element {i}: {} vs {}", a[i], b[i])),
    }
}

/// Train sharded and single-process side by side; compare params and the shard's state.
#[allow(clippy::too_many_arguments)]
fn compare(
    comm: &impl Communicator,
    report: &mut Report,
    label: &str,
    config: OptimizerConfig,
    n: usize,
    segments: &[usize],
    zero: ZeroConfig,
    options: GradOptions,
    poison_step: Option<u64>,
) {
    let world = comm.size() as usize;
    let p0 = common::params0(&mut Rng::new(7), n);
    let gpu = matches!(zero.backend, ShardBackend::Gpu(_));
    let mut sharded = match ShardedOptimizer::new(comm, config, p0.clone(), segments, zero.clone())
    {
        Ok(s) => s,
        Err(e) => return report.check(label, false, || format!("construction: {e}")),
    };
    sharded.set_grad_options(options).unwrap();
    let expect_shared = zero.transport != Transport::Messages;
    if sharded.uses_shared_memory() != expect_shared {
        return report.check(label, false, || "wrong transport".into());
    }
    let mut single_p = p0.clone();
    let mut cpu = CpuOptimizer::new(config, n).unwrap();
    cpu.set_grad_options(options).unwrap();
    let gpu_single = match &zero.backend {
        ShardBackend::Gpu(ctx) => {
            let params = FlatParams::from_slice(ctx, &p0).unwrap();
            let mut opt = GpuOptimizer::new(&params, config).unwrap();
            opt.set_grad_options(options).unwrap();
            Some((params, opt))
        }
        ShardBackend::Cpu => None,
    };
    let mut gpu_single = gpu_single;
    let mut problem = None;
    for t in 1..=STEPS {
        let rank = sharded.rank();
        let poison = poison_step == Some(t) && rank == world - 1;
        let stepped = sharded.step_with(|g| {
            g.copy_from_slice(&rank_grads(rank, t, n));
            if poison {
                g[n / 2] = f32::NAN;
            }
            Ok::<(), String>(())
        });
        if let Err(e) = stepped {
            problem = Some(format!("step {t}: {e}"));
            break;
        }
        let mut mean = mean_grads(world, t, n);
        if poison_step == Some(t) {
            mean[n / 2] = f32::NAN;
        }
        match &mut gpu_single {
            Some((params, opt)) => {
                params.write_grads(&mean).unwrap();
                opt.step().unwrap();
                single_p = params.read_params().unwrap();
            }
            None => cpu.step(&mut single_p, &mean).unwrap(),
        }
        if let Err(e) = same_bits(sharded.params(), &single_p) {
            problem = Some(format!("params after step {t}: {e}"));
            break;
        }
        if poison_step == Some(t) && !sharded.last_step_skipped() {
            problem = Some(format!("step {t} with a NaN was not skipped"));
        }
    }
    if problem.is_none() && !gpu {
        let range = sharded.shard();
        for name in cpu.state_names() {
            let shard = sharded.shard_optimizer().read_state(name).unwrap();
            let shard: Vec<f32> = shard.iter().map(|&x| x as f32).collect();
            if let Err(e) = same_bits(&shard, &cpu.state(name).unwrap()[range.clone()]) {
                problem = Some(format!("state {name}: {e}"));
            }
        }
        if sharded.step_count() != cpu.step_count() {
            problem = Some(format!(
                "step counts {} vs {}",
                sharded.step_count(),
                cpu.step_count()
            ));
        }
        if options.max_norm.is_some() && sharded.last_grad_norm() != cpu.last_grad_norm().unwrap() {
            problem = Some(format!(
                "grad norms {:?} vs {:?}",
                sharded.last_grad_norm(),
                cpu.last_grad_norm().unwrap()
            ));
        }
    }
    report.check(label, problem.is_none(), || problem.unwrap());
}

/// [`compare`] without gradient options or a poisoned step.
fn plain(
    comm: &impl Communicator,
    report: &mut Report,
    label: &str,
    config: OptimizerConfig,
    zero: ZeroConfig,
) {
    let n: usize = SEGMENTS.iter().sum();
    let options = GradOptions::default();
    compare(
        comm, report, label, config, n, &SEGMENTS, zero, options, None,
    );
}

fn identical(comm: &impl Communicator, world: usize, report: &mut Report) {
    for (name, config) in cases::all() {
        if !config.is_elementwise() {
            // Per-tensor algorithms (LAMB): ZeRO does not shard them yet, so
            // ShardedOptimizer::new must refuse them with a typed error on every rank.
            let n: usize = SEGMENTS.iter().sum();
            let got =
                ShardedOptimizer::new(comm, config, vec![0.1; n], &SEGMENTS, ZeroConfig::default());
            let refused = matches!(got, Err(Error::Shard { .. }));
            report.check(&format!("{name}: refused"), refused, || {
                format!("expected Error::Shard, got {:?}", got.err())
            });
            continue;
        }
        for (layout, transport) in [
            (ShardLayout::Segments, Transport::SharedMemory),
            (ShardLayout::Segments, Transport::Messages),
            (ShardLayout::ALIGNED_256, Transport::SharedMemory),
            (ShardLayout::ALIGNED_256, Transport::Messages),
        ] {
            let zero = ZeroConfig {
                layout,
                transport,
                ..ZeroConfig::default()
            };
            let label = format!("{name} {layout:?} {transport:?} ZeRO-2");
            plain(comm, report, &label, config, zero);
        }
    }
    // Stages and buckets on a few algorithms.
    let adamw: OptimizerConfig = AdamConfig::adamw().into();
    let sgd: OptimizerConfig = SgdConfig {
        lr: 1e-2,
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    }
    .into();
    for config in [adamw, sgd, LionConfig::default().into()] {
        for (stage, bucket, transport) in [
            (ZeroStage::One, 1 << 20, Transport::Messages),
            (ZeroStage::Two, 1000, Transport::Messages),
            (ZeroStage::One, 777, Transport::Messages),
            (ZeroStage::One, 1 << 20, Transport::SharedMemory),
        ] {
            let zero = ZeroConfig {
                stage,
                bucket,
                transport,
                ..ZeroConfig::default()
            };
            let label = format!("{} {stage:?} bucket {bucket} {transport:?}", config.name());
            plain(comm, report, &label, config, zero);
        }
    }
    // Gradient options: value and norm clipping over a plan aligned to the fast path's
    // norm chunks, and a NaN on the last rank at step 3 skipping the step everywhere.
    let big = 200_003;
    let options = GradOptions {
        clip_value: Some(5.0),
        max_norm: Some(10.0),
        skip_nonfinite: true,
        ..GradOptions::default()
    };
    let zero = ZeroConfig {
        layout: ShardLayout::Aligned { align: 1 << 15 },
        ..ZeroConfig::default()
    };
    for transport in [Transport::Messages, Transport::SharedMemory] {
        let zero = ZeroConfig {
            transport,
            ..zero.clone()
        };
        let label = format!("adamw clipped, NaN skipped, {transport:?}");
        compare(
            comm,
            report,
            &label,
            adamw,
            big,
            &[big],
            zero,
            options,
            Some(3),
        );
    }
    // GPU shards against the single-process GPU optimizer.
    let ctx = GpuContext::new().expect("a wgpu adapter (lavapipe: mesa-vulkan-drivers)");
    for (config, transport) in [
        (adamw, Transport::Messages),
        (adamw, Transport::SharedMemory),
        (LionConfig::default().into(), Transport::Auto),
        (ScheduleFreeConfig::adamw().into(), Transport::Auto),
    ] {
        let zero = ZeroConfig {
            backend: ShardBackend::Gpu(Box::new(ctx.clone())),
            transport,
            ..ZeroConfig::default()
        };
        let label = format!("{} on the GPU, {transport:?}", config.name());
        plain(comm, report, &label, config, zero);
    }
    let _ = world;
}

fn train(opt: &mut ShardedOptimizer, steps: std::ops::RangeInclusive<u64>, world: usize) {
    let n = opt.params().len();
    for t in steps {
        let rank = opt.rank();
        // Every rank adds its share of the same mean: world-size independent gradients.
        let mean = mean_grads(1, t, n);
        opt.step_with(|g| {
            g.copy_from_slice(&mean);
            Ok::<(), String>(())
        })
        .unwrap_or_else(|e| panic!("rank {rank} step {t}: {e}"));
    }
    let _ = world;
}

/// The single-process run the save/resume scenarios are compared with.
fn single(config: OptimizerConfig, n: usize, steps: u64) -> (Vec<f32>, CpuOptimizer) {
    let mut p = common::params0(&mut Rng::new(7), n);
    let mut opt = CpuOptimizer::new(config, n).unwrap();
    for t in 1..=steps {
        opt.step(&mut p, &mean_grads(1, t, n)).unwrap();
    }
    (p, opt)
}

fn save(comm: &impl Communicator, dir: &std::path::Path, report: &mut Report) {
    let n: usize = SEGMENTS.iter().sum();
    let config: OptimizerConfig = AdamConfig::adamw().into();
    let p0 = common::params0(&mut Rng::new(7), n);
    let mut opt =
        ShardedOptimizer::new(comm, config, p0, &SEGMENTS, ZeroConfig::default()).unwrap();
    // Every rank steps with the same gradients: their mean is the same gradients again
    // (x + x = 2x and 2x / 2 are exact; for 4 ranks likewise), the same at any world size.
    train(&mut opt, 1..=3, comm.size() as usize);
    opt.save_checkpoint(&dir.join("shards")).unwrap();
    let (p, single_opt) = single(config, n, 3);
    report.check(
        "params at 3 steps",
        same_bits(opt.params(), &p).is_ok(),
        || "differ".into(),
    );
    if opt.rank() == 0 {
        let merged = dir.join("merged.safetensors");
        merge_to_file(&dir.join("shards"), &merged).unwrap();
        let mut loaded = CpuOptimizer::new(config, n).unwrap();
        loaded.load_checkpoint(&merged).unwrap();
        let same = single_opt
            .state_names()
            .into_iter()
            .all(|s| same_bits(loaded.state(s).unwrap(), single_opt.state(s).unwrap()).is_ok())
            && loaded.host_state() == single_opt.host_state();
        report.check(
            "merged checkpoint is the single-process state",
            same,
            || "state or host differ".into(),
        );
    }
}

fn resume(comm: &impl Communicator, dir: &std::path::Path, report: &mut Report) {
    let n: usize = SEGMENTS.iter().sum();
    let config: OptimizerConfig = AdamConfig::adamw().into();
    let (p3, _) = single(config, n, 3);
    let (p4, _) = single(config, n, 4);
    for (label, source) in [
        ("resumed from 4 shards at 2 ranks", dir.join("shards")),
        (
            "resumed from the merged file at 2 ranks",
            dir.join("merged.safetensors"),
        ),
    ] {
        let zero = ZeroConfig {
            layout: ShardLayout::ALIGNED_256,
            ..ZeroConfig::default()
        };
        let mut opt = ShardedOptimizer::new(comm, config, p3.clone(), &SEGMENTS, zero).unwrap();
        opt.load_checkpoint(&source).unwrap();
        let steps_ok = opt.step_count() == 3;
        train(&mut opt, 4..=4, 2);
        let same = same_bits(opt.params(), &p4);
        report.check(label, steps_ok && same.is_ok(), || {
            format!("{same:?}, step count ok {steps_ok}")
        });
    }
    // A set of another problem is refused on every rank.
    let small = ZeroConfig {
        layout: ShardLayout::Aligned { align: 1 },
        ..ZeroConfig::default()
    };
    let mut other = ShardedOptimizer::new(comm, config, vec![0.0; 100], &[100], small).unwrap();
    let e = other.load_checkpoint(&dir.join("shards"));
    report.check(
        "a set of another size is refused",
        matches!(
            e,
            Err(Error::Shard { .. }) | Err(Error::LocalFailure { .. })
        ),
        || format!("{e:?}"),
    );
}

fn fail(comm: &impl Communicator, world: usize, report: &mut Report) {
    let n: usize = SEGMENTS.iter().sum();
    let config: OptimizerConfig = AdamConfig::default().into();
    let p0 = common::params0(&mut Rng::new(7), n);
    let mut opt =
        ShardedOptimizer::new(comm, config, p0, &SEGMENTS, ZeroConfig::default()).unwrap();
    let rank = opt.rank();
    let before = opt.params().to_vec();
    // Rank 1's closure fails.
    let r = opt.step_with(|g| {
        g.copy_from_slice(&mean_grads(1, 1, n));
        if rank == 1 {
            Err("out of data".to_string())
        } else {
            Ok(())
        }
    });
    let expected = if rank == 1 {
        matches!(&r, Err(Error::LocalFailure { reason }) if reason.contains("out of data"))
    } else {
        matches!(&r, Err(Error::PeerFailed { ranks, phase: "gradients" }) if ranks == &[1])
    };
    report.check(
        "a failing closure is reported to every rank",
        expected,
        || format!("{r:?}"),
    );
    // Rank world-1's closure panics.
    let r = opt.step_with(|_| {
        if rank == world - 1 {
            panic!("boom");
        }
        Ok::<(), String>(())
    });
    let expected = if rank == world - 1 {
        matches!(&r, Err(Error::LocalFailure { reason }) if reason.contains("boom"))
    } else {
        matches!(&r, Err(Error::PeerFailed { ranks, .. }) if ranks == &[world - 1])
    };
    report.check(
        "a panicking closure is reported to every rank",
        expected,
        || format!("{r:?}"),
    );
    let unchanged = same_bits(opt.params(), &before).is_ok() && opt.step_count() == 0;
    report.check("failed steps change nothing", unchanged, || {
        "params or step count changed".into()
    });
    // Training goes on.
    train(&mut opt, 1..=2, world);
    let (p, _) = single(config, n, 2);
    report.check(
        "training goes on after failures",
        same_bits(opt.params(), &p).is_ok(),
        || "params differ".into(),
    );
}

fn hang(comm: &impl Communicator, report: &mut Report) {
    let n: usize = SEGMENTS.iter().sum();
    let timeout = Duration::from_millis(1500);
    let zero = ZeroConfig {
        timeout,
        ..ZeroConfig::default()
    };
    let p0 = common::params0(&mut Rng::new(7), n);
    let mut opt = ShardedOptimizer::new(comm, AdamConfig::default(), p0, &SEGMENTS, zero).unwrap();
    train(&mut opt, 1..=1, 2);
    let rank = opt.rank();
    if rank == 1 {
        // Rank 1 stops taking part (a stuck data loader, a deadlock elsewhere).
        std::thread::sleep(timeout * 3);
        // Its peers have given up: stepping now must time out too, not hang or succeed.
        let start = Instant::now();
        let late = opt.step();
        let waited = start.elapsed();
        let ok = matches!(late, Err(Error::CollectiveTimeout { .. })) && waited < timeout * 3;
        report.check("the late rank times out too", ok, || {
            format!("{late:?} after {waited:?}")
        });
        done_then_barrier(comm, rank);
        return;
    }
    let start = Instant::now();
    let r = opt.step();
    let waited = start.elapsed();
    let ok = matches!(r, Err(Error::CollectiveTimeout { .. })) && waited < timeout * 2;
    report.check("a stuck peer is a timeout, not a hang", ok, || {
        format!("{r:?} after {waited:?}")
    });
    let again = opt.step();
    report.check(
        "and the optimizer is poisoned",
        matches!(again, Err(Error::Poisoned)),
        || format!("{again:?}"),
    );
    // Wait for the stuck rank on the caller's communicator (the optimizer's duplicate has
    // requests pending), so that every rank reports before the job ends.
    done_then_barrier(comm, rank);
}

/// Print this rank's DONE line, flush, and wait for every rank to have done the same.
fn done_then_barrier(comm: &impl Communicator, rank: usize) {
    use std::io::Write;
    println!("DONE rank {rank}");
    std::io::stdout().flush().unwrap();
    comm.barrier();
}
