//! CONTRACT §7 over HTTP, on SQLite and on PostgreSQL: the log paged and streamed as NDJSON,
//! one ticket's events, a ticket as of an instant, the chain check, and who may use them.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use ticketd_domain::{event_hash, HashInput, Role};
use ticketd_tests::http::TestServer;
use ticketd_tests::http_both_backends;

fn auditor(s: &TestServer) -> String {
    s.token("audrey", Role::Auditor, None, false)
}

fn admin(s: &TestServer) -> String {
    s.token("root", Role::Admin, None, false)
}

/// Opens `n` tickets and moves each through a few commands; returns the ids and the position
/// of the last command.
async fn some_history(s: &TestServer, n: usize) -> (Vec<String>, Value) {
    let agent = s.agent("agent-1");
    let mut ids = Vec::new();
    let mut last = Value::Null;
    for i in 0..n {
        let id = s
            .open(
                &s.customer("alice"),
                json!({"subject": format!("Ticket {i}"), "description": "Help", "priority": "low"}),
            )
            .await;
        let a = s
            .post(
                &format!("/v1/tickets/{id}/comments"),
                &agent,
                json!({"body": "Looking", "visibility": "private"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let a = s
            .post(
                &format!("/v1/tickets/{id}/status"),
                &agent,
                json!({"status": "resolved", "reason": "fixed"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        last = a.body["position"].clone();
        ids.push(id);
    }
    (ids, last)
}

fn unhex(s: &Value) -> Vec<u8> {
    let s = s.as_str().expect("hex string");
    assert!(s.len().is_multiple_of(2), "{s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn tohex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recomputes an item's hash from its own fields, as an outside client would.
fn assert_hash_recomputes(item: &Value) {
    let prev: [u8; 32] = unhex(&item["prev_hash"]).try_into().expect("32 bytes");
    let at = chrono::DateTime::parse_from_rfc3339(item["recorded_at"].as_str().expect("at"))
        .expect("rfc3339")
        .with_timezone(&chrono::Utc);
    let hash = event_hash(&HashInput {
        prev_hash: &prev,
        stream_id: item["stream"]
            .as_str()
            .expect("stream")
            .parse()
            .expect("uuid"),
        version: item["version"].as_u64().expect("version"),
        event_id: item["id"].as_str().expect("id").parse().expect("uuid"),
        event_type: item["type"].as_str().expect("type"),
        schema_version: item["schema_version"].as_u64().expect("schema") as u32,
        recorded_at: at,
        metadata: &unhex(&item["metadata"]),
        payload: &unhex(&item["payload"]),
    });
    assert_eq!(tohex(&hash), item["hash"], "{item}");
}

async fn log_pages_every_event_once_in_log_order(s: TestServer) {
    let (_, last) = some_history(&s, 3).await;
    let log = s.log_upto(&last).await;
    assert_eq!(log.len(), 9);

    let token = auditor(&s);
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let a = s
            .get(&format!("/v1/audit/events?limit=2&after={after}"), &token)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let page = a.body["items"].as_array().expect("items").clone();
        let next = a.body["next"].as_str().expect("next").to_owned();
        if page.is_empty() {
            assert_eq!(next, after, "an empty page keeps the cursor");
            break;
        }
        assert!(page.len() <= 2);
        assert_eq!(next, page.last().expect("last")["position"]);
        after = next;
        items.extend(page);
    }
    assert_eq!(items.len(), log.len());
    for (item, stored) in items.iter().zip(&log) {
        assert_eq!(item["position"], stored.position.to_string());
        assert_eq!(item["id"], stored.event_id.to_string());
        assert_eq!(item["stream"], stored.stream_id.to_string());
        assert_eq!(item["version"], stored.version);
        assert_eq!(item["type"], stored.event_type);
        assert_eq!(item["schema_version"], stored.schema_version);
        assert_eq!(item["hash"], tohex(&stored.hash));
        assert_eq!(item["prev_hash"], tohex(&stored.prev_hash));
        assert_hash_recomputes(item);
    }
    let first = &items[0];
    assert_eq!(first["type"], "ticket.opened");
    assert_eq!(first["prev_hash"], "0".repeat(64));
    assert_eq!(first["data"]["subject"], "Ticket 0");
    assert_eq!(first["actor"]["id"], "alice");
    assert_eq!(first["actor"]["role"], "customer");
    let at = first["recorded_at"].as_str().expect("recorded_at");
    assert!(
        at.ends_with('Z') && at.len() == "2026-01-01T00:00:00.000000Z".len(),
        "{at}"
    );
    // Private comments are shown to auditors.
    assert_eq!(items[1]["data"]["visibility"], "private");
    assert_eq!(items[1]["schema_version"], 2);
    assert_eq!(items[1]["data"]["channel"], "web");
    assert_eq!(items[1]["actor"]["role"], "agent");

    // The default page, and the same order every time.
    let a = s.get("/v1/audit/events", &token).await;
    assert_eq!(a.body["items"].as_array().expect("items"), &items);
}

async fn ndjson_streams_the_log(s: TestServer) {
    let (_, last) = some_history(&s, 2).await;
    let log = s.log_upto(&last).await;
    let token = auditor(&s);
    let paged = s.get("/v1/audit/events?limit=1000", &token).await.body["items"].clone();

    let accept = [("accept", "application/x-ndjson")];
    let a = s
        .call(Method::GET, "/v1/audit/events", Some(&token), None, &accept)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some("application/x-ndjson"));
    let text = a.body.as_str().expect("ndjson text");
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), log.len());
    assert_eq!(Value::Array(lines.clone()), paged);

    // `after` and `limit` apply to the stream too.
    let after = lines[1]["position"].as_str().expect("position");
    let a = s
        .call(
            Method::GET,
            &format!("/v1/audit/events?after={after}&limit=3"),
            Some(&token),
            None,
            &[("accept", "application/x-ndjson, application/json;q=0.5")],
        )
        .await;
    let text = a.body.as_str().expect("ndjson text");
    let got: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(got, lines[2..5].to_vec());

    // A client that prefers JSON gets a page.
    for accept in [
        "application/json, application/x-ndjson;q=0.5",
        "application/x-ndjson;q=0",
    ] {
        let a = s
            .call(
                Method::GET,
                "/v1/audit/events",
                Some(&token),
                None,
                &[("accept", accept)],
            )
            .await;
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{accept}"
        );
        assert!(a.body["items"].is_array());
    }

    // Past the end: an empty stream.
    let end = lines.last().expect("last")["position"].as_str().expect("p");
    let a = s
        .call(
            Method::GET,
            &format!("/v1/audit/events?after={end}"),
            Some(&token),
            None,
            &accept,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, Value::Null, "no bytes");
}

async fn query_parameters_are_checked(s: TestServer) {
    let token = auditor(&s);
    for bad in [
        "after=x",
        "after=1",
        "after=-1-2",
        "after=1-2-3",
        "after=99999999999999999999999-1",
        "limit=abc",
        "limit=-1",
        "limit=1&limit=2",
        "limit=%ZZ",
        // Out of range: 400, as on /v1/tickets (a query parameter, not a JSON body).
        "limit=0",
        "limit=1001",
        // A typo must not silently page from the start.
        "afetr=1-1",
        "min_position=soon",
    ] {
        s.get(&format!("/v1/audit/events?{bad}"), &token)
            .await
            .assert_problem(400, "malformed_request");
    }
    let ok = s.get("/v1/audit/events?limit=1000&after=0-0", &token).await;
    assert_eq!(ok.status, StatusCode::OK);

    let id = s
        .open(
            &s.customer("alice"),
            json!({"subject": "s", "description": "d"}),
        )
        .await;
    let path = format!("/v1/audit/tickets/{id}/state");
    for bad in [
        "",
        "?as_of=yesterday",
        "?as_of=2026-13-01T00:00:00Z",
        "?as_of=2026-01-01T00:00:00Z&asof=2026-01-01T00:00:00Z",
        "?as_of=2026-01-01T00:00:00Z&min_position=1",
    ] {
        s.get(&format!("{path}{bad}"), &token)
            .await
            .assert_problem(400, "malformed_request");
    }
    for bad in ["?after=0-0", "?min_position=x"] {
        s.get(&format!("/v1/audit/tickets/{id}/events{bad}"), &token)
            .await
            .assert_problem(400, "malformed_request");
    }
    for path in [
        "/v1/audit/tickets/not-a-uuid/events",
        "/v1/audit/tickets/not-a-uuid/state?as_of=2026-01-01T00:00:00Z",
    ] {
        s.get(path, &token)
            .await
            .assert_problem(400, "malformed_request");
    }
}

/// §6's `min_position` on the audit endpoints: the log answers with the command's own event at
/// once (on PostgreSQL it may otherwise wait a moment behind an older transaction), and a
/// position the log has not reached is 503 with `Retry-After` after about 5 s.
async fn min_position_reads_your_writes_in_the_log(s: TestServer) {
    let token = auditor(&s);
    for round in 0..20 {
        let (ids, last) = some_history(&s, 1).await;
        let last = last.as_str().expect("position");
        let a = s
            .get(
                &format!("/v1/audit/events?min_position={last}&after={last}"),
                &token,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["items"], json!([]), "round {round}");
        assert_eq!(a.body["next"], last);
        // The event at `last` is the stream's last: the page just before it ends with it.
        let events = s
            .get(
                &format!("/v1/audit/tickets/{}/events?min_position={last}", ids[0]),
                &token,
            )
            .await;
        assert_eq!(events.status, StatusCode::OK, "{}", events.body);
        let items = events.body["items"].as_array().expect("items");
        let before = items[items.len() - 2]["position"].as_str().expect("before");
        let a = s
            .get(
                &format!("/v1/audit/events?min_position={last}&after={before}"),
                &token,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["items"][0]["position"], last, "round {round}");
    }

    s.assert_waits_out("/v1/audit/events?min_position=99999999999-1", &token)
        .await;
}

async fn only_auditors_and_admins(s: TestServer) {
    let id = s
        .open(
            &s.customer("alice"),
            json!({"subject": "s", "description": "d"}),
        )
        .await;
    let paths = [
        (Method::GET, "/v1/audit/events".to_owned()),
        (Method::GET, format!("/v1/audit/tickets/{id}/events")),
        (
            Method::GET,
            format!("/v1/audit/tickets/{id}/state?as_of=2100-01-01T00:00:00Z"),
        ),
        (Method::POST, "/v1/audit/verify".to_owned()),
    ];
    for (method, path) in &paths {
        for token in [
            s.customer("alice"),
            s.token("boss", Role::Customer, Some("acme"), true),
            s.agent("agent-1"),
        ] {
            s.call(method.clone(), path, Some(&token), None, &[])
                .await
                .assert_problem(403, "forbidden");
        }
        s.call(method.clone(), path, None, None, &[])
            .await
            .assert_problem(401, "unauthorized");
        for token in [auditor(&s), admin(&s)] {
            let a = s.call(method.clone(), path, Some(&token), None, &[]).await;
            assert_eq!(a.status, StatusCode::OK, "{method} {path}: {}", a.body);
        }
    }
    // Their requests' parameters unread: a path id or a query string that does not parse is
    // the same 403 to them (and a 400 to an auditor).
    for (method, path) in [
        (Method::GET, "/v1/audit/events?after=1&after=2"),
        (Method::GET, "/v1/audit/tickets/not-a-uuid/events"),
        (Method::GET, "/v1/audit/tickets/not-a-uuid/state?as_of=x"),
        (Method::POST, "/v1/audit/verify?projections=1&projections=2"),
    ] {
        s.call(method.clone(), path, Some(&s.customer("alice")), None, &[])
            .await
            .assert_problem(403, "forbidden");
        s.call(method, path, Some(&auditor(&s)), None, &[])
            .await
            .assert_problem(400, "malformed_request");
    }
    // Auditors still run no command.
    s.post(
        &format!("/v1/tickets/{id}/comments"),
        &auditor(&s),
        json!({"body": "hi"}),
    )
    .await
    .assert_problem(403, "forbidden");
}

async fn a_tickets_own_events(s: TestServer) {
    let (ids, _) = some_history(&s, 2).await;
    let token = auditor(&s);
    let a = s
        .get(&format!("/v1/audit/tickets/{}/events", ids[1]), &token)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let items = a.body["items"].as_array().expect("items");
    let types: Vec<&str> = items
        .iter()
        .map(|i| i["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        ["ticket.opened", "ticket.commented", "ticket.status_changed"]
    );
    for (n, item) in items.iter().enumerate() {
        assert_eq!(item["stream"], ids[1].as_str());
        assert_eq!(item["version"], n as u64 + 1);
        assert!(item["position"].is_string());
        assert_hash_recomputes(item);
    }
    assert_eq!(items[1]["prev_hash"], items[0]["hash"]);
    assert_eq!(items[2]["data"]["to"], "resolved");

    let unknown = uuid::Uuid::now_v7();
    s.get(&format!("/v1/audit/tickets/{unknown}/events"), &token)
        .await
        .assert_problem(404, "not_found");
}

async fn a_ticket_as_of_any_instant(s: TestServer) {
    let agent = s.agent("agent-1");
    let id = s
        .open(
            &s.customer("alice"),
            json!({"subject": "First", "description": "d", "priority": "urgent"}),
        )
        .await;
    let path = format!("/v1/tickets/{id}");
    for (method, sub, body) in [
        (Method::POST, "/status", json!({"status": "in_progress"})),
        (
            Method::PATCH,
            "",
            json!({"subject": "Second", "assignee": "agent-1"}),
        ),
        (Method::POST, "/read", json!({})),
        (Method::POST, "/status", json!({"status": "resolved"})),
    ] {
        let a = s
            .call(
                method,
                &format!("{path}{sub}"),
                Some(&agent),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let token = auditor(&s);
    let events = s
        .get(&format!("/v1/audit/tickets/{id}/events"), &token)
        .await;
    let items = events.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 5);
    let at = |v: usize| items[v - 1]["recorded_at"].as_str().expect("at").to_owned();
    let state = |as_of: String| {
        let s = &s;
        let token = token.clone();
        let id = id.clone();
        async move {
            s.get(
                &format!(
                    "/v1/audit/tickets/{id}/state?as_of={}",
                    as_of.replace('+', "%2B")
                ),
                &token,
            )
            .await
        }
    };

    let opened = chrono::DateTime::parse_from_rfc3339(&at(1)).expect("rfc3339");
    let before = (opened - chrono::Duration::microseconds(1)).to_rfc3339();
    state(before).await.assert_problem(404, "not_found");

    let a = state(at(1)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        (a.body["version"].clone(), a.body["status"].clone()),
        (json!(1), json!("open"))
    );
    assert_eq!(a.body["subject"], "First");
    assert_eq!(a.body["overdue"], false, "not overdue as of then");

    let a = state(at(3)).await;
    assert_eq!(a.body["version"], 3);
    assert_eq!(a.body["status"], "in_progress");
    assert_eq!(a.body["subject"], "Second");
    assert_eq!(a.body["assignee"], "agent-1");

    // The same instant written with an offset, unescaped: `+` arrives as a space.
    let offset = chrono::DateTime::parse_from_rfc3339(&at(3))
        .expect("rfc3339")
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).expect("offset"))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let a = s
        .get(
            &format!("/v1/audit/tickets/{id}/state?as_of={offset}"),
            &token,
        )
        .await;
    assert_eq!(a.body["version"], 3, "{}", a.body);

    let a = state("2999-01-01T00:00:00Z".into()).await;
    assert_eq!(a.body["version"], 5);
    assert_eq!(a.body["status"], "resolved");
    // Urgent: due 4 h after opening; by 2999 it is past, but a resolved ticket is not overdue.
    assert_eq!(a.body["overdue"], false);
    let live = s.get(&path, &agent).await;
    let mut expected = live.body.clone();
    expected["overdue"] = json!(false);
    assert_eq!(
        a.body, expected,
        "the replay matches the service's own state"
    );

    let unknown = uuid::Uuid::now_v7();
    s.get(
        &format!("/v1/audit/tickets/{unknown}/state?as_of=2999-01-01T00:00:00Z"),
        &token,
    )
    .await
    .assert_problem(404, "not_found");
}

async fn verify_passes_an_untouched_store(s: TestServer) {
    let (_, last) = some_history(&s, 3).await;
    let log = s.log_upto(&last).await;
    // The tampering below must find the feed's rows: wait until they are written.
    let at = log.last().expect("events").position;
    s.projector
        .as_ref()
        .expect("projector")
        .wait_for("feed", at, std::time::Duration::from_secs(5))
        .await
        .expect("the feed caught up");
    let a = verify(&s, "/v1/audit/verify").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["ok"], true, "{}", a.body);
    assert_eq!(a.body["events"], 9);
    assert_eq!(a.body["streams"], 3);
    assert_eq!(a.body["findings"], json!([]));
    assert_eq!(
        a.body["projections"],
        json!([]),
        "every projection equals a rebuild"
    );

    // A read model changed behind the projector's back shows; the log still verifies.
    let db = s.store.database().expect("database");
    let mut pooled = ticketd_projections::Pooled::acquire(&db)
        .await
        .expect("conn");
    let changed = pooled
        .conn()
        .execute("UPDATE ticket_feed SET entry = '{}' WHERE version = 1", &[])
        .await
        .expect("tamper");
    assert_eq!(changed, 3, "one feed row per ticket changed");
    drop(pooled);
    let a = verify(&s, "/v1/audit/verify").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["ok"], false, "{}", a.body);
    assert_eq!(a.body["findings"], json!([]), "the log is intact");
    let projections = a.body["projections"].as_array().expect("projections");
    assert_eq!(projections.len(), 1, "{}", a.body);
    assert_eq!(projections[0]["projection"], "feed");
    assert!(
        projections[0]["detail"]
            .as_str()
            .expect("detail")
            .starts_with("table ticket_feed:"),
        "{}",
        a.body
    );
    // And the switch to leave it out, or a bad value for it.
    let a = verify(&s, "/v1/audit/verify?projections=false").await;
    assert_eq!(a.body["ok"], true, "{}", a.body);
    verify(&s, "/v1/audit/verify?projections=maybe")
        .await
        .assert_problem(400, "malformed_request");
}

/// `POST path` (the verification, with its query) as an admin.
async fn verify(s: &TestServer, path: &str) -> ticketd_tests::http::Answer {
    s.call(Method::POST, path, Some(&admin(s)), None, &[]).await
}

/// The scratch copies of the read models a check left beside this test's store.
async fn scratch_copies(s: &TestServer) -> usize {
    match s.store.database().expect("database") {
        ticketd_commands::Database::Postgres(pool) => {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ticketd_rebuild_' || \
                 (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) || '_%'",
            )
            .fetch_one(&pool)
            .await
            .expect("schemas");
            usize::try_from(n).expect("a count")
        }
        ticketd_commands::Database::Sqlite(pool) => {
            let live = pool.connect_options().get_filename().to_path_buf();
            let name = live
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let dir = live.parent().expect("a directory");
            std::fs::read_dir(dir)
                .expect("the store's directory")
                .filter(|e| {
                    let e = e.as_ref().expect("an entry");
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&format!("{name}.rebuild-"))
                })
                .count()
        }
    }
}

/// One check at a time (each builds a scratch copy of every read model): a second, while one
/// runs, is a 503. And a caller that goes away mid-check leaves no scratch copy behind: the
/// check runs on to its end, which discards it.
async fn one_verification_at_a_time_and_none_left_halfway(s: TestServer) {
    use tokio::io::AsyncWriteExt;
    some_history(&s, 20).await;
    let held = s.verify_slot.clone().try_acquire_owned().expect("free");
    let busy = verify(&s, "/v1/audit/verify").await;
    busy.assert_problem(503, "unavailable");
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(held);

    // A caller that leaves once its check is building the read models afresh. Should the check
    // be over by then (a loaded machine), the try shows nothing: again, a few times.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut left_midway = false;
    for _ in 0..5 {
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let request = format!(
            "POST /v1/audit/verify HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
             content-length: 0\r\n\r\n",
            admin(&s)
        );
        conn.write_all(request.as_bytes()).await.expect("send");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while scratch_copies(&s).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the check made its scratch copy"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(conn);
        left_midway = s.verify_slot.available_permits() == 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while s.verify_slot.available_permits() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the check ended");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if left_midway {
            break;
        }
    }
    assert!(left_midway, "no try left while its check ran");
    assert_eq!(
        scratch_copies(&s).await,
        0,
        "a scratch copy was left behind"
    );
    let a = verify(&s, "/v1/audit/verify").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["ok"], true, "{}", a.body);
}

/// Paging while writers append returns every event exactly once, in the log's order.
async fn paging_while_writers_append_sees_each_event_once(s: TestServer) {
    let s = std::sync::Arc::new(s);
    let ids = {
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                s.open(
                    &s.customer("alice"),
                    json!({"subject": format!("T{i}"), "description": "d"}),
                )
                .await,
            );
        }
        ids
    };
    let writers: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let s = s.clone();
            tokio::spawn(async move {
                let agent = s.agent("agent-1");
                let mut last = Value::Null;
                for n in 0..25 {
                    let a = s
                        .post(
                            &format!("/v1/tickets/{id}/comments"),
                            &agent,
                            json!({ "body": format!("c{n}") }),
                        )
                        .await;
                    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
                    last = a.body["position"].clone();
                }
                last
            })
        })
        .collect();

    let token = auditor(&s);
    let mut seen: Vec<Value> = Vec::new();
    let mut after = String::new();
    let page = |after: String| {
        let s = s.clone();
        let token = token.clone();
        async move {
            let a = s
                .get(&format!("/v1/audit/events?limit=7&after={after}"), &token)
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            (
                a.body["items"].as_array().expect("items").clone(),
                a.body["next"].as_str().expect("next").to_owned(),
            )
        }
    };
    while !writers.iter().all(|w| w.is_finished()) {
        let (items, next) = page(after.clone()).await;
        seen.extend(items);
        after = next;
    }
    let mut lasts = Vec::new();
    for w in writers {
        lasts.push(w.await.expect("writer"));
    }
    let mut log = Vec::new();
    for last in &lasts {
        let upto = s.log_upto(last).await;
        if upto.len() > log.len() {
            log = upto;
        }
    }
    assert_eq!(log.len(), 4 * 26);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.len() < log.len() {
        assert!(std::time::Instant::now() < deadline, "paging stalled");
        let (items, next) = page(after.clone()).await;
        seen.extend(items);
        after = next;
    }
    let got: Vec<&str> = seen.iter().map(|e| e["id"].as_str().expect("id")).collect();
    let want: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(got, want, "every event once, in log order");
}

async fn the_openapi_document_has_the_audit_endpoints(s: TestServer) {
    let doc = s.call(Method::GET, "/openapi.json", None, None, &[]).await;
    for path in [
        "/v1/audit/events",
        "/v1/audit/tickets/{id}/events",
        "/v1/audit/tickets/{id}/state",
        "/v1/audit/verify",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} missing");
    }
    let log = &doc.body["paths"]["/v1/audit/events"]["get"]["responses"]["200"]["content"];
    assert!(log["application/json"].is_object(), "{log}");
    assert!(log["application/x-ndjson"].is_object(), "{log}");
    for schema in ["AuditEvent", "EventPage", "VerifyReport"] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}

http_both_backends!(
    the_openapi_document_has_the_audit_endpoints,
    paging_while_writers_append_sees_each_event_once,
    log_pages_every_event_once_in_log_order,
    ndjson_streams_the_log,
    query_parameters_are_checked,
    only_auditors_and_admins,
    a_tickets_own_events,
    a_ticket_as_of_any_instant,
    verify_passes_an_untouched_store,
    one_verification_at_a_time_and_none_left_halfway,
    min_position_reads_your_writes_in_the_log,
);
