//! The learning rate at each optimiser step: linear warmup from 0, then constant, linear or
//! cosine decay to `lr * min_lr_ratio` at the last step.
//!
//! A pure function of the step, so a resumed run needs no schedule state beyond the step.

use super::params::{Schedule, TrainParams};

/// The learning-rate schedule of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    pub min_ratio: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
    /// Shape after warmup.
    pub shape: Schedule,
}

impl LrSchedule {
    /// The schedule of `params`.
    pub fn new(params: &TrainParams) -> Self {
        LrSchedule {
            lr: params.lr,
            min_ratio: params.min_lr_ratio,
            warmup: params.warmup(),
            total: params.total_steps(),
            shape: params.schedule,
        }
    }

    /// The learning rate of optimiser step `step` (from 1): `lr * step / warmup` during warmup,
    /// then the decay over the remaining steps, reaching its minimum at the last step.
    pub fn at(&self, step: u64) -> f64 {
        if step <= self.warmup {
            return self.lr * step as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let r = self.min_ratio;
        let factor = match self.shape {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - (1.0 - r) * progress,
            Schedule::Cosine => {
                r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        self.lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(shape: Schedule) -> LrSchedule {
        LrSchedule {
            lr: 1.0,
            min_ratio: 0.1,
            warmup: 10,
            total: 110,
            shape,
        }
    }

    #[test]
    fn warmup_then_decay() {
        let s = sched(Schedule::Cosine);
        assert_eq!(s.at(1), 0.1);
        assert_eq!(s.at(5), 0.5);
        assert_eq!(s.at(10), 1.0);
        // Halfway through the decay: the midpoint of 1 and 0.1.
        assert!((s.at(60) - 0.55).abs() < 1e-12);
        assert!((s.at(110) - 0.1).abs() < 1e-12);
        let l = sched(Schedule::Linear);
        assert!((l.at(60) - 0.55).abs() < 1e-12);
        assert!((l.at(35) - 0.775).abs() < 1e-12);
        assert!((l.at(110) - 0.1).abs() < 1e-12);
        let c = sched(Schedule::Constant);
        assert_eq!(c.at(100), 1.0);
        let no_warmup = LrSchedule {
            warmup: 0,
            ..sched(Schedule::Cosine)
        };
        assert!(no_warmup.at(1) < 1.0 && no_warmup.at(1) > 0.99);
    }
}
