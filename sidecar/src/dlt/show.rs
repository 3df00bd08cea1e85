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

/// `s` safe to print on a terminal: control characters (an escape sequence a producer put
/// into an error message, say) are shown escaped; newlines and tabs stay with `keep_lines`.
pub fn terminal_safe(s: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if keep_lines => out.push(c),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A header's value as `dlt show` prints it: the binary numbers of the retry flow decoded
/// (`4 (int)`, `1700000000000 (long)`), anything else as text or hex.
fn header_value(name: &str, v: Option<&Bytes>) -> String {
    use headers::dlt_form;
    let ints = [
        headers::ATTEMPTS,
        headers::REPLAY_COUNT,
        headers::ORIGINAL_PARTITION,
        dlt_form::ORIGINAL_PARTITION,
    ];
    let longs = [
        headers::ORIGINAL_OFFSET,
        headers::ORIGINAL_TIMESTAMP,
        dlt_form::ORIGINAL_OFFSET,
        dlt_form::ORIGINAL_TIMESTAMP,
    ];
    let Some(b) = v else { return show_bytes(v) };
    if ints.contains(&name) {
        if let Some(n) = headers::decode_int(b) {
            return format!("{n} (int)");
        }
    }
    if longs.contains(&name) {
        if let Some(n) = headers::decode_long(b) {
            return format!("{n} (long)");
        }
    }
    if name == headers::COMPACT {
        if let Some(c) = headers::Compact::decode(b) {
            return format!(
                "attempts={} due={} from={}/{}@{} group={} {}: {} (compact)",
                c.attempts,
                fmt_ms(c.due_ms),
                terminal_safe(c.topic, false),
                c.partition,
                c.offset,
                terminal_safe(c.group, false),
                terminal_safe(c.error_type, false),
                terminal_safe(c.message, false),
            );
        }
    }
    if name == headers::BACKOFF_TIMESTAMP || name == headers::ORIGINAL_TIMESTAMP_RETRY {
        if let Some(ms) = headers::decode_big_integer(b) {
            return format!("{ms} ({})", fmt_ms(ms));
        }
    }
    show_bytes(v)
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
    let mut msg = terminal_safe(
        &o.exception_message.unwrap_or_default().replace('\n', " "),
        false,
    );
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
        terminal_safe(o.topic.as_deref().unwrap_or("?"), false),
        o.partition.map_or("?".into(), |p| p.to_string()),
        o.offset.map_or("?".into(), |p| p.to_string()),
        tries_of(r),
        terminal_safe(o.exception_fqcn.as_deref().unwrap_or("?"), false),
        msg,
    )
}

/// [`summary_line`] as one JSON object, for scripts: `topic`, `partition`, `offset`,
/// `timestamp_ms`, `key` (text, or `key_hex`), `original` (`topic`, `partition`, `offset`),
/// `tries`, `error_type`, `error`.
pub fn summary_json(r: &Record) -> String {
    summary_value(r).to_string()
}

fn summary_value(r: &Record) -> serde_json::Value {
    let o = Original::read(r.headers());
    let mut v = serde_json::json!({
        "topic": r.topic(),
        "partition": r.partition(),
        "offset": r.offset(),
        "timestamp_ms": r.timestamp().map(|t| t.millis),
        "original": { "topic": o.topic, "partition": o.partition, "offset": o.offset },
        "tries": tries_of(r),
        "error_type": o.exception_fqcn,
        "error": o.exception_message,
    });
    put_bytes(&mut v, "key", r.key());
    v
}

/// Bytes as JSON: text when UTF-8 (`name`), else hex (`name_hex`), or null.
fn put_bytes(v: &mut serde_json::Value, name: &str, b: Option<&Bytes>) {
    match b.map(|b| std::str::from_utf8(b)) {
        Some(Ok(text)) => v[name] = text.into(),
        Some(Err(_)) => {
            let hex: String = b.unwrap().iter().map(|x| format!("{x:02x}")).collect();
            v[format!("{name}_hex")] = hex.into();
        }
        None => v[name] = serde_json::Value::Null,
    }
}

/// [`detail`] as one JSON object: the fields of `dlt list --output json` plus `value` (or `value_hex`),
/// the original's `timestamp_ms`, `timestamp_type` and `group`, `replayed_before`,
/// `root_cause_type`, `error_chain`, and every header with its decoded value.
pub fn detail_json(r: &Record) -> String {
    let o = Original::read(r.headers());
    let mut v = summary_value(r);
    put_bytes(&mut v, "value", r.value());
    v["original"]["timestamp_ms"] = o.timestamp.into();
    v["original"]["timestamp_type"] = o.timestamp_type.into();
    v["original"]["group"] = o.consumer_group.into();
    v["replayed_before"] = r
        .headers()
        .last_value(headers::REPLAY_COUNT)
        .and_then(headers::decode_int)
        .unwrap_or(0)
        .into();
    v["root_cause_type"] = o.exception_cause_fqcn.into();
    v["error_chain"] = o.exception_stacktrace.into();
    let list: Vec<serde_json::Value> = r
        .headers()
        .iter()
        .map(|h| serde_json::json!({ "name": &*h.key, "value": header_value(&h.key, h.value.as_ref()) }))
        .collect();
    v["headers"] = list.into();
    v.to_string()
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
        terminal_safe(o.topic.as_deref().unwrap_or("?"), false),
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
        terminal_safe(o.consumer_group.as_deref().unwrap_or("-"), false)
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
        terminal_safe(o.exception_fqcn.as_deref().unwrap_or("-"), false)
    );
    let _ = writeln!(
        s,
        "root cause type:   {}",
        terminal_safe(o.exception_cause_fqcn.as_deref().unwrap_or("-"), false)
    );
    let _ = writeln!(
        s,
        "error:             {}",
        terminal_safe(o.exception_message.as_deref().unwrap_or("-"), true)
    );
    let _ = writeln!(
        s,
        "error chain:       {}",
        terminal_safe(o.exception_stacktrace.as_deref().unwrap_or("-"), true)
    );
    let _ = writeln!(s, "headers:");
    for h in r.headers().iter() {
        let name = terminal_safe(&h.key, false);
        let _ = writeln!(s, "  {name} = {}", header_value(&h.key, h.value.as_ref()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_headers_are_escaped_not_printed() {
        let forged = "boom\u{1b}[2J\u{1b}]0;owned\u{7}\r";
        let safe = terminal_safe(forged, false);
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        assert!(safe.contains("boom") && safe.contains("\\u{1b}"), "{safe}");
        assert_eq!(terminal_safe("a\nb\tc", true), "a\nb\tc");
        assert_eq!(terminal_safe("a\nb", false), "a\\nb");
        let mut r = Record::new("orders-dlt", 0, 1);
        let mut h = redrive::headers::Headers::new();
        h.push(headers::EXCEPTION_MESSAGE, Some(forged.as_bytes().to_vec()));
        r = r.with_headers(h);
        assert!(!summary_line(&r).chars().any(char::is_control));
        assert!(!detail(&r).replace('\n', "").chars().any(char::is_control));
    }

    #[test]
    fn known_binary_headers_are_decoded() {
        let four = Bytes::from_static(&[0, 0, 0, 4]);
        assert_eq!(header_value(headers::ATTEMPTS, Some(&four)), "4 (int)");
        let offset = Bytes::from(42i64.to_be_bytes().to_vec());
        assert_eq!(
            header_value(headers::ORIGINAL_OFFSET, Some(&offset)),
            "42 (long)"
        );
        assert_eq!(
            header_value("user", Some(&Bytes::from_static(b"v"))),
            "\"v\""
        );
        assert_eq!(header_value(headers::ATTEMPTS, None), "null");
    }
}
