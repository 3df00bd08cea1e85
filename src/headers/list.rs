//! The header list of a record: names and values in wire order, shared copy-on-write.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// One record header. Kafka header values are arbitrary bytes and may be null.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header name. Well-known names (Spring Kafka's retry headers, `traceparent`) are
    /// borrowed from static strings, so copying them allocates nothing.
    pub key: Cow<'static, str>,
    /// The header value; `None` is a null value, distinct from an empty one.
    pub value: Option<Bytes>,
}

/// The headers of a record, in wire order. Kafka allows repeated keys, so this is a list.
///
/// The list is shared copy-on-write: cloning a record (as the retry layer does, to keep a
/// copy for the failure path) does not copy its headers.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Vec<Header>>>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(None)
    }

    /// The headers of `list`, kept as they are.
    pub(crate) fn from_list(list: Vec<Header>) -> Self {
        Headers((!list.is_empty()).then(|| Arc::new(list)))
    }

    fn list_mut(&mut self) -> &mut Vec<Header> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    /// Appends a header, keeping any existing header of the same name.
    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: Option<impl Into<Bytes>>) {
        self.list_mut().push(Header {
            key: key.into(),
            value: value.map(Into::into),
        });
    }

    /// Replaces every header named `key` with a single one (appended at the end).
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) {
        let key = key.into();
        self.remove(&key);
        self.list_mut().push(Header {
            key,
            value: Some(value.into()),
        });
    }

    /// Removes every header named `key`.
    pub fn remove(&mut self, key: &str) {
        // Copy-on-write only when there is something to remove.
        if self.iter().any(|h| h.key == key) {
            self.list_mut().retain(|h| h.key != key);
        }
    }

    /// The last header named `key` (Kafka clients treat the last one as current).
    pub fn last(&self, key: &str) -> Option<&Header> {
        self.iter().rev().find(|h| h.key == key)
    }

    /// The value of the last header named `key`, if it has a non-null value.
    pub fn last_value(&self, key: &str) -> Option<&[u8]> {
        self.last(key).and_then(|h| h.value.as_deref())
    }

    /// All headers named `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.iter().filter(move |h| h.key == key)
    }

    /// The headers as a slice, in order.
    pub fn as_slice(&self) -> &[Header] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Iterates over all headers in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.as_slice().iter()
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Bytes taken by names and values, used for in-flight accounting.
    pub(crate) fn byte_len(&self) -> usize {
        self.iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<T: IntoIterator<Item = Header>>(iter: T) -> Self {
        Headers::from_list(iter.into_iter().collect())
    }
}
