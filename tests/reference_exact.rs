//! The f64 reference receives every hyper-parameter in f64: Adagrad's
//! `initial_accumulator_value = 0.1` starts `sum` at the f64 value 0.1 (not at the f32
//! 0.100000001490116), and one step equals the formula evaluated in f64 by hand, bit for bit.

use fused_optim::{AdagradConfig, LionConfig, ReferenceOptimizer, ScheduleFreeConfig};

#[test]
fn adagrad_initial_accumulator_is_exact_in_f64() {
    let config = AdagradConfig {
        lr: 0.1,
        initial_accumulator_value: 0.1,
        eps: 1e-10,
        ..Default::default()
    };
    let mut opt = ReferenceOptimizer::new(config, 3).unwrap();
    assert_eq!(opt.state("sum").unwrap(), &[0.1, 0.1, 0.1]);
    let mut p = vec![1.0, -2.0, 0.5];
    let g = [0.3, -0.7, 0.0];
    opt.step(&mut p, &g).unwrap();
    for i in 0..3 {
        let sum = 0.1 + g[i] * g[i];
        assert_eq!(opt.state("sum").unwrap()[i], sum);
        let want = [1.0, -2.0, 0.5][i] - 0.1 * g[i] / (sum.sqrt() + 1e-10);
        assert_eq!(p[i], want, "element {i}");
    }
}

#[test]
fn lr_and_coefficients_stay_f64_in_the_reference() {
    // A learning rate that is not an f32 value: the reference must use it as given.
    let lr = 0.1 + 1e-12;
    let mut opt = ReferenceOptimizer::new(
        LionConfig {
            lr,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let mut p = vec![1.0];
    opt.step(&mut p, &[0.5]).unwrap();
    assert_eq!(p[0], 1.0 - lr);
    let mut sf = ReferenceOptimizer::new(
        ScheduleFreeConfig {
            lr,
            ..ScheduleFreeConfig::sgd()
        },
        1,
    )
    .unwrap();
    let mut y = vec![1.0];
    sf.step(&mut y, &[0.5]).unwrap();
    // First step: z = y = 1 and ckp1 = 1, so y = lerp(1, 1, 1) - lr * g = 1 - lr * g, in f64.
    assert_eq!(y[0], 1.0 - lr * 0.5);
}
