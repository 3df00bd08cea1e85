//! Dead-letter operations: list, show and replay the records of a dead-letter topic.
//!
//! `redrive dlt replay` prints its plan (each record and where it would go) unless given
//! `--execute`, like `kafka-consumer-groups --reset-offsets`. A replay sends the selected
//! records back to the main topic of the route named with `--route`, or to the topic named
//! with `--to`, with the retry headers removed (so the attempt count starts again at 1) and
//! `redrive-replay-count` incremented. The destination never comes from a record's headers
//! alone, which anyone producing to the DLT could forge: without `--to`, a dead letter whose
//! `kafka_original-topic` or `kafka_dlt-original-consumer-group` names another route's flow is
//! skipped with the reason. Its position is committed under a consumer group of its own,
//! derived from the DLT topic and the selection as written (`--since 2h` stays `2h`; or named
//! with `--group`), after every acknowledged batch: the same replay run again only sends
//! records that reached the DLT since. A crash between a batch's acknowledgement and its
//! commit can send that batch (at most 100 records) twice.

mod progress;
mod replay;
mod scan;
mod select;
mod show;
mod stats;

pub use replay::{replay_copy, Flow};
pub use scan::{run, Action, ReplaySettings, Summary};
pub use select::{parse_time, replay_group, Selection};
pub use show::{detail, detail_json, summary_line};
pub use stats::Stats;

/// The header a replay increments: how many times the record was replayed.
pub use redrive::headers::REPLAY_COUNT;

/// The current time in ms since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use redrive::headers::{self, Headers};
    use redrive::Record;
    use redrive::{Timestamp, TimestampType};

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
            redrive::headers::REPLAY_COUNT,
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

    fn orders() -> Flow {
        Flow {
            topic: "orders".into(),
            group: "billing".into(),
        }
    }

    #[test]
    fn replay_copy_resets_attempts_and_counts_replays() {
        let r = dead_letter();
        let c = replay_copy(&r, None, Some(&orders())).unwrap();
        assert_eq!((c.topic.as_str(), c.partition), ("orders", Some(2)));
        assert_eq!(c.key.as_deref(), Some(&b"k1"[..]));
        let keys: Vec<&str> = c.headers.iter().map(|h| &*h.key).collect();
        assert_eq!(keys, ["user", redrive::headers::REPLAY_COUNT]);
        assert_eq!(
            c.headers.last_value(redrive::headers::REPLAY_COUNT),
            Some(&[0, 0, 0, 2][..])
        );
        let elsewhere = replay_copy(&r, Some("orders-audit"), None).unwrap();
        assert_eq!(
            (elsewhere.topic.as_str(), elsewhere.partition),
            ("orders-audit", None)
        );
        let bare = Record::new("x-dlt", 0, 0);
        assert!(replay_copy(&bare, None, Some(&orders()))
            .unwrap_err()
            .contains("--to"));
        assert!(replay_copy(&r, None, None).unwrap_err().contains("--to"));
    }

    #[test]
    fn a_replay_never_follows_headers_to_another_flow() {
        let forged = |topic: &str, group: &str| {
            let mut h = Headers::new();
            h.push(
                headers::ORIGINAL_TOPIC,
                Some(Bytes::copy_from_slice(topic.as_bytes())),
            );
            h.push(
                headers::ORIGINAL_CONSUMER_GROUP,
                Some(Bytes::copy_from_slice(group.as_bytes())),
            );
            Record::new("orders-dlt", 0, 1).with_headers(h)
        };
        let e = replay_copy(&forged("payments", "billing"), None, Some(&orders())).unwrap_err();
        assert!(e.contains("`payments`") && e.contains("--to"), "{e}");
        let e = replay_copy(&forged("orders", "shipping"), None, Some(&orders())).unwrap_err();
        assert!(e.contains("group `shipping`"), "{e}");
        let ok = replay_copy(&forged("orders", "billing"), None, Some(&orders())).unwrap();
        assert_eq!(ok.topic, "orders");
        let chosen = replay_copy(&forged("payments", "x"), Some("orders"), Some(&orders()));
        assert_eq!(
            chosen.unwrap().topic,
            "orders",
            "--to is the operator's choice"
        );
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
    fn a_relative_time_names_the_group_as_written() {
        let at = |ms: i64| Selection {
            since_ms: Some(ms),
            written: (Some("2h".into()), None),
            ..Selection::default()
        };
        assert_eq!(
            replay_group("t", &at(1), None),
            replay_group("t", &at(2), None)
        );
        let absolute = |ms: i64| Selection {
            since_ms: Some(ms),
            ..Selection::default()
        };
        assert_ne!(
            replay_group("t", &absolute(1), None),
            replay_group("t", &absolute(2), None)
        );
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
