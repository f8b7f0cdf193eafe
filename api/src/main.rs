//! `ticketd`: serve, migrate, mint a token, verify, export, import, or rebuild read models.

use std::process::ExitCode;

use clap::Parser;

use ticketd_api::auth::Auth;
use ticketd_api::config::{Cli, Command, LogFormat};
use ticketd_api::telemetry::LogTo;

// glibc's malloc took an eighth of the server's CPU under load (perf); mimalloc does the same
// work in a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, to) = match &cli.command {
        Command::Serve(args) => (args.log_format, LogTo::Stdout),
        _ => (LogFormat::Text, LogTo::Stderr),
    };
    let _logs = ticketd_api::telemetry::init(format, to);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ticketd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => ticketd_api::app::serve(args).await,
        Command::Migrate(args) => {
            let store = ticketd_api::app::open_store(&args).await?;
            ticketd_api::app::close(store.as_ref()).await;
            println!(
                "migrated {}",
                ticketd_api::app::redact(&args.database_url())
            );
            Ok(())
        }
        Command::Verify(args) => ticketd_api::transfer::verify(&args).await,
        Command::Export(args) => ticketd_api::transfer::export(&args).await,
        Command::Import(args) => ticketd_api::transfer::import(&args).await,
        Command::Rebuild(args) => {
            let projections = ticketd_projections::rebuild::select(&args.projections)
                .map_err(anyhow::Error::msg)?;
            let store = ticketd_api::app::open_store(&args.store).await?;
            let started = std::time::Instant::now();
            let done = ticketd_api::app::then_close(store.as_ref(), async {
                Ok(ticketd_projections::rebuild::rebuild_with(
                    store.as_ref(),
                    &projections,
                    args.tickets_in_memory,
                    args.switch_wait(),
                )
                .await?)
            })
            .await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "rebuilt {} from {} events in {secs:.1} s ({:.0} events/s) and switched over",
                done.projections.join(", "),
                done.events,
                done.events as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Command::Token(args) => {
            // Before the secret: a refused token creates nothing.
            ticketd_api::auth::check_claims(&args.sub, args.name.as_deref(), args.org.as_deref())
                .map_err(anyhow::Error::msg)?;
            let auth = Auth::from_secret_or_dir(args.secret.jwt_secret.as_deref(), &args.data_dir)?;
            let token = auth.mint(
                &args.sub,
                args.name.as_deref(),
                args.role,
                args.org.as_deref(),
                args.org_wide,
                args.ttl,
            )?;
            println!("{token}");
            Ok(())
        }
    }
}
