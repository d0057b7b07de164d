//! Log setup: logfmt (default) or JSON lines on stderr.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Logfmt,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Installs the global subscriber. Our own crate logs at `level`; others at
/// warn, and the PostgreSQL pool, whose per-connection warnings would repeat
/// every poll during an outage the collector already reports, at error.
pub fn init(level: Level, format: Format) {
    let filter = EnvFilter::new(format!(
        "warn,deadpool=error,tokio_postgres=error,loopwatch={}",
        level.as_str()
    ));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}
