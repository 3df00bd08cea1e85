//! How `dlt list` and `dlt show` print a dead letter.

use std::time::Duration;

use bytes::Bytes;
use redrive::headers::{self, AttemptsHeader, Original};
use redrive::Record;

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
        .last_value(headers::REPLAY_COUNT)
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
