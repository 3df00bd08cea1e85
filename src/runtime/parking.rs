//! The records a main partition with key ordering sets aside while their key has a record in
//! the retry chain (docs/design.md, Key ordering), and the order they come back in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::key_order::{AfterDeadLetter, KeyGate, KeyState};
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

/// One main partition's parked records.
pub(super) struct Parking {
    gate: Arc<KeyGate>,
    parked: HashMap<Bytes, VecDeque<Record>>,
    /// Keys whose next parked record may run, oldest release first.
    runnable: VecDeque<Bytes>,
    records: usize,
    bytes: u64,
}

impl Parking {
    pub(super) fn new(gate: Arc<KeyGate>) -> Self {
        Parking {
            gate,
            parked: HashMap::new(),
            runnable: VecDeque::new(),
            records: 0,
            bytes: 0,
        }
    }

    pub(super) fn gate(&self) -> &KeyGate {
        &self.gate
    }

    /// Parked records and their bytes.
    pub(super) fn size(&self) -> (usize, u64) {
        (self.records, self.bytes)
    }

    /// Decides about a record read from the partition: a record of a key with records parked
    /// or in the chain waits behind them.
    pub(super) fn admit(&mut self, record: Record) -> Admit {
        let Some(key) = record.key() else {
            return Admit::Go(record);
        };
        let behind = self.records > 0 && self.parked.contains_key(&key[..]);
        let state = match behind {
            true => KeyState::Blocked,
            false => self.gate.state(key, record.offset()),
        };
        match state {
            KeyState::Free => Admit::Go(record),
            KeyState::InChain => Admit::InChain,
            KeyState::Blocked => {
                let key = key.clone();
                self.records += 1;
                self.bytes += record.byte_len() as u64;
                self.parked.entry(key).or_default().push_back(record);
                Admit::Parked
            }
        }
    }

    /// The next parked record whose key left the chain, if any: one record of a key at a
    /// time, so a record that fails again blocks the ones behind it.
    pub(super) fn next_runnable(&mut self) -> Option<Record> {
        for (key, dead) in self.gate.take_released() {
            let Some(queue) = self.parked.get(&key) else {
                continue;
            };
            if dead && self.gate.after_dead_letter() == AfterDeadLetter::Follow {
                for r in queue {
                    self.gate.mark_follow(r.offset());
                }
            }
            self.runnable.push_back(key);
        }
        while let Some(key) = self.runnable.pop_front() {
            if self.gate.blocked(&key) {
                // Released again when its record leaves the chain.
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
}
