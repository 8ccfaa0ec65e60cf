//! Adam/AdamW with bf16 state tensors against the f64 reference, with a tolerance derived
//! from bf16's precision. Each store rounds a state value with relative error at most
//! u = 2^-9 (nearest even) or 2^-8 (stochastic). In m = b1 m + (1 - b1) g those errors decay
//! by b1 per step, so after k steps m is off by at most E_m = min(k, 1/(1-b1)) u max|m| (its
//! peak so far), and v by E_v = min(k, 1/(1-b2)) u max|v|. First-order propagation through
//! p -= (lr/bc1) m / d with d = sqrt(v)/sqrt(bc2) + eps bounds the step's error by
//! (lr/bc1) (E_m + |m| E_d / d) / (d - E_d), where E_d = min(E_v / (2 sqrt v), sqrt(E_v)) /
//! sqrt(bc2) bounds the error of d. The params' tolerance is twice the sum of those bounds
//! (room for second-order terms), on top of the f32 tolerance.

mod common;

use common::*;
use fused_optim::*;

const N: usize = 10_007;

fn run(config: AdamConfig, stochastic: bool, low: Option<LowFormat>) {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(21);
    let p0 = params0(&mut rng, N);
    let lp = low.map(|f| LowPrecisionParams::new(&ctx, &p0, f).unwrap());
    let flat = match &lp {
        Some(lp) => lp.master().clone(),
        None => FlatParams::from_slice(&ctx, &p0).unwrap(),
    };
    let mut opt =
        GpuOptimizer::with_bf16_state(&flat, lp.as_ref().map(|l| (l, false)), config, stochastic)
            .unwrap();
    // Half the memory: 2 bytes per state element.
    assert_eq!(
        opt.state_buffer("exp_avg").unwrap().size(),
        (N.next_multiple_of(4) * 2) as u64
    );
    let mut reference = ReferenceOptimizer::new(config, N).unwrap();
    let mut p: Vec<f64> = p0.iter().map(|&v| f64::from(v)).collect();
    let mut peak: Vec<f64> = p.iter().map(|v| v.abs()).collect();
    let mut bound = vec![0.0f64; N]; // the accumulated error bound per element
    let mut state_peaks = StatePeaks::new(&reference);
    let u = if stochastic {
        2f64.powi(-8)
    } else {
        2f64.powi(-9)
    };
    let (b1, b2) = config.betas;
    let v_name = if config.amsgrad {
        "max_exp_avg_sq"
    } else {
        "exp_avg_sq"
    };
    let mut peak_m = vec![0.0f64; N];
    let mut peak_v = vec![0.0f64; N];
    for k in 1..=20u64 {
        let g: Vec<f32> = grads(&mut rng, N);
        let g = match (&lp, low) {
            (Some(lp), Some(f)) => {
                let bits: Vec<u16> = g.iter().map(|&v| round16(f, v)).collect();
                lp.write_grad_bits(&bits).unwrap();
                bits.iter().map(|&b| value16(f, b)).collect()
            }
            _ => {
                flat.write_grads(&g).unwrap();
                g
            }
        };
        opt.step().unwrap();
        reference
            .step(&mut p, &g.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
            .unwrap();
        track_peak(&mut peak, &p);
        state_peaks.track(&reference);
        let (m, v) = (
            reference.state("exp_avg").unwrap(),
            reference.state(v_name).unwrap(),
        );
        track_peak(&mut peak_m, m);
        track_peak(&mut peak_v, v);
        let kf = k as f64;
        let (bc1, bc2) = (1.0 - b1.powi(k as i32), 1.0 - b2.powi(k as i32));
        for i in 0..N {
            let e_m = kf.min(1.0 / (1.0 - b1)) * u * peak_m[i];
            let e_v = kf.min(1.0 / (1.0 - b2)) * u * peak_v[i];
            let sv = v[i].sqrt();
            let d = sv / bc2.sqrt() + config.eps;
            let e_d = (e_v / (2.0 * sv)).min(e_v.sqrt()) / bc2.sqrt();
            let lower = (d - e_d).max(config.eps);
            bound[i] += 2.0 * (config.lr / bc1) * (e_m + m[i].abs() * e_d / d) / lower;
        }
        let got = flat.read_params().unwrap();
        for i in 0..N {
            let f32_part = RTOL_PER_STEP * k as f64 * peak[i].max(1e-2);
            let err = (f64::from(got[i]) - p[i]).abs();
            assert!(
                within(err, bound[i] + f32_part),
                "{config:?} sr={stochastic} step {k} p[{i}]: got {} want {} (err {err:.3e}, bound {:.3e})",
                got[i], p[i], bound[i]
            );
        }
    }
    // States: relative to their peaks, within bf16's precision per step.
    for (name, peak) in reference.state_names().iter().zip(&state_peaks.0) {
        check_state(
            name,
            &opt.read_state_f32(name).unwrap(),
            reference.state(name).unwrap(),
            peak,
            20,
            u,
        )
        .unwrap();
    }
}

#[test]
fn adam_and_adamw_with_bf16_state_follow_the_reference() {
    run(
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
        false,
        None,
    );
    run(
        AdamConfig {
            lr: 1e-2,
            amsgrad: true,
            ..AdamConfig::adamw()
        },
        false,
        None,
    );
    run(
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::adamw()
        },
        true,
        None,
    );
}

#[test]
fn bf16_state_with_bf16_params_and_grads() {
    run(
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::adamw()
        },
        true,
        Some(LowFormat::Bf16),
    );
}

#[test]
fn bf16_state_round_trips_through_load_and_checkpoint() {
    let Some(ctx) = gpu() else { return };
    let flat = FlatParams::from_slice(&ctx, &[1.0; 9]).unwrap();
    let mut opt = GpuOptimizer::with_bf16_state(&flat, None, AdamConfig::default(), false).unwrap();
    let values = [0.1f32, -2.5, 3.0e-5, 0.0, 1.0, 7.0, -0.333, 1e3, 2.0];
    opt.load_state_f32("exp_avg", &values).unwrap();
    let want: Vec<f32> = values
        .iter()
        .map(|&v| value16(LowFormat::Bf16, round16(LowFormat::Bf16, v)))
        .collect();
    assert_eq!(opt.read_state_f32("exp_avg").unwrap(), want);
    let dir = std::env::temp_dir().join(format!("fused-optim-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bf16.safetensors");
    opt.save_checkpoint(&path).unwrap();
    let mut other =
        GpuOptimizer::with_bf16_state(&flat, None, AdamConfig::default(), false).unwrap();
    other.load_checkpoint(&path).unwrap();
    assert_eq!(other.read_state_f32("exp_avg").unwrap(), want);
    std::fs::remove_dir_all(&dir).unwrap();
}
