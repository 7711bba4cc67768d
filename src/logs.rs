//! Rate-limited logging for conditions that can repeat on every request (a full disk, a
//! flood of failed admin attempts): the first occurrence is logged, then at most one line
//! per period, saying how many were suppressed in between.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter { every, last: None, suppressed: 0 }
    }

    /// `Some(suppressed since the last line)` when this occurrence may be logged.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_period_with_the_count_in_between() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(30));
        assert_eq!(l.allow_at(t0), Some(0));
        for s in 1..30 {
            assert_eq!(l.allow_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.allow_at(t0 + Duration::from_secs(30)), Some(29));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(31)), None);
    }
}
