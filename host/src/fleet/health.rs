//! A backend's health: what its probes say and what real requests say.
//!
//! Two signals, combined into one [`Health`]:
//! - **Probes** (`/api/tags`, `/api/ps`) mark a backend down after `fall`
//!   failures in a row and up again after `rise` successes in a row. A
//!   refused connection (nothing listens) marks it down at once, from a
//!   probe or from a request alike: there is nothing to wait for.
//! - **The breaker** counts failures of real requests: a reset or early close
//!   before the response head, a first-byte timeout, a status the operator
//!   counts as failed (`retry_statuses`, by default 502, 503, 504, which
//!   includes Ollama's fast 503 "server busy"). After `failures` in a row it
//!   opens: no request is sent there for `open_for`. Then it is half-open:
//!   `trials` requests may go; one that succeeds closes the breaker, one that
//!   fails opens it again for twice as long (at most [`MAX_OPEN_FOR`]).
//!   Passing probes never close a breaker: a backend whose `/api/tags`
//!   answers while its inference answers 503 is exactly what it is for.
//!
//! A backend that went down and came back starts with a closed breaker.
//! Every change of state is logged once, with its reason.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::config::fleet::HealthConfig;
pub use crate::plugin::Health;
use crate::upstream::Failure;

/// The longest a breaker stays open between trials.
pub const MAX_OPEN_FOR: Duration = Duration::from_secs(120);

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { trials: u32, open_for: Duration },
}

#[derive(Debug)]
struct State {
    probed_up: bool,
    /// Probe results in a row: positive successes, negative failures.
    streak: i32,
    breaker: Breaker,
    reason: Option<String>,
    config: HealthConfig,
}

/// What a request's attempt at a backend may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A normal request.
    Normal,
    /// One of the half-open breaker's trials.
    Trial,
}

/// Health tracking of one backend.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            state: Mutex::new(State {
                probed_up: true,
                streak: 0,
                breaker: Breaker::Closed { failures: 0 },
                reason: None,
                config: HealthConfig::default(),
            }),
        }
    }
}

impl Tracker {
    /// Sets the thresholds (at start and on every reload; the state is kept).
    pub fn configure(&self, config: HealthConfig) {
        self.state.lock().unwrap().config = config;
    }

    /// The state now (an open breaker whose time is over reads as half-open).
    pub fn health(&self) -> Health {
        let state = self.state.lock().unwrap();
        health_of(&state, Instant::now())
    }

    /// Why it is not up, in words; `None` when up.
    pub fn reason(&self) -> Option<String> {
        let state = self.state.lock().unwrap();
        match health_of(&state, Instant::now()) {
            Health::Up => None,
            _ => state.reason.clone(),
        }
    }

    /// Asks to send a request there now: `None` while it is down or its
    /// breaker open (or half-open with every trial taken). A [`Pass::Trial`]
    /// must be answered with [`Tracker::succeeded`] or [`Tracker::failed`], or
    /// given back with [`Tracker::abandoned`].
    pub fn pass(&self) -> Option<Pass> {
        let mut state = self.state.lock().unwrap();
        let config = state.config;
        if !state.probed_up {
            return None;
        }
        let now = Instant::now();
        if let Breaker::Open { until, open_for } = state.breaker {
            if now < until {
                return None;
            }
            state.breaker = Breaker::HalfOpen {
                trials: 0,
                open_for,
            };
        }
        match &mut state.breaker {
            Breaker::Closed { .. } => Some(Pass::Normal),
            Breaker::HalfOpen { trials, .. } if *trials < config.trials.max(1) => {
                *trials += 1;
                Some(Pass::Trial)
            }
            _ => None,
        }
    }

    /// A trial that ended with neither success nor failure (the client left).
    pub fn abandoned(&self, pass: Pass) {
        if pass != Pass::Trial {
            return;
        }
        let mut state = self.state.lock().unwrap();
        if let Breaker::HalfOpen { trials, .. } = &mut state.breaker {
            *trials = trials.saturating_sub(1);
        }
    }

    /// A request got its answer there.
    pub fn succeeded(&self, id: &str, pass: Pass) {
        let mut state = self.state.lock().unwrap();
        match &state.breaker {
            Breaker::Closed { failures: 0 } => return,
            Breaker::HalfOpen { .. } if pass == Pass::Trial => {
                tracing::info!(backend = %id, "breaker closed: a trial request succeeded");
            }
            // A request sent before the breaker opened says nothing of now.
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => return,
            Breaker::Closed { .. } => {}
        }
        state.breaker = Breaker::Closed { failures: 0 };
        if state.probed_up {
            state.reason = None;
        }
    }

    /// A request failed there, as `failure` says. An unreachable backend is
    /// down at once; other failures count toward opening the breaker.
    pub fn failed(&self, id: &str, failure: &Failure, pass: Pass) {
        if !failure.blames_backend() {
            if pass == Pass::Trial {
                self.abandoned(pass);
            }
            return;
        }
        let mut state = self.state.lock().unwrap();
        let config = state.config;
        if matches!(failure, Failure::Unreachable(_)) {
            mark_down(&mut state, id, failure.to_string());
            return;
        }
        let now = Instant::now();
        let reason = format!("requests failed: the last {failure}");
        match &mut state.breaker {
            Breaker::Closed { failures } => {
                *failures += 1;
                if *failures >= config.failures.max(1) {
                    tracing::warn!(
                        backend = %id,
                        failures = *failures,
                        open_for = ?config.open_for,
                        "breaker open: {failure}"
                    );
                    state.breaker = Breaker::Open {
                        until: now + config.open_for,
                        open_for: config.open_for,
                    };
                    if state.probed_up {
                        // A down backend's reason is why it is down.
                        state.reason = Some(reason);
                    }
                }
            }
            Breaker::HalfOpen { open_for, .. } if pass == Pass::Trial => {
                let open_for = (*open_for * 2).min(MAX_OPEN_FOR).max(config.open_for);
                tracing::warn!(backend = %id, ?open_for, "breaker open again: the trial {failure}");
                state.breaker = Breaker::Open {
                    until: now + open_for,
                    open_for,
                };
                if state.probed_up {
                    state.reason = Some(reason);
                }
            }
            // Late news of requests sent before the breaker opened.
            Breaker::HalfOpen { .. } | Breaker::Open { .. } => {}
        }
    }

    /// A probe succeeded.
    pub fn probe_succeeded(&self, id: &str) {
        let mut state = self.state.lock().unwrap();
        let config = state.config;
        state.streak = state.streak.max(0).saturating_add(1);
        if !state.probed_up && state.streak >= config.rise.max(1) as i32 {
            state.probed_up = true;
            // It went away and came back: what its breaker knew is old.
            state.breaker = Breaker::Closed { failures: 0 };
            state.reason = None;
            tracing::info!(backend = %id, "backend is up again");
        }
    }

    /// A probe failed with `failure`. Refused is down at once; other failures
    /// after `fall` in a row.
    pub fn probe_failed(&self, id: &str, failure: &Failure) {
        if !failure.blames_backend() {
            return;
        }
        let mut state = self.state.lock().unwrap();
        let config = state.config;
        state.streak = state.streak.min(0).saturating_sub(1);
        let refused = matches!(failure, Failure::Unreachable(_));
        if state.probed_up && (refused || -state.streak >= config.fall.max(1) as i32) {
            mark_down(&mut state, id, format!("probe: {failure}"));
        } else if !state.probed_up {
            state.reason = Some(format!("probe: {failure}"));
        }
    }

    /// Whether it should be probed at the short interval (down, or breaker
    /// not closed).
    pub fn wants_fast_probes(&self) -> bool {
        let state = self.state.lock().unwrap();
        !state.probed_up || !matches!(state.breaker, Breaker::Closed { .. })
    }

    /// The probe interval it wants now: `normal`, or the short one while it
    /// is down or its breaker is not closed.
    pub fn probe_interval(&self, normal: Duration) -> Duration {
        match self.wants_fast_probes() {
            true => normal.min(self.state.lock().unwrap().config.down_probe_interval),
            false => normal,
        }
    }
}

fn mark_down(state: &mut State, id: &str, reason: String) {
    if state.probed_up {
        tracing::warn!(backend = %id, "backend is down: {reason}");
    }
    state.probed_up = false;
    state.streak = state.streak.min(0);
    state.reason = Some(reason);
}

fn health_of(state: &State, now: Instant) -> Health {
    if !state.probed_up {
        return Health::Down;
    }
    match state.breaker {
        Breaker::Closed { .. } => Health::Up,
        Breaker::Open { until, .. } if now < until => Health::Open,
        Breaker::Open { .. } | Breaker::HalfOpen { .. } => Health::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Cause, CauseKind};

    fn refused() -> Failure {
        Failure::Unreachable(Cause {
            kind: CauseKind::Refused,
            words: "connection refused".into(),
        })
    }

    fn busy() -> Failure {
        Failure::Answered(http::StatusCode::SERVICE_UNAVAILABLE)
    }

    fn tracker(config: HealthConfig) -> Tracker {
        let t = Tracker::default();
        t.configure(config);
        t
    }

    fn config() -> HealthConfig {
        HealthConfig {
            failures: 3,
            open_for: Duration::from_millis(50),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn breaker_opens_after_failures_in_a_row_then_lets_one_trial_through() {
        let t = tracker(config());
        for _ in 0..2 {
            let pass = t.pass().unwrap();
            t.failed("b", &busy(), pass);
        }
        // A success in between starts the count again.
        t.succeeded("b", Pass::Normal);
        for _ in 0..2 {
            t.failed("b", &busy(), Pass::Normal);
        }
        assert_eq!(t.health(), Health::Up);
        t.failed("b", &busy(), Pass::Normal);
        assert_eq!(t.health(), Health::Open);
        assert!(t.reason().unwrap().contains("503"), "{:?}", t.reason());
        assert_eq!(t.pass(), None);
        // Passing probes do not close it.
        t.probe_succeeded("b");
        t.probe_succeeded("b");
        assert_eq!(t.pass(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.health(), Health::HalfOpen);
        assert_eq!(t.pass(), Some(Pass::Trial));
        assert_eq!(t.pass(), None, "one trial at a time");
        // The trial fails: open again, for longer.
        t.failed("b", &busy(), Pass::Trial);
        assert_eq!(t.health(), Health::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.health(), Health::Open, "open twice as long");
        std::thread::sleep(Duration::from_millis(50));
        let trial = t.pass().unwrap();
        assert_eq!(trial, Pass::Trial);
        t.succeeded("b", trial);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.reason(), None);
    }

    #[test]
    fn a_down_backend_keeps_the_reason_it_is_down() {
        let t = tracker(HealthConfig {
            failures: 1,
            ..config()
        });
        t.failed("b", &refused(), Pass::Normal);
        // Late news of a stream that broke when it went down.
        t.failed("b", &busy(), Pass::Normal);
        assert_eq!(t.health(), Health::Down);
        assert!(t.reason().unwrap().contains("refused"), "{:?}", t.reason());
    }

    #[test]
    fn an_abandoned_trial_frees_its_place() {
        let t = tracker(HealthConfig {
            failures: 1,
            open_for: Duration::ZERO,
            ..config()
        });
        t.failed("b", &busy(), Pass::Normal);
        let trial = t.pass().unwrap();
        assert_eq!(t.pass(), None);
        t.abandoned(trial);
        assert_eq!(t.pass(), Some(Pass::Trial));
    }

    #[test]
    fn refused_is_down_at_once_and_rise_brings_it_back_with_a_closed_breaker() {
        let t = tracker(config());
        for _ in 0..3 {
            t.failed("b", &busy(), Pass::Normal);
        }
        t.failed("b", &refused(), Pass::Normal);
        assert_eq!(t.health(), Health::Down);
        assert!(t.wants_fast_probes());
        assert_eq!(t.pass(), None);
        t.probe_succeeded("b");
        assert_eq!(t.health(), Health::Down, "rise is 2");
        t.probe_succeeded("b");
        assert_eq!(t.health(), Health::Up);
        assert!(!t.wants_fast_probes());
    }

    #[test]
    fn probes_fall_after_failures_in_a_row_unless_refused() {
        let t = tracker(config());
        let timed_out = Failure::TimedOut(Duration::from_secs(5));
        t.probe_failed("b", &timed_out);
        t.probe_failed("b", &timed_out);
        t.probe_succeeded("b");
        t.probe_failed("b", &timed_out);
        t.probe_failed("b", &timed_out);
        assert_eq!(t.health(), Health::Up);
        t.probe_failed("b", &timed_out);
        assert_eq!(t.health(), Health::Down);
        let t = tracker(config());
        t.probe_failed("b", &refused());
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn failures_on_llamagates_side_count_for_nothing() {
        let t = tracker(HealthConfig {
            failures: 1,
            ..config()
        });
        let local = Failure::Local(Cause {
            kind: CauseKind::OutOfDescriptors,
            words: "no fd".into(),
        });
        t.failed("b", &local, Pass::Normal);
        t.probe_failed("b", &local);
        assert_eq!(t.health(), Health::Up);
    }
}
