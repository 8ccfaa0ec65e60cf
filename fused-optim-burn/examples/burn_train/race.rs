//! The side-by-side driver: two copies of one initial model, one stepped by Burn's AdamW and
//! one by fused-optim-burn's AdamW, alternating step by step on the same batches, each step
//! timed as a whole (forward + backward + optimizer) and in its optimizer part.

use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use fused_optim::{AdamConfig, GpuContext};
use fused_optim_burn::FusedOptimizer;
use indicatif::{ProgressBar, ProgressStyle};

/// Decoupled weight decay used by both sides (torch's AdamW default).
pub const WEIGHT_DECAY: f64 = 0.01;
/// Adam's eps on both sides.
pub const EPS: f64 = 1e-8;
/// Steps left out of the timing medians (pipeline compilation, Burn's autotune).
pub const WARMUP: usize = 5;

/// What one task measured.
pub struct Report {
    /// Task name (`mlp`, `lm`).
    pub task: &'static str,
    /// The model in words.
    pub model: String,
    /// Parameter tensors.
    pub tensors: usize,
    /// Parameters.
    pub params: usize,
    /// Steps per optimizer.
    pub steps: usize,
    /// Training loss per step: Burn's AdamW, ours.
    pub burn_loss: Vec<f32>,
    /// Training loss per step with fused-optim-burn.
    pub fused_loss: Vec<f32>,
    /// Held-out metric after training: (name, Burn's, ours).
    pub eval: (&'static str, f64, f64),
    /// Seconds per whole training step (forward + backward + optimizer), per step.
    pub burn_step_s: Vec<f64>,
    /// The same with fused-optim-burn.
    pub fused_step_s: Vec<f64>,
    /// Seconds of the optimizer part alone (from gradients ready to parameters updated).
    pub burn_opt_s: Vec<f64>,
    /// The same with fused-optim-burn.
    pub fused_opt_s: Vec<f64>,
    /// The PNG of the curves.
    pub png: std::path::PathBuf,
}

/// Median of the timed steps (after the warm-up).
pub fn median_after_warmup(v: &[f64]) -> f64 {
    let mut t: Vec<f64> = v.iter().skip(WARMUP.min(v.len() - 1)).copied().collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Mean of the last tenth of a curve (at least one point).
pub fn tail_mean(v: &[f32]) -> f64 {
    let k = (v.len() / 10).max(1);
    v[v.len() - k..].iter().map(|&x| f64::from(x)).sum::<f64>() / k as f64
}

impl Report {
    /// The summary table on stderr.
    pub fn print(&self) {
        let (bs, fs) = (
            median_after_warmup(&self.burn_step_s),
            median_after_warmup(&self.fused_step_s),
        );
        let (bo, fo) = (
            median_after_warmup(&self.burn_opt_s),
            median_after_warmup(&self.fused_opt_s),
        );
        eprintln!(
            "\n{} ({}; {} tensors, {} parameters, {} steps each)",
            self.task, self.model, self.tensors, self.params, self.steps
        );
        eprintln!("  {:<28} {:>14} {:>14}", "", "Burn AdamW", "fused-optim");
        eprintln!(
            "  {:<28} {:>14.4} {:>14.4}",
            "final loss (last 10% mean)",
            tail_mean(&self.burn_loss),
            tail_mean(&self.fused_loss)
        );
        eprintln!(
            "  {:<28} {:>14.4} {:>14.4}",
            self.eval.0, self.eval.1, self.eval.2
        );
        eprintln!(
            "  {:<28} {:>14.2} {:>14.2}   (Burn / ours {:.2})",
            "whole step, ms (median)",
            bs * 1e3,
            fs * 1e3,
            bs / fs
        );
        eprintln!(
            "  {:<28} {:>14.2} {:>14.2}   (Burn / ours {:.2})",
            "optimizer step, ms (median)",
            bo * 1e3,
            fo * 1e3,
            bo / fo
        );
        eprintln!("  curves: {}", self.png.display());
    }

    /// One JSON object of the figures.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "task": self.task,
            "model": self.model,
            "tensors": self.tensors,
            "params": self.params,
            "steps": self.steps,
            "burn_final_loss": tail_mean(&self.burn_loss),
            "fused_final_loss": tail_mean(&self.fused_loss),
            "eval_metric": self.eval.0,
            "burn_eval": self.eval.1,
            "fused_eval": self.eval.2,
            "burn_step_s": median_after_warmup(&self.burn_step_s),
            "fused_step_s": median_after_warmup(&self.fused_step_s),
            "burn_opt_s": median_after_warmup(&self.burn_opt_s),
            "fused_opt_s": median_after_warmup(&self.fused_opt_s),
            "png": self.png.display().to_string(),
        })
    }
}

/// Every float parameter copied into a new tensor (same ids): the two runs start from the
/// same weights without sharing storage (fused-optim-burn updates in place).
struct DeepCopy;

impl ModuleMapper for DeepCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // A new leaf with the same values (the copy is made below autodiff) that requires
        // gradients, as the parameters of a freshly initialised module do.
        param.map(|t| Tensor::from_inner(t.inner().add_scalar(0.0)).require_grad())
    }
}

/// The two trained models and what was measured.
pub struct Trained<M> {
    /// Stepped by Burn's AdamW.
    pub burn: M,
    /// Stepped by fused-optim-burn.
    pub fused: M,
    /// Losses and times (eval, png filled in by the task).
    pub report: Report,
}

/// Train copies of `init` for `steps` steps with each optimizer, alternating; `loss_of(model,
/// step)` is the training loss on batch `step` (the same batch for both).
#[allow(clippy::too_many_arguments)]
pub fn race<M: Module>(
    task: &'static str,
    model: String,
    device: &Device,
    ctx: &GpuContext,
    init: M,
    steps: usize,
    lr: f64,
    quiet: bool,
    loss_of: impl Fn(&M, usize) -> Tensor<1>,
) -> Result<Trained<M>, Box<dyn std::error::Error>> {
    let params = init.num_params();
    let mut theirs = init.clone().map(&mut DeepCopy);
    let mut ours = init.map(&mut DeepCopy);
    let mut burn_adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(EPS as f32)
        .with_weight_decay(WEIGHT_DECAY as f32)
        .init();
    let mut fused = FusedOptimizer::new(
        ctx,
        AdamConfig {
            lr,
            eps: EPS,
            weight_decay: WEIGHT_DECAY,
            ..AdamConfig::adamw()
        },
    );
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(task);
    let mut report = Report {
        task,
        model,
        tensors: 0,
        params,
        steps,
        burn_loss: Vec::with_capacity(steps),
        fused_loss: Vec::with_capacity(steps),
        eval: ("", f64::NAN, f64::NAN),
        burn_step_s: Vec::with_capacity(steps),
        fused_step_s: Vec::with_capacity(steps),
        burn_opt_s: Vec::with_capacity(steps),
        fused_opt_s: Vec::with_capacity(steps),
        png: Default::default(),
    };
    let every = (steps / 10).max(1);
    // A hidden bar (quiet, or stderr not a terminal) prints nothing, so print directly then.
    let line = |s: &str| {
        if bar.is_hidden() {
            eprintln!("{s}");
        } else {
            bar.println(s);
        }
    };
    line(
        format!(
            "{task}: {:>6} {:>12} {:>12}",
            "step", "Burn AdamW", "fused-optim"
        )
        .as_str(),
    );
    for step in 0..steps {
        let (m, loss, whole, opt) = timed_step(theirs, step, device, ctx, &loss_of, |m, g| {
            Ok(burn_adamw.step(lr, m, g))
        })?;
        theirs = m;
        report.burn_loss.push(loss);
        report.burn_step_s.push(whole);
        report.burn_opt_s.push(opt);
        let (m, loss, whole, opt) = timed_step(ours, step, device, ctx, &loss_of, |m, g| {
            Ok(fused.step(lr, m, g)?)
        })?;
        ours = m;
        report.fused_loss.push(loss);
        report.fused_step_s.push(whole);
        report.fused_opt_s.push(opt);
        let (lb, lf) = (report.burn_loss[step], report.fused_loss[step]);
        bar.set_message(format!("loss Burn {lb:.4} ours {lf:.4}"));
        bar.inc(1);
        if step % every == 0 || step + 1 == steps {
            line(format!("{task}: {step:>6} {lb:>12.4} {lf:>12.4}").as_str());
        }
        if !lb.is_finite() || !lf.is_finite() {
            return Err(
                format!("{task}: loss not finite at step {step} (Burn {lb}, ours {lf})").into(),
            );
        }
    }
    bar.finish_and_clear();
    report.tensors = fused.paths().len();
    Ok(Trained {
        burn: theirs,
        fused: ours,
        report,
    })
}

/// One training step: (model, loss, whole-step seconds, optimizer seconds). The gradients
/// are finished (device sync) before the optimizer part is timed; the step ends when both
/// Burn's work and the shared queue are idle.
fn timed_step<M: Module>(
    model: M,
    step: usize,
    device: &Device,
    ctx: &GpuContext,
    loss_of: &impl Fn(&M, usize) -> Tensor<1>,
    update: impl FnOnce(M, GradientsParams) -> Result<M, Box<dyn std::error::Error>>,
) -> Result<(M, f32, f64, f64), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let loss = loss_of(&model, step);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    device.sync()?;
    let t1 = Instant::now();
    let model = update(model, grads)?;
    device.sync()?;
    ctx.wait()?;
    let t2 = Instant::now();
    let value = loss.into_scalar::<f32>();
    Ok((
        model,
        value,
        (t2 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    ))
}
