//! The `ticketd` command line (CONTRACT §8): every setting is a flag and an environment
//! variable `TICKETD_…` of the same name; `DATABASE_URL` is accepted too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use ticketd_domain::{Role, SlaPolicy};

/// How long a query's statement may run on PostgreSQL by default: far above any query's
/// time at a million tickets (the analytics summary of all of them, about 2 s), far below a
/// client's patience.
pub const QUERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "ticketd",
    version,
    about = "An event-sourced help-desk ticketing service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the store is migrated first).
    Serve(ServeArgs),
    /// Apply the store's migrations and exit.
    Migrate(StoreArgs),
    /// Mint a JWT with the configured secret, to try the service.
    Token(TokenArgs),
    /// Check every stream's hash chain, version sequence and decoding; exit non-zero on any
    /// finding (CONTRACT §7).
    Verify(VerifyArgs),
    /// Write the log (all of it, a range of positions, or one ticket) as NDJSON or MessagePack.
    Export(ExportArgs),
    /// Load an export into an empty store: every event, the log order and every hash.
    Import(ImportArgs),
    /// Rebuild read models from the start of the log into fresh tables while the service
    /// keeps serving the old ones, then switch over (blue/green). All of them by default.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The projections to rebuild (tickets, feed, analytics); all when none is named.
    pub projections: Vec<String>,
    /// PostgreSQL: most tickets a rebuild folds in memory (about 3 kB each) before it loads
    /// them and goes on batch by batch; 0 rebuilds batch by batch throughout.
    /// (The flag is named as its variable, CONTRACT §8; `--tickets-in-memory` still works.)
    #[arg(long = "rebuild-tickets-in-memory", alias = "tickets-in-memory",
        env = "TICKETD_REBUILD_TICKETS_IN_MEMORY", default_value_t = ticketd_projections::bulk::BULK_TICKETS)]
    pub tickets_in_memory: usize,
    /// PostgreSQL: the most seconds the switch waits for its locks on the live tables in one
    /// attempt; readers of those tables may wait as long. A longer transaction holding one of
    /// them (an analytics query, say) makes the switch let go, pause and try again. Past twice
    /// the server's deadlock_timeout (1 s by default), a transaction that holds one of the
    /// tables and then reads another may be aborted as a deadlock instead of the switch.
    #[arg(long = "rebuild-lock-wait", env = "TICKETD_REBUILD_LOCK_WAIT",
        default_value_t = ticketd_projections::rebuild::SwitchWait::default().per_attempt.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=600))]
    pub lock_wait: u64,
    /// PostgreSQL: the most seconds the switch's attempts take together before the rebuild
    /// gives up, the live tables as they were.
    #[arg(long = "rebuild-switch-timeout", env = "TICKETD_REBUILD_SWITCH_TIMEOUT",
        default_value_t = ticketd_projections::rebuild::SwitchWait::default().total.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub switch_timeout: u64,
}

impl RebuildArgs {
    /// How the switch waits for its locks.
    pub fn switch_wait(&self) -> ticketd_projections::rebuild::SwitchWait {
        ticketd_projections::rebuild::SwitchWait {
            per_attempt: Duration::from_secs(self.lock_wait),
            total: Duration::from_secs(self.switch_timeout),
        }
    }
}

/// The file formats of `export` and `import` (docs/AUDIT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON audit record a line, as `GET /v1/audit/events` streams them (no positions).
    Ndjson,
    /// One MessagePack map an event, the stored bytes as binary.
    Msgpack,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// An earlier export (NDJSON or MessagePack): each of its streams' last event must still
    /// be in the log with the same hash, which catches truncation, removal and rewrites that
    /// a chain alone cannot show.
    #[arg(long)]
    pub anchor: Option<PathBuf>,
    /// Check only the log, not that each projection equals a rebuild from it.
    #[arg(long)]
    pub log_only: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The file to write (owner-only), which appears under this name only once complete
    /// (written as `FILE.partial` until then); `-` for stdout, or a pipe, written as it goes.
    #[arg(long, short)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
    /// Only events after this position (exclusive).
    #[arg(long)]
    pub after: Option<ticketd_commands::Position>,
    /// Only events up to this position (inclusive).
    #[arg(long)]
    pub until: Option<ticketd_commands::Position>,
    /// Only this ticket's events.
    #[arg(long)]
    pub ticket: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The export to load; `-` for stdin.
    pub input: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// `postgres://…` or `sqlite://path`. Also read from DATABASE_URL.
    /// Default: `sqlite://<data dir>/ticketd.db`.
    #[arg(
        long = "database-url",
        env = "TICKETD_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Directory for the embedded SQLite store and the generated JWT secret.
    #[arg(long = "data-dir", env = "TICKETD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL connection pool size.
    #[arg(long = "pg-max-connections", env = "TICKETD_PG_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pg_max_connections: u32,
}

impl StoreArgs {
    /// The flag, else TICKETD_DATABASE_URL (both in clap), else DATABASE_URL, else SQLite in
    /// the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| default_sqlite_url(&self.data_dir))
    }
}

fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("ticketd.db").display())
}

/// The token secret.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// HS256 secret, at least 32 bytes. Default: one generated in the data directory.
    #[arg(
        long = "jwt-secret",
        env = "TICKETD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TICKETD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Let requests without a token open tickets through the public form (CONTRACT §4.1).
    #[arg(long = "public-submission", env = "TICKETD_PUBLIC_SUBMISSION", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub public_submission: bool,
    /// SLA targets per priority, e.g. `urgent=4h,high=24h,medium=3d,low=5d,none=off`;
    /// priorities not named keep their defaults.
    #[arg(long, env = "TICKETD_SLA", value_parser = SlaPolicy::parse, default_value = "")]
    pub sla: SlaPolicy,
    /// Log lines as text or JSON. Levels come from RUST_LOG (default `info`).
    #[arg(long = "log-format", env = "TICKETD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds to let in-flight requests finish after SIGTERM or SIGINT (the projections then
    /// get up to 5 s more to commit the batch in hand).
    #[arg(
        long = "shutdown-timeout",
        env = "TICKETD_SHUTDOWN_TIMEOUT",
        default_value_t = 30
    )]
    pub shutdown_timeout: u64,
    /// Seconds a client has to send a request's head (its line and headers), counted from when
    /// its connection waits for one: an idle keep-alive connection is closed then too, so keep
    /// it longer than the idle timeout of a proxy in front.
    #[arg(
        long = "http-header-timeout",
        env = "TICKETD_HTTP_HEADER_TIMEOUT",
        default_value_t = crate::server::Limits::default().header_read_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub http_header_timeout: u64,
    /// Seconds a client has to send a request's body, once its head has arrived (408 after).
    #[arg(
        long = "http-body-timeout",
        env = "TICKETD_HTTP_BODY_TIMEOUT",
        default_value_t = crate::server::Limits::default().body_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub http_body_timeout: u64,
    /// Seconds a write to a client may wait for it to read (a client that reads nothing of its
    /// answer for this long is cut off).
    #[arg(
        long = "http-write-timeout",
        env = "TICKETD_HTTP_WRITE_TIMEOUT",
        default_value_t = crate::server::Limits::default().write_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub http_write_timeout: u64,
    /// Seconds a query's statement may run on PostgreSQL (waiting on a lock included) before
    /// the query answers `503 unavailable`; 0: no bound, and no transaction around a query
    /// (one round trip less each).
    #[arg(
        long = "query-timeout",
        env = "TICKETD_QUERY_TIMEOUT",
        default_value_t = QUERY_TIMEOUT_DEFAULT.as_secs(),
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub query_timeout: u64,
    /// HTTP connections open at once; past it, new ones wait to be accepted.
    #[arg(
        long = "http-max-connections",
        env = "TICKETD_HTTP_MAX_CONNECTIONS",
        default_value_t = crate::server::Limits::default().max_connections as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub http_max_connections: u64,
}

impl ServeArgs {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// The bound on a query's statements, if any (`0` is none).
    pub fn query_timeout(&self) -> Option<Duration> {
        (self.query_timeout > 0).then(|| Duration::from_secs(self.query_timeout))
    }

    pub fn http_limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            header_read_timeout: Duration::from_secs(self.http_header_timeout),
            body_timeout: Duration::from_secs(self.http_body_timeout),
            max_connections: usize::try_from(self.http_max_connections).unwrap_or(usize::MAX),
            write_timeout: Duration::from_secs(self.http_write_timeout),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user's id (`sub`).
    pub sub: String,
    /// customer, agent, admin or auditor.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// The customer's organization.
    #[arg(long)]
    pub org: Option<String>,
    /// The customer may see every ticket of the org.
    #[arg(long = "org-wide")]
    pub org_wide: bool,
    /// Display name, copied into events for the feed.
    #[arg(long)]
    pub name: Option<String>,
    /// How long the token is valid: e.g. `30m`, `24h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Duration,
    #[arg(long = "data-dir", env = "TICKETD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub secret: SecretArgs,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s.parse::<Role>() {
        Ok(Role::Public) | Err(_) => Err("must be customer, agent, admin or auditor".into()),
        Ok(role) => Ok(role),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    // At the last character, not byte: `1ü` is an error, not a panic.
    let (digits, unit) = s.split_at(s.char_indices().last().map_or(0, |(i, _)| i));
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a positive whole number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?} needs a unit: s, m, h or d")),
    };
    // Ten years is plenty, and keeps `exp` far from overflow.
    if secs > 10 * 365 * 86_400 {
        return Err(format!("{s:?} is longer than ten years"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_needs_no_configuration() {
        let cli = Cli::try_parse_from(["ticketd", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen, "127.0.0.1:8080");
        assert_eq!(args.store.data_dir, PathBuf::from("./data"));
        assert!(!args.public_submission);
        assert_eq!(args.sla, SlaPolicy::default());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "ticketd",
            "serve",
            "--listen",
            "0.0.0.0:9",
            "--public-submission",
            "--sla",
            "urgent=1h",
            "--database-url",
            "sqlite://x.db",
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(args.public_submission);
        assert_eq!(args.store.database_url(), "sqlite://x.db");
        assert_eq!(
            args.sla.target(ticketd_domain::Priority::Urgent),
            Some(chrono::Duration::hours(1))
        );
        assert!(Cli::try_parse_from(["ticketd", "serve", "--sla", "urgent=soon"]).is_err());
    }

    /// CONTRACT §8: every setting is a variable `TICKETD_…` and a flag of the same name.
    #[test]
    fn every_variable_is_also_a_flag_of_its_name() {
        let cli = Cli::command();
        let mut seen = 0;
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                    continue;
                };
                let Some(name) = env.strip_prefix("TICKETD_") else {
                    continue;
                };
                let flag = name.to_lowercase().replace('_', "-");
                assert_eq!(arg.get_long(), Some(flag.as_str()), "{env}");
                seen += 1;
            }
        }
        assert!(seen >= 10, "{seen} settings");
    }

    #[test]
    fn query_timeout_bounds_or_is_off() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["ticketd", "serve"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Serve(args)) => Ok(args.query_timeout()),
                Ok(_) => panic!("not serve"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(serve(&[]).ok(), Some(Some(QUERY_TIMEOUT_DEFAULT)));
        assert_eq!(
            serve(&["--query-timeout", "7"]).ok(),
            Some(Some(Duration::from_secs(7)))
        );
        assert_eq!(serve(&["--query-timeout", "0"]).ok(), Some(None));
        assert!(serve(&["--query-timeout", "3601"]).is_err());
        assert!(serve(&["--query-timeout", "-1"]).is_err());
    }

    #[test]
    fn token_args() {
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("5").is_err());
        // A unit of more than one byte: refused, not a panic.
        assert!(parse_ttl("1ü").is_err());
        assert!(parse_ttl("ü").is_err());
        assert!(parse_role("public").is_err());
        assert_eq!(parse_role("agent"), Ok(Role::Agent));
    }
}
