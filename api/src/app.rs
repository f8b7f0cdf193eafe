//! The application: shared state, the router, and the server's life from start to shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use ticketd_commands::postgres::PostgresStore;
use ticketd_commands::sqlite::SqliteStore;
use ticketd_commands::{CommandHandler, EventStore};
use ticketd_domain::SlaPolicy;
use ticketd_projections::{Projector, Reader};

use crate::auth::Auth;
use crate::config::{ServeArgs, StoreArgs};
use crate::error::ApiError;

/// Recent ticket states kept for command handling.
const STATE_CACHE_CAPACITY: usize = 50_000;
/// How long the projections get, after the requests, to finish their batch at shutdown.
const PROJECTIONS_STOP: Duration = Duration::from_secs(5);

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub handler: Arc<CommandHandler>,
    pub store: Arc<dyn EventStore>,
    pub auth: Arc<Auth>,
    /// CONTRACT §4.1: anonymous callers may open tickets through the public form.
    pub public_submission: bool,
    /// The read side (CONTRACT §6); `None` for a store without a database of its own.
    pub projector: Option<Arc<Projector>>,
    /// `POST /v1/audit/verify`'s one slot: a second check while one runs is a 503.
    pub verify_slot: Arc<tokio::sync::Semaphore>,
    /// How long a query's statement may run on PostgreSQL before it is a 503
    /// ([`ticketd_projections::Reader`]).
    pub query_timeout: Option<std::time::Duration>,
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Arc<Auth> {
        state.auth.clone()
    }
}

impl AppState {
    pub fn new(
        store: Arc<dyn EventStore>,
        auth: Auth,
        sla: SlaPolicy,
        public_submission: bool,
    ) -> Self {
        AppState {
            handler: Arc::new(CommandHandler::new(
                store.clone(),
                sla,
                STATE_CACHE_CAPACITY,
            )),
            // Starts the projections; they stop when the last AppState clone is dropped.
            projector: Projector::start(store.clone()).map(Arc::new),
            store,
            auth: Arc::new(auth),
            public_submission,
            verify_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            query_timeout: Some(crate::config::QUERY_TIMEOUT_DEFAULT),
        }
    }

    /// The read models as this server's queries read them.
    pub fn reader<'a>(&self, reads: &'a Projector) -> Reader<'a> {
        Reader {
            db: reads.database(),
            timeout: self.query_timeout,
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::tickets::routes())
        .merge(crate::queries::routes())
        .merge(crate::audit::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(crate::metrics::render))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(crate::telemetry::trace_layer())
        .with_state(state)
}

/// 200 while the process runs (CONTRACT §8).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process runs")))]
pub async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
}

/// 200 when the store answers, else 503 (CONTRACT §8).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The store answers"), (status = 503, body = crate::error::Problem)))]
pub async fn readyz(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.store.ping().await?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ready"})),
    )
        .into_response())
}

/// This document (OpenAPI 3.1), generated from the code once per process: it cannot change
/// while the process runs.
pub async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Result<axum::body::Bytes, String>> =
        std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        crate::openapi::document()
            .and_then(|doc| serde_json::to_vec(&doc))
            .map(axum::body::Bytes::from)
            .map_err(|e| e.to_string())
    });
    match document {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes.clone(),
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn unknown_route() -> ApiError {
    ApiError::route_not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Opens and migrates the store named by the database URL: `postgres://…` or `sqlite://…`.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn EventStore>> {
    open(args, true).await
}

/// The store named by `args`, as it is: commands that only read it (verify, export) never
/// migrate it.
pub async fn open_existing(args: &StoreArgs) -> anyhow::Result<Arc<dyn EventStore>> {
    open(args, false).await
}

async fn open(args: &StoreArgs, migrate: bool) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match OpenedStore::open(args, migrate).await? {
        OpenedStore::Sqlite(store) => store,
        OpenedStore::Postgres(store) => store,
    })
}

/// The store named by the database URL, of its kind (for what needs more than the
/// `EventStore` of either: `import` writes through each backend's own importer).
pub enum OpenedStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl OpenedStore {
    /// Opens the store named by `args` (`postgres://…` or `sqlite://…`), migrating it first
    /// with `migrate`.
    pub async fn open(args: &StoreArgs, migrate: bool) -> anyhow::Result<OpenedStore> {
        let url = args.database_url();
        let url = url.as_str();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = PostgresStore::connect(url, args.pg_max_connections)
                .await
                .context("connecting to PostgreSQL")?;
            if migrate {
                store.migrate().await.context("migrating PostgreSQL")?;
            }
            Ok(OpenedStore::Postgres(Arc::new(store)))
        } else if url.starts_with("sqlite:") {
            let store = SqliteStore::open(url).await.context("opening SQLite")?;
            if migrate {
                store.migrate().await.context("migrating SQLite")?;
            }
            Ok(OpenedStore::Sqlite(Arc::new(store)))
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with postgres:// or sqlite://; it starts {:?}",
                scheme_of(url)
            )
        }
    }

    /// The store, as any command sees it.
    pub fn store(&self) -> &dyn EventStore {
        match self {
            OpenedStore::Sqlite(store) => store.as_ref(),
            OpenedStore::Postgres(store) => store.as_ref(),
        }
    }
}

/// `ticketd serve`: runs until SIGTERM or SIGINT, then drains in-flight requests.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = Auth::from_secret_or_dir(args.secret.jwt_secret.as_deref(), &args.store.data_dir)?;
    let store = open_store(&args.store).await?;
    let mut state = AppState::new(
        store.clone(),
        auth,
        args.sla.clone(),
        args.public_submission,
    );
    state.query_timeout = args.query_timeout();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let database = redact(&args.store.database_url());
    tracing::info!(%addr, %database, "ticketd listening");
    let purge = tokio::spawn(purge_idempotency(store.clone()));
    let projector = state.projector.clone();
    let verify_slot = state.verify_slot.clone();
    let mut limits = args.http_limits();
    limits.max_connections = crate::server::connections_within_descriptors(limits.max_connections);
    let (stopping, stop) = tokio::sync::oneshot::channel::<()>();
    let server = crate::server::serve(listener, router(state), limits, async move {
        crate::shutdown::signal().await;
        let _ = stopping.send(());
    });
    let server = tokio::spawn(server);
    let timeout = args.shutdown_timeout();
    // One deadline for the drain and the wait for a verification below, set when shutdown
    // begins: the whole stop takes at most the timeout (and the projections' and store's
    // few seconds after it).
    let (began, deadline) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    tokio::select! {
        done = server => done.context("the server task failed")?,
        () = async move {
            if stop.await.is_ok() {
                let until = tokio::time::Instant::now() + timeout;
                let _ = began.send(until);
                tokio::time::sleep_until(until).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!(?timeout, "requests still in flight at the shutdown deadline; exiting"),
    }
    purge.abort();
    let deadline = deadline
        .await
        .unwrap_or_else(|_| tokio::time::Instant::now() + timeout);
    // A verification whose caller left runs on: let it finish and discard its scratch copy
    // before the store closes under it.
    if tokio::time::timeout_at(deadline, verify_slot.acquire())
        .await
        .is_err()
    {
        tracing::warn!(
            "a verification was still running at shutdown; its scratch copy may be left (on \
             PostgreSQL the next rebuild or verification drops it; on SQLite delete the file \
             *.rebuild-* beside the store by hand)"
        );
    }
    // The projections finish the batch they are in and close their connections; they lose
    // nothing if cut short, so this waits briefly.
    if let Some(projector) = projector {
        if !projector.shutdown(PROJECTIONS_STOP).await {
            tracing::warn!(
                ?PROJECTIONS_STOP,
                "a projection was still busy at shutdown; its batch rolls back and is applied again on the next start"
            );
        }
    }
    close(store.as_ref()).await;
    tracing::info!("ticketd stopped");
    Ok(())
}

/// How long [`close`] waits for the store's connections to come back.
const CLOSE_STOP: Duration = Duration::from_secs(5);

/// Runs a command's `work` on `store`, then closes the store whatever the work returned
/// ([`close`]), and returns that.
pub async fn then_close<T>(
    store: &dyn EventStore,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let done = work.await;
    close(store).await;
    done
}

/// Closes `store` at the end of a command, so that SQLite folds its WAL files into the
/// database files. Bounded: a connection still lent out (a projection cut short) is left to
/// the process exit, which loses nothing either.
pub async fn close(store: &dyn EventStore) {
    if tokio::time::timeout(CLOSE_STOP, store.close())
        .await
        .is_err()
    {
        tracing::warn!(
            ?CLOSE_STOP,
            "the store's connections did not all close in time"
        );
    }
}

/// Drops idempotency records past their 24 hours, hourly.
async fn purge_idempotency(store: Arc<dyn EventStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let before = chrono::Utc::now()
            - chrono::Duration::hours(ticketd_commands::handler::IDEMPOTENCY_WINDOW_HOURS);
        match store.purge_idempotency(before).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}

/// What an error may echo of a database URL it cannot use: up to its first `:` (the scheme,
/// when it has one), any password masked.
pub fn scheme_of(url: &str) -> String {
    redact(url.split(':').next().unwrap_or_default())
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    let Some(scheme) = url.find("://") else {
        // Not a URL (libpq's `host=… password=…` form, a typo): keep no value of a password.
        return url.split(' ').map(masked).collect::<Vec<_>>().join(" ");
    };
    let start = scheme + 3;
    let query = url[start..].find('?').map_or(url.len(), |i| start + i);
    // `user:password@`: the password runs from the first `:` to the last `@` before the query
    // (it may hold either, or a `/`).
    let mut out = match url[start..query].rfind('@') {
        Some(at) => {
            let creds = &url[start..start + at];
            let user = creds.split_once(':').map_or(creds, |(user, _)| user);
            let hidden = if user.len() < creds.len() { ":***" } else { "" };
            format!("{}{user}{hidden}{}", &url[..start], &url[start + at..query])
        }
        None => url[..query].to_owned(),
    };
    // The query may carry one too: libpq and sqlx take `password=` there.
    if let Some(params) = url.get(query + 1..) {
        out.push('?');
        out.push_str(&params.split('&').map(masked).collect::<Vec<_>>().join("&"));
    }
    out
}

/// `password=…` with its value hidden; any other parameter as it is.
fn masked(param: &str) -> String {
    match param.split_once('=') {
        Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
        _ => param.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, scheme_of};

    #[test]
    fn passwords_do_not_reach_the_log() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://./data/t.db"), "sqlite://./data/t.db");
        assert_eq!(
            redact("postgres://app@db/t?sslmode=disable&password=hunter2"),
            "postgres://app@db/t?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://u:p@ss@h/db?application_name=a@b"),
            "postgres://u:***@h/db?application_name=a@b"
        );
        assert_eq!(redact("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("host=db user=app password=s3cret"),
            "host=db user=app password=***"
        );
        assert_eq!(scheme_of("postgres:/app:s3cret@db/t"), "postgres");
        assert_eq!(scheme_of("host=db password=s3cret"), "host=db password=***");
    }
}
