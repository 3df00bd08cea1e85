//! The scan behind `dlt list`, `dlt show` and `dlt replay`: a dead-letter topic read from its
//! start (or a replay group's position) to the end it had when the command started.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use redrive::publish::{KafkaPublisher, Publish, PublishFuture};
use redrive::BoxError;
use redrive::Record;

use super::progress::Progress;
use super::replay::{replay_copy, Flow};
use super::select::{replay_group, Selection};
use super::show::{detail, detail_json, summary_json, summary_line};
use super::stats::Stats;

/// Records of a replay per commit.
const BATCH: usize = 100;

/// How long the scan waits for a record before it checks whether the partitions it still
/// reads have ended in records the client never hands out.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A scan that saw no record for this long while partitions were unfinished fails.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// What is done with each selected record.
pub enum Action<'a> {
    /// Print its summary line.
    List {
        /// Stop after this many.
        limit: Option<u64>,
        /// One JSON object per line instead of text.
        json: bool,
    },
    /// Print everything about it.
    Show {
        /// One JSON object instead of text.
        json: bool,
    },
    /// Count it into the summary's [`Stats`].
    Stats,
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
    /// The route the DLT was named by; without `to` its main topic is the destination.
    pub flow: Option<Flow>,
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
    /// With [`Action::Stats`]: the selected records by error type and age.
    pub stats: Stats,
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
    let sending = match &action {
        Action::Replay(s) if !s.dry_run => Some(s),
        _ => None,
    };
    let group = sending.map(|s| {
        s.group
            .clone()
            .unwrap_or_else(|| replay_group(dlt_topic, selection, s.to))
    });
    let consumer = reader(kafka, group.as_deref())?;
    let ranges = ranges(&consumer, dlt_topic, selection, group.is_some())?;
    if ranges.is_empty() {
        return Ok(Summary::default());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (start, _)) in &ranges {
        tpl.add_partition_offset(dlt_topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&tpl)?;
    let publisher = match sending {
        Some(_) => Some(KafkaPublisher::new(&redrive::client::producer_config(
            kafka,
        ))?),
        None => None,
    };
    let total = ranges.values().map(|(s, e)| (e - s) as u64).sum();
    let mut scan = Scan {
        consumer: &consumer,
        topic: dlt_topic,
        group,
        remaining: ranges,
        positions: BTreeMap::new(),
        pending: Vec::new(),
        publisher,
        summary: Summary::default(),
        sent: 0,
        progress: Progress::new(total),
        next_send: Instant::now(),
    };
    scan.run(selection, &action, out).await?;
    Ok(scan.summary)
}

/// The consumer that reads the DLT: a worker's configuration (partitions read to their end
/// stay assigned and idle, and a fetch holding only those must not keep the others waiting),
/// in the replay's group, or a group of its own that commits nothing.
fn reader(
    kafka: &BTreeMap<String, String>,
    group: Option<&str>,
) -> Result<StreamConsumer, BoxError> {
    let mut cfg = redrive::client::consumer_config(kafka);
    let own = || format!("redrive-dlt-reader.{}", std::process::id());
    cfg.set("group.id", group.map_or_else(own, str::to_owned));
    Ok(cfg.create()?)
}

/// The `[start, end)` offsets to read per partition: the end fixed now, so a growing DLT does
/// not run forever; the start after the replay group's committed position, if any.
fn ranges(
    consumer: &StreamConsumer,
    dlt_topic: &str,
    selection: &Selection,
    resume: bool,
) -> Result<BTreeMap<i32, (i64, i64)>, BoxError> {
    let timeout = Duration::from_secs(10);
    let wanted = partitions(consumer, dlt_topic, selection, timeout)?;
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    if resume {
        let mut tpl = TopicPartitionList::new();
        for p in &wanted {
            tpl.add_partition(dlt_topic, *p);
        }
        for e in consumer.committed_offsets(tpl, timeout)?.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert(e.partition(), o);
            }
        }
    }
    let mut ranges = BTreeMap::new();
    for p in &wanted {
        let (low, high) = consumer.fetch_watermarks(dlt_topic, *p, timeout)?;
        let mut start = low.max(committed.get(p).copied().unwrap_or(low));
        if let Some(f) = selection.from_offset {
            start = start.max(f);
        }
        let end = selection.to_offset.map_or(high, |t| high.min(t + 1));
        if start < end {
            ranges.insert(*p, (start, end));
        }
    }
    Ok(ranges)
}

/// The DLT's partitions the selection names (all of them when it names none); an error
/// names a topic or partition that does not exist.
fn partitions(
    consumer: &StreamConsumer,
    dlt_topic: &str,
    selection: &Selection,
    timeout: Duration,
) -> Result<Vec<i32>, BoxError> {
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
    if let Some(p) = selection.partitions.iter().find(|p| !parts.contains(p)) {
        return Err(format!(
            "`{dlt_topic}` has no partition {p} (it has {})",
            parts.len()
        )
        .into());
    }
    let wanted = |p: &i32| selection.partitions.is_empty() || selection.partitions.contains(p);
    Ok(parts.into_iter().filter(wanted).collect())
}

/// A scan in progress.
struct Scan<'c> {
    consumer: &'c StreamConsumer,
    topic: &'c str,
    /// The replay's consumer group; None when nothing is sent.
    group: Option<String>,
    /// Partitions not yet read to their end, with their `[start, end)`.
    remaining: BTreeMap<i32, (i64, i64)>,
    /// The position after each partition's last scanned record.
    positions: BTreeMap<i32, i64>,
    /// Sends not yet acknowledged.
    pending: Vec<PublishFuture>,
    publisher: Option<KafkaPublisher>,
    summary: Summary,
    sent: u64,
    progress: Progress,
    /// When the next replayed record may be sent (the `--rate` limit).
    next_send: Instant,
}

impl Scan<'_> {
    /// Reads every remaining partition to its end, applying `action` to the selected records;
    /// a replay commits its position after every acknowledged batch and at the end.
    async fn run(
        &mut self,
        selection: &Selection,
        action: &Action<'_>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), BoxError> {
        let limit = match action {
            Action::List { limit, .. } => *limit,
            _ => None,
        };
        while let Some(r) = self.next_record().await? {
            if selection.matches(&r) {
                self.summary.selected += 1;
                self.apply(action, &r, out).await?;
                if limit.is_some_and(|l| self.summary.selected >= l) {
                    break;
                }
            }
            if self.pending.len() >= BATCH {
                self.flush().await?;
            }
            self.progress.tick(self.summary.scanned, self.sent, false);
        }
        if let Some(group) = self.group.clone() {
            self.flush().await?;
            writeln!(
                out,
                "replay position committed under consumer group `{group}`"
            )?;
        }
        self.progress.finish(self.summary.scanned, self.sent);
        Ok(())
    }

    /// The next record of a partition not yet read to its end; None once all are.
    async fn next_record(&mut self) -> Result<Option<Record>, BoxError> {
        let mut idle_since = Instant::now();
        while !self.remaining.is_empty() {
            let msg = match tokio::time::timeout(IDLE_CHECK, self.consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => {
                    self.ended_by_position();
                    if idle_since.elapsed() > IDLE_LIMIT {
                        return Err(format!(
                            "no record from `{}` for 30 s while {} partitions were not read to their end",
                            self.topic,
                            self.remaining.len()
                        )
                        .into());
                    }
                    continue;
                }
            };
            idle_since = Instant::now();
            if let Some(r) = self.take(&msg) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The record of `msg` when it lies in its partition's range, marking the range's end.
    fn take(&mut self, msg: &BorrowedMessage<'_>) -> Option<Record> {
        let p = msg.partition();
        let &(_, end) = self.remaining.get(&p)?;
        if msg.offset() >= end {
            self.remaining.remove(&p);
            return None;
        }
        self.summary.scanned += 1;
        self.positions.insert(p, msg.offset() + 1);
        if msg.offset() + 1 >= end {
            self.remaining.remove(&p);
        }
        Some(Record::from_message(msg))
    }

    /// A range may end in records the client never hands out (transaction markers): the
    /// consumer's position then shows it was read to its end.
    fn ended_by_position(&mut self) {
        let Ok(pos) = self.consumer.position() else {
            return;
        };
        for e in pos.elements_for_topic(self.topic) {
            let Offset::Offset(o) = e.offset() else {
                continue;
            };
            if self
                .remaining
                .get(&e.partition())
                .is_some_and(|(_, end)| o >= *end)
            {
                self.remaining.remove(&e.partition());
            }
        }
    }

    /// Lists, shows or replays one selected record.
    async fn apply(
        &mut self,
        action: &Action<'_>,
        r: &Record,
        out: &mut (dyn Write + Send),
    ) -> Result<(), BoxError> {
        let s = match action {
            Action::List { json: false, .. } => return Ok(writeln!(out, "{}", summary_line(r))?),
            Action::List { json: true, .. } => return Ok(writeln!(out, "{}", summary_json(r))?),
            Action::Show { json: false } => return Ok(writeln!(out, "{}", detail(r))?),
            Action::Show { json: true } => return Ok(writeln!(out, "{}", detail_json(r))?),
            Action::Stats => {
                self.summary.stats.add(r);
                return Ok(());
            }
            Action::Replay(s) => s,
        };
        let coordinates = format!("{}/{}@{}", r.topic(), r.partition(), r.offset());
        match replay_copy(r, s.to, s.flow.as_ref()) {
            Err(why) => {
                self.summary.skipped += 1;
                tracing::warn!(record = %r.coordinates(), "{why}");
                writeln!(out, "skipped {coordinates}: {why}")?;
            }
            Ok(copy) if s.dry_run => {
                let partition = copy.partition.map_or(String::new(), |p| format!("/{p}"));
                writeln!(
                    out,
                    "would replay {coordinates} -> {}{partition}",
                    copy.topic
                )?;
            }
            Ok(copy) => {
                let now = Instant::now();
                if self.next_send > now {
                    tokio::time::sleep(self.next_send - now).await;
                }
                let interval = Duration::from_secs_f64(1.0 / s.rate.max(0.001));
                self.next_send = self.next_send.max(now) + interval;
                let publisher = self.publisher.as_ref().expect("a replay has a publisher");
                self.pending.push(publisher.publish(&copy));
                self.sent += 1;
            }
        }
        Ok(())
    }

    /// Waits for every pending send, then commits the scanned positions under the replay's
    /// group. Does nothing when nothing is sent.
    async fn flush(&mut self) -> Result<(), BoxError> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        for res in futures_util::future::join_all(self.pending.drain(..)).await {
            res.map_err(|e| format!("a replayed record was not acknowledged ({e}); nothing after the last commit of group `{group}` counts as replayed, run the command again"))?;
        }
        if self.positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.positions {
            tpl.add_partition_offset(self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| format!("cannot commit the replay position for group `{group}`: {e}"))?;
        Ok(())
    }
}
