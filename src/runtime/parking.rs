//! The records a main partition with key ordering sets aside while their key has a record in
//! the retry chain (docs/design.md, Key ordering), and the order they come back in. The
//! partition's task owns the blocked keys; the retry layer and the retry partitions' tasks
//! tell it of entries and leaves through the gate's channel.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;

#[cfg(test)]
use crate::key_order::Held;
use crate::key_order::{AfterDeadLetter, Chain, ChainEvent, KeyGate, KeyMap};
use crate::Record;

/// What to do with a record read from the partition.
pub(super) enum Admit {
    /// Handle it now.
    Go(Record),
    /// It was parked behind an earlier record of its key.
    Parked,
    /// It is itself in the retry chain (read again after a restart): it is already handled.
    InChain,
}

/// One main partition's blocked keys and parked records.
pub(super) struct Parking {
    gate: Arc<KeyGate>,
    events: UnboundedReceiver<ChainEvent>,
    chain: Chain,
    parked: KeyMap<VecDeque<Record>>,
    /// Keys whose next parked record may run, oldest release first.
    runnable: VecDeque<Bytes>,
    records: usize,
    bytes: u64,
}

impl Parking {
    /// The parking of the gate's partition, with the chain read back; None if another task
    /// took it (one task per main partition).
    pub(super) fn new(gate: Arc<KeyGate>) -> Option<Self> {
        let (events, chain) = gate.take_start()?;
        Some(Parking {
            gate,
            events,
            chain,
            parked: KeyMap::default(),
            runnable: VecDeque::new(),
            records: 0,
            bytes: 0,
        })
    }

    /// Parked bytes.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Decides about a record read from the partition: a record of a key with records parked
    /// or in the chain waits behind them.
    pub(super) fn admit(&mut self, record: Record) -> Admit {
        self.apply_events();
        let Some(key) = record.key() else {
            return Admit::Go(record);
        };
        let behind = self.records > 0 && self.parked.contains_key(&key[..]);
        if !behind {
            match self.chain.get(&key[..]) {
                None => return Admit::Go(record),
                Some(held) if held.contains(record.offset()) => return Admit::InChain,
                Some(_) => {}
            }
        }
        let key = key.clone();
        self.records += 1;
        self.bytes += record.byte_len() as u64;
        self.parked.entry(key).or_default().push_back(record);
        Admit::Parked
    }

    /// The next parked record whose key left the chain, if any: one record of a key at a
    /// time, so a record that fails again blocks the ones behind it.
    pub(super) fn next_runnable(&mut self) -> Option<Record> {
        self.apply_events();
        while let Some(key) = self.runnable.pop_front() {
            if self.chain.contains_key(&key) {
                // Runnable again when its record leaves the chain.
                continue;
            }
            let Some(queue) = self.parked.get_mut(&key) else {
                continue;
            };
            let record = queue.pop_front().expect("parked queues are never empty");
            if queue.is_empty() {
                self.parked.remove(&key);
            } else {
                self.runnable.push_back(key);
            }
            self.records -= 1;
            self.bytes -= record.byte_len() as u64;
            return Some(record);
        }
        None
    }

    /// Completes with the next event; the caller loops to apply it.
    pub(super) async fn event(&mut self) {
        if let Some(ev) = self.events.recv().await {
            self.apply(ev);
        }
    }

    /// Applies the events sent since the last look.
    fn apply_events(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.apply(ev);
        }
    }

    fn apply(&mut self, ev: ChainEvent) {
        match ev {
            ChainEvent::Enter(key, offset) => {
                self.chain.entry(key).or_default().insert(offset);
            }
            ChainEvent::Leave(key, offset, dead) => self.leave(key, offset, dead),
        }
    }

    /// A record left the chain; its key's parked records may run once none of it is left.
    fn leave(&mut self, key: Bytes, offset: i64, dead: bool) {
        // One hash per leave: this runs for every record that failed.
        let Entry::Occupied(mut held) = self.chain.entry(key) else {
            // A second copy of a record that left already.
            return;
        };
        held.get_mut().remove(offset);
        if !held.get().is_empty() {
            return;
        }
        let (key, _) = held.remove_entry();
        if self.records == 0 {
            return;
        }
        let Some(queue) = self.parked.get(&key) else {
            return;
        };
        if dead && self.gate.after_dead_letter() == AfterDeadLetter::Follow {
            for r in queue {
                self.gate.mark_follow(r.offset());
            }
        }
        self.runnable.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &'static [u8], offset: i64) -> Record {
        Record::new("t", 0, offset).with_key(key)
    }

    fn parking(after: AfterDeadLetter, chain: Chain) -> (Arc<KeyGate>, Parking) {
        let gate = Arc::new(KeyGate::new(after));
        gate.restore(chain);
        (gate.clone(), Parking::new(gate).unwrap())
    }

    fn offset(r: Option<Record>) -> Option<i64> {
        r.map(|r| r.offset())
    }

    #[test]
    fn a_key_waits_until_its_record_leaves_and_then_runs_in_order() {
        let (gate, mut p) = parking(AfterDeadLetter::Continue, Chain::default());
        let k = Bytes::from_static(b"k");
        assert!(matches!(p.admit(record(b"k", 0)), Admit::Go(_)));
        gate.enter(&k, 0);
        assert!(matches!(p.admit(record(b"k", 1)), Admit::Parked));
        assert!(matches!(p.admit(record(b"o", 2)), Admit::Go(_)));
        assert!(matches!(p.admit(record(b"k", 3)), Admit::Parked));
        assert_eq!(offset(p.next_runnable()), None);
        gate.leave(&k, 0, false);
        assert_eq!(offset(p.next_runnable()), Some(1));
        // 1 fails again: 3 waits for it.
        gate.enter(&k, 1);
        assert_eq!(offset(p.next_runnable()), None);
        gate.leave(&k, 1, false);
        assert_eq!(offset(p.next_runnable()), Some(3));
        assert_eq!(offset(p.next_runnable()), None);
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn a_record_read_back_in_the_chain_is_not_handled_again() {
        let k = Bytes::from_static(b"k");
        let (gate, mut p) = parking(
            AfterDeadLetter::Continue,
            [(k.clone(), Held::of(&[4]))].into_iter().collect(),
        );
        assert!(matches!(p.admit(record(b"k", 4)), Admit::InChain));
        assert!(matches!(p.admit(record(b"k", 5)), Admit::Parked));
        // A second copy of 4 leaving changes nothing after the first.
        gate.leave(&k, 4, false);
        gate.leave(&k, 4, false);
        assert_eq!(offset(p.next_runnable()), Some(5));
    }

    #[test]
    fn parked_records_follow_a_dead_letter_when_asked() {
        let k = Bytes::from_static(b"k");
        let (gate, mut p) = parking(
            AfterDeadLetter::Follow,
            [(k.clone(), Held::of(&[0]))].into_iter().collect(),
        );
        assert!(matches!(p.admit(record(b"k", 1)), Admit::Parked));
        gate.leave(&k, 0, true);
        assert_eq!(offset(p.next_runnable()), Some(1));
        assert!(gate.take_follow(1));
    }
}
