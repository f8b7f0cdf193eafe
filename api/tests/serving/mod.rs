//! What the suites that run `ticketd serve` as a process share: a free port, tokens signed
//! with its secret, and the process itself, killed should a test end before it stops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// The JWT secret the server runs with.
const SECRET: &str = "serve-test-secret-serve-test-secret-0123456789";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A token of org `acme` for the server's secret.
pub fn token(sub: &str, role: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims = json!({"sub": sub, "role": role, "org": "acme", "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

/// `ticketd serve`, ready.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts it on `database_url` and `data_dir`, with `env` besides, and waits until
    /// `/readyz` answers.
    pub async fn start(
        database_url: &str,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ticketd"))
            .arg("serve")
            .env("TICKETD_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("TICKETD_DATA_DIR", data_dir)
            .env("TICKETD_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ticketd");
        // Killed if the wait below fails.
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "ticketd did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// SIGKILL: no shutdown hook runs.
    #[allow(dead_code)] // Not every suite that includes this module kills its server.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
