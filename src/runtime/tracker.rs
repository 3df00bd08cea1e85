//! Per-partition offset tracking: which offset may be committed.

use std::collections::VecDeque;

/// What [`OffsetTracker::complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The offset is unknown, released or final already: nothing changed.
    Ignored,
    /// Final now; an older unfinished record still holds the commit position.
    Held,
    /// Final now, and the commit position moved.
    Moved,
}

/// Tracks the records of one partition from dispatch to a final outcome.
///
/// Records are dispatched in offset order and may finish in any order. The commit position is
/// the lowest offset not yet final, or one past the last dispatched offset when all are final.
/// Offsets may have gaps (compaction, transaction markers).
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Dispatched, not yet released records: (offset, final?, timestamp ms). Sorted by
    /// offset; the front is never final (final fronts are released at once).
    pending: VecDeque<(i64, bool, i64)>,
    /// One past the last dispatched offset.
    next: Option<i64>,
}

impl OffsetTracker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Registers a record about to be handled. Offsets must increase.
    pub(crate) fn dispatched(&mut self, offset: i64, timestamp_ms: i64) {
        debug_assert!(
            self.next.is_none_or(|n| offset >= n),
            "offsets must increase"
        );
        self.pending.push_back((offset, false, timestamp_ms));
        self.next = Some(offset + 1);
    }

    /// Marks a record final. Unknown, released or already final offsets are ignored, so a
    /// duplicate acknowledgement is harmless.
    pub(crate) fn complete(&mut self, offset: i64) -> Completion {
        // Without a search in the common cases: records finish in order (the oldest), or
        // one at a time behind a deferred one, which holds the front (the newest).
        let last = self.pending.len().wrapping_sub(1);
        let idx = match (self.pending.front(), self.pending.back()) {
            (Some(&(o, _, _)), _) if o == offset => 0,
            (_, Some(&(o, _, _))) if o == offset => last,
            _ => match self.pending.binary_search_by_key(&offset, |&(o, _, _)| o) {
                Ok(i) => i,
                Err(_) => return Completion::Ignored,
            },
        };
        if std::mem::replace(&mut self.pending[idx].1, true) {
            return Completion::Ignored;
        }
        if idx != 0 {
            return Completion::Held;
        }
        while let Some(&(_, true, _)) = self.pending.front() {
            self.pending.pop_front();
        }
        Completion::Moved
    }

    /// True when the record is final (or was never dispatched, or is released).
    pub(crate) fn is_final(&self, offset: i64) -> bool {
        match self.pending.binary_search_by_key(&offset, |&(o, _, _)| o) {
            Ok(i) => self.pending[i].1,
            Err(_) => true,
        }
    }

    /// The offset to commit (Kafka's "next offset to read"), if any record was dispatched.
    pub(crate) fn committable(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(o, _, _)) => Some(o),
            None => self.next,
        }
    }

    /// Records between the commit position and the newest dispatched one (final or not).
    pub(crate) fn span(&self) -> usize {
        self.pending.len()
    }

    /// Number of records dispatched and not yet released.
    pub(crate) fn unfinished(&self) -> usize {
        self.pending.iter().filter(|(_, done, _)| !done).count()
    }

    /// The timestamp of the oldest record not yet final.
    pub(crate) fn oldest_timestamp(&self) -> Option<i64> {
        self.pending.front().map(|&(_, _, ts)| ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_completion_moves_position() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.committable(), None);
        t.dispatched(10, 0);
        assert_eq!(t.committable(), Some(10));
        assert_eq!(t.complete(10), Completion::Moved);
        assert_eq!(t.committable(), Some(11));
    }

    #[test]
    fn out_of_order_never_passes_an_unfinished_record() {
        let mut t = OffsetTracker::new();
        for o in [5, 6, 9, 12] {
            t.dispatched(o, 0);
        }
        assert_eq!(t.complete(7), Completion::Ignored, "never dispatched");
        assert_eq!(t.complete(9), Completion::Held);
        assert_eq!(t.complete(12), Completion::Held);
        assert_eq!(t.complete(9), Completion::Ignored, "final already");
        assert_eq!(t.committable(), Some(5));
        assert_eq!(t.unfinished(), 2);
        assert_eq!(t.complete(5), Completion::Moved);
        assert_eq!(t.committable(), Some(6));
        assert_eq!(t.complete(6), Completion::Moved);
        assert_eq!(t.committable(), Some(13));
        assert_eq!(
            t.complete(6),
            Completion::Ignored,
            "duplicate ack, released"
        );
        assert_eq!(t.complete(12), Completion::Ignored, "released");
        assert_eq!(t.unfinished(), 0);
    }

    proptest! {
        #[test]
        fn position_is_lowest_unfinished(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut t = OffsetTracker::new();
            let mut offsets = Vec::new();
            let mut o = 100;
            for g in &gaps {
                t.dispatched(o, 0);
                offsets.push(o);
                o += g;
            }
            let next = offsets.last().unwrap() + 1;
            let mut unfinished: Vec<i64> = offsets.clone();
            for idx in order {
                if unfinished.is_empty() { break; }
                let i = idx.index(unfinished.len());
                let off = unfinished.remove(i);
                let before = t.committable();
                let done = t.complete(off);
                let expect = unfinished.iter().copied().min().unwrap_or(next);
                prop_assert_eq!(t.committable(), Some(expect));
                prop_assert_eq!(done == Completion::Moved, before != Some(expect));
                prop_assert_eq!(t.complete(off), Completion::Ignored);
            }
        }
    }
}
