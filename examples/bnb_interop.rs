//! fused-optim's side of `scripts/bnb_interop.py`: the 8-bit Adam/AdamW/Lion/SGD state of a
//! bitsandbytes optimizer, converted by the script into a `fused-optim-blockwise8/1`
//! checkpoint, is loaded here and stepped on; the state fused-optim saves is loaded back by
//! bitsandbytes' own `load_state_dict`.
//!
//! ```text
//! bnb_interop template OUT LENS MIN_SIZE adam|adamw|lion|sgd LR WD
//!     a fresh checkpoint (step 0) of the optimizer: its metadata is the script's template
//! bnb_interop step CKPT PARAMS GRADS K LENS MIN_SIZE adam|adamw|lion|sgd LR WD OUT_CKPT OUT_PARAMS
//!     load CKPT, take K steps over PARAMS with the K gradient vectors in GRADS, save
//! ```
//! `LENS` is a comma-separated list of tensor lengths; PARAMS, GRADS and OUT_PARAMS are raw
//! little-endian f32 files (GRADS: K vectors one after the other). `lion` is bitsandbytes'
//! `Lion8bit` defaults (betas (0.9, 0.99), decoupled decay), `sgd` its `SGD8bit` with
//! momentum 0.9 (L2 decay).
//!
//! `cargo build --release --example bnb_interop`

use std::path::Path;

use fused_optim::{
    AdamConfig, CpuOptimizer, Error, LionConfig, Optimizer, OptimizerConfig, SgdConfig, StateFormat,
};

fn read_f32(path: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{path}: {} bytes is not a whole number of f32",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn optimizer(
    lens: &str,
    min_size: &str,
    kind: &str,
    lr: &str,
    wd: &str,
) -> Result<CpuOptimizer, String> {
    let lens: Vec<usize> = lens
        .split(',')
        .map(|s| s.parse().map_err(|e| format!("lens: {e}")))
        .collect::<Result<_, _>>()?;
    let min_size: usize = min_size.parse().map_err(|e| format!("min size: {e}"))?;
    let lr: f64 = lr.parse().map_err(|e| format!("lr: {e}"))?;
    let wd: f64 = wd.parse().map_err(|e| format!("weight decay: {e}"))?;
    let adam = |base: AdamConfig| -> OptimizerConfig {
        // bitsandbytes' Adam8bit decouples its weight decay too.
        AdamConfig {
            decoupled_weight_decay: true,
            weight_decay: wd,
            lr,
            ..base
        }
        .into()
    };
    let config: OptimizerConfig = match kind {
        "adam" => adam(AdamConfig::default()),
        "adamw" => adam(AdamConfig::adamw()),
        "lion" => LionConfig {
            lr,
            betas: (0.9, 0.99),
            weight_decay: wd,
            ..LionConfig::default()
        }
        .into(),
        "sgd" => SgdConfig {
            lr,
            momentum: 0.9,
            weight_decay: wd,
            ..SgdConfig::default()
        }
        .into(),
        other => return Err(format!("unknown optimizer {other}")),
    };
    let n = lens.iter().sum();
    CpuOptimizer::builder(config, n)
        .segments(&lens)
        .state_format(StateFormat::Blockwise8 { min_size })
        .build()
        .map_err(|e: Error| e.to_string())
}

fn run(args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["template", out, lens, min_size, kind, lr, wd] => {
            let opt = optimizer(lens, min_size, kind, lr, wd)?;
            opt.save_checkpoint(Path::new(out))
                .map_err(|e| e.to_string())
        }
        ["step", ckpt, params, grads, k, lens, min_size, kind, lr, wd, out_ckpt, out_params] => {
            let mut opt = optimizer(lens, min_size, kind, lr, wd)?;
            opt.load_checkpoint(Path::new(ckpt))
                .map_err(|e| e.to_string())?;
            let mut p = read_f32(params)?;
            let g = read_f32(grads)?;
            let k: usize = k.parse().map_err(|e| format!("k: {e}"))?;
            if g.len() != k * p.len() {
                return Err(format!(
                    "{grads}: {} values, expected {k} x {}",
                    g.len(),
                    p.len()
                ));
            }
            for gk in g.chunks_exact(p.len()) {
                opt.step(&mut p, gk).map_err(|e| e.to_string())?;
            }
            opt.save_checkpoint(Path::new(out_ckpt))
                .map_err(|e| e.to_string())?;
            let bytes: Vec<u8> = p.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(out_params, bytes).map_err(|e| format!("{out_params}: {e}"))
        }
        _ => Err("usage: see the example's documentation (template | step)".into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("bnb_interop: {e}");
        std::process::exit(1);
    }
}
