//! A real ticketd HTTP server on an ephemeral port, over a given store, and a small client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

use ticketd_api::app::{router, AppState};
use ticketd_api::auth::Auth;
use ticketd_api::server::Limits;
use ticketd_commands::{EventStore, Position};
use ticketd_domain::{Role, SlaPolicy};

/// The secret test servers sign with.
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// A served router on 127.0.0.1 with a port the OS chose; stops when dropped.
pub struct TestServer {
    pub base: String,
    pub store: Arc<dyn EventStore>,
    pub auth: Arc<Auth>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub projector: Option<Arc<ticketd_projections::Projector>>,
    /// The server's slot for `POST /v1/audit/verify`: a test holds it to stand for a check
    /// that runs.
    pub verify_slot: Arc<tokio::sync::Semaphore>,
    /// The latest `position` any answer carried: `get` reads at least that far (see there).
    last_position: Mutex<Position>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Projections stop now, not whenever the server task ends, so no batch of theirs
        // outlives the test's store (a PostgreSQL test schema is dropped right after).
        if let Some(p) = &self.projector {
            p.stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a request answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.body
        );
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        for field in ["type", "title", "detail"] {
            assert!(
                self.body[field].is_string(),
                "{field} missing: {}",
                self.body
            );
        }
    }
}

impl TestServer {
    pub async fn start(store: Arc<dyn EventStore>) -> TestServer {
        TestServer::start_with(store, false).await
    }

    pub async fn start_with(store: Arc<dyn EventStore>, public_submission: bool) -> TestServer {
        TestServer::start_limited(store, public_submission, Limits::default()).await
    }

    /// A server whose connections have `limits`.
    pub async fn start_limited(
        store: Arc<dyn EventStore>,
        public_submission: bool,
        limits: Limits,
    ) -> TestServer {
        TestServer::start_tuned(store, limits, |state| {
            state.public_submission = public_submission;
        })
        .await
    }

    /// A server whose connections have `limits`, its state as `tune` leaves it.
    pub async fn start_tuned(
        store: Arc<dyn EventStore>,
        limits: Limits,
        tune: impl FnOnce(&mut AppState),
    ) -> TestServer {
        let auth = Auth::new(SECRET.as_bytes().to_vec()).expect("test secret is long enough");
        let mut state = AppState::new(store.clone(), auth, SlaPolicy::default(), false);
        tune(&mut state);
        let auth = state.auth.clone();
        let projector = state.projector.clone();
        let verify_slot = state.verify_slot.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(ticketd_api::server::serve(
            listener,
            router(state),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            base: format!("http://{addr}"),
            store,
            auth,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            stop: Some(stop),
            projector,
            verify_slot,
            last_position: Mutex::new(Position::START),
        }
    }

    /// A valid token for one user.
    pub fn token(&self, sub: &str, role: Role, org: Option<&str>, org_wide: bool) -> String {
        self.auth
            .mint(
                sub,
                Some(&format!("{sub} name")),
                role,
                org,
                org_wide,
                Duration::from_secs(3600),
            )
            .expect("mint")
    }

    pub fn customer(&self, sub: &str) -> String {
        self.token(sub, Role::Customer, Some("acme"), false)
    }

    pub fn agent(&self, sub: &str) -> String {
        self.token(sub, Role::Agent, None, false)
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut all = headers.to_vec();
        let bytes = body.map(|b| {
            // As reqwest's `json` does: a content type the caller gave wins.
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                all.push(("content-type", "application/json"));
            }
            serde_json::to_vec(&b).expect("JSON body")
        });
        self.send(method, path, token, &all, bytes).await
    }

    /// Sends a request with exactly these headers and body bytes.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let a = answer(req.send().await.expect("request")).await;
        self.saw(&a);
        a
    }

    fn saw(&self, a: &Answer) {
        if let Some(p) = a.body["position"].as_str().and_then(|p| p.parse().ok()) {
            let mut last = self.last_position.lock().expect("position lock");
            *last = (*last).max(p);
        }
    }

    /// The latest `position` any answer so far carried.
    pub fn last_position(&self) -> Position {
        *self.last_position.lock().expect("position lock")
    }

    /// Sends raw bytes with the given content type (or none).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        self.send(method, path, token, &headers, Some(body)).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body), &[])
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(token), Some(body), &[])
            .await
    }

    /// GETs `path`, whose `min_position` nothing has reached, and checks CONTRACT §6's answer:
    /// 503 `unavailable` with `Retry-After`, once the 5 s bound has passed.
    pub async fn assert_waits_out(&self, path: &str, token: &str) {
        let started = std::time::Instant::now();
        let a = self.call(Method::GET, path, Some(token), None, &[]).await;
        a.assert_problem(503, "unavailable");
        assert!(a.header("retry-after").is_some(), "{path}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
            "{path}: {waited:?}"
        );
    }

    /// GET as a careful client does: queries are served from projections, which may lag, so
    /// unless the path names `min_position` this passes the last command position it saw
    /// (read-your-writes, CONTRACT §6). Use `call` to read without it.
    pub async fn get(&self, path: &str, token: &str) -> Answer {
        let mut path = path.to_owned();
        let last = self.last_position();
        if (path.starts_with("/v1/tickets") || path.starts_with("/v1/analytics"))
            && !path.contains("min_position=")
            && last > Position::START
        {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(&format!("min_position={last}"));
        }
        self.call(Method::GET, &path, Some(token), None, &[]).await
    }

    /// Opens a ticket as `token` and returns its id.
    pub async fn open(&self, token: &str, body: Value) -> String {
        let a = self.post("/v1/tickets", token, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "open: {}", a.body);
        a.body["id"].as_str().expect("id").to_owned()
    }

    /// The whole log once it shows the event at `position` (a command answer's `position`).
    pub async fn log_upto(&self, position: &Value) -> Vec<ticketd_commands::StoredEvent> {
        let position: Position = position
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a position: {position}"));
        crate::read_until(self.store.as_ref(), position).await
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Runs each named `async fn case(server: TestServer)` as two tests, one per backend; with
/// `public_submission:` first, on servers that take tickets from the public form.
#[macro_export]
macro_rules! http_both_backends {
    (public_submission: $($case:ident),+ $(,)?) => {
        $crate::http_both_backends!(@servers true; $($case),+);
    };
    ($($case:ident),+ $(,)?) => {
        $crate::http_both_backends!(@servers false; $($case),+);
    };
    (@servers $public:expr; $($case:ident),+) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = $crate::sqlite_store().await;
                    let server =
                        $crate::http::TestServer::start_with(t.store.clone(), $public).await;
                    super::$case(server).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(t) = $crate::postgres_store(8).await {
                        let server =
                            $crate::http::TestServer::start_with(t.store.clone(), $public).await;
                        super::$case(server).await;
                    }
                }
            )+
        }
    };
}
