//! A route's own request headers (`[routes.headers]`): fixed values, values read once from an
//! environment variable, or values read from a file (a mounted secret such as a bearer
//! token) and read again when the file changes. Values from files and variables are marked
//! sensitive and never printed.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::config::HeaderSpec;

/// How often a file's modification time is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The headers a route adds to every request.
#[derive(Default)]
pub struct RouteHeaders(Vec<(HeaderName, Source)>);

enum Source {
    Fixed(HeaderValue),
    File(FileValue),
}

/// A header value kept in a file, read again when its modification time changes.
struct FileValue {
    path: PathBuf,
    prefix: String,
    state: Mutex<FileState>,
}

struct FileState {
    value: HeaderValue,
    modified: Option<SystemTime>,
    looked: Instant,
}

impl RouteHeaders {
    /// The headers `specs` describe; `env` reads environment variables. Files and variables
    /// are read now, so a missing secret stops the start instead of the first request.
    pub fn new<'a>(
        specs: impl IntoIterator<Item = (&'a String, &'a HeaderSpec)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut out = Vec::new();
        for (name, spec) in specs {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let source = match spec {
                HeaderSpec::Value(v) => Source::Fixed(header_value(v, false)?),
                HeaderSpec::From(from) => match (&from.file, &from.env) {
                    (Some(path), None) => Source::File(FileValue::open(path, &from.prefix)?),
                    (None, Some(var)) => {
                        let v = env(var).ok_or_else(|| {
                            format!("headers.{name}: environment variable `{var}` is not set")
                        })?;
                        Source::Fixed(header_value(&format!("{}{v}", from.prefix), true)?)
                    }
                    _ => return Err(format!("headers.{name}: give one of `file` or `env`")),
                },
            };
            out.push((header, source));
        }
        Ok(RouteHeaders(out))
    }

    /// Adds the headers to a request's.
    pub fn apply(&self, h: &mut HeaderMap) {
        for (name, source) in &self.0 {
            let value = match source {
                Source::Fixed(v) => v.clone(),
                Source::File(f) => f.current(),
            };
            h.insert(name.clone(), value);
        }
    }
}

impl FileValue {
    fn open(path: &str, prefix: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let (value, modified) = read_value(&path, prefix)?;
        Ok(FileValue {
            path,
            prefix: prefix.to_owned(),
            state: Mutex::new(FileState {
                value,
                modified,
                looked: Instant::now(),
            }),
        })
    }

    /// The value, read again when the file changed since it was last looked at (at most
    /// once per [`LOOK_EVERY`]); a file that cannot be read keeps the last value.
    fn current(&self) -> HeaderValue {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.looked.elapsed() >= LOOK_EVERY {
            st.looked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != st.modified {
                match read_value(&self.path, &self.prefix) {
                    Ok((value, modified)) => {
                        tracing::info!(path = %self.path.display(), "header value file changed; read again");
                        (st.value, st.modified) = (value, modified);
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the last header value"),
                }
            }
        }
        st.value.clone()
    }
}

/// The file's content (trailing line breaks and spaces removed) after `prefix`, sensitive.
fn read_value(path: &PathBuf, prefix: &str) -> Result<(HeaderValue, Option<SystemTime>), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read header value file `{shown}`: {e}"))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let value = format!("{prefix}{}", text.trim_end());
    let value = header_value(&value, true)
        .map_err(|_| format!("header value file `{shown}` holds characters a header cannot"))?;
    Ok((value, modified))
}

fn header_value(v: &str, sensitive: bool) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(v)
        .map_err(|_| "holds characters a header value cannot (line breaks, controls)".to_owned())?;
    value.set_sensitive(sensitive);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::HeaderFrom;

    #[test]
    fn a_file_value_is_read_again_when_the_file_changes() {
        let dir = std::env::temp_dir().join(format!("redrive-headers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "first\n").unwrap();
        let specs: BTreeMap<String, HeaderSpec> = [
            ("x-tenant".to_owned(), HeaderSpec::Value("acme".into())),
            (
                "authorization".to_owned(),
                HeaderSpec::From(HeaderFrom {
                    file: Some(token.display().to_string()),
                    env: None,
                    prefix: "Bearer ".into(),
                }),
            ),
        ]
        .into();
        let headers = RouteHeaders::new(&specs, |_| None).unwrap();
        let mut h = HeaderMap::new();
        headers.apply(&mut h);
        assert_eq!(h["authorization"], "Bearer first");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-tenant"], "acme");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&token, "second\n").unwrap();
        std::thread::sleep(LOOK_EVERY);
        headers.apply(&mut h);
        assert_eq!(h["authorization"], "Bearer second");
        std::fs::remove_file(&token).unwrap();
        std::thread::sleep(LOOK_EVERY);
        headers.apply(&mut h);
        assert_eq!(
            h["authorization"], "Bearer second",
            "kept while the file is gone"
        );
    }

    #[test]
    fn missing_sources_and_bad_values_are_refused() {
        let from = |file: Option<&str>, env: Option<&str>| {
            HeaderSpec::From(HeaderFrom {
                file: file.map(Into::into),
                env: env.map(Into::into),
                prefix: String::new(),
            })
        };
        let one = |name: &str, spec: HeaderSpec| {
            let specs: BTreeMap<String, HeaderSpec> = [(name.to_owned(), spec)].into();
            RouteHeaders::new(&specs, |v| (v == "SET").then(|| "k".to_owned())).err()
        };
        assert!(one("x-key", from(None, Some("UNSET")))
            .unwrap()
            .contains("UNSET"));
        assert!(one("x-key", from(None, Some("SET"))).is_none());
        assert!(one("x-key", from(Some("/nonexistent/token"), None))
            .unwrap()
            .contains("/nonexistent/token"));
        assert!(one("x-key", from(None, None)).unwrap().contains("one of"));
        assert!(one("bad name", HeaderSpec::Value("v".into())).is_some());
        assert!(one("x-key", HeaderSpec::Value("a\nb".into())).is_some());
    }
}
