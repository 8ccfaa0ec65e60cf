//! Learning-rate schedules with PyTorch's `torch.optim.lr_scheduler` formulas.
//!
//! A schedule maps the epoch counter `e` (the number of `scheduler.step()` calls so far, 0
//! before the first) and the base learning rate to the learning rate. Setting it on an
//! optimizer writes one host-side scalar: no pipeline or bind group is rebuilt.
//!
//! ```
//! use fused_optim::schedule::{LrSchedule, Scheduler};
//! // Linear warm-up over 5 epochs, then cosine annealing over 95.
//! let schedule = LrSchedule::Sequential {
//!     schedules: vec![
//!         LrSchedule::Linear { start_factor: 0.1, end_factor: 1.0, total_iters: 5 },
//!         LrSchedule::CosineAnnealing { t_max: 95, eta_min: 0.0 },
//!     ],
//!     milestones: vec![5],
//! };
//! let mut s = Scheduler::new(schedule, 0.1).unwrap();
//! assert!((s.lr() - 0.01).abs() < 1e-12); // warm-up starts at 0.1 x base
//! for _ in 0..5 {
//!     s.step();
//! }
//! assert!((s.lr() - 0.1).abs() < 1e-12); // cosine starts at the base lr
//! ```

use std::f64::consts::PI;

use crate::error::{Error, Result};

/// How one-cycle anneals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// Cosine annealing.
    Cos,
    /// Linear annealing.
    Linear,
}

/// A learning-rate schedule (PyTorch's class in brackets).
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base lr throughout.
    Constant,
    /// `factor * base` until `total_iters`, then `base` (`ConstantLR`).
    ConstantFactor {
        /// Multiplier during the first epochs.
        factor: f64,
        /// Epochs it lasts.
        total_iters: u64,
    },
    /// `base * gamma^floor(e / step_size)` (`StepLR`).
    Step {
        /// Epochs between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// `base * gamma^(number of milestones <= e)` (`MultiStepLR`).
    MultiStep {
        /// Increasing epochs at which the lr decays.
        milestones: Vec<u64>,
        /// Decay factor.
        gamma: f64,
    },
    /// `base * gamma^e` (`ExponentialLR`).
    Exponential {
        /// Decay factor per epoch.
        gamma: f64,
    },
    /// `eta_min + (base - eta_min) (1 + cos(pi e / t_max)) / 2` (`CosineAnnealingLR`,
    /// closed form).
    CosineAnnealing {
        /// Half-period in epochs.
        t_max: u64,
        /// Floor.
        eta_min: f64,
    },
    /// Cosine annealing restarted after `t_0`, then `t_0 t_mult`, ... epochs
    /// (`CosineAnnealingWarmRestarts`).
    CosineWarmRestarts {
        /// Length of the first cycle.
        t_0: u64,
        /// Growth of each cycle (>= 1).
        t_mult: u64,
        /// Floor.
        eta_min: f64,
    },
    /// `base * (start + (end - start) min(e, total) / total)` (`LinearLR`, the usual
    /// warm-up).
    Linear {
        /// Factor at epoch 0.
        start_factor: f64,
        /// Factor from `total_iters` on.
        end_factor: f64,
        /// Epochs of the ramp.
        total_iters: u64,
    },
    /// The 1cycle policy (`OneCycleLR`, two phases); the base lr is ignored.
    OneCycle {
        /// Peak lr.
        max_lr: f64,
        /// Steps in the cycle.
        total_steps: u64,
        /// Fraction of the cycle spent increasing (PyTorch default 0.3).
        pct_start: f64,
        /// Annealing shape (PyTorch default cos).
        anneal: Anneal,
        /// Initial lr = max_lr / div_factor (default 25).
        div_factor: f64,
        /// Final lr = initial lr / final_div_factor (default 1e4).
        final_div_factor: f64,
    },
    /// One schedule after another (`SequentialLR`): schedule k runs from milestone k-1 with
    /// its own epoch counter starting at 0.
    Sequential {
        /// The schedules, in order.
        schedules: Vec<LrSchedule>,
        /// `schedules.len() - 1` increasing epochs at which the next one starts.
        milestones: Vec<u64>,
    },
}

fn invalid(name: &'static str, value: f64, requirement: &'static str) -> Error {
    Error::InvalidHyperParameter {
        optimizer: "lr schedule",
        name,
        value,
        requirement,
    }
}

fn cosine(base: f64, eta_min: f64, t: f64, period: f64) -> f64 {
    eta_min + (base - eta_min) * (1.0 + (PI * t / period).cos()) / 2.0
}

impl LrSchedule {
    /// PyTorch's `OneCycleLR` defaults around `max_lr` and `total_steps`.
    pub fn one_cycle(max_lr: f64, total_steps: u64) -> Self {
        Self::OneCycle {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal: Anneal::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
        }
    }

    /// Check the parameters as PyTorch does.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Constant | Self::Exponential { .. } => Ok(()),
            Self::ConstantFactor { factor, .. } if !(0.0..=1.0).contains(factor) => {
                Err(invalid("factor", *factor, "must be in [0, 1]"))
            }
            Self::Step { step_size: 0, .. } => Err(invalid("step_size", 0.0, "must be >= 1")),
            Self::MultiStep { milestones, .. } if milestones.windows(2).any(|w| w[0] > w[1]) => {
                Err(invalid("milestones", 0.0, "must be increasing"))
            }
            Self::CosineAnnealing { t_max: 0, .. } => Err(invalid("t_max", 0.0, "must be >= 1")),
            Self::CosineWarmRestarts { t_0, t_mult, .. } if *t_0 == 0 || *t_mult == 0 => Err(
                invalid("t_0/t_mult", 0.0, "t_0 must be >= 1 and t_mult >= 1"),
            ),
            Self::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    Err(invalid("start_factor", *start_factor, "must be in (0, 1]"))
                } else if !(0.0..=1.0).contains(end_factor) {
                    Err(invalid("end_factor", *end_factor, "must be in [0, 1]"))
                } else if *total_iters == 0 {
                    Err(invalid("total_iters", 0.0, "must be >= 1"))
                } else {
                    Ok(())
                }
            }
            Self::OneCycle {
                total_steps,
                pct_start,
                max_lr,
                ..
            } => {
                if *total_steps < 2 {
                    Err(invalid("total_steps", *total_steps as f64, "must be >= 2"))
                } else if !(0.0..=1.0).contains(pct_start) {
                    Err(invalid("pct_start", *pct_start, "must be in [0, 1]"))
                } else if !(max_lr.is_finite() && *max_lr >= 0.0) {
                    Err(invalid("max_lr", *max_lr, "must be finite and >= 0"))
                } else {
                    Ok(())
                }
            }
            Self::Sequential {
                schedules,
                milestones,
            } => {
                if schedules.is_empty() || milestones.len() + 1 != schedules.len() {
                    return Err(invalid(
                        "milestones",
                        milestones.len() as f64,
                        "need exactly one milestone fewer than schedules",
                    ));
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(invalid("milestones", 0.0, "must be strictly increasing"));
                }
                schedules.iter().try_for_each(Self::validate)
            }
            _ => Ok(()),
        }
    }

    /// The learning rate at epoch `e` for base learning rate `base`.
    pub fn lr_at(&self, base: f64, e: u64) -> f64 {
        let ef = e as f64;
        match self {
            Self::Constant => base,
            Self::ConstantFactor {
                factor,
                total_iters,
            } => {
                if e < *total_iters {
                    base * factor
                } else {
                    base
                }
            }
            Self::Step { step_size, gamma } => base * gamma.powi((e / step_size) as i32),
            Self::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= e).count() as i32)
            }
            Self::Exponential { gamma } => base * gamma.powi(e as i32),
            Self::CosineAnnealing { t_max, eta_min } => cosine(base, *eta_min, ef, *t_max as f64),
            Self::CosineWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                let (mut t_cur, mut t_i) = (e, *t_0);
                while t_cur >= t_i {
                    t_cur -= t_i;
                    t_i *= t_mult;
                }
                cosine(base, *eta_min, t_cur as f64, t_i as f64)
            }
            Self::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                let progress = ef.min(*total_iters as f64) / *total_iters as f64;
                base * (start_factor + (end_factor - start_factor) * progress)
            }
            Self::OneCycle {
                max_lr,
                total_steps,
                pct_start,
                anneal,
                div_factor,
                final_div_factor,
            } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let peak_step = pct_start * *total_steps as f64 - 1.0;
                let last_step = *total_steps as f64 - 1.0;
                let shape = |start: f64, end: f64, pct: f64| match anneal {
                    Anneal::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
                    Anneal::Linear => (end - start) * pct + start,
                };
                if ef <= peak_step {
                    shape(initial, *max_lr, ef / peak_step)
                } else {
                    shape(*max_lr, min, (ef - peak_step) / (last_step - peak_step))
                }
            }
            Self::Sequential {
                schedules,
                milestones,
            } => {
                let k = milestones.iter().filter(|&&m| m <= e).count();
                let start = if k == 0 { 0 } else { milestones[k - 1] };
                schedules[k].lr_at(base, e - start)
            }
        }
    }
}

/// A schedule with its epoch counter, like a PyTorch scheduler object.
#[derive(Clone, Debug)]
pub struct Scheduler {
    schedule: LrSchedule,
    base: f64,
    epoch: u64,
}

impl Scheduler {
    /// A scheduler at epoch 0 over `base_lr`.
    pub fn new(schedule: LrSchedule, base_lr: f64) -> Result<Self> {
        schedule.validate()?;
        Ok(Self {
            schedule,
            base: base_lr,
            epoch: 0,
        })
    }

    /// The learning rate of the current epoch.
    pub fn lr(&self) -> f64 {
        self.schedule.lr_at(self.base, self.epoch)
    }

    /// Advance one epoch and return the new learning rate (PyTorch's `scheduler.step()`).
    pub fn step(&mut self) -> f64 {
        self.epoch += 1;
        self.lr()
    }

    /// Epochs stepped so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}
