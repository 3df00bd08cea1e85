//! The sidecar's parsers of outside input on arbitrary bytes: a service's `Retry-After`, an
//! operator's `--since`/`--until` time, and the percent-encoding of record bytes into HTTP
//! header values. None panics; an encoded value is a valid header value of plain ASCII that
//! decodes back to the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redrive_sidecar::dlt::parse_time;
use redrive_sidecar::forward::{parse_retry_after, percent_encode};

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_retry_after(text);
        let _ = parse_time(text);
    }
    let encoded = percent_encode(data);
    assert!(encoded.is_ascii());
    assert!(
        hyper::header::HeaderValue::from_str(&encoded).is_ok(),
        "{encoded}"
    );
    assert_eq!(decode(&encoded), data);
});
