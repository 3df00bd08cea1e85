//! The README's first command, `cargo run --example quickstart`, on librdkafka's mock
//! cluster: it exits 0 and its summary line matches what the example's rules make of its 300
//! orders (every 10th, `order % 10 == 3`, fails once; every 25th, `order % 25 == 7`, always
//! fails), computed here, not read from the example: 30 retried, 12 dead-lettered, 288 ok,
//! none lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn quickstart() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", "quickstart"])
        .current_dir(&root)
        .status()
        .expect("run cargo build --example quickstart");
    assert!(status.success(), "building the quickstart failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/examples/quickstart")
}

#[test]
fn the_quickstart_handles_every_order_and_its_summary_adds_up() {
    let out = Command::new(quickstart())
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
