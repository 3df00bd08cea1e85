//! Asynchronous commits with their results: a thread commits synchronously on behalf of the
//! poll thread, so the poll thread never waits for the broker and every failure is seen
//! (rdkafka does not hand the results of its own asynchronous commits to the consumer
//! context), logged, counted, reported to the user's callback and sent again.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode as RdCommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::shared::RuntimeShared;
use crate::partition_state::PartitionShared;

enum Job {
    Commit(Vec<(Arc<PartitionShared>, i64)>),
    Flush(mpsc::SyncSender<()>),
}

/// Commits queued while one is in flight. The queue is bounded: a broker that does not answer
/// must not make the poll thread's commits pile up; beyond it a commit is dropped and the
/// next one sends every position again.
const QUEUED_COMMITS: usize = 4;

/// The handle of the committer thread.
pub(crate) struct Committer {
    tx: mpsc::SyncSender<Job>,
    rt: Arc<RuntimeShared>,
}

impl Committer {
    pub(crate) fn spawn<C: ConsumerContext + 'static>(
        consumer: Weak<BaseConsumer<C>>,
        rt: Arc<RuntimeShared>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUED_COMMITS);
        let thread_rt = rt.clone();
        std::thread::Builder::new()
            .name("redrive-commit".into())
            .spawn(move || run(&consumer, &thread_rt, &rx))?;
        Ok(Committer { tx, rt })
    }

    /// Queues a commit of these positions; returns at once. With the queue full (commits
    /// stuck at the broker) it is dropped, and the next commit sends every position again.
    pub(crate) fn commit(&self, positions: Vec<(Arc<PartitionShared>, i64)>) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(Job::Commit(positions)) {
            tracing::debug!("commit queue full: this commit is folded into the next");
            self.rt
                .commit_resend
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Waits until every commit queued before has completed (before a final synchronous
    /// commit, so an older position can never land after it).
    pub(crate) fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.tx.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

fn run<C: ConsumerContext + 'static>(
    consumer: &Weak<BaseConsumer<C>>,
    rt: &RuntimeShared,
    rx: &mpsc::Receiver<Job>,
) {
    let group = rt.group.to_string();
    while let Ok(job) = rx.recv() {
        let mut latest: HashMap<(Arc<str>, i32), (Arc<PartitionShared>, i64)> = HashMap::new();
        let mut flushes = Vec::new();
        let mut add = |job: Job, flushes: &mut Vec<mpsc::SyncSender<()>>| match job {
            Job::Commit(list) => {
                for (p, pos) in list {
                    latest.insert((p.topic.clone(), p.partition), (p, pos));
                }
            }
            Job::Flush(done) => flushes.push(done),
        };
        add(job, &mut flushes);
        // Commits queued meanwhile are coalesced: only the newest position per partition.
        while let Ok(job) = rx.try_recv() {
            add(job, &mut flushes);
        }
        if !latest.is_empty() {
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            let mut tpl = TopicPartitionList::new();
            for (p, pos) in latest.values() {
                let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*pos));
            }
            let started = Instant::now();
            let res = consumer.commit(&tpl, RdCommitMode::Sync);
            ::metrics::histogram!(crate::metrics::names::COMMIT_DURATION, "group" => group.clone())
                .record(started.elapsed().as_secs_f64());
            match res {
                Ok(()) => {
                    for (p, pos) in latest.values() {
                        p.set_committed(*pos);
                    }
                }
                Err(e) => {
                    ::metrics::counter!(crate::metrics::names::COMMIT_FAILURES, "group" => group.clone())
                        .increment(1);
                    rt.commit_resend
                        .store(true, std::sync::atomic::Ordering::Release);
                    let list: Vec<(String, i32, i64)> = latest
                        .values()
                        .map(|(p, pos)| (p.topic.to_string(), p.partition, *pos))
                        .collect();
                    tracing::warn!(error = %e, offsets = ?list, "asynchronous offset commit failed; the next commit sends these offsets again");
                    if let Some(cb) = &rt.config.on_commit_error {
                        cb(&e, &list);
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
