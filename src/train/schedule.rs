//! The learning rate at each optimiser step: linear warmup from 0, then constant, linear or
//! cosine decay towards `lr * min_lr_ratio`, as transformers' `get_constant_schedule_with_warmup`,
//! `get_linear_schedule_with_warmup` (to 0: `min_lr_ratio = 0`) and
//! `get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate = min_lr_ratio)` compute it.
//!
//! A pure function of the step, so a resumed run needs no schedule state beyond the step.

use super::params::{Schedule, ScheduleOrigin, TrainParams};

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
    /// Which value optimiser step k runs at.
    pub origin: ScheduleOrigin,
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
            origin: params.schedule_origin,
        }
    }

    /// The learning rate of optimiser step `step` (from 1): the schedule's value at `step - 1`
    /// ([`ScheduleOrigin::Zero`], transformers' `LambdaLR` stepped after each optimiser step)
    /// or at `step` ([`ScheduleOrigin::One`]).
    pub fn at(&self, step: u64) -> f64 {
        match self.origin {
            ScheduleOrigin::Zero => self.value(step.saturating_sub(1)),
            ScheduleOrigin::One => self.value(step),
        }
    }

    /// The schedule at `s`: `lr * s / warmup` during warmup (s < warmup), then the decay over
    /// the remaining steps, reaching its minimum at `s = total`.
    pub fn value(&self, s: u64) -> f64 {
        if s < self.warmup {
            return self.lr * s as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((s - self.warmup) as f64 / span as f64).min(1.0);
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
            origin: ScheduleOrigin::One,
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

    #[test]
    fn origin_zero_is_transformers_lambda_lr() {
        // transformers: step k runs at lambda(k - 1); lambda(s) = s / warmup during warmup,
        // then min + (1 - min) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2.
        let s = LrSchedule {
            origin: ScheduleOrigin::Zero,
            ..sched(Schedule::Cosine)
        };
        assert_eq!(s.at(1), 0.0);
        assert_eq!(s.at(2), 0.1);
        assert_eq!(s.at(11), 1.0);
        assert!((s.at(61) - 0.55).abs() < 1e-12);
        let last = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 99.0 / 100.0).cos());
        assert!((s.at(110) - last).abs() < 1e-15);
        let no_warmup = LrSchedule { warmup: 0, ..s };
        assert_eq!(no_warmup.at(1), 1.0);
        for k in 1..=110 {
            assert_eq!(s.at(k), sched(Schedule::Cosine).at(k - 1));
        }
    }
}
