//! The parts of ZeRO sharding that need no MPI: shard plans, the fixed-order reduction,
//! shard checkpoints (merge, re-shard, refusal of inconsistent sets). The MPI runs are in
//! `tests/zero.rs` (feature `mpi`).

mod common;

use common::Rng;
use fused_optim::checkpoint::{OptimizerState, TensorValues};
use fused_optim::zero::checkpoint::{read_shard, save_shard, shard_path, shard_set};
use fused_optim::zero::*;
use fused_optim::*;

fn check_tiles(plan: &ShardPlan, n: usize, world: usize) {
    assert_eq!(plan.world(), world);
    let mut next = 0;
    for r in plan.ranges() {
        assert_eq!(r.start, next, "{plan:?}");
        assert!(r.end > r.start, "empty shard in {plan:?}");
        next = r.end;
    }
    assert_eq!(next, n);
}

/// The smallest largest shard of any contiguous split of `lens` into `world` non-empty
/// groups, by exhaustive dynamic programming (independent of the planner's search).
fn optimal_max(lens: &[usize], world: usize) -> usize {
    let m = lens.len();
    let prefix: Vec<usize> = std::iter::once(0)
        .chain(lens.iter().scan(0, |a, &l| {
            *a += l;
            Some(*a)
        }))
        .collect();
    // best[k][i]: first i segments in k groups.
    let inf = usize::MAX;
    let mut best = vec![vec![inf; m + 1]; world + 1];
    best[0][0] = 0;
    for k in 1..=world {
        for i in k..=m {
            for j in (k - 1)..i {
                if best[k - 1][j] != inf {
                    let load = prefix[i] - prefix[j];
                    best[k][i] = best[k][i].min(best[k - 1][j].max(load));
                }
            }
        }
    }
    best[world][m]
}

#[test]
fn segment_plans_are_whole_balanced_and_optimal() {
    let mut rng = Rng::new(11);
    for case in 0..400 {
        let m = 1 + (rng.next_u64() % 12) as usize;
        let lens: Vec<usize> = (0..m)
            .map(|_| {
                if rng.uniform() < 0.2 {
                    1 + (rng.next_u64() % 5000) as usize
                } else {
                    1 + (rng.next_u64() % 50) as usize
                }
            })
            .collect();
        let n: usize = lens.iter().sum();
        for world in 1..=m.min(6) {
            let plan = ShardPlan::new(ShardLayout::Segments, &lens, world).unwrap();
            check_tiles(&plan, n, world);
            // Every shard boundary is a segment boundary.
            let bounds: Vec<usize> = lens
                .iter()
                .scan(0, |a, &l| {
                    *a += l;
                    Some(*a)
                })
                .collect();
            for r in plan.ranges() {
                assert!(
                    r.start == 0 || bounds.contains(&r.start),
                    "case {case}: {plan:?}"
                );
            }
            assert_eq!(
                plan.max_len(),
                optimal_max(&lens, world),
                "case {case}: lens {lens:?} world {world}"
            );
        }
        // More ranks than segments: refused with a typed error.
        assert!(matches!(
            ShardPlan::new(ShardLayout::Segments, &lens, m + 1),
            Err(Error::Shard { .. })
        ));
    }
}

#[test]
fn aligned_plans_start_on_the_alignment() {
    for (n, world, align) in [
        (10_007usize, 4usize, 256usize),
        (1, 1, 256),
        (256 * 3 + 1, 4, 256),
        (200_003, 4, 1 << 15),
        (7, 3, 1),
    ] {
        let plan = ShardPlan::new(ShardLayout::Aligned { align }, &[n], world).unwrap();
        check_tiles(&plan, n, world);
        for r in plan.ranges() {
            assert_eq!(r.start % align, 0);
        }
        let per = n.div_ceil(world).div_ceil(align) * align;
        assert_eq!(plan.range(0).unwrap().len(), per.min(n));
    }
    // 300 elements in 256-blocks leave ranks 2 and 3 of 4 empty.
    assert!(matches!(
        ShardPlan::new(ShardLayout::ALIGNED_256, &[300], 4),
        Err(Error::Shard { .. })
    ));
    for bad in [
        ShardPlan::new(ShardLayout::Aligned { align: 0 }, &[10], 1),
        ShardPlan::new(ShardLayout::Segments, &[], 1),
        ShardPlan::new(ShardLayout::Segments, &[3, 0, 2], 2),
        ShardPlan::new(ShardLayout::Segments, &[3], 0),
    ] {
        assert!(matches!(bad, Err(Error::Shard { .. })), "{bad:?}");
    }
    for text in ["segments", "aligned:256", "aligned:32768"] {
        assert_eq!(ShardLayout::from_text(text).unwrap().to_text(), text);
    }
    for bad in ["aligned:0", "aligned:", "rows", ""] {
        assert!(ShardLayout::from_text(bad).is_err(), "{bad}");
    }
    assert!(ShardPlan::from_ranges(ShardLayout::Segments, 10, vec![0..4, 5..10]).is_err());
    assert!(ShardPlan::from_ranges(ShardLayout::Segments, 10, vec![0..4, 4..9]).is_err());
    assert!(ShardPlan::from_ranges(ShardLayout::Segments, 10, vec![0..4, 4..4, 4..10]).is_err());
    assert!(ShardPlan::from_ranges(ShardLayout::Segments, 10, vec![0..4, 4..10]).is_ok());
}

#[test]
fn a_reduction_of_mismatched_parts_is_a_typed_error_and_leaves_out_alone() {
    let (a, b) = (vec![1.0f32; 10], vec![2.0f32; 9]);
    let mut out = vec![7.0f32; 10];
    let e = reduce_in_rank_order(&[&a[..], &b[..]], &mut out, GradReduction::Sum);
    assert!(
        matches!(
            e,
            Err(Error::LengthMismatch {
                expected: 10,
                got: 9,
                ..
            })
        ),
        "{e:?}"
    );
    let e = reduce_in_rank_order(&[], &mut out, GradReduction::Mean);
    assert!(matches!(e, Err(Error::Empty { .. })), "{e:?}");
    assert!(out.iter().all(|&x| x == 7.0));
}

#[test]
fn the_reduction_adds_neighbours_first_then_pairs_of_pairs() {
    let mut rng = Rng::new(5);
    let len = 70_001; // more than two CHUNKs, odd
    for world in 1..=8usize {
        let parts: Vec<Vec<f32>> = (0..world).map(|_| common::grads(&mut rng, len)).collect();
        // The tree written out by hand for each world size.
        let expected = |i: usize| -> f32 {
            let g = |r: usize| parts[r][i];
            match world {
                1 => g(0),
                2 => g(0) + g(1),
                3 => (g(0) + g(1)) + g(2),
                4 => (g(0) + g(1)) + (g(2) + g(3)),
                5 => ((g(0) + g(1)) + (g(2) + g(3))) + g(4),
                6 => ((g(0) + g(1)) + (g(2) + g(3))) + (g(4) + g(5)),
                7 => ((g(0) + g(1)) + (g(2) + g(3))) + ((g(4) + g(5)) + g(6)),
                8 => ((g(0) + g(1)) + (g(2) + g(3))) + ((g(4) + g(5)) + (g(6) + g(7))),
                _ => unreachable!(),
            }
        };
        for reduction in [GradReduction::Sum, GradReduction::Mean] {
            let views: Vec<&[f32]> = parts.iter().map(|p| &p[..]).collect();
            let mut out = vec![f32::NAN; len];
            reduce_in_rank_order(&views, &mut out, reduction).unwrap();
            for (i, &o) in out.iter().enumerate() {
                let e = match reduction {
                    GradReduction::Sum => expected(i),
                    GradReduction::Mean => expected(i) / world as f32,
                };
                assert_eq!(o.to_bits(), e.to_bits(), "world {world} element {i}");
            }
        }
    }
}

/// A CPU optimizer's state after a few steps, and its state as a checkpoint.
fn trained(config: OptimizerConfig, n: usize) -> (CpuOptimizer, OptimizerState) {
    let mut rng = Rng::new(3);
    let mut p = common::params0(&mut rng, n);
    let mut opt = CpuOptimizer::new(config, n).unwrap();
    for _ in 0..3 {
        opt.step(&mut p, &common::grads(&mut rng, n)).unwrap();
    }
    let tensors = opt
        .state_names()
        .into_iter()
        .map(|s| {
            (
                s.to_string(),
                TensorValues::F32(opt.state(s).unwrap().to_vec()),
            )
        })
        .collect();
    let state = OptimizerState {
        config: *opt.config(),
        host: opt.host_state(),
        n,
        tensors,
        groups: Vec::new(),
        shapes: Vec::new(),
    };
    (opt, state)
}

fn cut(state: &OptimizerState, r: std::ops::Range<usize>) -> OptimizerState {
    OptimizerState {
        n: r.len(),
        shapes: Vec::new(),
        tensors: state
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), TensorValues::F32(v.to_f32()[r.clone()].to_vec())))
            .collect(),
        ..state.clone()
    }
}

fn write_set(dir: &std::path::Path, state: &OptimizerState, plan: &ShardPlan) {
    for (rank, r) in plan.ranges().iter().enumerate() {
        let info = ShardInfo {
            rank,
            world: plan.world(),
            range: r.clone(),
            n: plan.n(),
            layout: plan.layout(),
        };
        save_shard(dir, &info, &cut(state, r.clone())).unwrap();
    }
}

#[test]
fn shard_sets_merge_and_reshard_exactly() {
    let n = 10_007;
    let (opt, whole) = trained(AdamConfig::adamw().into(), n);
    let tmp = std::env::temp_dir().join(format!("fused-optim-zero-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let plan4 = ShardPlan::new(ShardLayout::Segments, &[3001, 17, 4096, 2893], 4).unwrap();
    write_set(&tmp, &whole, &plan4);
    assert_eq!(shard_set(&tmp).unwrap().len(), 4);
    // Merged: exactly the single-process state, loadable by the single-process optimizer.
    assert_eq!(merge(&tmp).unwrap(), whole);
    let merged = tmp.join("merged.safetensors");
    merge_to_file(&tmp, &merged).unwrap();
    let mut resumed = CpuOptimizer::new(AdamConfig::adamw(), n).unwrap();
    resumed.load_checkpoint(&merged).unwrap();
    for name in opt.state_names() {
        assert_eq!(resumed.state(name).unwrap(), opt.state(name).unwrap());
    }
    assert_eq!(resumed.host_state(), opt.host_state());
    // Any range of another world size, from the set or from the merged file.
    let plan2 = ShardPlan::new(ShardLayout::ALIGNED_256, &[n], 2).unwrap();
    for r in plan2
        .ranges()
        .iter()
        .chain([0..1, 3000..3020, 10_000..n].iter())
    {
        assert_eq!(load_range(&tmp, r.clone()).unwrap(), cut(&whole, r.clone()));
        assert_eq!(
            load_range(&merged, r.clone()).unwrap(),
            cut(&whole, r.clone())
        );
    }
    assert!(load_range(&tmp, 0..n + 1).is_err());
    let (info, state) = read_shard(&shard_path(&tmp, 2, 4)).unwrap();
    assert_eq!(info.range, plan4.range(2).unwrap());
    assert_eq!(state, cut(&whole, plan4.range(2).unwrap()));
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn inconsistent_shard_sets_are_refused() {
    let n = 10_007;
    let (_, whole) = trained(AdamConfig::default().into(), n);
    let plan = ShardPlan::new(ShardLayout::ALIGNED_256, &[n], 3).unwrap();
    let base = std::env::temp_dir().join(format!("fused-optim-zero-bad-{}", std::process::id()));
    let fresh = |name: &str| {
        let d = base.join(name);
        let _ = std::fs::remove_dir_all(&d);
        write_set(&d, &whole, &plan);
        d
    };
    // A missing rank.
    let d = fresh("missing");
    std::fs::remove_file(shard_path(&d, 1, 3)).unwrap();
    assert!(matches!(merge(&d), Err(Error::Checkpoint { .. })));
    // Two world sizes in one folder.
    let d = fresh("two-worlds");
    let plan2 = ShardPlan::new(ShardLayout::ALIGNED_256, &[n], 2).unwrap();
    write_set(&d, &whole, &plan2);
    let e = merge(&d).unwrap_err().to_string();
    assert!(e.contains("several world sizes"), "{e}");
    // One rank saved a later step.
    let d = fresh("later-step");
    let mut later = cut(&whole, plan.range(2).unwrap());
    later.host.step += 1;
    let info = ShardInfo {
        rank: 2,
        world: 3,
        range: plan.range(2).unwrap(),
        n,
        layout: plan.layout(),
    };
    save_shard(&d, &info, &later).unwrap();
    let e = merge(&d).unwrap_err().to_string();
    assert!(e.contains("not one consistent save"), "{e}");
    // A flipped byte in a shard's tensor data.
    let d = fresh("corrupt");
    let p = shard_path(&d, 0, 3);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x10;
    std::fs::write(&p, bytes).unwrap();
    let e = merge(&d).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    // A state of the wrong length for its shard.
    let d = base.join("wrong-len");
    assert!(save_shard(&d, &info, &cut(&whole, 0..5)).is_err());
    std::fs::remove_dir_all(&base).unwrap();
}
