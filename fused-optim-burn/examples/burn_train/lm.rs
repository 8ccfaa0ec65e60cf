//! The language-model task: a character-level transformer (token and position embeddings,
//! 2 pre-norm encoder layers with a causal mask, d = 128, 4 heads, feed-forward 512, a final
//! norm and a linear head) on the King James Genesis and Exodus the crate ships, batches of
//! 16 windows of 64 characters from the first 90% of the text; the loss on 32 fixed windows
//! of the last 10% at the end.

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use fused_optim::GpuContext;
use fused_optim_tools::playground::data::Rng;

use crate::race::{race, Report};
use crate::Args;

/// The text (public domain; see the file's first line).
const TEXT: &str = include_str!("../../data/kjv_genesis_exodus.txt");
const CONTEXT: usize = 64;
const BATCH: usize = 16;
const D: usize = 128;

#[derive(Module, Debug)]
struct Lm {
    token: Embedding,
    position: Embedding,
    encoder: TransformerEncoder,
    norm: LayerNorm,
    head: Linear,
}

impl Lm {
    fn new(vocab: usize, device: &Device) -> Self {
        Self {
            token: EmbeddingConfig::new(vocab, D).init(device),
            position: EmbeddingConfig::new(CONTEXT, D).init(device),
            encoder: TransformerEncoderConfig::new(D, 4 * D, 4, 2)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            norm: LayerNormConfig::new(D).init(device),
            head: LinearConfig::new(D, vocab).init(device),
        }
    }

    /// Logits [batch * CONTEXT, vocab] for windows `x` [batch, CONTEXT].
    fn forward(&self, x: Tensor<2, Int>) -> Tensor<2> {
        let [batch, len] = x.dims();
        let device = x.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .reshape([1, len])
            .repeat_dim(0, batch);
        let h = self.token.forward(x) + self.position.forward(positions);
        let mask = generate_autoregressive_mask(batch, len, &device);
        let h = self
            .encoder
            .forward(TransformerEncoderInput::new(h).mask_attn(mask));
        let logits = self.head.forward(self.norm.forward(h));
        let vocab = logits.dims()[2];
        logits.reshape([batch * len, vocab])
    }
}

/// The text as token ids, and the vocabulary size.
fn tokens() -> (Vec<i64>, usize) {
    let mut chars: Vec<char> = TEXT.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let ids = TEXT
        .chars()
        .map(|c| chars.binary_search(&c).expect("in the vocabulary") as i64)
        .collect();
    (ids, chars.len())
}

/// Windows starting at `starts`: inputs [n, CONTEXT] and next-character targets [n * CONTEXT].
fn windows(ids: &[i64], starts: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let mut x = Vec::with_capacity(starts.len() * CONTEXT);
    let mut y = Vec::with_capacity(starts.len() * CONTEXT);
    for &s in starts {
        x.extend_from_slice(&ids[s..s + CONTEXT]);
        y.extend_from_slice(&ids[s + 1..s + CONTEXT + 1]);
    }
    (
        Tensor::from_data(TensorData::new(x, [starts.len(), CONTEXT]), device),
        Tensor::from_data(TensorData::new(y, [starts.len() * CONTEXT]), device),
    )
}

/// Train the language model with both optimizers; the metric is the held-out loss (nats
/// per character).
pub fn run(
    device: &Device,
    ctx: &GpuContext,
    args: &Args,
) -> Result<Report, Box<dyn std::error::Error>> {
    let (ids, vocab) = tokens();
    let split = ids.len() * 9 / 10;
    let steps = args.steps.unwrap_or(200);
    let lr = args.lr.unwrap_or(3e-3);
    let ad = device.clone().autodiff();
    let init = Lm::new(vocab, &ad);
    let mut rng = Rng::new(args.seed);
    let starts: Vec<Vec<usize>> = (0..steps)
        .map(|_| {
            (0..BATCH)
                .map(|_| (rng.next_u64() % (split - CONTEXT - 1) as u64) as usize)
                .collect()
        })
        .collect();
    let held_out: Vec<usize> = (0..32)
        .map(|k| split + k * (ids.len() - split - CONTEXT - 1) / 32)
        .collect();
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let trained = race(
        "lm",
        format!(
            "char transformer: 2 layers, d {D}, 4 heads, context {CONTEXT}, vocab {vocab}, batch {BATCH}, \
             AdamW lr {lr}; {} characters of KJV Genesis + Exodus",
            ids.len()
        ),
        device,
        ctx,
        init,
        steps,
        lr,
        args.quiet,
        |model: &Lm, step| {
            let (x, y) = windows(&ids, &starts[step], &ad);
            ce.forward(model.forward(x), y)
        },
    )?;
    let ce_valid = CrossEntropyLossConfig::new().init(device);
    let eval = |m: &Lm| -> f64 {
        let (x, y) = windows(&ids, &held_out, device);
        f64::from(ce_valid.forward(m.forward(x), y).into_scalar::<f32>())
    };
    let mut report = trained.report;
    report.eval = (
        "held-out loss",
        eval(&trained.burn.valid()),
        eval(&trained.fused.valid()),
    );
    report.png = crate::plot::curves(&args.out, &report)?;
    Ok(report)
}
