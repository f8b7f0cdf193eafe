//! The `ticketd verify`, `export` and `import` commands as a user runs them (SQLite): exit
//! codes, the report naming stream and version, and a file round trip that the independent
//! Python verifier accepts.

mod common;

use std::process::Command;

use serde_json::{json, Value};
use uuid::Uuid;

use ticketd_tests::http::TestServer;

use common::{text, ticketd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_export_and_import_from_the_command_line() {
    let source = ticketd_tests::sqlite_store().await;
    let s = TestServer::start(source.store.clone()).await;
    let mut ids = Vec::new();
    let mut last = Value::Null;
    for i in 0..2 {
        let id = s
            .open(
                &s.customer("alice"),
                json!({"subject": format!("T{i}"), "description": "d"}),
            )
            .await;
        for body in ["one", "two"] {
            let a = s
                .post(
                    &format!("/v1/tickets/{id}/comments"),
                    &s.agent("agent-1"),
                    json!({ "body": body }),
                )
                .await;
            last = a.body["position"].clone();
        }
        ids.push(id.parse::<Uuid>().expect("uuid"));
    }
    s.log_upto(&last).await;
    let dir = source.dir.path();
    let url = source.url.as_str();

    let out = ticketd(dir, &["verify", "--database-url", url]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).starts_with("ok: 6 events in 2 streams"));

    let exported = dir.join("export.ndjson");
    let exported = exported.to_str().expect("utf-8 path");
    let out = ticketd(dir, &["export", "--database-url", url, "-o", exported]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Readable by its owner alone: it holds what customers wrote.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(exported)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // To stdout, the same bytes: the command's log lines go to stderr.
    let out = ticketd(dir, &["export", "--database-url", url, "-o", "-"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, std::fs::read(exported).expect("read"));

    let copy_url = format!("sqlite://{}/copy.db", dir.display());
    let out = ticketd(dir, &["import", "--database-url", &copy_url, exported]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = dir.join("again.ndjson");
    let again = again.to_str().expect("utf-8 path");
    let out = ticketd(dir, &["export", "--database-url", &copy_url, "-o", again]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read(exported).expect("read") == std::fs::read(again).expect("read"),
        "the re-export differs"
    );
    // An empty anchor anchors nothing: refused, not passed.
    let empty = dir.join("empty.ndjson");
    std::fs::write(&empty, "").expect("write");
    let out = ticketd(
        dir,
        &[
            "verify",
            "--database-url",
            url,
            "--anchor",
            empty.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("holds no events"),
        "{}",
        text(&out.stderr)
    );
    // The copy still holds every stream's head of the export: anchored, it verifies.
    let out = ticketd(
        dir,
        &["verify", "--database-url", &copy_url, "--anchor", exported],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Importing again into the now non-empty copy is refused.
    let out = ticketd(dir, &["import", "--database-url", &copy_url, exported]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/verify_chain.py");
    let py = Command::new("python3")
        .args([script, exported])
        .output()
        .expect("python3");
    assert!(py.status.success(), "{}", text(&py.stdout));

    // Remove one event: verify fails, naming it.
    sqlx::query("DELETE FROM events WHERE stream_id = ? AND version = 2")
        .bind(ids[1])
        .execute(source.store.pool())
        .await
        .expect("tamper");
    let out = ticketd(dir, &["verify", "--database-url", url]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("FAIL stream {} version 2 ", ids[1])),
        "{report}"
    );
    assert!(report.contains("missing_versions"), "{report}");
    assert!(report.trim_end().ends_with("1 findings"), "{report}");

    // Remove a stream's last event too: the chain cannot show it, the anchor does.
    sqlx::query("DELETE FROM events WHERE stream_id = ? AND version = 3")
        .bind(ids[0])
        .execute(source.store.pool())
        .await
        .expect("tamper");
    let out = ticketd(
        dir,
        &["verify", "--database-url", url, "--anchor", exported],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!(
            "FAIL stream {} version 3 (position -): anchor_missing",
            ids[0]
        )),
        "{report}"
    );
}

/// An export cut short leaves nothing under its name: a file that ended between two events
/// would look complete (and would have replaced the previous export, often the last anchor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_short_leaves_the_previous_file() {
    let source = ticketd_tests::sqlite_store().await;
    for _ in 0..200 {
        ticketd_tests::new_stream(source.store.as_ref(), 500).await;
    }
    let dir = source.dir.path();
    let output = dir.join("export.ndjson");
    std::fs::write(&output, "the previous export\n").expect("write");
    let partial = dir.join("export.ndjson.partial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(["export", "--database-url", &source.url, "-o"])
        .arg(&output)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("run ticketd export");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(true, |m| m.len() == 0) {
        assert!(std::time::Instant::now() < deadline, "the export began");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the export ended before it could be cut short"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert_eq!(
        std::fs::read_to_string(&output).expect("read"),
        "the previous export\n"
    );

    // Run to its end, it replaces the file, and leaves nothing beside it.
    let out = ticketd(
        dir,
        &[
            "export",
            "--database-url",
            &source.url,
            "-o",
            "export.ndjson",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!partial.exists());
    let lines = std::fs::read_to_string(&output)
        .expect("read")
        .lines()
        .count();
    assert_eq!(lines, 100_000);
}
