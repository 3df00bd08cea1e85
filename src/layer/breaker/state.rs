//! The breaker's state, shared by every partition task of its route.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::names::{CIRCUIT_HELD, CIRCUIT_STATE, CIRCUIT_TRANSITIONS};
use crate::policy::CircuitBreaker;

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Records flow; outage failures are counted.
    Closed,
    /// The route is paused: calls wait, none is made.
    Open,
    /// One record is being tried; the others wait for its outcome. A breaker starts here:
    /// the route's first record probes.
    HalfOpen,
}

impl CircuitState {
    /// The `to` label of the transitions counter.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

struct State {
    phase: Phase,
    consecutive: u32,
    /// The last calls' outcomes, true for an outage.
    window: VecDeque<bool>,
    /// How long the next opening lasts: `open_for` after a close, doubling with each
    /// opening until the breaker closes again.
    open_for: Duration,
}

/// What the breaker decided about a finished call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The outcome stands: the caller gets it (a failure goes down the retry chain).
    Done,
    /// An outage while the breaker is (now) open: the record is held and tried again.
    Hold,
}

/// The right to make one call; a probe's, when the breaker is half-open.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    /// A probe's call is the one that decides whether the breaker closes.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    /// A probe abandoned without an outcome (its partition revoked) lets another record probe.
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut st = self.breaker.lock();
            if let Phase::HalfOpen { probing } = &mut st.phase {
                *probing = false;
            }
            drop(st);
            self.breaker.changed.notify_waiters();
        }
    }
}

/// One route's breaker.
pub(crate) struct Breaker {
    config: CircuitBreaker,
    state: Mutex<State>,
    changed: Notify,
    /// `group` and `route` metric labels, set when the worker is built.
    labels: OnceLock<(String, String)>,
}

impl Breaker {
    pub(crate) fn new(config: CircuitBreaker) -> Arc<Self> {
        let open_for = config.open_for;
        Arc::new(Breaker {
            config,
            state: Mutex::new(State {
                // The first record probes: a process started (or handed partitions) during
                // an outage sends nothing down the retry chain for it.
                phase: Phase::HalfOpen { probing: false },
                consecutive: 0,
                window: VecDeque::new(),
                open_for,
            }),
            changed: Notify::new(),
            labels: OnceLock::new(),
        })
    }

    pub(crate) fn config(&self) -> &CircuitBreaker {
        &self.config
    }

    /// Names the breaker's metrics after its worker's group and its route.
    pub(crate) fn bind(&self, group: &str, route: &str) {
        let _ = self.labels.set((group.to_owned(), route.to_owned()));
        self.refresh_gauge();
    }

    /// Sets the state gauge again, so exporters with an idle timeout keep it.
    pub(crate) fn refresh_gauge(&self) {
        let state = self.state();
        self.gauge(state);
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.lock().phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn labels(&self) -> (String, String) {
        self.labels.get().cloned().unwrap_or_default()
    }

    fn gauge(&self, state: CircuitState) {
        let (group, route) = self.labels();
        ::metrics::gauge!(CIRCUIT_STATE, "group" => group, "route" => route).set(state.gauge());
    }

    /// Waits until a call may be made: at once while closed; while open, until the open
    /// time is over and this call is the probe, or another probe closed the breaker.
    pub(crate) async fn admit(self: &Arc<Self>) -> Permit {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = {
                let mut st = self.lock();
                match st.phase {
                    Phase::Closed => return self.permit(false),
                    Phase::HalfOpen { probing: false } => {
                        st.phase = Phase::HalfOpen { probing: true };
                        return self.permit(true);
                    }
                    Phase::HalfOpen { probing: true } => None,
                    Phase::Open { until } if Instant::now() >= until => {
                        self.transition(&mut st, Phase::HalfOpen { probing: true }, "probing");
                        return self.permit(true);
                    }
                    Phase::Open { until } => Some(until),
                }
            };
            match until {
                Some(t) => tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    _ = changed => {}
                },
                None => changed.await,
            }
        }
    }

    fn permit(self: &Arc<Self>, probe: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        }
    }

    /// Takes a call's outcome: `outage` is the failure's text when it was an outage.
    pub(crate) fn settle(&self, mut permit: Permit, outage: Option<&str>) -> Verdict {
        permit.settled = true;
        let mut st = self.lock();
        let verdict = match (outage, permit.probe) {
            (None, true) => {
                st.open_for = self.config.open_for;
                self.transition(&mut st, Phase::Closed, "a probe got an answer");
                Verdict::Done
            }
            (None, false) => {
                st.count(false, self.config.window);
                Verdict::Done
            }
            (Some(cause), true) => {
                self.open(&mut st, cause);
                Verdict::Hold
            }
            (Some(cause), false) => match st.phase {
                Phase::Closed => {
                    st.count(true, self.config.window);
                    if !st.tripped(&self.config) {
                        return Verdict::Done;
                    }
                    self.open(&mut st, cause);
                    Verdict::Hold
                }
                _ => Verdict::Hold,
            },
        };
        drop(st);
        if verdict == Verdict::Hold {
            let (group, route) = self.labels();
            ::metrics::counter!(CIRCUIT_HELD, "group" => group, "route" => route).increment(1);
        }
        verdict
    }

    fn open(&self, st: &mut State, cause: &str) {
        let until = Instant::now() + st.open_for;
        st.consecutive = 0;
        st.window.clear();
        self.transition(st, Phase::Open { until }, cause);
        st.open_for = (st.open_for * 2).min(self.config.max_open_for);
    }

    /// Moves to `phase`: logs why, counts it, sets the gauge, wakes the waiting calls.
    fn transition(&self, st: &mut State, phase: Phase, cause: &str) {
        st.phase = phase;
        let to = match st.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        };
        let (group, route) = self.labels();
        match to {
            CircuitState::Open => tracing::warn!(
                %route, open_for = ?st.open_for, %cause,
                "circuit breaker open: the route pauses; no record goes down its retry chain for the outage"
            ),
            _ => {
                tracing::info!(%route, state = to.as_str(), %cause, "circuit breaker {}", to.as_str())
            }
        }
        ::metrics::counter!(CIRCUIT_TRANSITIONS, "group" => group, "route" => route, "to" => to.as_str())
            .increment(1);
        self.gauge(to);
        self.changed.notify_waiters();
    }
}

impl State {
    fn count(&mut self, outage: bool, window: u32) {
        self.consecutive = if outage { self.consecutive + 1 } else { 0 };
        self.window.push_back(outage);
        if self.window.len() > window as usize {
            self.window.pop_front();
        }
    }

    fn tripped(&self, c: &CircuitBreaker) -> bool {
        let calls = self.window.len();
        let outages = self.window.iter().filter(|o| **o).count();
        self.consecutive >= c.consecutive_failures
            || (calls >= c.min_calls as usize && outages as f64 >= c.failure_ratio * calls as f64)
    }
}
