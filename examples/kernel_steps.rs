//! Runs a fixed number of steps of one optimizer kernel, or of its roof kernel, and nothing
//! else: the workload for counting instructions with `valgrind --tool=callgrind`
//! (`scripts/instructions_per_element.sh` drives it).
//!
//! On a CPU implementation of WebGPU (lavapipe) the kernels run as CPU code, so callgrind
//! counts every instruction the driver's compiled kernel executes. Unlike a time, that count
//! is the same from run to run whatever else the machine does: the difference between two
//! step counts, divided by the elements, is the kernel's instructions per element, and the
//! ratio of a roof's count to its kernel's is a fraction of roof free of timing noise.
//!
//! ```text
//! cargo run --release --example kernel_steps -- adam kernel 12 65539
//! cargo run --release --example kernel_steps -- adam roof 12 65539
//! cargo run --release --example kernel_steps -- --cpu adam kernel 12 65539
//! ```
//! `--cpu` runs the fast CPU path (`CpuOptimizer::step`) or its roof (`roofline::cpu_roof`)
//! instead, on host vectors laid out as the throughput example lays them out, without
//! creating a device. Count it with `RAYON_NUM_THREADS=1`: with more threads, idle workers'
//! spinning adds a count that varies from run to run.

use clap::{Parser, ValueEnum};
use fused_optim::cpu::staggered::StaggeredVec;
use fused_optim::roofline::{benchmark_suite, cpu_roof, GpuRoof};
use fused_optim::*;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// The fused optimizer kernel.
    Kernel,
    /// The roof kernel with the optimizer's access pattern.
    Roof,
}

#[derive(Parser)]
#[command(about = "Fixed step counts of one kernel (for instruction counting)")]
struct Args {
    /// Optimizer name as in the throughput example (adam, sgd_momentum, ...).
    optimizer: String,
    /// The optimizer's kernel or its roof.
    which: Which,
    /// Steps after one warm-up step.
    steps: usize,
    /// Elements.
    #[arg(default_value_t = 65_539)]
    n: usize,
    /// The fast CPU path (or its roof) instead of the GPU kernel.
    #[arg(long)]
    cpu: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some((_, config)) = benchmark_suite()
        .into_iter()
        .find(|(name, _)| *name == args.optimizer)
    else {
        let names: Vec<_> = benchmark_suite().into_iter().map(|(n, _)| n).collect();
        eprintln!("unknown optimizer {}; one of {names:?}", args.optimizer);
        std::process::exit(2);
    };
    // Seeded values in [-0.5, 0.5): the arithmetic sees ordinary numbers, not zeros.
    let values = |seed: usize| -> Vec<f32> {
        (0..args.n)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 * 1e-3 - 0.5)
            .collect()
    };
    if args.cpu {
        return cpu_steps(&args, config, values(1), values(2));
    }
    let ctx = GpuContext::new()?;
    eprintln!("adapter: {}", ctx.describe());
    let params = FlatParams::from_slice(&ctx, &values(1))?;
    params.write_grads(&values(2))?;
    let mut step: Box<dyn FnMut() -> Result<()>> = match args.which {
        Which::Kernel => {
            let mut opt = GpuOptimizer::new(&params, config)?;
            Box::new(move || opt.step())
        }
        Which::Roof => {
            let mut roof = GpuRoof::new(&params, config.state_names().len())?;
            Box::new(move || {
                roof.step();
                Ok(())
            })
        }
    };
    step()?;
    ctx.wait()?;
    for _ in 0..args.steps {
        step()?;
    }
    ctx.wait()?;
    Ok(())
}

/// `--cpu`: the fast CPU path or its roof, one warm-up step then `args.steps`.
fn cpu_steps(args: &Args, config: OptimizerConfig, p0: Vec<f32>, g: Vec<f32>) -> Result<()> {
    // The throughput example's layout: params at stagger slot 0, grads at 4, states 1-3.
    let mut p = StaggeredVec::from_slice(&p0, 0);
    let g = StaggeredVec::from_slice(&g, 4);
    let mut step: Box<dyn FnMut() -> Result<()>> = match args.which {
        Which::Kernel => {
            let mut opt = CpuOptimizer::new(config, args.n)?;
            Box::new(move || opt.step(&mut p, &g))
        }
        Which::Roof => {
            let mut states: Vec<StaggeredVec> = (0..config.state_names().len())
                .map(|k| StaggeredVec::filled(args.n, 0.0, k + 1))
                .collect();
            Box::new(move || {
                cpu_roof(&mut p, &g, &mut states);
                Ok(())
            })
        }
    };
    for _ in 0..=args.steps {
        step()?;
    }
    Ok(())
}
