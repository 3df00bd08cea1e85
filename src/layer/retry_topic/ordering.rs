//! Tells the key gate of a route with key ordering (docs/design.md, Key ordering) when a
//! record enters the retry chain and when it leaves it.

use bytes::Bytes;

use super::context::Bound;
use crate::headers::{self, Headers};
use crate::key_order::KeyGate;
use crate::layer::Stage;

fn gate(bound: &Bound) -> Option<&KeyGate> {
    bound.state.as_deref()?.key_gate.as_deref()
}

/// A failed record was routed: to a retry topic (`to_retry`), else to the dead-letter topic
/// or dropped. A main-topic record enters the chain; a retry-topic record leaves it unless
/// it goes on to the next retry topic.
pub(super) fn routed(bound: &Bound, key: Option<&Bytes>, offset: i64, h: &Headers, to_retry: bool) {
    let (Some(gate), Some(key)) = (gate(bound), key) else {
        return;
    };
    match (bound.entry.stage, to_retry) {
        (Stage::Main, true) => gate.enter(key, offset),
        (Stage::Retry, false) => leave(gate, key, h, true),
        _ => {}
    }
}

/// A record succeeded: a retry-topic record leaves the chain.
pub(super) fn succeeded(bound: &Bound, key: Option<&Bytes>, h: &Headers) {
    if bound.entry.stage != Stage::Retry {
        return;
    }
    if let (Some(gate), Some(key)) = (gate(bound), key) {
        leave(gate, key, h, false);
    }
}

/// Whether the main-topic record at `offset` follows a dead letter of its key unhandled.
pub(super) fn follows(bound: &Bound, offset: i64) -> bool {
    bound.entry.stage == Stage::Main && gate(bound).is_some_and(|g| g.take_follow(offset))
}

fn leave(gate: &KeyGate, key: &Bytes, h: &Headers, dead: bool) {
    match headers::original_offset(h) {
        Some(offset) => gate.leave(key, offset, dead),
        // Not a copy of this flow's main records (they all carry it): it blocked nothing.
        None => tracing::debug!("retry-topic record without its original offset"),
    }
}
