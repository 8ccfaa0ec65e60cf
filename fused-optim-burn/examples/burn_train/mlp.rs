//! The MLP task: 784-256-10 (ReLU, cross-entropy) on MNIST-format idx files, mini-batches of
//! 64 in a seeded order; test accuracy at the end.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use fused_optim::GpuContext;
use fused_optim_tools::playground::data::Rng;
use fused_optim_tools::playground::idx::{load_mnist, Mnist};

use crate::race::{race, Report};
use crate::Args;

const BATCH: usize = 64;
const HIDDEN: usize = 256;
const PIXELS: usize = 784;

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }
}

/// Rows `idx` of the images (f32, [len, 784]) and their labels.
fn batch(m: &Mnist, idx: &[usize], test: bool, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let (images, labels) = if test {
        (&m.test_images, &m.test_labels)
    } else {
        (&m.train_images, &m.train_labels)
    };
    let mut x = Vec::with_capacity(idx.len() * PIXELS);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        x.extend(images.row(i).iter().map(|&v| v as f32));
        y.push(labels[i] as i64);
    }
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), PIXELS]), device),
        Tensor::from_data(TensorData::new(y, [idx.len()]), device),
    )
}

fn accuracy(model: &Mlp, m: &Mnist, device: &Device) -> f64 {
    let n = m.test_labels.len();
    let mut correct = 0usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let (x, _) = batch(m, chunk, true, device);
        let pred = model.forward(x).argmax(1).into_data();
        correct += pred
            .iter::<i64>()
            .zip(chunk)
            .filter(|(p, &i)| *p == m.test_labels[i] as i64)
            .count();
    }
    correct as f64 / n as f64
}

/// Train the MLP with both optimizers; the report has test accuracy as its metric.
pub fn run(
    device: &Device,
    ctx: &GpuContext,
    args: &Args,
) -> Result<Report, Box<dyn std::error::Error>> {
    let (data, source) = match &args.mnist {
        Some(dir) => (load_mnist(dir)?, dir.display().to_string()),
        None => {
            let dir = args.out.join("synthetic-mnist");
            crate::synthetic::write_mnist_like(&dir, 6000, 1000, args.seed)?;
            (
                load_mnist(&dir)?,
                format!("synthetic idx set in {}", dir.display()),
            )
        }
    };
    let steps = args.steps.unwrap_or(300);
    let lr = args.lr.unwrap_or(1e-3);
    let ad = device.clone().autodiff();
    let init = Mlp {
        hidden: LinearConfig::new(PIXELS, HIDDEN).init(&ad),
        out: LinearConfig::new(HIDDEN, 10).init(&ad),
    };
    // One seeded order of mini-batches, the same for both optimizers.
    let n = data.train_labels.len();
    let mut rng = Rng::new(args.seed);
    let mut order = Vec::new();
    while order.len() < steps * BATCH {
        order.extend(rng.permutation(n));
    }
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let trained = race(
        "mlp",
        format!("784-{HIDDEN}-10 MLP, batch {BATCH}, AdamW lr {lr}; data: {source}"),
        device,
        ctx,
        init,
        steps,
        lr,
        args.quiet,
        |model: &Mlp, step| {
            let (x, y) = batch(&data, &order[step * BATCH..(step + 1) * BATCH], false, &ad);
            ce.forward(model.forward(x), y)
        },
    )?;
    let mut report = trained.report;
    report.eval = (
        "test accuracy",
        accuracy(&trained.burn.valid(), &data, device),
        accuracy(&trained.fused.valid(), &data, device),
    );
    report.png = crate::plot::curves(&args.out, &report)?;
    Ok(report)
}
