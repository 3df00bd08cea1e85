//! The layer and the service: calls go through the route's breaker.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use super::state::{Breaker, CircuitState, Permit, Verdict};
use crate::error::{error_chain, BoxError, Halt};
use crate::policy::CircuitBreaker;
use crate::Record;

/// Puts a route's handler behind a circuit breaker (see [`CircuitBreaker`]). Every service
/// it makes shares one breaker: an outage seen on one partition pauses them all.
/// `Route::circuit_breaker` adds it with the route's metric labels.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerLayer {
    /// A layer with a new breaker, closed.
    pub fn new(config: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker: Breaker::new(config),
        }
    }

    /// Where the breaker is now.
    pub fn state(&self) -> CircuitState {
        self.breaker.state()
    }

    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl std::fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", self.breaker.config())
            .field("state", &self.breaker.state())
            .finish()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// A handler behind a circuit breaker; made by [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> Service<Record> for CircuitBreakerService<S>
where
    S: Service<Record> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        // The ready service goes into the future, which may call it again (tower's
        // clone-and-swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(call_through(self.breaker.clone(), inner, record))
    }
}

/// Calls `inner` once the breaker admits the record, again after each outage that finds or
/// leaves the breaker open; other outcomes are the caller's.
async fn call_through<S>(
    breaker: Arc<Breaker>,
    mut inner: S,
    record: Record,
) -> Result<S::Response, BoxError>
where
    S: Service<Record>,
    S::Error: Into<BoxError>,
{
    let mut ready = true;
    loop {
        let Some(permit) = admit_or_stop(&breaker, &record).await else {
            return Err(Box::new(Halt(format!(
                "{} was held by an open circuit breaker when its partition stopped; it stays uncommitted and is delivered again",
                record.coordinates()
            ))));
        };
        if permit.is_probe() && !breaker.config().healthy().await {
            let verdict = breaker.settle(permit, Some("the health check failed"));
            debug_assert_eq!(verdict, Verdict::Hold);
            continue;
        }
        if !ready {
            inner.ready().await.map_err(Into::into)?;
        }
        ready = false;
        let res = inner.call(record.clone()).await.map_err(Into::into);
        let outage = match &res {
            Err(e) if breaker.config().is_outage(&**e) => Some(error_chain(&**e)),
            _ => None,
        };
        match breaker.settle(permit, outage.as_deref()) {
            Verdict::Done => return res,
            Verdict::Hold => {
                tracing::debug!(record = %record.coordinates(), "held by the open circuit breaker")
            }
        }
    }
}

/// The breaker's permit, or `None` when the record's partition stopped first (a revoke or
/// a shutdown while the breaker is open).
async fn admit_or_stop(breaker: &Arc<Breaker>, record: &Record) -> Option<Permit> {
    match &record.partition_state {
        Some(p) => tokio::select! {
            biased;
            permit = breaker.admit() => Some(permit),
            _ = p.stopped() => None,
        },
        None => Some(breaker.admit().await),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use tower::service_fn;

    use super::*;
    use crate::Unavailable;

    /// A handler whose dependency is down while `down` is set; it counts its calls.
    fn handler(
        down: Arc<AtomicBool>,
        calls: Arc<AtomicU32>,
    ) -> impl Service<Record, Response = (), Error = BoxError, Future = impl Send> + Clone + Send
    {
        service_fn(move |r: Record| {
            let (down, calls) = (down.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if r.offset() < 0 {
                    return Err::<(), BoxError>("poison".into());
                }
                if down.load(Ordering::SeqCst) {
                    return Err(Unavailable::new("connection refused").into());
                }
                Ok(())
            }
        })
    }

    fn config() -> CircuitBreaker {
        CircuitBreaker::new()
            .consecutive_failures(3)
            .open_for(Duration::from_secs(1), Duration::from_secs(4))
    }

    async fn call<S>(svc: &mut S, offset: i64) -> Result<(), BoxError>
    where
        S: Service<Record, Response = (), Error = BoxError>,
    {
        svc.ready().await?.call(Record::new("t", 0, offset)).await
    }

    #[tokio::test(start_paused = true)]
    async fn outages_below_the_threshold_go_on_and_the_one_that_trips_it_is_held() {
        let (down, calls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let layer = CircuitBreakerLayer::new(config());
        let mut svc = layer.layer(handler(down.clone(), calls.clone()));
        assert_eq!(
            layer.state(),
            CircuitState::HalfOpen,
            "the first record probes"
        );
        call(&mut svc, 0).await.unwrap();
        assert_eq!(layer.state(), CircuitState::Closed);
        down.store(true, Ordering::SeqCst);
        assert!(Unavailable::is_in(&*call(&mut svc, 1).await.unwrap_err()));
        assert!(call(&mut svc, 2).await.is_err());
        assert_eq!(layer.state(), CircuitState::Closed);
        // The third outage in a row opens the breaker: that record is held, not failed.
        let mut held = svc.clone();
        let third = tokio::spawn(async move { call(&mut held, 3).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(layer.state(), CircuitState::Open);
        assert!(!third.is_finished());
        // The probe after 1 s fails: open again for 2 s; the dependency then comes back.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5, "one probe after 1 s");
        assert_eq!(layer.state(), CircuitState::Open);
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "the second opening lasts 2 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        third
            .await
            .unwrap()
            .expect("the held record succeeds once the probe gets through");
        assert_eq!(layer.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_other_records_wait_and_call_nothing() {
        let (down, calls) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
        let layer = CircuitBreakerLayer::new(config().consecutive_failures(1));
        let svc = layer.layer(handler(down.clone(), calls.clone()));
        let tasks: Vec<_> = (1..=5)
            .map(|offset| {
                let mut s = svc.clone();
                tokio::spawn(async move { call(&mut s, offset).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(layer.state(), CircuitState::Open);
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "nothing is called while open"
        );
        down.store(false, Ordering::SeqCst);
        for t in tasks {
            t.await
                .unwrap()
                .expect("every held record succeeds after the outage");
        }
        assert_eq!(layer.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn poison_records_never_open_it() {
        let (down, calls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let layer = CircuitBreakerLayer::new(config().consecutive_failures(1));
        let mut svc = layer.layer(handler(down, calls.clone()));
        for offset in 0..50 {
            let res = call(&mut svc, if offset % 2 == 0 { -1 } else { offset }).await;
            assert_eq!(res.is_err(), offset % 2 == 0);
        }
        assert_eq!(layer.state(), CircuitState::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ratio_of_outages_opens_it_without_a_run_of_them() {
        let layer = CircuitBreakerLayer::new(
            CircuitBreaker::new()
                .consecutive_failures(100)
                .failure_ratio(0.5, 10, 10),
        );
        let breaker = layer.breaker().clone();
        let probe = breaker.admit().await;
        assert_eq!(
            breaker.settle(probe, None),
            Verdict::Done,
            "the start-up probe"
        );
        for i in 0..9 {
            let p = breaker.admit().await;
            let outage = (i % 2 == 0).then_some("refused");
            assert_eq!(breaker.settle(p, outage), Verdict::Done);
        }
        // The tenth call: 5 outages of 10.
        let p = breaker.admit().await;
        assert_eq!(breaker.settle(p, None), Verdict::Done);
        assert_eq!(
            layer.state(),
            CircuitState::Closed,
            "a success never opens it"
        );
        let p = breaker.admit().await;
        assert_eq!(breaker.settle(p, Some("refused")), Verdict::Hold);
        assert_eq!(layer.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_health_check_keeps_the_route_paused_from_the_start() {
        let (down, calls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let (healthy, checks) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let check = {
            let (healthy, checks) = (healthy.clone(), checks.clone());
            move || {
                checks.fetch_add(1, Ordering::SeqCst);
                let up = healthy.load(Ordering::SeqCst);
                Box::pin(async move { up }) as BoxFuture<'static, bool>
            }
        };
        let layer = CircuitBreakerLayer::new(config().health_check(check));
        assert_eq!(
            layer.state(),
            CircuitState::HalfOpen,
            "the first record probes"
        );
        let svc = layer.layer(handler(down, calls.clone()));
        let tasks: Vec<_> = (1..=3)
            .map(|offset| {
                let mut s = svc.clone();
                tokio::spawn(async move { call(&mut s, offset).await })
            })
            .collect();
        // Checks at 0, 1 and 3 s (1 s, then doubling); no record reaches the handler.
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "nothing handled while unhealthy"
        );
        assert_eq!(layer.state(), CircuitState::Open);
        healthy.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap().expect("handled once the check passes");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(layer.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_record_probe() {
        let layer = CircuitBreakerLayer::new(config().consecutive_failures(1));
        let breaker = layer.breaker().clone();
        let p = breaker.admit().await;
        assert_eq!(breaker.settle(p, Some("refused")), Verdict::Hold);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let probe = breaker.admit().await;
        assert_eq!(layer.state(), CircuitState::HalfOpen);
        let waiting = tokio::spawn({
            let b = breaker.clone();
            async move {
                let p = b.admit().await;
                b.settle(p, None)
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "one probe at a time");
        drop(probe);
        assert_eq!(waiting.await.unwrap(), Verdict::Done);
        assert_eq!(layer.state(), CircuitState::Closed);
    }
}
