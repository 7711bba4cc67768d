//! A circuit breaker per processor, fed by the outcomes of real requests, by the health
//! endpoint and by lookup checks. It has no state it cannot leave: every state ends by a
//! clock, by a check the prober runs, or by the outcome of a request it admitted.
//!
//! - **Closed**: requests flow; [`FAILURES_TO_OPEN`] consecutive failures open it.
//! - **Open**: nothing is sent until the cool-down ends; then the prober checks the processor
//!   with a request that records nothing (`GET /payments/{id}`).
//! - **Checking**: that check is in flight. It answers → half-open; it fails or outlives its
//!   deadline → open again. A processor that hangs therefore never gets a real payment pinned
//!   to it while it is open.
//! - **Half-open**: exactly one real payment probes (a failing processor rejects it without
//!   recording). Its success closes the breaker, its failure opens it, and if it is abandoned
//!   or outlives its deadline the slot is freed (an expired probe counts as a failure).
//!
//! Every admitted request carries a [`Permit`] and ends in exactly one of `success`,
//! `failure` or `abandon`; a permit whose probe slot was already taken back changes nothing
//! but what its outcome proves.

use std::time::Duration;
use tokio::time::Instant;

/// Consecutive failures that open a closed breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker waits before the prober checks the processor.
pub const OPEN_COOLDOWN_MS: u64 = 250;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    Checking { deadline: Instant },
    HalfOpen { probe: Option<(u64, Instant)> },
}

/// What the breaker lets a caller do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes(Permit),
    /// Not before this instant, or a state change, whichever comes first.
    NotBefore(Instant),
}

/// Proof that a request was admitted; hand it back with the request's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    /// The probe this request is, when it was admitted half-open.
    probe: Option<u64>,
}

impl Permit {
    /// For requests the breaker did not admit (re-sends that resolve an unknown outcome):
    /// their outcomes are evidence, but they hold no probe slot.
    pub const UNADMITTED: Permit = Permit { probe: None };
}

/// The breaker's state as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    Checking,
    HalfOpen,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::Checking => "checking",
            Phase::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
    next_probe: u64,
    /// How long a probe or a check may stay outstanding before it counts as failed; longer
    /// than the upstream timeout, so a live request always ends first.
    probe_timeout: Duration,
}

impl Breaker {
    pub fn new(probe_timeout: Duration) -> Breaker {
        Breaker { state: State::Closed { consecutive_failures: 0 }, next_probe: 0, probe_timeout }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open { until: now + Duration::from_millis(OPEN_COOLDOWN_MS) };
    }

    /// Expired probes and checks count as failed.
    fn expire(&mut self, now: Instant) {
        match self.state {
            State::Checking { deadline } | State::HalfOpen { probe: Some((_, deadline)) } if now >= deadline => self.open(now),
            _ => {}
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        self.expire(now);
        match self.state {
            State::Closed { .. } => Admit::Yes(Permit { probe: None }),
            State::Open { until } => Admit::NotBefore(until.max(now) + Duration::from_millis(OPEN_COOLDOWN_MS)),
            State::Checking { deadline } | State::HalfOpen { probe: Some((_, deadline)) } => Admit::NotBefore(deadline),
            State::HalfOpen { probe: None } => {
                self.next_probe += 1;
                self.state = State::HalfOpen { probe: Some((self.next_probe, now + self.probe_timeout)) };
                Admit::Yes(Permit { probe: Some(self.next_probe) })
            }
        }
    }

    /// Admits only while closed, when a request takes no probe slot.
    pub fn admit_closed(&self) -> Option<Permit> {
        self.is_closed().then_some(Permit { probe: None })
    }

    /// Records a success; returns true when this changed the breaker's state.
    pub fn success(&mut self, _permit: Permit) -> bool {
        let changed = !matches!(self.state, State::Closed { .. });
        self.state = State::Closed { consecutive_failures: 0 };
        changed
    }

    /// Records a failure; returns true when this changed whether requests may flow.
    pub fn failure(&mut self, _permit: Permit, now: Instant) -> bool {
        match self.state {
            State::Closed { consecutive_failures } if consecutive_failures + 1 < FAILURES_TO_OPEN => {
                self.state = State::Closed { consecutive_failures: consecutive_failures + 1 };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                // Half-open, any failure is news worth a cool-down, the probe's or another's.
                self.open(now);
                true
            }
            State::Open { .. } | State::Checking { .. } => false,
        }
    }

    /// An admitted request was never sent: free its probe slot, if it still holds one.
    pub fn abandon(&mut self, permit: Permit) -> bool {
        match (self.state, permit.probe) {
            (State::HalfOpen { probe: Some((current, _)) }, Some(mine)) if current == mine => {
                self.state = State::HalfOpen { probe: None };
                true
            }
            _ => false,
        }
    }

    /// The health endpoint says failing: stop sending until a check shows otherwise.
    pub fn health_failing(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } | State::HalfOpen { .. } => {
                self.open(now);
                true
            }
            State::Open { .. } | State::Checking { .. } => false,
        }
    }

    /// The health endpoint says healthy: one real payment may probe at once, even if an
    /// earlier probe is still out (its outcome still counts when it comes).
    pub fn health_ok(&mut self) -> bool {
        match self.state {
            State::Closed { .. } | State::HalfOpen { probe: None } => false,
            _ => {
                self.state = State::HalfOpen { probe: None };
                true
            }
        }
    }

    /// When the prober should next look at this breaker: `Some(now-or-earlier)` means check
    /// now (and the breaker moves to Checking); `Some(later)` means not before then; `None`
    /// means no check is needed (closed, half-open, or a check already running).
    pub fn start_check(&mut self, now: Instant) -> Option<Instant> {
        self.expire(now);
        match self.state {
            State::Open { until } if now >= until => {
                self.state = State::Checking { deadline: now + self.probe_timeout };
                Some(now)
            }
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// The prober's check answered: the processor is alive, let one real payment probe.
    pub fn check_ok(&mut self) -> bool {
        if let State::Checking { .. } = self.state {
            self.state = State::HalfOpen { probe: None };
            return true;
        }
        false
    }

    /// The prober's check failed: wait another cool-down.
    pub fn check_failed(&mut self, now: Instant) {
        if let State::Checking { .. } = self.state {
            self.open(now);
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Closed { .. } => Phase::Closed,
            State::Open { .. } => Phase::Open,
            State::Checking { .. } => Phase::Checking,
            State::HalfOpen { .. } => Phase::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

    fn yes(a: Admit) -> Permit {
        match a {
            Admit::Yes(p) => p,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(PROBE_TIMEOUT);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            assert!(!b.failure(Permit::UNADMITTED, t0));
            yes(b.admit(t0));
        }
        assert!(b.failure(Permit::UNADMITTED, t0));
        b
    }

    #[test]
    fn opens_after_consecutive_failures_then_checks_before_any_real_probe() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let until = t0 + Duration::from_millis(OPEN_COOLDOWN_MS);
        assert!(matches!(b.admit(t0), Admit::NotBefore(_)));
        assert_eq!(b.start_check(t0), Some(until));
        // Past the cool-down a real payment is still not admitted: the check goes first.
        assert!(matches!(b.admit(until), Admit::NotBefore(_)));
        assert_eq!(b.start_check(until), Some(until));
        assert_eq!(b.phase(), Phase::Checking);
        assert!(b.check_ok());
        let probe = yes(b.admit(until));
        assert!(matches!(b.admit(until), Admit::NotBefore(_)), "one probe at a time");
        assert!(b.success(probe));
        yes(b.admit(until));
    }

    #[test]
    fn failed_probe_reopens_and_abandoned_probe_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert!(b.health_ok());
        let probe = yes(b.admit(t0));
        assert!(b.abandon(probe));
        let probe = yes(b.admit(t0));
        assert!(!b.abandon(Permit::UNADMITTED), "only the probe's own permit frees it");
        assert!(b.failure(probe, t0));
        assert_eq!(b.phase(), Phase::Open);
    }

    #[test]
    fn a_probe_outstanding_past_its_deadline_counts_as_failed() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        b.health_ok();
        let _lost = yes(b.admit(t0));
        assert!(matches!(b.admit(t0 + PROBE_TIMEOUT / 2), Admit::NotBefore(_)));
        assert!(matches!(b.admit(t0 + PROBE_TIMEOUT), Admit::NotBefore(_)));
        assert_eq!(b.phase(), Phase::Open);
    }

    #[test]
    fn a_check_that_hangs_counts_as_failed() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_millis(OPEN_COOLDOWN_MS);
        assert_eq!(b.start_check(t1), Some(t1));
        assert_eq!(b.start_check(t1), None, "one check at a time");
        let t2 = t1 + PROBE_TIMEOUT;
        assert!(b.start_check(t2).is_some_and(|t| t > t2), "expired check reopens with a cool-down");
        assert_eq!(b.phase(), Phase::Open);
    }

    #[test]
    fn success_resets_failure_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(PROBE_TIMEOUT);
        b.failure(Permit::UNADMITTED, t0);
        b.failure(Permit::UNADMITTED, t0);
        b.success(Permit::UNADMITTED);
        b.failure(Permit::UNADMITTED, t0);
        assert!(b.is_closed());
    }

    #[derive(Clone, Debug)]
    enum Ev {
        Admit,
        Success(usize),
        Failure(usize),
        Abandon(usize),
        HealthOk,
        HealthFailing,
        Check,
        CheckOk,
        CheckFailed,
        Wait(u64),
    }

    fn any_event() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => Just(Ev::Admit),
            2 => any::<usize>().prop_map(Ev::Success),
            3 => any::<usize>().prop_map(Ev::Failure),
            2 => any::<usize>().prop_map(Ev::Abandon),
            1 => Just(Ev::HealthOk),
            1 => Just(Ev::HealthFailing),
            2 => Just(Ev::Check),
            1 => Just(Ev::CheckOk),
            1 => Just(Ev::CheckFailed),
            2 => (0u64..3_000).prop_map(Ev::Wait),
        ]
    }

    /// Runs `events`; each outcome event consumes one outstanding permit (admitted requests end
    /// exactly once). Returns the breaker and the clock.
    fn run(events: &[Ev]) -> (Breaker, Instant) {
        let mut now = Instant::now();
        let mut b = Breaker::new(PROBE_TIMEOUT);
        let mut out: Vec<Permit> = Vec::new();
        for e in events {
            let mut take = |i: usize| (!out.is_empty()).then(|| out.swap_remove(i % out.len()));
            match *e {
                Ev::Admit => {
                    if let Admit::Yes(p) = b.admit(now) {
                        out.push(p);
                    }
                }
                Ev::Success(i) => {
                    if let Some(p) = take(i) {
                        b.success(p);
                    }
                }
                Ev::Failure(i) => {
                    if let Some(p) = take(i) {
                        b.failure(p, now);
                    }
                }
                Ev::Abandon(i) => {
                    if let Some(p) = take(i) {
                        b.abandon(p);
                    }
                }
                Ev::HealthOk => {
                    b.health_ok();
                }
                Ev::HealthFailing => {
                    b.health_failing(now);
                }
                Ev::Check => {
                    b.start_check(now);
                }
                Ev::CheckOk => {
                    b.check_ok();
                }
                Ev::CheckFailed => b.check_failed(now),
                Ev::Wait(ms) => now += Duration::from_millis(ms),
            }
        }
        (b, now)
    }

    proptest! {
        /// Whatever happened before, a healthy report lets a payment through.
        #[test]
        fn a_healthy_report_always_admits_again(events in prop::collection::vec(any_event(), 0..200)) {
            let (mut b, now) = run(&events);
            b.health_ok();
            prop_assert!(matches!(b.admit(now), Admit::Yes(_)), "state {:?}", b.state);
        }

        /// Without any health report, the clock and the prober alone bring it back: after the
        /// probe deadline and the cool-down, a check that answers lets a payment through.
        #[test]
        fn time_and_a_good_check_always_admit_again(events in prop::collection::vec(any_event(), 0..200)) {
            let (mut b, mut now) = run(&events);
            now += PROBE_TIMEOUT + Duration::from_millis(OPEN_COOLDOWN_MS);
            if matches!(b.admit(now), Admit::Yes(_)) {
                return Ok(());
            }
            now += Duration::from_millis(OPEN_COOLDOWN_MS);
            prop_assert_eq!(b.start_check(now), Some(now), "state {:?}", b.state);
            prop_assert!(b.check_ok());
            prop_assert!(matches!(b.admit(now), Admit::Yes(_)), "state {:?}", b.state);
        }
    }
}
