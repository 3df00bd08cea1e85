//! Dead-letter operations: list, show and replay the records of a dead-letter topic.
//!
//! A replay sends the selected records back to the topic they first failed on (read from
//! `kafka_original-topic` / `kafka_dlt-original-topic`) or to a chosen one, with the retry
//! headers removed (so the attempt count starts again at 1) and `redrive-replay-count`
//! incremented. Its position is committed under a consumer group of its own, derived from the
//! DLT topic and the selection (or named with `--group`), after every acknowledged batch: the
//! same replay run again only sends records that reached the DLT since. A crash between a
//! batch's acknowledgement and its commit can send that batch (at most 100 records) twice.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use redrive::error::BoxError;
use redrive::headers::Headers;
use redrive::headers::{self, AttemptsHeader, Original};
use redrive::publish::{KafkaPublisher, Outgoing, Publish};
#[cfg(test)]
use redrive::timestamp::{Timestamp, TimestampType};
use redrive::Record;

/// The header a replay increments: how many times the record was replayed (4-byte big-endian
/// int, like `retry_topic-attempts`).
pub const REPLAY_COUNT: &str = "redrive-replay-count";

/// Records of a replay per commit.
const BATCH: usize = 100;

/// Which dead letters a command works on. Empty fields select everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these partitions.
    pub partitions: Vec<i32>,
    /// Offsets from this one (inclusive).
    pub from_offset: Option<i64>,
    /// Offsets up to this one (inclusive).
    pub to_offset: Option<i64>,
    /// Dead-lettered at or after this time (epoch ms; the DLT record's timestamp).
    pub since_ms: Option<i64>,
    /// Dead-lettered before this time (epoch ms).
    pub until_ms: Option<i64>,
    /// Only records with exactly this key.
    pub key: Option<String>,
    /// Only records whose error type (`kafka_exception-fqcn` or its cause) contains this,
    /// ignoring case.
    pub error_type: Option<String>,
}

impl Selection {
    /// Whether `r` is selected.
    pub fn matches(&self, r: &Record) -> bool {
        if !self.partitions.is_empty() && !self.partitions.contains(&r.partition()) {
            return false;
        }
        if self.from_offset.is_some_and(|o| r.offset() < o)
            || self.to_offset.is_some_and(|o| r.offset() > o)
        {
            return false;
        }
        let ts = r.timestamp().map(|t| t.millis);
        if let Some(since) = self.since_ms {
            if ts.is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(until) = self.until_ms {
            if ts.is_none_or(|t| t >= until) {
                return false;
            }
        }
        if let Some(k) = &self.key {
            if r.key().map(|b| &b[..]) != Some(k.as_bytes()) {
                return false;
            }
        }
        if let Some(want) = &self.error_type {
            let want = want.to_ascii_lowercase();
            let o = Original::read(r.headers());
            let hit = [o.exception_fqcn, o.exception_cause_fqcn]
                .into_iter()
                .flatten()
                .any(|t| t.to_ascii_lowercase().contains(&want));
            if !hit {
                return false;
            }
        }
        true
    }

    /// A stable text form, for the default replay group name.
    fn canonical(&self) -> String {
        format!(
            "p={:?};from={:?};to={:?};since={:?};until={:?};key={:?};err={:?}",
            self.partitions,
            self.from_offset,
            self.to_offset,
            self.since_ms,
            self.until_ms,
            self.key,
            self.error_type
        )
    }
}

/// Parses `--since`/`--until`: an RFC 3339 time, or a duration meaning that long ago
/// (`2h`, `30m`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim()) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .map_err(|_| format!("`{s}` is before 1970"));
    }
    match humantime::parse_duration(s.trim()) {
        Ok(ago) => Ok(now_ms() - ago.as_millis() as i64),
        Err(_) => Err(format!(
            "`{s}` is neither a time (2026-11-24T10:00:00Z) nor a duration ago (2h, 30m)"
        )),
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The default consumer group of a replay: one per DLT topic, selection and destination.
pub fn replay_group(dlt_topic: &str, selection: &Selection, to: Option<&str>) -> String {
    let h = fnv1a(&format!("{dlt_topic}|{}|{to:?}", selection.canonical()));
    format!("redrive-replay.{dlt_topic}.{h:016x}")
}

fn show_bytes(b: Option<&Bytes>) -> String {
    match b {
        None => "null".into(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => format!("{s:?}"),
            Err(_) => format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
    }
}

fn fmt_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Deliveries tried before the record was dead-lettered. Like Spring, the copy's
/// `retry_topic-attempts` holds the number the next attempt would have had, one more.
fn tries_of(r: &Record) -> String {
    match headers::read_attempts(r.headers()) {
        AttemptsHeader::Valid(n) => n.saturating_sub(1).max(1).to_string(),
        AttemptsHeader::Absent => "-".into(),
        AttemptsHeader::Malformed => "malformed".into(),
    }
}

/// One line per dead letter: where it is, when, its key, where it came from, the error.
pub fn summary_line(r: &Record) -> String {
    let o = Original::read(r.headers());
    let mut msg = o.exception_message.unwrap_or_default().replace('\n', " ");
    if msg.len() > 160 {
        let mut end = 160;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str("...");
    }
    format!(
        "{}/{}@{}  {}  key={}  from={}/{}@{}  tries={}  {}: {}",
        r.topic(),
        r.partition(),
        r.offset(),
        r.timestamp().map_or("-".into(), |t| fmt_ms(t.millis)),
        show_bytes(r.key()),
        o.topic.as_deref().unwrap_or("?"),
        o.partition.map_or("?".into(), |p| p.to_string()),
        o.offset.map_or("?".into(), |p| p.to_string()),
        tries_of(r),
        o.exception_fqcn.as_deref().unwrap_or("?"),
        msg,
    )
}

/// Everything about one dead letter, headers decoded.
pub fn detail(r: &Record) -> String {
    use std::fmt::Write;
    let o = Original::read(r.headers());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "record:            {}/{}@{}",
        r.topic(),
        r.partition(),
        r.offset()
    );
    let _ = writeln!(
        s,
        "dead-lettered at:  {}",
        r.timestamp().map_or("-".into(), |t| fmt_ms(t.millis))
    );
    let _ = writeln!(s, "key:               {}", show_bytes(r.key()));
    let _ = writeln!(s, "value:             {}", show_bytes(r.value()));
    let _ = writeln!(
        s,
        "original:          {}/{}@{}",
        o.topic.as_deref().unwrap_or("?"),
        o.partition.map_or("?".into(), |p| p.to_string()),
        o.offset.map_or("?".into(), |p| p.to_string())
    );
    let _ = writeln!(
        s,
        "original time:     {} ({})",
        o.timestamp.map_or("-".into(), fmt_ms),
        o.timestamp_type.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "consumer group:    {}",
        o.consumer_group.as_deref().unwrap_or("-")
    );
    let _ = writeln!(s, "tries:             {}", tries_of(r));
    let replays = r
        .headers()
        .last_value(REPLAY_COUNT)
        .and_then(headers::decode_int)
        .unwrap_or(0);
    let _ = writeln!(s, "replayed before:   {replays}");
    let _ = writeln!(
        s,
        "error type:        {}",
        o.exception_fqcn.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "root cause type:   {}",
        o.exception_cause_fqcn.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "error:             {}",
        o.exception_message.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "error chain:       {}",
        o.exception_stacktrace.as_deref().unwrap_or("-")
    );
    let _ = writeln!(s, "headers:");
    for h in r.headers().iter() {
        let _ = writeln!(s, "  {} = {}", h.key, show_bytes(h.value.as_ref()));
    }
    s
}

/// What is done with each selected record.
pub enum Action<'a> {
    /// Print its summary line.
    List {
        /// Stop after this many.
        limit: Option<u64>,
    },
    /// Print everything about it.
    Show,
    /// Send it back.
    Replay(ReplaySettings<'a>),
}

/// How a replay sends records.
pub struct ReplaySettings<'a> {
    /// The destination; default each record's original topic.
    pub to: Option<&'a str>,
    /// Most records per second.
    pub rate: f64,
    /// Print what would be sent; send and commit nothing.
    pub dry_run: bool,
    /// The consumer group that remembers the replay's position; default [`replay_group`].
    pub group: Option<String>,
}

/// Counts of a finished command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the DLT.
    pub scanned: u64,
    /// Records the selection matched (listed, shown, replayed or, on a dry run, that would be).
    pub selected: u64,
    /// Selected records that could not be replayed (no original topic and no `--to`).
    pub skipped: u64,
}

/// The record a replay sends for dead letter `r`, or why it cannot.
pub fn replay_copy(r: &Record, to: Option<&str>) -> Result<Outgoing, String> {
    let o = Original::read(r.headers());
    let (topic, partition) = match (to, o.topic) {
        (Some(t), orig) => {
            // Back to its own topic it keeps its partition; elsewhere the key decides.
            let p = (orig.as_deref() == Some(t)).then_some(o.partition).flatten();
            (t.to_owned(), p)
        }
        (None, Some(orig)) => (orig, o.partition),
        (None, None) => {
            return Err(
                "no kafka_original-topic / kafka_dlt-original-topic header: name a destination with --to"
                    .into(),
            )
        }
    };
    let previous = r
        .headers()
        .last_value(REPLAY_COUNT)
        .and_then(headers::decode_int)
        .unwrap_or(0);
    let mut h = Headers::new();
    for x in r.headers().iter() {
        let k = &*x.key;
        let bookkeeping = k.starts_with("retry_topic-")
            || k.starts_with("kafka_original-")
            || k.starts_with("kafka_exception-")
            || k.starts_with("kafka_dlt-")
            || k == REPLAY_COUNT;
        if !bookkeeping {
            h.push(x.key.clone(), x.value.clone());
        }
    }
    h.push(
        REPLAY_COUNT,
        Some(Bytes::copy_from_slice(&headers::encode_int(
            previous.saturating_add(1),
        ))),
    );
    Ok(Outgoing {
        topic,
        partition,
        key: r.key().cloned(),
        value: r.value().cloned(),
        headers: h,
    })
}

/// Progress on stderr: a bar redrawn in place on a terminal, a line every 5 s otherwise.
struct Progress {
    total: u64,
    started: Instant,
    last: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn tick(&mut self, scanned: u64, sent: u64, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !force && self.last.elapsed() < every {
            return;
        }
        // Short runs print nothing.
        if !force && self.started.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let total = self.total.max(1);
        let pct = (scanned * 100 / total).min(100);
        let filled = (pct / 5) as usize;
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "[{}{}] {pct:>3}% scanned {scanned}/{} replayed {sent} ({rate:.0}/s)",
            "#".repeat(filled),
            ".".repeat(20 - filled),
            self.total
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        self.shown = true;
    }

    fn finish(&mut self, scanned: u64, sent: u64) {
        if self.shown {
            self.tick(scanned, sent, true);
            if self.tty {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}

/// Reads `dlt_topic` from the start (or, for a replay, from the replay group's committed
/// position) to the end it had when the command started, and applies `action` to every
/// record `selection` matches. `out` receives listings and dry-run lines.
pub async fn run(
    kafka: &BTreeMap<String, String>,
    dlt_topic: &str,
    selection: &Selection,
    action: Action<'_>,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BoxError> {
    let replay = match &action {
        Action::Replay(s) => Some(s),
        _ => None,
    };
    let group = match replay {
        Some(s) if !s.dry_run => Some(
            s.group
                .clone()
                .unwrap_or_else(|| replay_group(dlt_topic, selection, s.to)),
        ),
        _ => None,
    };
    // A worker's consumer configuration: partitions read to their end stay assigned and idle,
    // and as for a worker a fetch holding only those must not keep the others waiting.
    let mut cfg = redrive::client::consumer_config(kafka);
    cfg.set(
        "group.id",
        group
            .clone()
            .unwrap_or_else(|| format!("redrive-dlt-reader.{}", std::process::id())),
    );
    let consumer: StreamConsumer = cfg.create()?;
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(dlt_topic), timeout)
        .map_err(|e| format!("cannot read the metadata of `{dlt_topic}`: {e}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == dlt_topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(format!("topic `{dlt_topic}` does not exist").into());
    }
    for p in &selection.partitions {
        if !parts.contains(p) {
            return Err(format!(
                "`{dlt_topic}` has no partition {p} (it has {})",
                parts.len()
            )
            .into());
        }
    }
    let wanted: Vec<i32> = parts
        .into_iter()
        .filter(|p| selection.partitions.is_empty() || selection.partitions.contains(p))
        .collect();
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    if group.is_some() {
        let mut tpl = TopicPartitionList::new();
        for p in &wanted {
            tpl.add_partition(dlt_topic, *p);
        }
        let c = consumer.committed_offsets(tpl, timeout)?;
        for e in c.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert(e.partition(), o);
            }
        }
    }
    // [start, end) per partition; the end is fixed now, so a growing DLT does not run forever.
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for p in &wanted {
        let (low, high) = consumer.fetch_watermarks(dlt_topic, *p, timeout)?;
        let mut start = low.max(committed.get(p).copied().unwrap_or(low));
        if let Some(f) = selection.from_offset {
            start = start.max(f);
        }
        let mut end = high;
        if let Some(t) = selection.to_offset {
            end = end.min(t + 1);
        }
        if start < end {
            ranges.insert(*p, (start, end));
        }
    }
    let total: u64 = ranges.values().map(|(s, e)| (e - s) as u64).sum();
    let mut summary = Summary::default();
    if ranges.is_empty() {
        return Ok(summary);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (start, _)) in &ranges {
        tpl.add_partition_offset(dlt_topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&tpl)?;

    let publisher = match replay {
        Some(s) if !s.dry_run => Some(KafkaPublisher::new(&redrive::client::producer_config(
            kafka,
        ))?),
        _ => None,
    };
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut remaining = ranges.clone();
    let mut pending = Vec::new();
    let mut sent = 0u64;
    let mut progress = Progress::new(total);
    let interval = replay.map(|s| Duration::from_secs_f64(1.0 / s.rate.max(0.001)));
    let mut next_send = Instant::now();
    let limit = match action {
        Action::List { limit } => limit,
        _ => None,
    };
    let mut idle_since = Instant::now();
    while !remaining.is_empty() {
        let msg = match tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => {
                // A range may end in records the client never hands out (transaction
                // markers): the consumer's position then shows it was read to its end.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements_for_topic(dlt_topic) {
                        if let Offset::Offset(o) = e.offset() {
                            if remaining
                                .get(&e.partition())
                                .is_some_and(|(_, end)| o >= *end)
                            {
                                remaining.remove(&e.partition());
                            }
                        }
                    }
                }
                if idle_since.elapsed() > Duration::from_secs(30) {
                    return Err(format!(
                        "no record from `{dlt_topic}` for 30 s while {} partitions were not read to their end",
                        remaining.len()
                    )
                    .into());
                }
                continue;
            }
        };
        idle_since = Instant::now();
        let p = msg.partition();
        let Some(&(_, end)) = remaining.get(&p) else {
            continue;
        };
        if msg.offset() >= end {
            remaining.remove(&p);
            continue;
        }
        summary.scanned += 1;
        positions.insert(p, msg.offset() + 1);
        if msg.offset() + 1 >= end {
            remaining.remove(&p);
        }
        let r = Record::from_message(&msg);
        drop(msg);
        if selection.matches(&r) {
            summary.selected += 1;
            match &action {
                Action::List { .. } => writeln!(out, "{}", summary_line(&r))?,
                Action::Show => writeln!(out, "{}", detail(&r))?,
                Action::Replay(s) => match replay_copy(&r, s.to) {
                    Err(why) => {
                        summary.skipped += 1;
                        tracing::warn!(record = %r.coordinates(), "{why}");
                        writeln!(
                            out,
                            "skipped {}/{}@{}: {why}",
                            r.topic(),
                            r.partition(),
                            r.offset()
                        )?;
                    }
                    Ok(copy) if s.dry_run => {
                        writeln!(
                            out,
                            "would replay {}/{}@{} -> {}{}",
                            r.topic(),
                            r.partition(),
                            r.offset(),
                            copy.topic,
                            copy.partition.map_or(String::new(), |p| format!("/{p}"))
                        )?;
                    }
                    Ok(copy) => {
                        let now = Instant::now();
                        if next_send > now {
                            tokio::time::sleep(next_send - now).await;
                        }
                        next_send = next_send.max(now) + interval.unwrap_or_default();
                        let publisher = publisher.as_ref().expect("a replay has a publisher");
                        pending.push(publisher.publish(&copy));
                        sent += 1;
                    }
                },
            }
            if limit.is_some_and(|l| summary.selected >= l) {
                break;
            }
        }
        if let (Some(group), true) = (&group, pending.len() >= BATCH) {
            flush(&consumer, group, dlt_topic, &mut pending, &positions).await?;
        }
        progress.tick(summary.scanned, sent, false);
    }
    if let Some(group) = &group {
        flush(&consumer, group, dlt_topic, &mut pending, &positions).await?;
        writeln!(
            out,
            "replay position committed under consumer group `{group}`"
        )?;
    }
    progress.finish(summary.scanned, sent);
    Ok(summary)
}

/// The current time in ms since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Waits for every pending send, then commits the scanned positions.
async fn flush(
    consumer: &StreamConsumer,
    group: &str,
    topic: &str,
    pending: &mut Vec<redrive::publish::PublishFuture>,
    positions: &BTreeMap<i32, i64>,
) -> Result<(), BoxError> {
    for res in futures_util::future::join_all(pending.drain(..)).await {
        res.map_err(|e| format!("a replayed record was not acknowledged ({e}); nothing after the last commit of group `{group}` counts as replayed, run the command again"))?;
    }
    if positions.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .map_err(|e| format!("cannot commit the replay position for group `{group}`: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter() -> Record {
        let mut h = Headers::new();
        h.push("user", Some(Bytes::from_static(b"u")));
        h.push(headers::ORIGINAL_TOPIC, Some(Bytes::from_static(b"orders")));
        h.push(
            headers::ORIGINAL_PARTITION,
            Some(Bytes::copy_from_slice(&headers::encode_int(2))),
        );
        h.push(
            headers::ATTEMPTS,
            Some(Bytes::copy_from_slice(&headers::encode_int(4))),
        );
        h.push(
            headers::EXCEPTION_FQCN,
            Some(Bytes::from_static(b"HttpStatusError")),
        );
        h.push(
            REPLAY_COUNT,
            Some(Bytes::copy_from_slice(&headers::encode_int(1))),
        );
        Record::new("orders-dlt", 2, 7)
            .with_key("k1")
            .with_value("v")
            .with_headers(h)
            .with_timestamp(Timestamp {
                millis: 1_000,
                kind: TimestampType::CreateTime,
            })
    }

    #[test]
    fn replay_copy_resets_attempts_and_counts_replays() {
        let r = dead_letter();
        let c = replay_copy(&r, None).unwrap();
        assert_eq!((c.topic.as_str(), c.partition), ("orders", Some(2)));
        assert_eq!(c.key.as_deref(), Some(&b"k1"[..]));
        let keys: Vec<&str> = c.headers.iter().map(|h| &*h.key).collect();
        assert_eq!(keys, ["user", REPLAY_COUNT]);
        assert_eq!(c.headers.last_value(REPLAY_COUNT), Some(&[0, 0, 0, 2][..]));
        let elsewhere = replay_copy(&r, Some("orders-audit")).unwrap();
        assert_eq!(
            (elsewhere.topic.as_str(), elsewhere.partition),
            ("orders-audit", None)
        );
        let bare = Record::new("x-dlt", 0, 0);
        assert!(replay_copy(&bare, None).unwrap_err().contains("--to"));
    }

    #[test]
    fn selection_filters() {
        let r = dead_letter();
        assert!(Selection::default().matches(&r));
        let sel = |f: &dyn Fn(&mut Selection)| {
            let mut s = Selection::default();
            f(&mut s);
            s.matches(&r)
        };
        assert!(sel(&|s| s.partitions = vec![2]));
        assert!(!sel(&|s| s.partitions = vec![0]));
        assert!(sel(&|s| s.from_offset = Some(7)));
        assert!(!sel(&|s| s.from_offset = Some(8)));
        assert!(!sel(&|s| s.to_offset = Some(6)));
        assert!(sel(&|s| s.since_ms = Some(1_000)));
        assert!(!sel(&|s| s.until_ms = Some(1_000)));
        assert!(sel(&|s| s.key = Some("k1".into())));
        assert!(!sel(&|s| s.key = Some("k2".into())));
        assert!(sel(&|s| s.error_type = Some("httpstatus".into())));
        assert!(!sel(&|s| s.error_type = Some("Timeout".into())));
    }

    #[test]
    fn replay_groups_differ_by_selection() {
        let a = Selection::default();
        let b = Selection {
            key: Some("k".into()),
            ..Selection::default()
        };
        assert_eq!(replay_group("t", &a, None), replay_group("t", &a, None));
        assert_ne!(replay_group("t", &a, None), replay_group("t", &b, None));
        assert_ne!(
            replay_group("t", &a, None),
            replay_group("t", &a, Some("x"))
        );
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        let ago = parse_time("1h").unwrap();
        assert!((now_ms() - ago - 3_600_000).abs() < 5_000);
        assert!(parse_time("yesterday").is_err());
    }
}
