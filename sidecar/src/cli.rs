//! The `redrive` command line. Exit codes: 0 done, 1 failed, 2 invalid configuration or
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use super::config::Config;
use super::dlt::{self, Action, ReplaySettings, Selection};
use redrive::error_chain;

/// Durable retries and dead-letter topics for Kafka consumers, as a sidecar.
#[derive(Debug, Parser)]
#[command(name = "redrive", version, about)]
pub struct Cli {
    /// Log lines as plain text (the default; colours only on a terminal) or as one JSON
    /// object per line, for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How a listing is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume every route of the config and forward records to their HTTP endpoints, until
    /// SIGTERM or ctrl-c (in-flight records drain, offsets are committed, exit 0).
    Run(ConfigArg),
    /// Validate the config and print the resolved routes and topics (secrets redacted).
    Check(CheckArgs),
    /// Topic administration.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Inspect and replay dead letters.
    #[command(subcommand)]
    Dlt(Box<DltCommand>),
    /// Move a route's group past records it cannot read (a corrupt batch, a codec the client
    /// lacks), with its workers stopped; a marker in the dead-letter topic records what was
    /// skipped. Prints the plan unless given --execute.
    Skip(SkipArgs),
}

#[derive(Debug, Args)]
struct SkipArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The route whose group and main topic to move.
    #[arg(long)]
    route: String,
    /// The partition.
    #[arg(long)]
    partition: i32,
    /// The first offset to handle again.
    #[arg(long)]
    to_offset: i64,
    /// Write the marker and commit. Without it the command prints its plan only.
    #[arg(long)]
    execute: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// `json`: the resolved configuration, or every mistake, as one JSON object on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML config file (see examples/sidecar.toml).
    #[arg(long, short, env = "REDRIVE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every route's missing retry and dead-letter topics (for clusters that do not
    /// allow automatic creation), then print them.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also create the routes' missing main topics, with this many partitions (for
    /// development clusters; production topics are usually provisioned on their own).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: Option<i32>,
}

#[derive(Debug, Args)]
struct Target {
    #[command(flatten)]
    config: ConfigArg,
    /// The route whose dead-letter topic to read.
    #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
    route: Option<String>,
    /// The dead-letter topic to read, named directly.
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Debug, Args)]
struct SelectionArgs {
    /// Only this partition (repeat for several).
    #[arg(long = "partition")]
    partitions: Vec<i32>,
    /// From this DLT offset (inclusive).
    #[arg(long)]
    from_offset: Option<i64>,
    /// Up to this DLT offset (inclusive).
    #[arg(long)]
    to_offset: Option<i64>,
    /// Dead-lettered at or after: an RFC 3339 time or a duration ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before: an RFC 3339 time or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Only records with exactly this key.
    #[arg(long)]
    key: Option<String>,
    /// Only records whose error type contains this text (case-insensitive).
    #[arg(long)]
    error_type: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DltCommand {
    /// One line per dead letter: coordinates, time, key, origin, attempts, error.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Stop after this many.
        #[arg(long)]
        limit: Option<u64>,
        /// `json`: one JSON object per dead letter, for scripts.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Everything about one dead letter, headers decoded.
    Show {
        #[command(flatten)]
        target: Target,
        /// Its partition.
        #[arg(long)]
        partition: i32,
        /// Its offset.
        #[arg(long)]
        offset: i64,
        /// `json`: one JSON object, headers decoded.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Dead letters counted by error type and age, per route (every route with a DLT unless
    /// one is named).
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this route.
        #[arg(long, conflicts_with = "topic")]
        route: Option<String>,
        /// Only this dead-letter topic, named directly.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        selection: SelectionArgs,
        /// `json`: one JSON object with a row per route.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Send selected dead letters back to their original topic (or `--to`), attempts reset.
    Replay {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Send them here instead of each record's original topic.
        #[arg(long)]
        to: Option<String>,
        /// Most records per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Send the records. Without it the command prints its plan (each record it would
        /// send, and where) and sends and commits nothing, like `kafka-consumer-groups
        /// --reset-offsets` without `--execute`.
        #[arg(long)]
        execute: bool,
        /// The consumer group remembering the replay's position (default: derived from the
        /// topic and the selection, printed at the end).
        #[arg(long)]
        group: Option<String>,
    },
}

enum Failure {
    Config(String),
    Run(String),
}

fn load(arg: &ConfigArg) -> Result<Config, Failure> {
    Config::load(&arg.config).map_err(|e| Failure::Config(e.to_string()))
}

impl SelectionArgs {
    fn resolve(&self) -> Result<Selection, Failure> {
        let time = |s: &Option<String>, flag: &str| {
            s.as_deref()
                .map(dlt::parse_time)
                .transpose()
                .map_err(|e| Failure::Config(format!("--{flag}: {e}")))
        };
        Ok(Selection {
            partitions: self.partitions.clone(),
            from_offset: self.from_offset,
            to_offset: self.to_offset,
            since_ms: time(&self.since, "since")?,
            until_ms: time(&self.until, "until")?,
            written: (self.since.clone(), self.until.clone()),
            key: self.key.clone(),
            error_type: self.error_type.clone(),
        })
    }
}

impl Target {
    /// The configuration, the DLT topic, and the route's flow when named by `--route`.
    fn resolve(&self) -> Result<(Config, String, Option<dlt::Flow>), Failure> {
        let config = load(&self.config)?;
        let mut flow = None;
        let topic = match (&self.topic, &self.route) {
            (Some(t), _) => t.clone(),
            (None, Some(name)) => {
                let r = config
                    .routes
                    .iter()
                    .find(|r| &r.name == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            config.routes.iter().map(|r| r.name.as_str()).collect();
                        Failure::Config(format!(
                            "--route {name}: no such route in {} (routes: {})",
                            config.file,
                            names.join(", ")
                        ))
                    })?;
                flow = Some(dlt::Flow {
                    topic: r.topic.clone(),
                    group: r.group.clone(),
                });
                r.retry
                    .for_group(&r.group)
                    .topology(&r.topic)
                    .dlt()
                    .ok_or_else(|| {
                        Failure::Config(format!(
                            "route {name} has no dead-letter topic (dlt_strategy = no_dlt)"
                        ))
                    })?
                    .to_owned()
            }
            (None, None) => return Err(Failure::Config("name --route or --topic".into())),
        };
        Ok((config, topic, flow))
    }
}

fn run_error(e: redrive::BoxError) -> Failure {
    Failure::Run(error_chain(&*e))
}

async fn execute(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Check(arg) => check(&arg),
        Command::Run(arg) => run_worker(&arg).await,
        Command::Topics(TopicsCommand::Create(args)) => create_topics(args).await,
        Command::Dlt(cmd) => dead_letters(*cmd).await,
        Command::Skip(args) => skip(args).await,
    }
}

async fn skip(args: SkipArgs) -> Result<(), Failure> {
    let config = load(&args.config)?;
    let route = config
        .routes
        .iter()
        .find(|r| r.name == args.route)
        .ok_or_else(|| {
            Failure::Config(format!(
                "--route {}: no such route in {}",
                args.route, config.file
            ))
        })?
        .clone();
    let (c, p, to) = (config.clone(), args.partition, args.to_offset);
    let plan = tokio::task::spawn_blocking(move || super::skip::plan(&c, &route, p, to))
        .await
        .map_err(|e| Failure::Run(e.to_string()))?
        .map_err(run_error)?;
    if !args.execute {
        println!("would {plan} (add --execute to do it)");
        return Ok(());
    }
    super::skip::execute(&config, &plan)
        .await
        .map_err(run_error)?;
    println!("done: {plan}");
    Ok(())
}

fn check(args: &CheckArgs) -> Result<(), Failure> {
    if args.output == Output::Json {
        let loaded = Config::load(&args.config.config);
        let json = match &loaded {
            Ok(config) => config.to_json(),
            Err(errors) => crate::config::errors_json(errors),
        };
        println!("{json:#}");
        return loaded.map(drop).map_err(|e| Failure::Config(e.to_string()));
    }
    let config = load(&args.config)?;
    print!("{}", config.describe());
    println!(
        "ok: {} routes in {} groups",
        config.routes.len(),
        config.groups().len()
    );
    Ok(())
}

async fn run_worker(arg: &ConfigArg) -> Result<(), Failure> {
    let config = load(arg)?;
    let metrics = if config.ops.enabled {
        Some(redrive::metrics::install_prometheus_recorder().map_err(|e| run_error(e.into()))?)
    } else {
        None
    };
    tracing::info!(config = %config.file, routes = config.routes.len(), "starting");
    super::run(&config, metrics).await.map_err(run_error)
}

async fn create_topics(args: CreateArgs) -> Result<(), Failure> {
    let config = load(&args.config)?;
    let mut created = 0;
    if let Some(partitions) = args.partitions {
        for t in super::topics::create_main_topics(&config, partitions)
            .await
            .map_err(run_error)?
        {
            println!("created {t} ({partitions} partitions)");
            created += 1;
        }
    }
    for (group, worker) in super::build_workers(&config).map_err(run_error)? {
        for t in worker
            .create_topics()
            .await
            .map_err(|e| run_error(e.into()))?
        {
            println!("created {t} (group {group})");
            created += 1;
        }
    }
    for r in &config.routes {
        for t in r
            .retry
            .for_group(&r.group)
            .topology(&r.topic)
            .derived_topics()
        {
            println!("route {}: {t}", r.name);
        }
    }
    println!("ok: {created} topics created");
    Ok(())
}

async fn dead_letters(cmd: DltCommand) -> Result<(), Failure> {
    let (target, selection, action) = match cmd {
        DltCommand::List {
            target,
            selection,
            limit,
            output,
        } => {
            let json = output == Output::Json;
            (target, selection.resolve()?, Action::List { limit, json })
        }
        DltCommand::Show {
            target,
            partition,
            offset,
            output,
        } => (
            target,
            Selection {
                partitions: vec![partition],
                from_offset: Some(offset),
                to_offset: Some(offset),
                ..Selection::default()
            },
            Action::Show {
                json: output == Output::Json,
            },
        ),
        DltCommand::Stats {
            config,
            route,
            topic,
            selection,
            output,
        } => return stats(config, route, topic, selection, output).await,
        DltCommand::Replay {
            target,
            selection,
            to,
            rate,
            execute,
            group,
        } => {
            let settings = ReplaySettings {
                to: to.as_deref(),
                rate,
                dry_run: !execute,
                group,
                flow: None,
            };
            return replay(target, selection, settings).await;
        }
    };
    let (config, topic, _) = target.resolve()?;
    let mut out = std::io::stdout();
    let summary = dlt::run(&config.kafka.0, &topic, &selection, action, &mut out)
        .await
        .map_err(run_error)?;
    eprintln!(
        "{} of {} scanned records selected from {topic}",
        summary.selected, summary.scanned
    );
    Ok(())
}

/// `dlt stats`: each chosen DLT scanned once, its records counted.
async fn stats(
    config: ConfigArg,
    route: Option<String>,
    topic: Option<String>,
    selection: SelectionArgs,
    output: Output,
) -> Result<(), Failure> {
    let selection = selection.resolve()?;
    let loaded = load(&config)?;
    let targets: Vec<(String, String)> = match (route, topic) {
        (None, None) => loaded
            .routes
            .iter()
            .filter_map(|r| {
                let topology = r.retry.for_group(&r.group).topology(&r.topic);
                Some((r.name.clone(), topology.dlt()?.to_owned()))
            })
            .collect(),
        (route, topic) => {
            let name = route.clone().unwrap_or_else(|| "-".into());
            let config = ConfigArg {
                config: config.config.clone(),
            };
            let (_, dlt, _) = Target {
                config,
                route,
                topic,
            }
            .resolve()?;
            vec![(name, dlt)]
        }
    };
    let mut rows = Vec::new();
    for (name, dlt) in &targets {
        let mut sink = std::io::sink();
        let summary = dlt::run(&loaded.kafka.0, dlt, &selection, Action::Stats, &mut sink)
            .await
            .map_err(run_error)?;
        match output {
            Output::Text => print!("{}", summary.stats.text(name, dlt)),
            Output::Json => rows.push(summary.stats.json(name, dlt)),
        }
    }
    if output == Output::Json {
        println!("{:#}", serde_json::json!({ "routes": rows }));
    }
    Ok(())
}

async fn replay(
    target: Target,
    selection: SelectionArgs,
    mut settings: ReplaySettings<'_>,
) -> Result<(), Failure> {
    if !settings.rate.is_finite() || settings.rate <= 0.0 {
        return Err(Failure::Config("--rate must be above 0".into()));
    }
    let (config, topic, flow) = target.resolve()?;
    settings.flow = flow;
    let selection = selection.resolve()?;
    let dry_run = settings.dry_run;
    let mut out = std::io::stdout();
    let summary = dlt::run(
        &config.kafka.0,
        &topic,
        &selection,
        Action::Replay(settings),
        &mut out,
    )
    .await
    .map_err(run_error)?;
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!(
        "{verb} {} of {} scanned records from {topic} ({} skipped)",
        summary.selected - summary.skipped,
        summary.scanned,
        summary.skipped
    );
    Ok(())
}

/// Logs to stderr at `RUST_LOG` (default `info`): text with colours only on a terminal, or
/// JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

/// Parses the arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("error: invalid configuration:\n{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}
