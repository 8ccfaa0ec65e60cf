//! A small fully connected network with a hand-written backward pass (ndarray, f64), whose
//! weights are one flat vector: `[W1 (out x in, row-major), b1, W2, b2, ...]`, so that one
//! fused optimizer step updates them all.

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::data::Rng;

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// tanh.
    Tanh,
    /// max(0, x).
    Relu,
}

/// What the network is trained to predict.
#[derive(Clone, Debug)]
pub enum Targets {
    /// One sigmoid output, binary cross-entropy; labels 0/1.
    Binary(Array1<f64>),
    /// Softmax over the outputs, cross-entropy; class indices.
    Classes(Vec<usize>),
}

impl Targets {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Binary(y) => y.len(),
            Targets::Classes(c) => c.len(),
        }
    }

    /// True with no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets of the rows `rows`.
    pub fn select(&self, rows: &[usize]) -> Targets {
        match self {
            Targets::Binary(y) => Targets::Binary(rows.iter().map(|&i| y[i]).collect()),
            Targets::Classes(c) => Targets::Classes(rows.iter().map(|&i| c[i]).collect()),
        }
    }
}

/// A multilayer perceptron: `sizes = [inputs, hidden..., outputs]`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Layer widths, inputs first.
    pub sizes: Vec<usize>,
    /// Nonlinearity of the hidden layers.
    pub activation: Activation,
}

impl Mlp {
    /// A network with these widths: at least an input and an output layer, none empty.
    pub fn new(sizes: &[usize], activation: Activation) -> crate::error::Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(fused_optim::Error::InvalidCombination {
                optimizer: "Mlp",
                reason: "an MLP needs at least an input and an output layer, none of width 0",
            }
            .into());
        }
        Ok(Self {
            sizes: sizes.to_vec(),
            activation,
        })
    }

    /// Number of weights and biases.
    pub fn num_params(&self) -> usize {
        self.sizes.windows(2).map(|w| w[1] * w[0] + w[1]).sum()
    }

    /// PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
    /// biases, seeded.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(self.num_params());
        for w in self.sizes.windows(2) {
            let bound = 1.0 / (w[0] as f64).sqrt();
            for _ in 0..w[1] * w[0] + w[1] {
                out.push(((2.0 * rng.uniform() - 1.0) * bound) as f32);
            }
        }
        out
    }

    fn layers<'a>(&self, params: &'a [f64]) -> Vec<(ArrayView2<'a, f64>, ArrayView1<'a, f64>)> {
        let mut out = Vec::new();
        let mut at = 0;
        for w in self.sizes.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let weights =
                ArrayView2::from_shape((fan_out, fan_in), &params[at..at + fan_in * fan_out])
                    .expect("layout");
            at += fan_in * fan_out;
            let bias = ArrayView1::from(&params[at..at + fan_out]);
            at += fan_out;
            out.push((weights, bias));
        }
        out
    }

    fn activate(&self, z: &mut Array2<f64>) {
        match self.activation {
            Activation::Tanh => z.mapv_inplace(f64::tanh),
            Activation::Relu => z.mapv_inplace(|v| v.max(0.0)),
        }
    }

    /// Pre-activations and activations of every layer; the last entry holds the outputs as
    /// probabilities.
    fn forward_all(&self, params: &[f64], x: &Array2<f64>, binary: bool) -> Vec<Array2<f64>> {
        let layers = self.layers(params);
        let mut acts = vec![x.clone()];
        for (l, (w, b)) in layers.iter().enumerate() {
            let mut z = acts[l].dot(&w.t()) + b;
            if l + 1 < layers.len() {
                self.activate(&mut z);
            } else if binary {
                z.mapv_inplace(|v| 1.0 / (1.0 + (-v).exp()));
            } else {
                for mut row in z.axis_iter_mut(Axis(0)) {
                    let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum = row.sum();
                    row /= sum;
                }
            }
            acts.push(z);
        }
        acts
    }

    /// Output probabilities (sigmoid for one output, softmax otherwise).
    pub fn predict(&self, params: &[f64], x: &Array2<f64>) -> Array2<f64> {
        let binary = *self.sizes.last().expect("layers") == 1;
        self.forward_all(params, x, binary)
            .pop()
            .expect("output layer")
    }

    /// Mean cross-entropy.
    pub fn loss(&self, params: &[f64], x: &Array2<f64>, t: &Targets) -> f64 {
        let p = self.predict(params, x);
        cross_entropy(&p, t)
    }

    /// Fraction of correct predictions.
    pub fn accuracy(&self, params: &[f64], x: &Array2<f64>, t: &Targets) -> f64 {
        let p = self.predict(params, x);
        let correct = match t {
            Targets::Binary(y) => p
                .column(0)
                .iter()
                .zip(y)
                .filter(|(p, y)| (**p > 0.5) == (**y > 0.5))
                .count(),
            Targets::Classes(c) => p
                .axis_iter(Axis(0))
                .zip(c)
                .filter(|(row, &c)| argmax(row) == c)
                .count(),
        };
        correct as f64 / t.len() as f64
    }

    /// Mean cross-entropy and its gradient with respect to every parameter (flat, same
    /// layout as the parameters).
    pub fn loss_and_grad(&self, params: &[f64], x: &Array2<f64>, t: &Targets) -> (f64, Vec<f64>) {
        let binary = matches!(t, Targets::Binary(_));
        let acts = self.forward_all(params, x, binary);
        let layers = self.layers(params);
        let out = acts.last().expect("output layer");
        let loss = cross_entropy(out, t);
        let m = x.nrows() as f64;
        // d loss / d z_last = (p - y) / m for sigmoid + BCE and for softmax + CE.
        let mut delta = out.clone();
        match t {
            Targets::Binary(y) => {
                let mut col = delta.column_mut(0);
                col -= y;
            }
            Targets::Classes(c) => {
                for (i, &k) in c.iter().enumerate() {
                    delta[[i, k]] -= 1.0;
                }
            }
        }
        delta /= m;
        let mut grads: Vec<(Array2<f64>, Array1<f64>)> = Vec::with_capacity(layers.len());
        for l in (0..layers.len()).rev() {
            let gw = delta.t().dot(&acts[l]);
            let gb = delta.sum_axis(Axis(0));
            grads.push((gw, gb));
            if l > 0 {
                let mut back = delta.dot(&layers[l].0);
                let a = &acts[l];
                match self.activation {
                    Activation::Tanh => back.zip_mut_with(a, |d, &a| *d *= 1.0 - a * a),
                    Activation::Relu => back.zip_mut_with(a, |d, &a| {
                        if a <= 0.0 {
                            *d = 0.0
                        }
                    }),
                }
                delta = back;
            }
        }
        grads.reverse();
        let mut flat = Vec::with_capacity(params.len());
        for (gw, gb) in grads {
            flat.extend(gw.iter());
            flat.extend(gb.iter());
        }
        (loss, flat)
    }

    /// Largest relative difference between the analytic gradient and central finite
    /// differences (step 1e-5), over every parameter: max |a - f| / max(|a| + |f|, floor)
    /// with floor = 1e-3 * max |a|. The floor keeps components far smaller than the gradient
    /// from turning the finite differences' rounding (~1e-10) into a large relative error.
    pub fn gradient_check(&self, params: &[f64], x: &Array2<f64>, t: &Targets) -> f64 {
        let (_, analytic) = self.loss_and_grad(params, x, t);
        let floor = 1e-3 * analytic.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        let mut p = params.to_vec();
        let h = 1e-5;
        let mut worst = 0.0f64;
        for i in 0..p.len() {
            let keep = p[i];
            p[i] = keep + h;
            let up = self.loss(&p, x, t);
            p[i] = keep - h;
            let down = self.loss(&p, x, t);
            p[i] = keep;
            let numeric = (up - down) / (2.0 * h);
            let rel = (analytic[i] - numeric).abs()
                / (analytic[i].abs() + numeric.abs()).max(floor).max(1e-12);
            worst = worst.max(rel);
        }
        worst
    }
}

fn argmax(row: &ArrayView1<f64>) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

fn cross_entropy(p: &Array2<f64>, t: &Targets) -> f64 {
    let eps = 1e-12;
    let total: f64 = match t {
        Targets::Binary(y) => p
            .column(0)
            .iter()
            .zip(y)
            .map(|(&p, &y)| -(y * (p + eps).ln() + (1.0 - y) * (1.0 - p + eps).ln()))
            .sum(),
        Targets::Classes(c) => c
            .iter()
            .enumerate()
            .map(|(i, &k)| -(p[[i, k]] + eps).ln())
            .sum(),
    };
    total / t.len() as f64
}

/// Rows `rows` of `x`.
pub fn select_rows(x: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
    let mut out = Array2::zeros((rows.len(), x.ncols()));
    for (k, &i) in rows.iter().enumerate() {
        out.slice_mut(s![k, ..]).assign(&x.row(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (x, y) = data::xor(16, 3);
        let cases = [
            (
                Mlp::new(&[2, 4, 1], Activation::Tanh).unwrap(),
                Targets::Binary(y.clone()),
            ),
            (
                Mlp::new(&[2, 5, 3, 1], Activation::Relu).unwrap(),
                Targets::Binary(y),
            ),
            (
                Mlp::new(&[2, 6, 3], Activation::Tanh).unwrap(),
                Targets::Classes((0..16).map(|i| i % 3).collect()),
            ),
        ];
        for (mlp, t) in cases {
            let params: Vec<f64> = mlp.init(9).iter().map(|&v| f64::from(v)).collect();
            let worst = mlp.gradient_check(&params, &x, &t);
            assert!(worst < 1e-5, "{:?}: relative error {worst}", mlp.sizes);
        }
    }
}
