//! The optimizer over caller ranges (`gpu::tensors::TensorOptimizer`) against the flat-buffer
//! kernel (`GpuOptimizer` on one `FlatParams`) at the same parameter count, on model-shaped
//! tensor lists placed as Burn's allocator places them (tensors up to 64 KiB packed into
//! 8 MiB pages at aligned offsets, larger ones in buffers of their own; gradients in pages of
//! their own). Steps are alternated (ranges, flat, ranges, ...), each followed by a wait, and
//! the figure is the median of the per-pair ratios: the machine is shared, timings are noisy.
//!
//! ```text
//! cargo run --release --example tensor_ranges -- --reps 9
//! cargo run --release --example tensor_ranges -- --model many_small --reps 21 --json
//! ```

use std::time::Instant;

use clap::Parser;
use fused_optim::gpu::tensors::{BufferRange, TensorBinding, TensorOptimizer, TensorSpec};
use fused_optim::{
    AdamConfig, ContextOptions, FlatParams, GpuContext, GpuOptimizer, LaneTransport, Result,
};

#[derive(Parser)]
#[command(about = "Optimizer over caller ranges vs the flat kernel, same parameter count")]
struct Args {
    /// gpt2_small, many_small, one_tensor (2^24 elements in one buffer) or all (the first
    /// two).
    #[arg(long, default_value = "all")]
    model: String,
    /// Width of the GPT-2-shaped model (768 is GPT-2 small).
    #[arg(long, default_value_t = 768)]
    d: usize,
    /// Measured pairs of steps.
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Print only a JSON array.
    #[arg(long)]
    json: bool,
    /// Move the flat kernel's lanes as vec4<f32> too (the optimizer over ranges always does;
    /// the flat kernel uses u64 lanes on a CPU adapter with shader-int64).
    #[arg(long)]
    f32_lanes: bool,
}

/// GPT-2's parameter tensors: 12 per layer, embeddings, final norm.
fn gpt2(d: usize, layers: usize, vocab: usize, ctx_len: usize) -> Vec<usize> {
    let mut t = vec![vocab * d, ctx_len * d];
    for _ in 0..layers {
        t.extend([
            d,
            d,
            d * 3 * d,
            3 * d,
            d * d,
            d,
            d,
            d,
            d * 4 * d,
            4 * d,
            4 * d * d,
            d,
        ]);
    }
    t.extend([d, d]);
    t
}

/// 1000 small tensors, ~1M parameters: sizes 500..1600, odd ones included.
fn many_small() -> Vec<usize> {
    (0..1000).map(|k| 500 + (k * 37) % 1101).collect()
}

const PAGE: u64 = 8 << 20;
const SMALL: u64 = 64 << 10;

/// Buffers and (buffer, offset) per tensor, as Burn's pool would hand them out.
fn place(ctx: &GpuContext, lens: &[usize], align: u64) -> (Vec<wgpu::Buffer>, Vec<(usize, u64)>) {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let mk = |size: u64| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("emulated pool page"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let mut buffers = vec![mk(PAGE)];
    let mut page = 0;
    let mut used = 0u64;
    let mut at = Vec::new();
    for &len in lens {
        let bytes = (len as u64 * 4).next_multiple_of(align);
        if bytes > SMALL {
            buffers.push(mk(bytes));
            at.push((buffers.len() - 1, 0));
            continue;
        }
        if used + bytes > PAGE {
            buffers.push(mk(PAGE));
            page = buffers.len() - 1;
            used = 0;
        }
        at.push((page, used));
        used += bytes;
    }
    (buffers, at)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let ctx = if args.f32_lanes {
        GpuContext::with_options(ContextOptions {
            lane_transport: LaneTransport::F32x4,
            ..ContextOptions::default()
        })?
    } else {
        GpuContext::new()?
    };
    let align = u64::from(ctx.device().limits().min_storage_buffer_offset_alignment).max(16);
    let models: Vec<(&str, Vec<usize>)> = [
        ("gpt2_small", gpt2(args.d, 12, 50257, 1024)),
        ("many_small", many_small()),
        // The kernel over ranges on one tensor: its own cost against the flat kernel's,
        // without the per-unit dispatches of a many-buffer model.
        ("one_tensor", vec![1 << 24]),
    ]
    .into_iter()
    .filter(|(name, _)| args.model == *name || (args.model == "all" && *name != "one_tensor"))
    .collect();
    let mut rows = Vec::new();
    for (name, lens) in models {
        let n: usize = lens.iter().sum();
        let specs: Vec<TensorSpec> = lens
            .iter()
            .enumerate()
            .map(|(k, &len)| TensorSpec {
                name: format!("t{k}"),
                len,
                group: 0,
            })
            .collect();
        let config = AdamConfig::default();
        let (pbufs, pat) = place(&ctx, &lens, align);
        let (gbufs, gat) = place(&ctx, &lens, align);
        for (k, &len) in lens.iter().enumerate() {
            let (b, o) = gat[k];
            ctx.queue()
                .write_buffer(&gbufs[b], o, bytemuck::cast_slice(&vec![1e-3f32; len]));
        }
        let bindings: Vec<TensorBinding> = (0..lens.len())
            .map(|k| TensorBinding {
                param: BufferRange {
                    buffer: &pbufs[pat[k].0],
                    byte_offset: pat[k].1,
                },
                grad: BufferRange {
                    buffer: &gbufs[gat[k].0],
                    byte_offset: gat[k].1,
                },
            })
            .collect();
        let mut ranges = TensorOptimizer::new(&ctx, &specs, &[config.into()])?;
        let flat = FlatParams::zeros(&ctx, n)?;
        flat.write_grads(&vec![1e-3f32; n])?;
        let mut adam = GpuOptimizer::new(&flat, config)?;
        for _ in 0..2 {
            ranges.step(&bindings)?;
            adam.step()?;
        }
        ctx.wait()?;
        let (mut tr, mut tf, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.reps {
            let t0 = Instant::now();
            ranges.step(&bindings)?;
            ctx.wait()?;
            let r = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            adam.step()?;
            ctx.wait()?;
            let f = t1.elapsed().as_secs_f64();
            tr.push(r);
            tf.push(f);
            ratio.push(f / r);
        }
        let row = serde_json::json!({
            "model": name,
            "tensors": lens.len(),
            "params": n,
            "buffers": pbufs.len() + gbufs.len(),
            "ranges_step_s": median(tr),
            "flat_step_s": median(tf),
            "flat_over_ranges": median(ratio),
            "flat_lanes": if ctx.uses_u64_lanes() { "u64" } else { "vec4<f32>" },
            "ranges_workgroup": ranges.tuning().workgroup_size,
            "flat_workgroup": ctx.options().tuning.workgroup_size,
        });
        if !args.json {
            eprintln!("{row}");
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        eprintln!(
            "flat_over_ranges: median of per-pair ratios of the flat kernel's step time to the \
             ranges optimizer's (>= 0.9 is the target: 1 means as fast); {}",
            ctx.describe()
        );
    }
    Ok(())
}
