//! ZeRO data parallelism over MPI: the playground MLP trained on R ranks with sharded
//! optimizer state, a bit-for-bit check against the single-process optimizer, and a
//! benchmark of the sharded step against a bare MPI round and the single-process step.
//!
//! ```text
//! cargo build --release -p fused-optim-tools --features mpi --example zero
//! mpirun --allow-run-as-root --oversubscribe -np 4 target/release/examples/zero --verify
//! mpirun --allow-run-as-root --oversubscribe -np 2 -x RAYON_NUM_THREADS=1 \
//!     target/release/examples/zero --bench --log2 24
//! ```
//!
//! Training: a 2-16-1 tanh MLP on XOR-like data, full batch of 256 samples in 4
//! micro-batches of 64. Rank r computes the gradients of its 4 / R micro-batches, each
//! scaled by 1/4 (exact), adds them in the fixed tree the optimizer's reduction uses, and
//! the optimizer sums over ranks in that tree: the reduced gradient, hence every
//! parameter and every loss, is bit-for-bit the same at 1, 2 and 4 ranks. The loss curve
//! goes to `target/plots/zero_loss_np<R>.csv`; the final line prints a digest of the
//! parameters' bits to compare across world sizes.
//!
//! `--save DIR` writes the sharded checkpoint (one file per rank); `--merge DIR --into FILE`
//! turns such a folder into the single-process checkpoint (PyTorch state names).
//!
//! `--verify`: also runs the single-process `CpuOptimizer` on the same reduced gradients
//! (the tree over all micro-batches) and exits non-zero unless the final parameters are
//! identical (elementwise algorithms).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::mpi::traits::*;
use fused_optim::zero::{
    reduce_in_rank_order, GradReduction, ShardBackend, ShardLayout, ShardedOptimizer, Transport,
    ZeroConfig, ZeroStage,
};
use fused_optim::*;
use fused_optim_tools::playground::data;
use fused_optim_tools::playground::mlp::{Activation, Mlp, Targets};

#[derive(Parser)]
#[command(about = "ZeRO-1/2 optimizer-state sharding over MPI: train, verify, benchmark")]
struct Args {
    /// Optimizer: adam, adamw, sgd (momentum 0.9), nesterov, rmsprop, adagrad, lion.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// ZeRO stage: 1 (reduced gradients kept whole) or 2 (sharded).
    #[arg(long, default_value_t = 2)]
    stage: u8,
    /// Shard layout: segments (whole tensors per rank) or aligned (256-element ranges).
    #[arg(long, default_value = "segments")]
    layout: String,
    /// Update the shard on the GPU (staging through host memory) instead of the CPU.
    #[arg(long)]
    gpu: bool,
    /// Full-batch training steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Also run the single-process optimizer and require identical final parameters.
    #[arg(long)]
    verify: bool,
    /// Benchmark instead of training: sharded Adam step, bare MPI round, single process.
    #[arg(long)]
    bench: bool,
    /// Benchmark size: 2^log2 parameters.
    #[arg(long, default_value_t = 24)]
    log2: u32,
    /// Benchmark rounds (each: one sharded step, one bare round, one single-process step).
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Folder for the loss curves.
    #[arg(long, default_value = "target/plots")]
    out: PathBuf,
    /// Save the sharded checkpoint of the trained MLP into this folder (one file per rank).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Merge the shard files of this folder into one single-process checkpoint (`--into`)
    /// and exit (no training; any world size, run it on one rank).
    #[arg(long)]
    merge: Option<PathBuf>,
    /// Where `--merge` writes the single-process checkpoint.
    #[arg(long, default_value = "merged.safetensors")]
    into: PathBuf,
}

const MICRO_BATCHES: usize = 4;

fn config_of(name: &str) -> Result<OptimizerConfig, String> {
    Ok(match name {
        "adam" => AdamConfig {
            lr: 0.02,
            ..Default::default()
        }
        .into(),
        "adamw" => AdamConfig {
            lr: 0.02,
            ..AdamConfig::adamw()
        }
        .into(),
        "sgd" | "nesterov" => SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: name == "nesterov",
            ..Default::default()
        }
        .into(),
        "rmsprop" => RmspropConfig {
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        "adagrad" => AdagradConfig {
            lr: 0.1,
            ..Default::default()
        }
        .into(),
        "lion" => LionConfig {
            lr: 0.003,
            ..Default::default()
        }
        .into(),
        other => return Err(format!("unknown optimizer `{other}`")),
    })
}

fn main() {
    let args = Args::parse();
    let universe = fused_optim::mpi::initialize().expect("MPI initialisation failed");
    let world = universe.world();
    let code = match run(&args, &world) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rank {}: error: {e}", world.rank());
            2
        }
    };
    drop(universe);
    std::process::exit(code);
}

fn zero_config(args: &Args) -> Result<ZeroConfig, Box<dyn std::error::Error>> {
    Ok(ZeroConfig {
        stage: match args.stage {
            1 => ZeroStage::One,
            2 => ZeroStage::Two,
            s => return Err(format!("--stage {s}: 1 or 2").into()),
        },
        layout: match args.layout.as_str() {
            "segments" => ShardLayout::Segments,
            "aligned" => ShardLayout::ALIGNED_256,
            l => return Err(format!("--layout {l}: segments or aligned").into()),
        },
        reduction: GradReduction::Sum,
        backend: if args.gpu {
            ShardBackend::Gpu(Box::new(GpuContext::new()?))
        } else {
            ShardBackend::Cpu
        },
        ..ZeroConfig::default()
    })
}

fn run(args: &Args, world: &impl Communicator) -> Result<i32, Box<dyn std::error::Error>> {
    if let Some(dir) = &args.merge {
        let state = fused_optim::zero::merge(dir)?;
        fused_optim::checkpoint::save(&args.into, &state)?;
        println!(
            "merged {} ({} elements, step {}, {}) into {}",
            dir.display(),
            state.n,
            state.host.step,
            state.config.name(),
            args.into.display()
        );
        return Ok(0);
    }
    if args.bench {
        return bench(args, world);
    }
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    if !MICRO_BATCHES.is_multiple_of(size) {
        return Err(
            format!("{MICRO_BATCHES} micro-batches cannot be split over {size} ranks").into(),
        );
    }
    let config = config_of(&args.optimizer)?;
    let sizes = [2usize, 16, 1];
    let mlp = Mlp::new(&sizes, Activation::Tanh)?;
    let segments: Vec<usize> = sizes.windows(2).flat_map(|w| [w[0] * w[1], w[1]]).collect();
    let (x, y) = data::xor(256, 1);
    let targets = Targets::Binary(y);
    let rows: Vec<Vec<usize>> = (0..MICRO_BATCHES)
        .map(|m| (m * 64..(m + 1) * 64).collect())
        .collect();
    let micro: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                fused_optim_tools::playground::mlp::select_rows(&x, r),
                targets.select(r),
            )
        })
        .collect();
    // The gradient of micro-batches `ms`: each scaled by 1/4 and added in the fixed tree.
    let grad_of = |params: &[f32], ms: std::ops::Range<usize>, out: &mut [f32]| {
        let p64: Vec<f64> = params.iter().map(|&v| f64::from(v)).collect();
        let parts: Vec<Vec<f32>> = ms
            .map(|m| {
                let (_, g) = mlp.loss_and_grad(&p64, &micro[m].0, &micro[m].1);
                g.iter().map(|&v| v as f32 / MICRO_BATCHES as f32).collect()
            })
            .collect();
        let views: Vec<&[f32]> = parts.iter().map(|p| &p[..]).collect();
        reduce_in_rank_order(&views, out, GradReduction::Sum)
            .expect("every micro-batch gradient has the model's length");
    };
    let init = mlp.init(16);
    let mut opt =
        ShardedOptimizer::new(world, config, init.clone(), &segments, zero_config(args)?)?;
    let per_rank = MICRO_BATCHES / size;
    let mine = rank * per_rank..(rank + 1) * per_rank;
    let mut losses = Vec::with_capacity(args.steps);
    let loss_of = |p: &[f32]| {
        let p64: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
        mlp.loss(&p64, &x, &targets)
    };
    for _ in 0..args.steps {
        losses.push(loss_of(opt.params()));
        let params = opt.params().to_vec();
        opt.step_with(|g| {
            grad_of(&params, mine.clone(), g);
            Ok::<(), String>(())
        })?;
    }
    let final_loss = loss_of(opt.params());
    if let Some(dir) = &args.save {
        opt.save_checkpoint(dir)?;
    }
    let digest = crc32(opt.params());
    let mut code = 0;
    if args.verify {
        // The single-process optimizer on the tree over all micro-batches.
        let mut p = init;
        let mut single = CpuOptimizer::new(config, p.len())?;
        let mut g = vec![0.0f32; p.len()];
        for _ in 0..args.steps {
            grad_of(&p, 0..MICRO_BATCHES, &mut g);
            single.step(&mut p, &g)?;
        }
        let identical = p
            .iter()
            .zip(opt.params())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if rank == 0 {
            println!(
                "verify: final parameters {} the single-process optimizer's ({} elements)",
                if identical {
                    "are identical to"
                } else {
                    "DIFFER from"
                },
                p.len()
            );
        }
        if !identical {
            code = 1;
        }
    }
    if rank == 0 {
        std::fs::create_dir_all(&args.out)?;
        let path = args.out.join(format!("zero_loss_np{size}.csv"));
        let csv: String = losses
            .iter()
            .enumerate()
            .map(|(t, l)| format!("{t},{l:e}\n"))
            .collect();
        std::fs::write(&path, format!("step,loss\n{csv}"))?;
        println!(
            "{size} rank(s), {} ZeRO-{} {}: loss {:.6e} -> {final_loss:.6e} after {} steps; \
             state {} B on rank 0 of {} B; params digest {digest:08x}; curve {}",
            config.name(),
            args.stage,
            args.layout,
            losses[0],
            args.steps,
            opt.state_bytes(),
            config.state_names().len() * segments.iter().sum::<usize>() * 4,
            path.display()
        );
    }
    Ok(code)
}

fn crc32(values: &[f32]) -> u32 {
    let mut h: u32 = 0xFFFF_FFFF;
    for b in bytemuck_bytes(values) {
        h ^= u32::from(b);
        for _ in 0..8 {
            h = (h >> 1) ^ (0xEDB8_8320 & (h & 1).wrapping_neg());
        }
    }
    !h
}

fn bytemuck_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Wait for every rank without spinning (so a rank that waits leaves its core to the
/// single-process measurement).
fn quiet_barrier(world: &impl Communicator) {
    let mut req = world.immediate_barrier();
    loop {
        match req.test() {
            Ok(_) => return,
            Err(r) => req = r,
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over the rounds of one quantity, per rank.
#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }
}

fn bench(args: &Args, world: &impl Communicator) -> Result<i32, Box<dyn std::error::Error>> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let n = 1usize << args.log2;
    let config: OptimizerConfig = AdamConfig::default().into();
    let p0: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
    let g: Vec<f32> = (0..n).map(|i| ((i % 997) as f32 - 498.0) * 1e-4).collect();
    let mut sharded = Vec::new();
    for transport in [Transport::SharedMemory, Transport::Messages] {
        let zero = ZeroConfig {
            layout: ShardLayout::ALIGNED_256,
            transport,
            ..zero_config(args)?
        };
        let mut opt = ShardedOptimizer::new(world, config, p0.clone(), &[n], zero)?;
        // The gradients are in place before each step, as after a backward pass; no side
        // of the comparison pays for producing them.
        opt.grads_mut().copy_from_slice(&g);
        sharded.push((transport, opt));
    }
    let block = sharded[0].1.plan().max_len();
    let padded = block * size;
    let mut send = g.clone();
    send.resize(padded, 0.0);
    let mut recv = vec![0.0f32; block];
    let mut exchanged = vec![0.0f32; padded];
    let mut full = vec![0.0f32; padded];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(size).build()?;
    // The single process in two layouts, the faster one counting: params and grads in plain
    // `Vec`s, and in the layout the library recommends for large models (`StaggeredVec`
    // slots 0 and 4, `CpuOptimizer::step`).
    let mut single = if rank == 0 {
        Some((
            (p0.clone(), g.clone(), CpuOptimizer::new(config, n)?),
            (
                StaggeredVec::from_slice(&p0, 0),
                StaggeredVec::from_slice(&g, 4),
                CpuOptimizer::new(config, n)?,
            ),
        ))
    } else {
        None
    };
    // Per round, interleaved: each transport's step, the two bare rounds, the single process.
    let mut steps = [Series::default(), Series::default()];
    let mut parts = [
        [Series::default(), Series::default(), Series::default()],
        [Series::default(), Series::default(), Series::default()],
    ];
    let (mut bare_rs, mut bare_a2a, mut single_t) =
        (Series::default(), Series::default(), Series::default());
    let mut single_staggered = Series::default();
    for round in 0..args.rounds + 2 {
        let keep = round >= 2;
        for (k, (_, opt)) in sharded.iter_mut().enumerate() {
            quiet_barrier(world);
            let t = Instant::now();
            opt.step()?;
            let elapsed = t.elapsed();
            let timings = opt.last_step_timings();
            if keep {
                steps[k].push(elapsed);
                parts[k][0].push(timings.reduce_scatter);
                parts[k][1].push(timings.update);
                parts[k][2].push(timings.all_gather);
            }
        }
        // The bare MPI round the issue names: MPI_Reduce_scatter_block (sum) + MPI_Allgather.
        quiet_barrier(world);
        let t = Instant::now();
        world.reduce_scatter_block_into(
            &send[..],
            &mut recv[..],
            fused_optim::mpi::collective::SystemOperation::sum(),
        );
        world.all_gather_into(&recv[..], &mut full[..]);
        let elapsed = t.elapsed();
        // Pure data movement of the same bytes: MPI_Alltoall + MPI_Allgather.
        quiet_barrier(world);
        let t = Instant::now();
        world.all_to_all_into(&send[..], &mut exchanged[..]);
        world.all_gather_into(&recv[..], &mut full[..]);
        let elapsed_a2a = t.elapsed();
        // The single-process step with as many threads as ranks (rank 0; the others wait
        // without spinning).
        quiet_barrier(world);
        if let Some(((p, g, o), (ps, gs, os))) = single.as_mut() {
            let t = Instant::now();
            pool.install(|| o.step(p, g))?;
            let plain = t.elapsed();
            let t = Instant::now();
            pool.install(|| os.step(ps, gs))?;
            if keep {
                single_t.push(plain);
                single_staggered.push(t.elapsed());
            }
        }
        if keep {
            bare_rs.push(elapsed);
            bare_a2a.push(elapsed_a2a);
        }
    }
    // Every rank's medians; rank 0 reports the slowest rank's (a step ends with the last).
    let mut mine: Vec<f64> = Vec::new();
    for k in 0..2 {
        mine.push(median(std::mem::take(&mut steps[k].0)));
        for part in &mut parts[k] {
            mine.push(median(std::mem::take(&mut part.0)));
        }
    }
    mine.push(median(bare_rs.0));
    mine.push(median(bare_a2a.0));
    let k_len = mine.len();
    let mut all = vec![0.0f64; k_len * size];
    world.all_gather_into(&mine[..], &mut all[..]);
    if rank == 0 {
        let worst = |k: usize| (0..size).map(|r| all[k_len * r + k]).fold(0.0, f64::max);
        let (plain, staggered) = (median(single_t.0), median(single_staggered.0));
        let single = plain.min(staggered);
        let (rs_bare, a2a_bare) = (worst(8), worst(9));
        println!(
            "zero bench: Adam 2^{} = {n} params, {size} rank(s), ZeRO-{} aligned:256, {} shard update, {} thread(s) per rank, median of {} interleaved rounds, slowest rank",
            args.log2,
            args.stage,
            if args.gpu { "GPU" } else { "CPU" },
            rayon::current_num_threads(),
            args.rounds
        );
        for (k, (transport, _)) in sharded.iter().enumerate() {
            let (step, rs, update, ag) = (
                worst(4 * k),
                worst(4 * k + 1),
                worst(4 * k + 2),
                worst(4 * k + 3),
            );
            println!(
                "  sharded step, {transport:?}: {:8.2} ms = reduce-scatter {:.2} + update {:.2} + all-gather {:.2}; step / single process {:.2}x; communication / bare MPI round {:.2}x, / bare data movement {:.2}x",
                step * 1e3,
                rs * 1e3,
                update * 1e3,
                ag * 1e3,
                step / single,
                (rs + ag) / rs_bare,
                (rs + ag) / a2a_bare
            );
        }
        println!("  bare MPI round (MPI_Reduce_scatter_block + MPI_Allgather of the same bytes) {:8.2} ms", rs_bare * 1e3);
        println!(
            "  bare data movement (MPI_Alltoall + MPI_Allgather of the same bytes)       {:8.2} ms",
            a2a_bare * 1e3
        );
        println!(
            "  single process ({size} threads, CpuOptimizer)                               {:8.2} ms (plain Vec {:.2}, StaggeredVec {:.2}: the faster counts)",
            single * 1e3,
            plain * 1e3,
            staggered * 1e3
        );
        let opt = &sharded[0].1;
        let total_state = config.state_names().len() * n * 4;
        println!(
            "  state per rank {} B of {total_state} B total = 1/{:.3} (rank 0)",
            opt.state_bytes(),
            total_state as f64 / opt.state_bytes() as f64
        );
    }
    Ok(0)
}
