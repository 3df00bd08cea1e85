//! The examples that run on librdkafka's mock cluster. The README's first command, `cargo run
//! --example quickstart`: it exits 0 and its summary line matches what the example's rules
//! make of its 300 orders (every 10th, `order % 10 == 3`, fails once; every 25th,
//! `order % 25 == 7`, always fails), computed here, not read from the example: 30 retried,
//! 12 dead-lettered, 288 ok, none lost.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use support::example;

#[test]
fn the_quickstart_handles_every_order_and_its_summary_adds_up() {
    let out = Command::new(example("quickstart"))
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .expect("run the quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the quickstart failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in: {stdout}"));
    let counts: BTreeMap<&str, u64> = line
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k, v.parse().expect("a count"))
        })
        .collect();
    let orders = 0..300u64;
    let dead = orders.clone().filter(|o| o % 25 == 7).count() as u64;
    let retried = orders
        .clone()
        .filter(|o| o % 10 == 3 && o % 25 != 7)
        .count() as u64;
    let expected = BTreeMap::from([
        ("consumed", 300),
        ("ok", 300 - dead),
        ("retried", retried),
        ("dead_lettered", dead),
        ("lost", 0),
    ]);
    assert_eq!(counts, expected, "summary: {line}");
    assert_eq!(counts["ok"] + counts["dead_lettered"], counts["consumed"]);
}

/// `cargo run --example key_ordering` on the mock cluster: with key ordering off some updates
/// overtake earlier ones of their account (so the count can tell), with it on none does.
#[test]
fn the_key_ordering_example_keeps_every_account_in_order() {
    let out = Command::new(example("key_ordering"))
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .expect("run the key_ordering example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let early = |state: &str| -> u32 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("key ordering {state}:")))
            .unwrap_or_else(|| panic!("no line for key ordering {state} in: {stdout}"));
        line.split_once(": ")
            .unwrap()
            .1
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(early("off") > 0, "{stdout}");
    assert_eq!(early("on "), 0, "{stdout}");
}
