//! Seeded data for the small experiments.

use ndarray::{Array1, Array2};

/// SplitMix64: small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// `y = 4 + 3x + N(0, 1)` with x uniform in [0, 2): (x, y).
pub fn linear(n: usize, seed: u64) -> (Array1<f64>, Array1<f64>) {
    let mut rng = Rng::new(seed);
    let x = Array1::from_shape_fn(n, |_| 2.0 * rng.uniform());
    let y = x.mapv(|x| 4.0 + 3.0 * x) + Array1::from_shape_fn(n, |_| rng.normal());
    (x, y)
}

/// Two 2-D gaussian classes (unit variance, centres (-1, -1) and (1.5, 1.5)), n per class:
/// (points, labels 0/1).
pub fn two_gaussians(n: usize, seed: u64) -> (Array2<f64>, Array1<f64>) {
    let mut rng = Rng::new(seed);
    let mut x = Array2::zeros((2 * n, 2));
    let mut y = Array1::zeros(2 * n);
    for i in 0..2 * n {
        let (c, label) = if i < n { (-1.0, 0.0) } else { (1.5, 1.0) };
        x[[i, 0]] = c + rng.normal();
        x[[i, 1]] = c + rng.normal();
        y[i] = label;
    }
    (x, y)
}

/// XOR-like data: points uniform in [-1, 1]^2, kept 0.1 away from both axes, labelled 1
/// where the signs of x and y differ.
pub fn xor(n: usize, seed: u64) -> (Array2<f64>, Array1<f64>) {
    let mut rng = Rng::new(seed);
    let mut x = Array2::zeros((n, 2));
    let mut y = Array1::zeros(n);
    let mut i = 0;
    while i < n {
        let (a, b) = (2.0 * rng.uniform() - 1.0, 2.0 * rng.uniform() - 1.0);
        if a.abs() < 0.1 || b.abs() < 0.1 {
            continue;
        }
        x[[i, 0]] = a;
        x[[i, 1]] = b;
        y[i] = if (a < 0.0) != (b < 0.0) { 1.0 } else { 0.0 };
        i += 1;
    }
    (x, y)
}
