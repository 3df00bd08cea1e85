//! The report: one line per scenario, printed and written to `target/bench/results.json`.

use crate::measure::*;

pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

pub(crate) struct Line {
    pub(crate) scenario: &'static str,
    pub(crate) baseline: f64,
    pub(crate) redrive: f64,
    pub(crate) ratio: f64,
    pub(crate) target: String,
    pub(crate) pass: bool,
    pub(crate) extra: String,
}

/// Prints one round of the retry scenario (`what`: the side) and returns its main-topic
/// records/s and the retries it completed.
pub(crate) fn retry_round(
    round: usize,
    what: &str,
    (r, cpu, broker, done): (f64, f64, Option<f64>, u64),
) -> (f64, u64) {
    eprintln!(
        "round {round}: {what} main topic {r:.0} rec/s, {cpu:.2} cpu-s/M (broker {}), {done} retries completed",
        broker_note(broker)
    );
    (r, done)
}

/// How a round line shows the local broker's CPU.
pub(crate) fn broker_note(broker: Option<f64>) -> String {
    broker.map_or("not local".into(), |b| format!("{b:.2} cpu-s/M"))
}

/// One side's happy round: records/s, CPU-s per million records, the local broker's CPU-s
/// per million, and the offset commit requests per million records when they were counted.
pub(crate) struct HappyRun {
    pub(crate) rate: f64,
    pub(crate) cpu: f64,
    pub(crate) broker: Option<f64>,
    pub(crate) commits: Option<f64>,
}

impl Line {
    /// A line whose target is a bound on redrive / baseline.
    pub(crate) fn ratio(
        scenario: &'static str,
        baseline: f64,
        redrive: f64,
        bound: Bound,
        extra: String,
    ) -> Self {
        let ratio = redrive / baseline;
        let (target, pass) = match bound {
            Bound::AtLeast(t) => (format!(">={t:.2}"), ratio >= t),
            Bound::AtMost(t) => (format!("<={t:.2}"), ratio <= t),
        };
        Line {
            scenario,
            baseline,
            redrive,
            ratio,
            target,
            pass,
            extra,
        }
    }

    /// A line for reference: no target, always passes.
    pub(crate) fn report(
        scenario: &'static str,
        baseline: f64,
        redrive: f64,
        extra: String,
    ) -> Self {
        Line {
            scenario,
            baseline,
            redrive,
            ratio: redrive / baseline,
            target: "report".into(),
            pass: true,
            extra,
        }
    }

    /// A reference line on records/s whose extra gives both sides' CPU-s per million records
    /// and their ratio; `baseline` names the baseline when it is not the line's usual one.
    pub(crate) fn with_cpu(
        scenario: &'static str,
        baseline: &str,
        (base_rate, base_cpu): (f64, f64),
        (rate, cpu): (f64, f64),
    ) -> Self {
        let named = if baseline.is_empty() {
            String::new()
        } else {
            format!(" baseline={baseline}")
        };
        Line::report(
            scenario,
            base_rate,
            rate,
            format!(
                "unit=records/s{named} cpu_baseline={base_cpu:.3} cpu_redrive={cpu:.3} cpu_ratio={:.3}",
                cpu / base_cpu
            ),
        )
    }

    pub(crate) fn print(&self) {
        // Small figures (CPU-seconds per million records) with enough digits to check the ratio.
        fn figure(v: f64) -> String {
            if v.abs() < 10.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.1}")
            }
        }
        println!(
            "bench {} baseline={} redrive={} ratio={:.3} target={} pass={} allocator={}{}",
            self.scenario,
            figure(self.baseline),
            figure(self.redrive),
            self.ratio,
            self.target,
            self.pass,
            allocator_name(),
            if self.extra.is_empty() {
                String::new()
            } else {
                format!(" {}", self.extra)
            }
        );
    }
    pub(crate) fn json(&self) -> String {
        // JSON has no NaN or infinity (a ratio of two unmeasured figures): null instead.
        fn number(v: f64) -> String {
            if v.is_finite() {
                v.to_string()
            } else {
                "null".into()
            }
        }
        format!(
            r#"{{"scenario":"{}","baseline":{},"redrive":{},"ratio":{},"target":"{}","pass":{},"allocator":"{}","details":"{}"}}"#,
            self.scenario,
            number(self.baseline),
            number(self.redrive),
            number(self.ratio),
            self.target,
            self.pass,
            allocator_name(),
            self.extra
        )
    }
}

impl HappyRun {
    pub(crate) fn note(&self) -> String {
        let commits = self
            .commits
            .map_or(String::new(), |c| format!(", {c:.0} commits/M"));
        format!(
            "{:.0} rec/s, {:.2} cpu-s/M (broker {}){commits}",
            self.rate,
            self.cpu,
            broker_note(self.broker)
        )
    }
}

/// Prints every line and writes them to `target/bench/results.json`.
pub(crate) fn write_report(lines: &[Line]) {
    for l in lines {
        l.print();
    }
    // `cargo bench` runs in the bench crate's folder; the report belongs in the workspace's target.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let json = format!(
        "[\n{}\n]\n",
        lines.iter().map(Line::json).collect::<Vec<_>>().join(",\n")
    );
    std::fs::write(dir.join("results.json"), json).unwrap();
}
