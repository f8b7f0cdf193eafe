//! `ticketd rebuild` as an operator runs it: against the SQLite file of a server that keeps
//! serving (in this process), which then follows on from the rebuilt read models.

mod common;

use serde_json::json;

use ticketd_tests::http::TestServer;

use common::{text, ticketd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_from_the_command_line_while_a_server_runs() {
    let source = ticketd_tests::sqlite_store().await;
    let s = TestServer::start(source.store.clone()).await;
    let agent = s.agent("agent-1");
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = s
            .open(
                &s.customer("alice"),
                json!({"subject": format!("T{i}"), "description": "d"}),
            )
            .await;
        let a = s
            .post(
                &format!("/v1/tickets/{id}/comments"),
                &agent,
                json!({"body": "hello"}),
            )
            .await;
        assert_eq!(a.status, 201);
        ids.push(id);
    }
    let dir = source.dir.path();
    let url = source.url.as_str();

    let out = ticketd(dir, &["rebuild", "--database-url", url, "nonsense"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no projection \"nonsense\"; known: tickets, feed, analytics"),
        "{}",
        text(&out.stderr)
    );

    let out = ticketd(dir, &["rebuild", "--database-url", url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("rebuilt tickets, feed, analytics from 6 events"),
        "{}",
        text(&out.stdout)
    );
    let out = ticketd(dir, &["rebuild", "--database-url", url, "feed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("rebuilt feed from 6 events"));
    // No scratch file is left beside the store.
    let left: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".rebuild-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The server follows on: a new command shows in every read model.
    let a = s
        .post(
            &format!("/v1/tickets/{}/status", ids[0]),
            &agent,
            json!({"status": "resolved"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let one = s.get(&format!("/v1/tickets/{}", ids[0]), &agent).await;
    assert_eq!(one.body["status"], "resolved", "{}", one.body);
    let feed = s.get(&format!("/v1/tickets/{}/feed", ids[0]), &agent).await;
    assert_eq!(feed.body["items"].as_array().expect("items").len(), 3);
    let list = s.get("/v1/tickets?active=true", &agent).await;
    assert_eq!(list.body["items"].as_array().expect("items").len(), 2);

    s.log_upto(&a.body["position"]).await;
    let projector = s.projector.clone().expect("projector");
    for p in projector.status() {
        projector
            .wait_for(
                p.name,
                s.last_position(),
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("caught up");
    }
    let out = ticketd(dir, &["verify", "--database-url", url]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("ok: every projection equals a rebuild from the log"),
        "{}",
        text(&out.stdout)
    );
}

/// PostgreSQL: `ticketd rebuild` beside a transaction that holds a read-model table (an
/// analytics job's long read) gives up within `--rebuild-switch-timeout`, naming the session
/// that holds it, with the live tables as they were; once it ends, the rebuild switches in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rebuild_gives_up_beside_a_long_transaction_naming_it() {
    use sqlx::Connection;
    let Some(t) = ticketd_tests::postgres_store(4).await else {
        return;
    };
    let s = TestServer::start(t.store.clone()).await;
    for i in 0..3 {
        s.open(
            &s.customer("alice"),
            json!({"subject": format!("T{i}"), "description": "d"}),
        )
        .await;
    }
    let url = t.schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    let out = ticketd(
        dir,
        &[
            "rebuild",
            "--database-url",
            &url,
            "--rebuild-lock-wait",
            "0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("0 is not in 1..=600"),
        "{}",
        text(&out.stderr)
    );

    // Which table is `tickets`: a switch puts another in its place.
    let tickets_table = || async {
        let mut conn = sqlx::PgConnection::connect_with(&t.schema.options)
            .await
            .expect("a connection");
        let oid: i64 = sqlx::query_scalar("SELECT 'tickets'::regclass::oid::bigint")
            .fetch_one(&mut conn)
            .await
            .expect("oid");
        let _ = conn.close().await;
        oid
    };
    let live = tickets_table().await;
    let (mut long, pid) =
        ticketd_tests::a_transaction_reading(&t.schema.options, "analytics_ticket_facts").await;
    let started = std::time::Instant::now();
    let out = ticketd(
        dir,
        &[
            "rebuild",
            "--database-url",
            &url,
            "--rebuild-lock-wait",
            "1",
            "--rebuild-switch-timeout",
            "3",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        stderr.contains("could not lock the live tables"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pid {pid} ")), "{stderr}");
    assert!(stderr.contains("each waiting at most 1000 ms"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "gave up in {:?}",
        started.elapsed()
    );
    // The live tables are as they were, and still served.
    assert_eq!(tickets_table().await, live, "the live tables stay");
    let list = s.get("/v1/tickets", &s.agent("agent-1")).await;
    assert_eq!(list.body["items"].as_array().expect("items").len(), 3);

    sqlx::query("COMMIT")
        .execute(&mut long)
        .await
        .expect("commit");
    let _ = long.close().await;
    let out = ticketd(dir, &["rebuild", "--database-url", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("rebuilt tickets, feed, analytics from 3 events"),
        "{}",
        text(&out.stdout)
    );
    assert_ne!(tickets_table().await, live, "switched in");
}
