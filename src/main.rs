//! The `loopwatch` binary: command-line parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use loopwatch::config::{self, WebFlags};
use loopwatch::exporter::{self, Settings};
use loopwatch::logging::{self, Format, Level, RepeatLimit};
use loopwatch::version;

/// Prometheus exporter for blocked event loops, dying tasks, exhausted rate
/// limits, saturated pools and leaking processes.
#[derive(Parser, Debug)]
#[command(name = "loopwatch", disable_version_flag = true)]
struct Cli {
    /// YAML configuration file; without it loopwatch runs on its embedded default.
    #[arg(long = "config.file", env = "LOOPWATCH_CONFIG", value_name = "PATH")]
    config_file: Option<PathBuf>,

    /// Address to listen on (repeatable): `:10071`, `[::]:10071`, `127.0.0.1:10071`.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_addresses: Vec<String>,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,

    /// Concurrent scrapes served at most; more get 503. 0 means no limit. [default: 40]
    #[arg(long = "web.max-requests", value_name = "N")]
    max_requests: Option<usize>,

    /// Web configuration file (exporter-toolkit format): TLS, client
    /// certificates, basic auth, response headers.
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,

    /// Serve on the socket systemd passes (socket activation) instead of
    /// --web.listen-address.
    #[arg(long = "web.systemd-socket")]
    systemd_socket: bool,

    /// Leave out the exporter's own process_* metrics.
    #[arg(long = "web.disable-exporter-metrics")]
    disable_exporter_metrics: bool,

    /// Log level.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    log_level: Level,

    /// Log format.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    log_format: Format,

    /// The same log message is written at most `log.repeat-burst` times per
    /// this window; the rest are counted in loopwatch_log_suppressed_total.
    /// 0s turns the limit off.
    #[arg(long = "log.repeat-window", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    log_repeat_window: std::time::Duration,

    /// Lines of one message per `log.repeat-window`.
    #[arg(long = "log.repeat-burst", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    log_repeat_burst: u32,

    /// Print the version and exit.
    #[arg(long = "version", action = ArgAction::SetTrue)]
    version: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file: print every problem and exit 2, or a summary and exit 0.
    CheckConfig { path: PathBuf },
    /// Print the embedded default configuration.
    PrintDefaultConfig,
}

/// Writes to stdout; a reader that went away (`| head -1`) is not an error,
/// where `println!` would panic.
fn print_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("loopwatch: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Exit status for bad usage or configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        return print_stdout(&format!("{}\n", version::version_line()));
    }
    match cli.command {
        Some(Command::PrintDefaultConfig) => {
            return print_stdout(config::DEFAULT_CONFIG);
        }
        Some(Command::CheckConfig { path }) => {
            return match config::load_file(&path) {
                Ok(valid) => {
                    print_stdout(&format!("{}: valid: {}\n", path.display(), valid.summary()))
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        None => {}
    }

    logging::init(
        cli.log_level,
        cli.log_format,
        RepeatLimit {
            window: cli.log_repeat_window,
            burst: cli.log_repeat_burst,
        },
    );
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "A task panicked");
    }));

    // The flags are merged into the config before it is validated, so a bad
    // flag value is reported, and exits 2, like a bad key.
    let web = WebFlags {
        listen_addresses: cli.listen_addresses,
        telemetry_path: cli.telemetry_path,
        max_requests: cli.max_requests,
        disable_exporter_metrics: cli.disable_exporter_metrics,
        systemd_socket: cli.systemd_socket,
    };
    let config = match config::load(cli.config_file.as_deref(), &web) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let security = match cli
        .web_config_file
        .as_deref()
        .map(config::load_web_config_file)
    {
        None => Default::default(),
        Some(Ok(security)) => security,
        Some(Err(e)) => return config_error(&e),
    };
    let settings = Settings {
        config,
        config_path: cli.config_file,
        web,
        security,
    };
    match exporter::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start");
            ExitCode::FAILURE
        }
    }
}

/// Logs every problem, one line each in the chosen log format; exits 2.
fn config_error(e: &config::ConfigError) -> ExitCode {
    for problem in e.to_string().lines() {
        tracing::error!(problem, "Invalid configuration");
    }
    ExitCode::from(EXIT_CONFIG)
}
