//! `ticketd serve` stopped by SIGINT while a verification runs whose caller has gone: the
//! server waits for it (within its shutdown timeout), so its scratch copy is discarded before
//! the store closes, and then exits cleanly.

mod serving;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use serving::{token, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shutdown_waits_for_a_verification_its_caller_left() {
    let Some(schema) = ticketd_tests::PgTestSchema::create().await else {
        return;
    };
    let url = schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&url, dir.path(), &[("TICKETD_SHUTDOWN_TIMEOUT", "60")]).await;
    let at = server.base.clone();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let opened = http
        .post(format!("{at}/v1/tickets"))
        .bearer_auth(token("alice", "customer"))
        .json(&json!({"subject": "printer", "description": "jams"}))
        .send()
        .await
        .expect("open");
    assert_eq!(opened.status(), 201);
    let auditor = token("audrey", "auditor");
    while http
        .get(format!("{at}/v1/tickets"))
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("list")
        .json::<serde_json::Value>()
        .await
        .expect("json")["items"]
        .as_array()
        .is_none_or(|items| items.is_empty())
    {
        assert!(Instant::now() < deadline, "the ticket was never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A live table the verification compares, held: it runs until this lets go.
    let (mut holder, _) = ticketd_tests::a_transaction_holding(
        &schema.options,
        "LOCK TABLE ticket_reads IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    // Its caller gives up.
    let left = http
        .post(format!("{at}/v1/audit/verify"))
        .bearer_auth(&auditor)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(
        left.is_err(),
        "the verification waits on the lock: {left:?}"
    );
    let busy = http
        .post(format!("{at}/v1/audit/verify"))
        .bearer_auth(&auditor)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("verify");
    assert_eq!(busy.status(), 503, "the first verification runs on");

    let signalled = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(signalled.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "the server waits for the verification"
    );
    sqlx::query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("commit");
    let stopping = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < stopping,
            "the server stops once it is done"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // Its scratch copy went with it.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ticketd_rebuild_' || \
         (SELECT oid FROM pg_namespace WHERE nspname = $1)::text || '_%'",
    )
    .bind(&schema.name)
    .fetch_one(&mut holder)
    .await
    .expect("schemas");
    assert_eq!(left, 0, "the verification's scratch schema was dropped");
    let _ = holder.close().await;
}
