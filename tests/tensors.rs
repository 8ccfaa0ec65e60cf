//! `TensorOptimizer`: params and gradients as ranges of caller buffers (many tensors per
//! buffer, some gradients in the params' own buffer), checked against the f64 reference
//! (`tests/common` tolerance: `RTOL_PER_STEP * k`, see there why), with poisoned bytes
//! between and after the tensors that must keep their bits; relocation between steps;
//! parameter groups; clipping by the global norm and skipping non-finite steps; the typed
//! refusals of bad ranges.

mod cases;
mod common;

use common::{check_params, gpu, gpu_windowed, grads, params0, track_peak, Rng, RTOL_PER_STEP};
use fused_optim::gpu::buffer::read_f32;
use fused_optim::gpu::tensors::{BufferRange, TensorBinding, TensorOptimizer, TensorSpec};
use fused_optim::{
    AdamConfig, Error, GpuContext, GradOptions, LambConfig, Optimizer, OptimizerConfig,
    ReferenceOptimizer, SgdConfig,
};

/// A finite value no tensor holds (-7777.125): an update of an element that is not a
/// tensor's (even one that reads this value as its param and gradient) changes its bits. (A
/// NaN would not do: NaN arithmetic may return the same NaN.)
const POISON: u32 = 0xc5f3_0900;

/// Odd sizes, a single element, a lane and a bit, several blocks.
const LENS: [usize; 7] = [1, 3, 5, 33, 1023, 4097, 260];

fn poisoned_buffer(ctx: &GpuContext, words: usize) -> wgpu::Buffer {
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test page"),
        size: (words * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&vec![POISON; words]));
    buffer
}

/// Where each tensor lives: (buffer index, word offset) of its params and its gradients.
#[derive(Clone, Debug)]
struct Placement {
    params: Vec<(usize, usize)>,
    grads: Vec<(usize, usize)>,
}

/// Tensors packed at aligned word offsets with a poisoned gap after each: the params of
/// tensors 0..4 in buffer 0 with the gradients of 0..2 in buffer 1 and those of 3..4 inside
/// buffer 0 (after the params: the shared-buffer flavour); tensors 5.. each in buffer 2
/// with their gradients in buffer 1. `shift` moves everything by whole alignment blocks
/// (relocation).
fn placement(lens: &[usize], align_words: usize, shift: usize) -> (Placement, [usize; 3]) {
    let mut ends = [shift * align_words; 3];
    let mut take = |b: usize, len: usize| {
        let at = ends[b].next_multiple_of(align_words);
        // A poisoned gap of at least one word after every tensor.
        ends[b] = at + len + 1;
        (b, at)
    };
    let mut params = Vec::new();
    let mut grads = vec![(0, 0); lens.len()];
    for (k, &len) in lens.iter().enumerate() {
        params.push(take(if k < 5 { 0 } else { 2 }, len));
    }
    for (k, &len) in lens.iter().enumerate() {
        grads[k] = take(if (3..5).contains(&k) { 0 } else { 1 }, len);
    }
    let sizes = ends.map(|e| e.next_multiple_of(align_words) + align_words);
    (Placement { params, grads }, sizes)
}

/// How the tensors are placed in the caller's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packing {
    /// Many tensors per buffer ([`placement`]): every dispatch runs the kernel over the table.
    Shared,
    /// Every tensor's params in a buffer of their own and its gradients in another, as a
    /// large model's matrices are allocated ([`own_placement`]): the tensors with a multiple
    /// of 4 elements run the flat kernel on their own windows, the others the table's.
    Own,
}

/// Tensor `k`'s params alone in buffer `2k`, its gradients alone in buffer `2k + 1`, both
/// after `1 + shift` poisoned alignment blocks and followed by at least one more.
fn own_placement(lens: &[usize], align_words: usize, shift: usize) -> (Placement, Vec<usize>) {
    let at = (1 + shift) * align_words;
    let params = (0..lens.len()).map(|k| (2 * k, at)).collect();
    let grads = (0..lens.len()).map(|k| (2 * k + 1, at)).collect();
    let sizes = lens
        .iter()
        .flat_map(|&len| {
            let size = (at + len + 1).next_multiple_of(align_words) + align_words;
            [size, size]
        })
        .collect();
    (Placement { params, grads }, sizes)
}

struct World {
    buffers: Vec<wgpu::Buffer>,
    place: Placement,
    /// The words each buffer should hold (POISON where no tensor is).
    expect: Vec<Vec<u32>>,
}

impl World {
    fn new(ctx: &GpuContext, lens: &[usize], shift: usize, p: &[Vec<f32>]) -> Self {
        Self::packed(ctx, lens, shift, p, Packing::Shared)
    }

    fn packed(
        ctx: &GpuContext,
        lens: &[usize],
        shift: usize,
        p: &[Vec<f32>],
        packing: Packing,
    ) -> Self {
        let align = ctx
            .device()
            .limits()
            .min_storage_buffer_offset_alignment
            .max(16) as usize
            / 4;
        let (place, sizes) = match packing {
            Packing::Shared => {
                let (place, sizes) = placement(lens, align, shift);
                (place, sizes.to_vec())
            }
            Packing::Own => own_placement(lens, align, shift),
        };
        let buffers: Vec<wgpu::Buffer> = sizes.iter().map(|&s| poisoned_buffer(ctx, s)).collect();
        let expect = sizes.iter().map(|&s| vec![POISON; s]).collect();
        let mut w = Self {
            buffers,
            place,
            expect,
        };
        for (k, values) in p.iter().enumerate() {
            let (b, at) = w.place.params[k];
            w.write(ctx, b, at, values);
        }
        w
    }

    fn write(&mut self, ctx: &GpuContext, b: usize, at: usize, values: &[f32]) {
        ctx.queue().write_buffer(
            &self.buffers[b],
            (at * 4) as u64,
            bytemuck::cast_slice(values),
        );
        for (i, v) in values.iter().enumerate() {
            self.expect[b][at + i] = v.to_bits();
        }
    }

    fn write_grads(&mut self, ctx: &GpuContext, g: &[Vec<f32>]) {
        for (k, values) in g.iter().enumerate() {
            let (b, at) = self.place.grads[k];
            self.write(ctx, b, at, values);
        }
    }

    fn bindings(&self) -> Vec<TensorBinding<'_>> {
        let at = |(b, w): (usize, usize)| BufferRange {
            buffer: &self.buffers[b],
            byte_offset: (w * 4) as u64,
        };
        self.place
            .params
            .iter()
            .zip(&self.place.grads)
            .map(|(&p, &g)| TensorBinding {
                param: at(p),
                grad: at(g),
            })
            .collect()
    }

    /// Every tensor's params, after checking that every other word kept its bits.
    fn read(&self, ctx: &GpuContext, lens: &[usize]) -> Result<Vec<Vec<f32>>, String> {
        let all: Vec<Vec<f32>> = self
            .buffers
            .iter()
            .map(|b| read_f32(ctx, b, 0, (b.size() / 4) as usize).unwrap())
            .collect();
        let mut is_param: Vec<Vec<bool>> = all.iter().map(|b| vec![false; b.len()]).collect();
        for (k, &(b, at)) in self.place.params.iter().enumerate() {
            is_param[b][at..at + lens[k]].fill(true);
        }
        for (b, words) in all.iter().enumerate() {
            for (i, w) in words.iter().enumerate() {
                if !is_param[b][i] && w.to_bits() != self.expect[b][i] {
                    return Err(format!(
                        "buffer {b} word {i} (not a param) changed: {:#x} -> {:#x}",
                        self.expect[b][i],
                        w.to_bits()
                    ));
                }
            }
        }
        Ok(self
            .place
            .params
            .iter()
            .enumerate()
            .map(|(k, &(b, at))| all[b][at..at + lens[k]].to_vec())
            .collect())
    }
}

fn specs(lens: &[usize], group: impl Fn(usize) -> usize) -> Vec<TensorSpec> {
    lens.iter()
        .enumerate()
        .map(|(k, &len)| TensorSpec {
            name: format!("t{k}"),
            len,
            group: group(k),
        })
        .collect()
}

fn concat(v: &[Vec<f32>]) -> Vec<f64> {
    v.iter().flatten().map(|&x| f64::from(x)).collect()
}

/// Run `steps` steps of `config` over tensors of `lens` elements, relocating every tensor (params copied to their
/// new place by the test, as Burn's allocator would) before step `relocate_at`, and compare
/// with the reference over the concatenated tensors after every step.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &GpuContext,
    lens: &[usize],
    label: &str,
    config: OptimizerConfig,
    options: GradOptions,
    steps: u64,
    relocate_at: Option<u64>,
    poison_grad_at: Option<u64>,
) -> Result<(), String> {
    run_packed(
        ctx,
        lens,
        label,
        config,
        options,
        (steps, relocate_at, poison_grad_at),
        Packing::Shared,
    )
}

/// [`run`] with the tensors placed by `packing`; `(steps, relocate_at, poison_grad_at)`.
fn run_packed(
    ctx: &GpuContext,
    lens: &[usize],
    label: &str,
    config: OptimizerConfig,
    options: GradOptions,
    (steps, relocate_at, poison_grad_at): (u64, Option<u64>, Option<u64>),
    packing: Packing,
) -> Result<(), String> {
    let mut rng = Rng::new(0x7e45 ^ steps);
    let p: Vec<Vec<f32>> = lens.iter().map(|&n| params0(&mut rng, n)).collect();
    let mut world = World::packed(ctx, lens, 0, &p, packing);
    let mut opt = TensorOptimizer::new(ctx, &specs(lens, |_| 0), &[config])
        .map_err(|e| format!("{label}: {e}"))?;
    opt.set_grad_options(options).map_err(|e| e.to_string())?;
    let total: usize = lens.iter().sum();
    let mut reference = ReferenceOptimizer::new(config, total).unwrap();
    reference.set_grad_options(options).unwrap();
    let mut want = concat(&p);
    let mut peak = want.iter().map(|x| x.abs()).collect::<Vec<_>>();
    for k in 1..=steps {
        if relocate_at == Some(k) {
            let now = world.read(ctx, lens)?;
            world = World::packed(ctx, lens, 3, &now, packing);
        }
        let mut g: Vec<Vec<f32>> = lens.iter().map(|&n| grads(&mut rng, n)).collect();
        if poison_grad_at == Some(k) {
            g[5][17] = f32::INFINITY;
        }
        world.write_grads(ctx, &g);
        opt.step(&world.bindings())
            .map_err(|e| format!("{label}: step {k}: {e}"))?;
        reference.step(&mut want, &concat(&g)).unwrap();
        track_peak(&mut peak, &want);
        let got: Vec<f32> = world
            .read(ctx, lens)
            .map_err(|e| format!("{label}: {e}"))?
            .concat();
        check_params(label, &got, &want, &peak, k, RTOL_PER_STEP)?;
    }
    Ok(())
}

#[test]
fn every_algorithm_over_shared_buffers_matches_the_reference_and_writes_no_neighbour() {
    let Some(ctx) = gpu() else { return };
    let mut failures = Vec::new();
    for (label, config) in cases::all() {
        if !config.is_elementwise() {
            // Per-tensor algorithms (LAMB) are refused (checked below), not replayed.
            continue;
        }
        if let Err(e) = run(
            &ctx,
            &LENS,
            label,
            config,
            GradOptions::default(),
            4,
            None,
            None,
        ) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let spec = TensorSpec {
        name: "w".into(),
        len: 16,
        group: 0,
    };
    let lamb = OptimizerConfig::Lamb(LambConfig::default());
    assert!(matches!(
        TensorOptimizer::new(&ctx, &[spec], &[lamb]),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn relocation_between_steps_keeps_each_tensors_state() {
    let Some(ctx) = gpu() else { return };
    let adamw = AdamConfig {
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    run(
        &ctx,
        &LENS,
        "adamw relocated",
        adamw.into(),
        GradOptions::default(),
        5,
        Some(3),
        None,
    )
    .unwrap();
}

#[test]
fn windows_smaller_than_a_tensor_cut_it_into_pieces() {
    // 4 KiB bindings: the 4097-element tensor is cut into pieces, buffers into several
    // dispatches.
    let Some(ctx) = gpu_windowed(4096) else {
        return;
    };
    let sgd = SgdConfig {
        lr: 1e-2,
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    };
    run(
        &ctx,
        &LENS,
        "sgd windowed",
        sgd.into(),
        GradOptions::default(),
        3,
        Some(2),
        None,
    )
    .unwrap();
}

/// Large tensors (a few idle lanes in their last blocks) run at the context's workgroup, the
/// small odd ones of LENS at the smallest (`ranges_tuning`); the large ones, with a relocation,
/// against the reference as every other test here (the other geometry's kernels).
#[test]
fn large_tensors_run_at_the_contexts_workgroup_and_match_the_reference() {
    use fused_optim::gpu::tensors::{ranges_tuning, RANGES_MIN_WORKGROUP_SIZE};
    let Some(ctx) = gpu() else { return };
    let context = ctx.options().tuning;
    assert!(
        context.workgroup_size > RANGES_MIN_WORKGROUP_SIZE,
        "{context:?}"
    );
    const LARGE: [usize; 4] = [3, 40_000, 70_001, 1_000_003];
    let adam: OptimizerConfig = AdamConfig::default().into();
    let chosen = |lens: &[usize]| {
        TensorOptimizer::new(&ctx, &specs(lens, |_| 0), &[adam])
            .unwrap()
            .tuning()
    };
    assert_eq!(chosen(&LARGE), context);
    assert_eq!(
        chosen(&LENS).workgroup_size,
        RANGES_MIN_WORKGROUP_SIZE,
        "LENS idle most of a 256 x 2 block"
    );
    let lens64: Vec<u64> = LARGE.iter().map(|&n| n as u64).collect();
    assert_eq!(ranges_tuning(context, &lens64), context);
    // 1000 tensors of 500..1600 elements: about half idle at 2048-element blocks.
    let small: Vec<u64> = (0..1000).map(|i| 500 + (i * 37) % 1100).collect();
    assert_eq!(
        ranges_tuning(context, &small).workgroup_size,
        RANGES_MIN_WORKGROUP_SIZE
    );
    run(
        &ctx,
        &LARGE,
        "adam large tensors",
        adam,
        GradOptions::default(),
        3,
        Some(2),
        None,
    )
    .unwrap();
}

#[test]
fn clip_by_global_norm_and_skip_nonfinite_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    let options = GradOptions {
        max_norm: Some(1.0),
        clip_value: Some(5.0),
        skip_nonfinite: true,
        ..GradOptions::default()
    };
    run(
        &ctx,
        &LENS,
        "adam clipped",
        AdamConfig::default().into(),
        options,
        5,
        Some(4),
        Some(2),
    )
    .unwrap();
}

#[test]
fn parameter_groups_per_tensor() {
    let Some(ctx) = gpu() else { return };
    parameter_groups_in(&ctx, &LENS, Packing::Shared, (3, 0));
}

/// Tensors in buffers of their own: the whole ones with a multiple of 4 elements run the
/// flat kernel (its group from the dispatch's header) in the same step as the table's.
#[test]
fn whole_tensors_in_their_own_buffers_run_the_flat_kernel_in_their_groups() {
    let Some(ctx) = gpu() else { return };
    parameter_groups_in(&ctx, &OWN_LENS, Packing::Own, (7, 5));
    // Large whole tensors inside shared pages get flat dispatches of their own (0, 2, 5);
    // 3 (gradients in its params' buffer) and the small ones stay on the table's 3.
    parameter_groups_in(&ctx, &PAGED_LENS, Packing::Shared, (6, 3));
    let options = GradOptions {
        max_norm: Some(1.0),
        clip_value: Some(5.0),
        skip_nonfinite: true,
        ..GradOptions::default()
    };
    // A relocation (new buffers) and a skipped step with an infinite gradient in tensor 5,
    // in buffers of their own and in shared pages (the norm over flat and table dispatches).
    for (lens, packing) in [(&OWN_LENS, Packing::Own), (&PAGED_LENS, Packing::Shared)] {
        run_packed(
            &ctx,
            lens,
            &format!("adam clipped, {packing:?}"),
            AdamConfig::default().into(),
            options,
            (5, Some(4), Some(2)),
            packing,
        )
        .unwrap();
    }
    let sgd = SgdConfig {
        lr: 1e-2,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-2,
        ..Default::default()
    };
    run_packed(
        &ctx,
        &OWN_LENS,
        "sgd, own buffers",
        sgd.into(),
        GradOptions::default(),
        (3, Some(2), None),
        Packing::Own,
    )
    .unwrap();
}

/// [`placement`]'s pages with tensors of at least `DIRECT_MIN_ELEMENTS` among small ones.
const PAGED_LENS: [usize; 7] = [70_000, 3, 65_536, 80_000, 5, 65_540, 1023];

/// Whole tensors with a multiple of 4 elements (flat kernel) and without (table), in both
/// groups of `parameter_groups_in`; tensor 5 (the one `run` poisons) a whole one.
const OWN_LENS: [usize; 7] = [1024, 3, 4096, 260, 1023, 40_000, 8];

/// Two parameter groups (AdamW with and without decay, tensors alternating) over `lens`
/// placed by `packing`, against one reference per group, with a schedule on group 1;
/// `dispatches` is what [`TensorOptimizer::dispatches`] must report.
fn parameter_groups_in(
    ctx: &GpuContext,
    lens: &[usize],
    packing: Packing,
    dispatches: (usize, usize),
) {
    let ctx = ctx.clone();
    let decayed = AdamConfig {
        lr: 3e-3,
        weight_decay: 0.1,
        ..AdamConfig::adamw()
    };
    let plain = AdamConfig {
        lr: 1e-3,
        weight_decay: 0.0,
        ..AdamConfig::adamw()
    };
    let group = |k: usize| k % 2;
    let mut rng = Rng::new(99);
    let p: Vec<Vec<f32>> = lens.iter().map(|&n| params0(&mut rng, n)).collect();
    let mut world = World::packed(&ctx, lens, 1, &p, packing);
    let mut opt =
        TensorOptimizer::new(&ctx, &specs(lens, group), &[decayed.into(), plain.into()]).unwrap();
    // One reference per group over that group's tensors, concatenated.
    let members = |g: usize| (0..lens.len()).filter(move |&k| group(k) == g);
    let mut refs: Vec<(ReferenceOptimizer, Vec<f64>)> = [decayed, plain]
        .iter()
        .enumerate()
        .map(|(gi, c)| {
            let n = members(gi).map(|k| lens[k]).sum();
            let p0: Vec<f64> = members(gi)
                .flat_map(|k| p[k].iter().map(|&x| f64::from(x)))
                .collect();
            (ReferenceOptimizer::new(*c, n).unwrap(), p0)
        })
        .collect();
    let mut peaks: Vec<Vec<f64>> = refs
        .iter()
        .map(|(_, p)| p.iter().map(|x| x.abs()).collect())
        .collect();
    for k in 1..=4u64 {
        if k == 3 {
            // A schedule: group 1's lr changes mid-run.
            opt.set_group_lr(1, 5e-4).unwrap();
            refs[1].0.set_lr(5e-4).unwrap();
        }
        let g: Vec<Vec<f32>> = lens.iter().map(|&n| grads(&mut rng, n)).collect();
        world.write_grads(&ctx, &g);
        opt.step(&world.bindings()).unwrap();
        assert_eq!(opt.dispatches(), dispatches, "{packing:?}");
        let got = world.read(&ctx, lens).unwrap();
        for (gi, (r, want)) in refs.iter_mut().enumerate() {
            let gg: Vec<f64> = members(gi)
                .flat_map(|k| g[k].iter().map(|&x| f64::from(x)))
                .collect();
            r.step(want, &gg).unwrap();
            track_peak(&mut peaks[gi], want);
            let got_g: Vec<f32> = members(gi).flat_map(|k| got[k].clone()).collect();
            check_params(
                &format!("group {gi}"),
                &got_g,
                want,
                &peaks[gi],
                k,
                RTOL_PER_STEP,
            )
            .unwrap();
        }
    }
    assert_eq!(opt.step_count(), 4);
}

#[test]
fn bad_ranges_are_refused_before_anything_is_written() {
    let Some(ctx) = gpu() else { return };
    let align = ctx
        .device()
        .limits()
        .min_storage_buffer_offset_alignment
        .max(16) as u64;
    let lens = [10usize, 7];
    let mut opt =
        TensorOptimizer::new(&ctx, &specs(&lens, |_| 0), &[AdamConfig::default().into()]).unwrap();
    let page = poisoned_buffer(&ctx, 4096);
    let grads = poisoned_buffer(&ctx, 4096);
    let at = |buffer, byte_offset| BufferRange {
        buffer,
        byte_offset,
    };
    // (what, (param 0, grad 0, param 1, grad 1) byte offsets, grad 1 in the params' page)
    type Case<'a> = (&'a str, (u64, u64, u64, u64), bool);
    let cases: Vec<Case> = vec![
        ("misaligned param", (4, 0, align * 4, align * 4), false),
        (
            "misaligned grad",
            (0, align + 4, align * 4, align * 4),
            false,
        ),
        ("past the end", (0, 0, 4096 * 4 - 16, align * 4), false),
        ("params overlap", (0, 0, 0, align * 4), false),
        // Gradients of tensor 1 in the params of tensor 0 (same buffer).
        ("grad inside params", (0, align * 8, align * 4, 0), true),
    ];
    for (what, (p0, g0, p1, g1), grads_in_page) in cases {
        let gb = if grads_in_page { &page } else { &grads };
        let bindings = [
            TensorBinding {
                param: at(&page, p0),
                grad: at(&grads, g0),
            },
            TensorBinding {
                param: at(&page, p1),
                grad: at(gb, g1),
            },
        ];
        match opt.step(&bindings) {
            Err(Error::TensorRange { .. }) => {}
            other => panic!("{what}: expected Error::TensorRange, got {other:?}"),
        }
    }
    // One binding per tensor.
    assert!(matches!(
        opt.step(&[TensorBinding {
            param: at(&page, 0),
            grad: at(&grads, 0)
        }]),
        Err(Error::LengthMismatch { .. })
    ));
    // A buffer without STORAGE usage.
    let plain = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    assert!(matches!(
        opt.step(&[
            TensorBinding {
                param: at(&plain, 0),
                grad: at(&grads, 0)
            },
            TensorBinding {
                param: at(&page, align * 4),
                grad: at(&grads, align * 4)
            },
        ]),
        Err(Error::MissingUsage { .. })
    ));
    assert_eq!(opt.step_count(), 0, "a refused step is not counted");
    let words = read_f32(&ctx, &page, 0, 4096).unwrap();
    assert!(
        words.iter().all(|w| w.to_bits() == POISON),
        "a refused step wrote"
    );
    // Construction errors.
    assert!(matches!(
        TensorOptimizer::new(&ctx, &specs(&lens, |k| k), &[AdamConfig::default().into()]),
        Err(Error::TensorRange { .. })
    ));
    assert!(matches!(
        TensorOptimizer::new(&ctx, &specs(&[0], |_| 0), &[AdamConfig::default().into()]),
        Err(Error::TensorRange { .. })
    ));
    assert!(matches!(
        TensorOptimizer::new(&ctx, &[], &[AdamConfig::default().into()]),
        Err(Error::Empty { .. })
    ));
}

#[test]
fn vec4_f32_lanes_store_only_the_live_elements() {
    // The default transport on lavapipe is u64 lanes (whole-lane stores); this runs the
    // element-wise stores of the vec4<f32> transport.
    let Some(ctx) = gpu().map(|c| {
        c.with_context_options(fused_optim::ContextOptions {
            lane_transport: fused_optim::LaneTransport::F32x4,
            ..fused_optim::ContextOptions::default()
        })
    }) else {
        return;
    };
    assert!(!ctx.uses_u64_lanes());
    run(
        &ctx,
        &LENS,
        "adam f32 lanes",
        AdamConfig::default().into(),
        GradOptions::default(),
        3,
        Some(2),
        None,
    )
    .unwrap();
}

/// `set_configs` (a checkpoint's hyper-parameters): another weight decay is taken and the
/// next step follows it (against the reference with that configuration); a configuration of
/// another structure (AMSGrad's extra state, another optimizer) or the wrong count is a typed
/// error and the old configuration stays.
#[test]
fn set_configs_takes_hyper_parameters_and_refuses_other_structures() {
    let Some(ctx) = gpu() else { return };
    let lens = [300usize, 77];
    let mut opt =
        TensorOptimizer::new(&ctx, &specs(&lens, |_| 0), &[AdamConfig::default().into()]).unwrap();
    let amsgrad = AdamConfig {
        amsgrad: true,
        ..AdamConfig::default()
    };
    for bad in [amsgrad.into(), SgdConfig::default().into()] {
        let e = opt.set_configs(&[bad]).unwrap_err();
        assert!(matches!(e, Error::InvalidCombination { .. }), "{e}");
    }
    let e = opt
        .set_configs(&[AdamConfig::default().into(), AdamConfig::default().into()])
        .unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }), "{e}");
    // Another weight decay (a different kernel specialisation: L2 decay on) is taken.
    let decayed = AdamConfig {
        weight_decay: 0.5,
        ..AdamConfig::default()
    };
    opt.set_configs(&[decayed.into()]).unwrap();
    let mut rng = Rng::new(0x5E7C);
    let p: Vec<Vec<f32>> = lens.iter().map(|&n| params0(&mut rng, n)).collect();
    let mut world = World::new(&ctx, &lens, 0, &p);
    let g: Vec<Vec<f32>> = lens.iter().map(|&n| grads(&mut rng, n)).collect();
    world.write_grads(&ctx, &g);
    opt.step(&world.bindings()).unwrap();
    let total: usize = lens.iter().sum();
    let decayed_config: OptimizerConfig = decayed.into();
    let mut reference = ReferenceOptimizer::new(decayed_config, total).unwrap();
    let mut want = concat(&p);
    reference.step(&mut want, &concat(&g)).unwrap();
    let peak: Vec<f64> = want.iter().map(|x| x.abs()).collect();
    let got: Vec<f32> = world.read(&ctx, &lens).unwrap().concat();
    check_params("adam set_configs", &got, &want, &peak, 1, RTOL_PER_STEP).unwrap();
}
