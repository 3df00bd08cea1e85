//! Record timestamps.

/// How the broker stamped a record's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

impl TimestampType {
    /// The name Kafka's Java `TimestampType.toString()` gives (`CreateTime`,
    /// `LogAppendTime`), as spring-kafka writes it into `kafka_original-timestamp-type`.
    pub fn as_java_str(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        }
    }
}

/// A record timestamp in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch.
    pub millis: i64,
    /// Who set it.
    pub kind: TimestampType,
}

impl Timestamp {
    /// rdkafka's form; None when the message has no timestamp.
    pub(crate) fn from_kafka(ts: rdkafka::Timestamp) -> Option<Self> {
        match ts {
            rdkafka::Timestamp::CreateTime(t) => Some(Timestamp {
                millis: t,
                kind: TimestampType::CreateTime,
            }),
            rdkafka::Timestamp::LogAppendTime(t) => Some(Timestamp {
                millis: t,
                kind: TimestampType::LogAppendTime,
            }),
            rdkafka::Timestamp::NotAvailable => None,
        }
    }
}
