//! A circuit breaker per processor, fed by the outcomes of real requests and by the health
//! endpoint. Closed: requests flow. Open: none until the cool-down ends. Half-open: exactly
//! one request (a real payment, which a failing processor rejects without recording) probes.

use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failures that open a closed breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker waits before letting one probe through.
pub const OPEN_COOLDOWN_MS: u64 = 250;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What the breaker lets a caller do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Not before this instant (or a state change, whichever comes first).
    NotBefore(Instant),
    /// A probe is in flight; wait for its outcome.
    ProbeInFlight,
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker { state: State::Closed { consecutive_failures: 0 } }
    }
}

impl Breaker {
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::NotBefore(until),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Admit::Yes
            }
            State::HalfOpen { probing: true } => Admit::ProbeInFlight,
        }
    }

    /// Records a success; returns true when this changed the breaker's state.
    pub fn success(&mut self) -> bool {
        let changed = !matches!(self.state, State::Closed { .. });
        self.state = State::Closed { consecutive_failures: 0 };
        changed
    }

    /// Records a failure; returns true when this changed whether requests may flow.
    pub fn failure(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { consecutive_failures } if consecutive_failures + 1 < FAILURES_TO_OPEN => {
                self.state = State::Closed { consecutive_failures: consecutive_failures + 1 };
                false
            }
            State::Open { .. } => false,
            _ => {
                self.state = State::Open { until: now + Duration::from_millis(OPEN_COOLDOWN_MS) };
                true
            }
        }
    }

    /// The health endpoint says failing: stop sending until a probe shows otherwise.
    pub fn health_failing(&mut self, now: Instant) -> bool {
        if matches!(self.state, State::Closed { .. }) {
            self.state = State::Open { until: now + Duration::from_millis(OPEN_COOLDOWN_MS) };
            return true;
        }
        false
    }

    /// The health endpoint says healthy: an open breaker may probe at once.
    pub fn health_ok(&mut self) -> bool {
        if let State::Open { .. } = self.state {
            self.state = State::HalfOpen { probing: false };
            return true;
        }
        false
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!b.failure(t0));
            assert_eq!(b.admit(t0), Admit::Yes);
        }
        assert!(b.failure(t0));
        let until = t0 + Duration::from_millis(OPEN_COOLDOWN_MS);
        assert_eq!(b.admit(t0), Admit::NotBefore(until));
        assert_eq!(b.admit(until), Admit::Yes);
        assert_eq!(b.admit(until), Admit::ProbeInFlight);
        assert!(b.success());
        assert_eq!(b.admit(until), Admit::Yes);
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.health_failing(t0);
        let t1 = t0 + Duration::from_millis(OPEN_COOLDOWN_MS);
        assert_eq!(b.admit(t1), Admit::Yes);
        assert!(b.failure(t1));
        assert!(matches!(b.admit(t1), Admit::NotBefore(_)));
    }

    #[test]
    fn healthy_report_allows_a_probe_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.health_failing(t0);
        assert!(b.health_ok());
        assert_eq!(b.admit(t0), Admit::Yes);
        assert_eq!(b.admit(t0), Admit::ProbeInFlight);
    }

    #[test]
    fn success_resets_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(b.is_closed());
    }
}
