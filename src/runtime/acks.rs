//! Manual acknowledgement in a partition task: which records still have a live handle, and
//! which returned `Ok` and wait for one to acknowledge.

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

use crate::partition_state::AckEvent;

/// What the task does after an acknowledgement event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckStep {
    /// Nothing yet.
    Wait,
    /// The record is final.
    Settle(i64),
    /// The record returned `Ok` and its last handle is gone unacknowledged: it can never
    /// become final.
    Abandoned(i64),
}

/// The acknowledgement bookkeeping of one partition.
pub(crate) struct AckBook {
    rx: mpsc::UnboundedReceiver<AckEvent>,
    /// Live handles per record that is not final.
    live: HashMap<i64, u32>,
    /// Records whose handler returned `Ok`, waiting to be acknowledged.
    waiting: HashSet<i64>,
}

impl AckBook {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<AckEvent>) -> Self {
        AckBook {
            rx,
            live: HashMap::new(),
            waiting: HashSet::new(),
        }
    }

    /// The next event; pending forever once every sender is gone.
    pub(crate) async fn recv(&mut self) -> AckEvent {
        match self.rx.recv().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }

    /// Accounts an event from a handle.
    pub(crate) fn event(&mut self, ev: AckEvent) -> AckStep {
        match ev {
            AckEvent::Taken(o) => {
                *self.live.entry(o).or_default() += 1;
                AckStep::Wait
            }
            AckEvent::Acked(o) => {
                self.live.remove(&o);
                self.waiting.remove(&o);
                AckStep::Settle(o)
            }
            AckEvent::Dropped(o) => {
                let Some(n) = self.live.get_mut(&o) else {
                    return AckStep::Wait;
                };
                *n -= 1;
                if *n > 0 {
                    return AckStep::Wait;
                }
                self.live.remove(&o);
                match self.waiting.remove(&o) {
                    true => AckStep::Abandoned(o),
                    false => AckStep::Wait,
                }
            }
        }
    }

    /// The handler of a record that is not final yet returned `Ok`. Events the handler sent
    /// before it returned were accounted already (the task takes events first).
    pub(crate) fn returned_ok(&mut self, o: i64) -> AckStep {
        if self.live.contains_key(&o) {
            self.waiting.insert(o);
            AckStep::Wait
        } else {
            AckStep::Abandoned(o)
        }
    }

    /// The record is final another way (its failure was handled, or a layer completes it).
    pub(crate) fn forget(&mut self, o: i64) {
        self.live.remove(&o);
        self.waiting.remove(&o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> AckBook {
        AckBook::new(mpsc::unbounded_channel().1)
    }

    #[test]
    fn a_handle_kept_past_the_handler_may_acknowledge_later() {
        let mut b = book();
        assert_eq!(b.event(AckEvent::Taken(3)), AckStep::Wait);
        assert_eq!(b.returned_ok(3), AckStep::Wait);
        assert_eq!(b.event(AckEvent::Acked(3)), AckStep::Settle(3));
        assert_eq!(b.event(AckEvent::Dropped(3)), AckStep::Wait);
        assert!(b.live.is_empty() && b.waiting.is_empty());
    }

    #[test]
    fn no_handle_or_every_handle_dropped_abandons_an_ok_record() {
        let mut b = book();
        assert_eq!(b.returned_ok(1), AckStep::Abandoned(1));
        b.event(AckEvent::Taken(2));
        b.event(AckEvent::Taken(2));
        b.event(AckEvent::Dropped(2));
        assert_eq!(b.returned_ok(2), AckStep::Wait);
        assert_eq!(b.event(AckEvent::Dropped(2)), AckStep::Abandoned(2));
        // Dropped inside the handler, before it returned.
        b.event(AckEvent::Taken(4));
        assert_eq!(b.event(AckEvent::Dropped(4)), AckStep::Wait);
        assert_eq!(b.returned_ok(4), AckStep::Abandoned(4));
    }

    #[test]
    fn a_failed_record_needs_no_acknowledgement() {
        let mut b = book();
        b.event(AckEvent::Taken(5));
        b.forget(5);
        assert_eq!(b.event(AckEvent::Dropped(5)), AckStep::Wait);
        assert!(b.live.is_empty());
    }
}
