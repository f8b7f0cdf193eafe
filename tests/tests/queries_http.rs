//! CONTRACT §6.1–§6.2 end to end on both backends: the ticket list from the `tickets` read
//! model (visibility by role, filters, sorts, keyset paging), one ticket from it with its ETag,
//! and `min_position`.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use ticketd_commands::Database;
use ticketd_domain::Role;
use ticketd_tests::http::TestServer;
use ticketd_tests::http_both_backends;

/// The ids of a list answer, in order; asserts a 200.
fn ids(a: &ticketd_tests::http::Answer) -> Vec<String> {
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

fn set(v: &[&String]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).clone()).collect()
}

async fn list(s: &TestServer, query: &str, token: &str) -> BTreeSet<String> {
    ids(&s.get(&format!("/v1/tickets?{query}"), token).await)
        .into_iter()
        .collect()
}

fn body(subject: &str) -> Value {
    json!({"subject": subject, "description": "d"})
}

/// The matrix of CONTRACT §5 over the list: requester, CC, org-wide colleague, another org,
/// an agent (all; `mine` is assigned to me), an auditor (all).
async fn list_visibility_by_role(s: TestServer) {
    let alice = s.customer("alice");
    let bob = s.customer("bob");
    let agent = s.agent("agent-1");
    let a1 = s.open(&alice, body("alice's")).await;
    let b1 = s
        .open(
            &bob,
            json!({"subject": "bob's, cc alice", "description": "d", "cc": ["alice"]}),
        )
        .await;
    let c1 = s.open(&s.customer("carol"), body("carol's")).await;
    let dave = s.token("dave", Role::Customer, Some("globex"), false);
    let d1 = s.open(&dave, body("dave's")).await;
    let e1 = s
        .open(
            &agent,
            json!({"subject": "for erin", "description": "d", "requester": "erin", "org": "acme"}),
        )
        .await;
    let a = s
        .call(
            Method::PATCH,
            &format!("/v1/tickets/{c1}"),
            Some(&agent),
            Some(json!({"assignee": "agent-1"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    assert_eq!(list(&s, "", &alice).await, set(&[&a1, &b1]));
    assert_eq!(list(&s, "view=all", &alice).await, set(&[&a1, &b1]));
    assert_eq!(list(&s, "view=mine", &alice).await, set(&[&a1]));
    assert_eq!(list(&s, "view=cc", &alice).await, set(&[&b1]));
    // Not org-wide: the org view holds only what alice may see anyway.
    assert_eq!(list(&s, "view=org", &alice).await, set(&[&a1, &b1]));

    let colleague = s.token("zoe", Role::Customer, Some("acme"), true);
    let acme = set(&[&a1, &b1, &c1, &e1]);
    assert_eq!(list(&s, "", &colleague).await, acme);
    assert_eq!(list(&s, "view=org", &colleague).await, acme);
    assert_eq!(list(&s, "view=mine", &colleague).await, BTreeSet::new());

    assert_eq!(list(&s, "", &dave).await, set(&[&d1]));
    let globex_wide = s.token("gus", Role::Customer, Some("globex"), true);
    assert_eq!(list(&s, "", &globex_wide).await, set(&[&d1]));
    // Asking for another org's tickets narrows what one may see; it never widens it.
    assert_eq!(list(&s, "org=acme", &globex_wide).await, BTreeSet::new());

    let everything = set(&[&a1, &b1, &c1, &d1, &e1]);
    assert_eq!(list(&s, "", &agent).await, everything);
    assert_eq!(list(&s, "view=mine", &agent).await, set(&[&c1]));
    assert_eq!(list(&s, "org=globex", &agent).await, set(&[&d1]));
    let auditor = s.token("aud", Role::Auditor, None, false);
    assert_eq!(list(&s, "", &auditor).await, everything);

    // The items are whole tickets (§3), with the caller's visibility applied per ticket.
    let a = s.get("/v1/tickets?view=cc", &alice).await;
    let t = &a.body["items"][0];
    assert_eq!(t["subject"], "bob's, cc alice");
    assert_eq!(t["cc"], json!(["alice"]));
    assert_eq!(t["requester"], "bob");
    assert_eq!(t["org"], "acme");
    assert_eq!(t["version"], 1);
    assert_eq!(t["overdue"], false);
    assert!(a.body["next_cursor"].is_null(), "{}", a.body);
}

async fn list_filters_and_sorts(s: TestServer) {
    let agent = s.agent("agent-1");
    let open = |subject: &str, extra: Value| {
        let mut b =
            json!({"subject": subject, "description": "d", "requester": "cust", "org": "acme"});
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    let urgent = s
        .open(&agent, open("urgent", json!({"priority": "urgent"})))
        .await;
    let low_phone = s
        .open(
            &agent,
            open("low phone", json!({"priority": "low", "channel": "phone"})),
        )
        .await;
    let past = "2020-01-01T00:00:00Z";
    let late = s
        .open(
            &agent,
            open("late", json!({"priority": "medium", "due_at": past})),
        )
        .await;
    let none = s
        .open(&agent, open("no priority", json!({"org": "globex"})))
        .await;
    let a = s
        .post(
            &format!("/v1/tickets/{low_phone}/status"),
            &agent,
            json!({"status": "resolved"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    assert_eq!(
        list(&s, "status=resolved", &agent).await,
        set(&[&low_phone])
    );
    assert_eq!(
        list(&s, "status=open,resolved", &agent).await,
        set(&[&urgent, &low_phone, &late, &none])
    );
    assert_eq!(list(&s, "active=false", &agent).await, set(&[&low_phone]));
    assert_eq!(
        list(&s, "active=true", &agent).await,
        set(&[&urgent, &late, &none])
    );
    assert_eq!(list(&s, "overdue=true", &agent).await, set(&[&late]));
    assert_eq!(
        list(&s, "overdue=false", &agent).await,
        set(&[&urgent, &low_phone, &none])
    );
    assert_eq!(
        list(&s, "priority=urgent,low", &agent).await,
        set(&[&urgent, &low_phone])
    );
    assert_eq!(list(&s, "channel=phone", &agent).await, set(&[&low_phone]));
    assert_eq!(list(&s, "org=globex", &agent).await, set(&[&none]));
    let late_view = s.get("/v1/tickets?overdue=true", &agent).await;
    assert_eq!(late_view.body["items"][0]["overdue"], true);

    let order = |q: &str| {
        let s = &s;
        let agent = agent.clone();
        let q = q.to_owned();
        async move { ids(&s.get(&format!("/v1/tickets?{q}"), &agent).await) }
    };
    assert_eq!(
        order("sort=created").await,
        vec![
            urgent.clone(),
            low_phone.clone(),
            late.clone(),
            none.clone()
        ]
    );
    assert_eq!(
        order("sort=-created").await,
        vec![
            none.clone(),
            late.clone(),
            low_phone.clone(),
            urgent.clone()
        ]
    );
    // The resolve was the last activity.
    assert_eq!(order("").await[0], low_phone);
    assert_eq!(order("sort=-last_activity").await[0], low_phone);
    assert_eq!(order("sort=last_activity").await[0], urgent);
    assert_eq!(
        order("sort=-priority").await,
        vec![
            urgent.clone(),
            late.clone(),
            low_phone.clone(),
            none.clone()
        ]
    );
    // Soonest due first; tickets without a due date last.
    let due = order("sort=due").await;
    assert_eq!(due[0], late);
    assert_eq!(due[3], none);
}

/// `n` tickets `t0…`, opened by staff for requester `c`, in order.
async fn open_tickets(s: &TestServer, agent: &str, n: usize) -> Vec<String> {
    let mut opened = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"subject": format!("t{i}"), "description": "d", "requester": "c"});
        opened.push(s.open(agent, body).await);
    }
    opened
}

/// Keyset paging returns every ticket once, also while tickets change between pages.
async fn paging_returns_each_ticket_once(s: TestServer) {
    let agent = s.agent("agent-1");
    let mut opened = open_tickets(&s, &agent, 7).await;
    for sort in ["created", "-created", "-last_activity", "due", "-priority"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/v1/tickets?sort={sort}&limit=3");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let a = s.get(&path, &agent).await;
            let page = ids(&a);
            assert!(page.len() <= 3);
            seen.extend(page);
            pages += 1;
            // Changes between pages: new activity and a new ticket.
            if pages == 1 && sort == "created" {
                let a = s
                    .post(
                        &format!("/v1/tickets/{}/comments", opened[0]),
                        &agent,
                        json!({"body": "moved"}),
                    )
                    .await;
                assert_eq!(a.status, StatusCode::CREATED);
                opened.push(
                    s.open(
                        &agent,
                        json!({"subject": "late arrival", "description": "d", "requester": "c"}),
                    )
                    .await,
                );
            }
            match a.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{sort}: a ticket came twice");
        assert_eq!(unique, opened.iter().cloned().collect(), "{sort}");
        if sort == "created" {
            assert_eq!(seen, opened, "created order, the late arrival last");
        }
    }
    // limit bounds the page and defaults to 50.
    let a = s.get("/v1/tickets?limit=1", &agent).await;
    assert_eq!(ids(&a).len(), 1);
    assert!(a.body["next_cursor"].is_string());
    assert_eq!(ids(&s.get("/v1/tickets", &agent).await).len(), 8);
}

/// CONTRACT §6.1: paging returns every matching ticket exactly once even while tickets change,
/// their sort keys included. Between pages, a ticket not yet listed moves to the part of the
/// order already passed (it must still come), and one already listed moves to the part still
/// ahead (it must not come again); a ticket opened meanwhile comes at most once.
async fn paging_keeps_its_order_while_sort_keys_change(s: TestServer) {
    let agent = s.agent("agent-1");
    let priorities = ["low", "medium", "high", "low", "medium", "high", "none"];
    let mut opened = Vec::new();
    for (i, p) in priorities.iter().enumerate() {
        let due = format!("2030-01-{:02}T00:00:00Z", i + 1);
        opened.push(
            s.open(
                &agent,
                json!({"subject": format!("t{i}"), "description": "d", "requester": "c",
                       "priority": p, "due_at": due}),
            )
            .await,
        );
    }
    // How each sort's key is moved toward the front or the back of the order, if it can be.
    type Change = Option<(&'static str, Value)>;
    let comment = || Some(("comments", json!({"body": "news"})));
    let patch = |v: Value| Some(("", v));
    let cases: Vec<(&str, Change, Change)> = vec![
        ("-last_activity", comment(), None),
        // The same through a search, which finds its tickets another way.
        ("-last_activity&q=d", comment(), None),
        ("last_activity", None, comment()),
        (
            "due",
            patch(json!({"due_at": "2001-01-01T00:00:00Z"})),
            patch(json!({"due_at": "2099-01-01T00:00:00Z"})),
        ),
        (
            "-priority",
            patch(json!({"priority": "urgent"})),
            patch(json!({"priority": "none"})),
        ),
        ("-created", None, None),
    ];
    for (sort, to_front, to_back) in cases {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut at: Option<String> = None;
        let mut late = Vec::new();
        loop {
            let mut path = format!("/v1/tickets?sort={sort}&limit=2");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            if let Some(p) = &at {
                path.push_str(&format!("&min_position={p}"));
            }
            let a = s.get(&path, &agent).await;
            seen.extend(ids(&a));
            let Some(c) = a.body["next_cursor"].as_str() else {
                break;
            };
            cursor = Some(c.to_owned());
            let unseen = opened.iter().find(|t| !seen.contains(t)).cloned();
            let moves = [(unseen, &to_front), (seen.first().cloned(), &to_back)];
            for (ticket, change) in moves {
                let (Some(t), Some((path, body))) = (ticket, change) else {
                    continue;
                };
                let a = if path.is_empty() {
                    s.patch(&format!("/v1/tickets/{t}"), &agent, body.clone())
                        .await
                } else {
                    s.post(&format!("/v1/tickets/{t}/{path}"), &agent, body.clone())
                        .await
                };
                assert!(a.status.is_success(), "{sort}: {}", a.body);
            }
            let n = s
                .post(
                    "/v1/tickets",
                    &agent,
                    json!({"subject": "late", "description": "d", "requester": "c"}),
                )
                .await;
            late.push(n.body["id"].as_str().expect("id").to_owned());
            // Later than every change above: the next page waits for all of them.
            at = n.body["position"].as_str().map(str::to_owned);
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{sort}: a ticket came twice: {seen:?}"
        );
        for t in &opened {
            assert!(unique.contains(t), "{sort}: {t} never came: {seen:?}");
        }
        assert!(
            unique
                .iter()
                .all(|t| opened.contains(t) || late.contains(t)),
            "{sort}"
        );
        opened.extend(late);
    }
}

/// The same while other clients keep changing tickets, sort keys and status (in and out of the
/// active tickets) included, as fast as they can:
/// every walk, in every order, returns each ticket that existed when it started exactly once.
async fn paging_is_exact_while_clients_write(s: TestServer) {
    let agent = s.agent("agent-1");
    let opened = open_tickets(&s, &agent, 30).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let writer = |n: usize| {
        let (agent, opened, done) = (&agent, &opened, &done);
        let s = &s;
        async move {
            let priorities = ["none", "low", "medium", "high", "urgent"];
            let mut i = n;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                i = (i * 7 + 3) % 1_000_003;
                let t = &opened[i % opened.len()];
                let a = match i % 4 {
                    0 => {
                        s.post(
                            &format!("/v1/tickets/{t}/comments"),
                            agent,
                            json!({"body": "x"}),
                        )
                        .await
                    }
                    1 => {
                        let body = json!({"priority": priorities[i % 5]});
                        s.patch(&format!("/v1/tickets/{t}"), agent, body).await
                    }
                    // In and out of the active tickets, which PostgreSQL walks apart.
                    2 => {
                        let status = ["resolved", "in_progress"][(i / 4) % 2];
                        let body = json!({"status": status});
                        s.post(&format!("/v1/tickets/{t}/status"), agent, body)
                            .await
                    }
                    _ => {
                        let due = format!("2030-{:02}-01T00:00:00Z", i % 12 + 1);
                        s.patch(&format!("/v1/tickets/{t}"), agent, json!({"due_at": due}))
                            .await
                    }
                };
                assert!(a.status.is_success(), "{}", a.body);
            }
        }
    };
    let reader = async {
        for round in 0..3 {
            for sort in [
                "-last_activity",
                "last_activity",
                "due",
                "-priority",
                "-created",
            ] {
                let mut seen: Vec<String> = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut path = format!("/v1/tickets?sort={sort}&limit=4");
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={c}"));
                    }
                    // The first page waits for every ticket opened (read-your-writes); later
                    // pages read the projections as they stand, mid-walk writes unapplied or
                    // not (a wait for each page could outlast its 5 s on a slow machine).
                    let a = if cursor.is_none() {
                        s.get(&path, &agent).await
                    } else {
                        s.call(Method::GET, &path, Some(&agent), None, &[]).await
                    };
                    seen.extend(ids(&a));
                    match a.body["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
                let unique: BTreeSet<_> = seen.iter().cloned().collect();
                assert_eq!(
                    unique.len(),
                    seen.len(),
                    "round {round}, {sort}: twice: {seen:?}"
                );
                assert_eq!(
                    unique,
                    opened.iter().cloned().collect(),
                    "round {round}, {sort}"
                );
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(reader, writer(1), writer(2));
}

/// Runs `sql` on the server's read models; returns the rows it changed.
async fn rows_changed(s: &TestServer, sql: &str) -> u64 {
    let changed = match s.store.database().expect("a SQL store") {
        Database::Sqlite(pool) => sqlx::query(sql)
            .execute(&pool)
            .await
            .map(|r| r.rows_affected()),
        Database::Postgres(pool) => sqlx::query(sql)
            .execute(&pool)
            .await
            .map(|r| r.rows_affected()),
    };
    changed.expect(sql)
}

/// The feed and read-by come from the `feed` projection; who may see them is the ticket's as
/// of now, not as of the `tickets` read model, which may lag the feed. A customer removed from
/// the CC reads neither, even while `tickets` still lists them (simulated by writing the old
/// CC back into its row). One put on the CC reads the ticket before `tickets` shows it.
async fn feed_visibility_does_not_wait_on_the_tickets_model(s: TestServer) {
    let alice = s.customer("alice");
    let bob = s.customer("bob");
    let agent = s.agent("agent-1");
    let id = s
        .open(
            &alice,
            json!({"subject": "s", "description": "d", "cc": ["bob"]}),
        )
        .await;
    assert_eq!(
        s.get(&format!("/v1/tickets/{id}/feed"), &bob).await.status,
        StatusCode::OK
    );
    let removed = s
        .patch(&format!("/v1/tickets/{id}"), &agent, json!({"cc": []}))
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    let c = s
        .post(
            &format!("/v1/tickets/{id}/comments"),
            &agent,
            json!({"body": "after bob left"}),
        )
        .await;
    let at = c.body["position"].as_str().expect("position").to_owned();
    let one = s
        .get(&format!("/v1/tickets/{id}?min_position={at}"), &agent)
        .await;
    assert_eq!(one.body["cc"], json!([]));
    let stale = "UPDATE tickets SET state = replace(state, '\"cc\":[]', '\"cc\":[\"bob\"]')";
    assert_eq!(rows_changed(&s, stale).await, 1, "make tickets stale");
    assert_eq!(
        s.get(&format!("/v1/tickets/{id}"), &bob).await.status,
        StatusCode::OK,
        "stale"
    );
    for tail in ["feed", "read-by"] {
        s.get(&format!("/v1/tickets/{id}/{tail}?min_position={at}"), &bob)
            .await
            .assert_problem(404, "not_found");
        let a = s
            .get(
                &format!("/v1/tickets/{id}/{tail}?min_position={at}"),
                &alice,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{tail}: {}", a.body);
    }

    // The other way: carol is put on the CC, and the read model does not show it yet. One
    // ticket comes from its stream rather than a 404, as its feed does.
    let carol = s.customer("carol");
    let added = s
        .patch(
            &format!("/v1/tickets/{id}"),
            &agent,
            json!({"cc": ["carol"]}),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let at = added.body["position"].as_str().expect("position");
    s.get(&format!("/v1/tickets/{id}?min_position={at}"), &agent)
        .await;
    let behind = "UPDATE tickets SET state = replace(state, '\"cc\":[\"carol\"]', '\"cc\":[]')";
    assert_eq!(rows_changed(&s, behind).await, 1, "put tickets behind");
    let one = s.get(&format!("/v1/tickets/{id}"), &carol).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["cc"], json!(["carol"]));
}

/// A list page with `cursor` is a 400 whose detail says `why`.
async fn cursor_refused(s: &TestServer, token: &str, cursor: &str, why: &str) {
    let a = s.get(&format!("/v1/tickets?cursor={cursor}"), token).await;
    a.assert_problem(400, "malformed_request");
    assert!(
        a.body["detail"].as_str().is_some_and(|d| d.contains(why)),
        "{cursor}: {}",
        a.body
    );
}

/// A filter's values count once each, however often given: each is a bound parameter of every
/// branch of the query, and a 60 kB list of one value repeated passed PostgreSQL's 65,535 (a
/// 503, which the client would retry for ever).
async fn a_filter_value_repeated_counts_once(s: TestServer) {
    let agent = s.agent("agent-1");
    let mut mine = Vec::new();
    for _ in 0..2 {
        let body = json!({"subject": "x", "description": "d", "requester": "c", "org": "acme",
                          "priority": "low"});
        mine.push(s.open(&agent, body).await);
    }
    mine.reverse();
    let colleague = s.token("c", Role::Customer, Some("acme"), true);
    // A page after the first also reads what changed since the first: more branches.
    let query = format!("priority={}&limit=1", vec!["low"; 15_000].join(","));
    let first = s.get(&format!("/v1/tickets?{query}"), &colleague).await;
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = s
        .get(&format!("/v1/tickets?{query}&cursor={cursor}"), &colleague)
        .await;
    assert_eq!([ids(&first), ids(&second)].concat(), mine);
    // So are distinct names: thousands of them are one 400, for the first unknown.
    let names: Vec<String> = (0..5_000).map(|i| format!("p{i}=1")).collect();
    let a = s
        .get(&format!("/v1/tickets?{}", names.join("&")), &agent)
        .await;
    a.assert_problem(400, "malformed_request");
}

async fn bad_parameters_are_400(s: TestServer) {
    let agent = s.agent("agent-1");
    for _ in 0..2 {
        s.open(
            &agent,
            json!({"subject": "x", "description": "d", "requester": "c"}),
        )
        .await;
    }
    let created = s.get("/v1/tickets?sort=created&limit=1", &agent).await;
    let cursor = created.body["next_cursor"].as_str().expect("cursor");
    let bad = [
        "view=everything".to_owned(),
        "status=open,nope".to_owned(),
        "priority=extreme".to_owned(),
        "channel=pigeon".to_owned(),
        "active=yes".to_owned(),
        "overdue=1".to_owned(),
        "sort=subject".to_owned(),
        "limit=0".to_owned(),
        "limit=201".to_owned(),
        "limit=-1".to_owned(),
        "limit=ten".to_owned(),
        "cursor=zz".to_owned(),
        "cursor=00".to_owned(),
        format!("cursor={cursor}&sort=-created"),
        "org=".to_owned(),
        "min_position=yesterday".to_owned(),
        "min_position=1-2&min_position=3-4".to_owned(),
        "colour=red".to_owned(),
        "view=all&view=mine".to_owned(),
        "%zz=1".to_owned(),
    ];
    for q in &bad {
        let a = s.get(&format!("/v1/tickets?{q}"), &agent).await;
        a.assert_problem(400, "malformed_request");
    }
    // A cursor lasts an hour: one issued at the epoch, signed as the service signs, has expired.
    let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let nil = uuid::Uuid::nil();
    let auth = ticketd_api::auth::Auth::new(ticketd_tests::http::SECRET.as_bytes().to_vec())
        .expect("the test secret");
    let expired = auth.sign_cursor(&hex(&format!("-last_activity|0|{nil}|1|1|0")));
    cursor_refused(&s, &agent, &expired, "expired").await;
    // One that names where its session started must carry the service's tag: made up, it
    // could start at the log's beginning and make a page read every ticket there is.
    let now_us = chrono::Utc::now().timestamp_micros();
    let made_up = hex(&format!("-last_activity|0|{nil}|0|0|{now_us}"));
    let signed = auth.sign_cursor(&made_up);
    let a = s.get(&format!("/v1/tickets?cursor={signed}"), &agent).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let other = ticketd_api::auth::Auth::new(vec![b'x'; 32]).expect("another secret");
    let tampered = format!(
        "{}{}",
        &signed[..signed.len() - 1],
        if signed.ends_with('0') { '1' } else { '0' }
    );
    for forged in [
        made_up.clone(),
        other.sign_cursor(&made_up),
        tampered,
        format!("{made_up}."),
        format!("{made_up}.zz"),
    ] {
        cursor_refused(&s, &agent, &forged, "not one this service made").await;
    }
    // A cursor from before walks kept their order (no snapshot) still pages, by the keys of now.
    let old = hex(&format!("created|0|{nil}"));
    let a = s
        .get(
            &format!("/v1/tickets?sort=created&limit=1&cursor={old}"),
            &agent,
        )
        .await;
    assert_eq!(ids(&a).len(), 1, "{}", a.body);
    assert!(a.body["next_cursor"].is_string());
    let a = s.call(Method::GET, "/v1/tickets", None, None, &[]).await;
    a.assert_problem(401, "unauthorized");
    let ticket = created.body["items"][0]["id"].as_str().expect("id");
    s.get(&format!("/v1/tickets/{ticket}?limit=3"), &agent)
        .await
        .assert_problem(400, "malformed_request");
    s.get("/v1/tickets/not-a-uuid", &agent)
        .await
        .assert_problem(400, "malformed_request");
}

/// §6.2 from the read model: the ETag is the version, reads raise it, and `min_position`
/// makes a client see its own writes.
async fn one_ticket_with_etag_and_min_position(s: TestServer) {
    let alice = s.customer("alice");
    let a = s.post("/v1/tickets", &alice, body("mine")).await;
    let id = a.body["id"].as_str().expect("id").to_owned();
    let opened_at = a.body["position"].as_str().expect("position").to_owned();
    // Without min_position a ticket the read model lacks yet is read from its stream: never
    // a 404 for a ticket that exists.
    let a = s
        .call(
            Method::GET,
            &format!("/v1/tickets/{id}"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.header("etag"), Some("\"1\""));
    let a = s
        .call(
            Method::GET,
            &format!("/v1/tickets/{id}?min_position={opened_at}"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(a.body["version"], 1);

    let r = s
        .post(&format!("/v1/tickets/{id}/read"), &alice, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let read_at = r.body["position"].as_str().expect("position").to_owned();
    let a = s
        .call(
            Method::GET,
            &format!("/v1/tickets/{id}?min_position={read_at}"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(a.header("etag"), Some("\"2\""));
    let a = s
        .call(
            Method::GET,
            &format!("/v1/tickets?min_position={read_at}"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(ids(&a), vec![id.clone()]);
    assert_eq!(a.body["items"][0]["version"], 2);

    // Other customers still get 404 from the read model.
    s.get(&format!("/v1/tickets/{id}"), &s.customer("mallory"))
        .await
        .assert_problem(404, "not_found");

    // A position the log has not reached: 503 with Retry-After after about 5 s.
    s.assert_waits_out(
        &format!("/v1/tickets/{id}?min_position=99999999999-1"),
        &alice,
    )
    .await;
}

/// §6.3 and §6.4: every kind of entry with its fields, oldest first; private comments hidden
/// from customers; reads only on request; readers by their latest read.
async fn feed_and_read_by(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let id = s.open(&alice, body("feed me")).await;
    let path = |tail: &str| format!("/v1/tickets/{id}{tail}");
    let ok = |a: ticketd_tests::http::Answer| {
        assert!(a.status.is_success(), "{}", a.body);
    };
    ok(
        s.post(&path("/comments"), &agent, json!({"body": "public note"}))
            .await,
    );
    ok(s.post(
        &path("/comments"),
        &agent,
        json!({"body": "staff only", "visibility": "private"}),
    )
    .await);
    ok(s.post(
        &path("/status"),
        &agent,
        json!({"status": "in_progress", "reason": "on it"}),
    )
    .await);
    ok(s.call(
        Method::PATCH,
        &path(""),
        Some(&agent),
        Some(json!({"priority": "high"})),
        &[],
    )
    .await);
    ok(s.post(&path("/read"), &alice, json!({})).await);
    ok(s.post(&path("/read"), &agent, json!({})).await);
    ok(s.post(&path("/read"), &alice, json!({})).await);
    ok(
        s.post(&path("/escalate"), &alice, json!({"reason": "too slow"}))
            .await,
    );
    ok(s.post(
        &path("/withdraw"),
        &alice,
        json!({"reason": "fixed it", "comment": "thanks anyway"}),
    )
    .await);

    let a = s.get(&path("/feed"), &agent).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let items = a.body["items"].as_array().expect("items").clone();
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| i["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "comment",
            "comment",
            "status_changed",
            "edited",
            "escalated",
            "withdrawn"
        ]
    );
    assert_eq!(items[0]["actor"], "alice");
    assert_eq!(items[0]["actor_name"], "alice name");
    assert_eq!(items[0]["subject"], "feed me");
    assert!(items[0]["id"].is_string() && items[0]["at"].is_string());
    assert_eq!(items[1]["body"], "public note");
    assert_eq!(items[1]["visibility"], "public");
    assert_eq!(items[1]["actor"], "agent-1");
    assert_eq!(items[2]["visibility"], "private");
    assert_eq!(items[3]["from"], "open");
    assert_eq!(items[3]["to"], "in_progress");
    assert_eq!(items[3]["reason"], "on it");
    assert_eq!(
        items[4]["changes"]["priority"],
        json!({"from": "none", "to": "high"})
    );
    assert_eq!(items[5]["reason"], "too slow");
    assert_eq!(items[6]["reason"], "fixed it");
    assert_eq!(items[6]["comment"], "thanks anyway");

    // The customer's feed has no private comment.
    let a = s.get(&path("/feed?types=comment"), &alice).await;
    let bodies: Vec<&Value> = a.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| &i["body"])
        .collect();
    assert_eq!(bodies, [&json!("public note")]);
    let a = s
        .get(
            &path("/feed?types=comment"),
            &s.token("aud", Role::Auditor, None, false),
        )
        .await;
    assert_eq!(a.body["items"].as_array().expect("items").len(), 2);

    // Every member §6.3 lists is there, `null` when the event has none: a status change with
    // no reason, a withdrawal with no comment.
    let bare = s.open(&alice, body("bare")).await;
    let bare_path = |tail: &str| format!("/v1/tickets/{bare}{tail}");
    ok(
        s.post(&bare_path("/status"), &agent, json!({"status": "on_hold"}))
            .await,
    );
    ok(
        s.post(&bare_path("/withdraw"), &alice, json!({"reason": "r"}))
            .await,
    );
    let a = s.get(&bare_path("/feed"), &alice).await;
    let items = a.body["items"].as_array().expect("items");
    let member = |i: usize, key: &str| items[i].as_object().expect("entry").get(key).cloned();
    assert_eq!(items[1]["type"], "status_changed", "{}", a.body);
    assert_eq!(member(1, "reason"), Some(Value::Null), "{}", a.body);
    assert_eq!(items[2]["type"], "withdrawn", "{}", a.body);
    assert_eq!(member(2, "comment"), Some(Value::Null), "{}", a.body);

    let a = s.get(&path("/feed?types=read"), &agent).await;
    let readers: Vec<&Value> = a.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| &i["actor"])
        .collect();
    assert_eq!(
        readers,
        [&json!("alice"), &json!("agent-1"), &json!("alice")]
    );

    let a = s.get(&path("/read-by"), &alice).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let items = a.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", a.body);
    assert_eq!(items[0]["user"], "agent-1");
    assert_eq!(items[0]["name"], "agent-1 name");
    assert_eq!(items[1]["user"], "alice");
    assert!(items[1]["first_read_at"].as_str() < items[1]["read_at"].as_str());

    for tail in ["/feed", "/read-by"] {
        s.get(&path(tail), &s.customer("mallory"))
            .await
            .assert_problem(404, "not_found");
    }
    for bad in [
        "/feed?types=gossip",
        "/feed?types=",
        "/feed?limit=2",
        "/read-by?types=read",
    ] {
        s.get(&path(bad), &agent)
            .await
            .assert_problem(400, "malformed_request");
    }
    let missing = uuid::Uuid::now_v7();
    s.get(&format!("/v1/tickets/{missing}/feed"), &agent)
        .await
        .assert_problem(404, "not_found");
}

/// `q`: every word somewhere in the subject, description or a comment the caller may see.
async fn search_respects_comment_visibility(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let printer = s
        .open(
            &alice,
            json!({"subject": "Printer on fire", "description": "The toner smells"}),
        )
        .await;
    let login = s.open(&alice, body("Login broken")).await;
    for (id, text, visibility) in [
        (&printer, "secret zebra", "private"),
        (&login, "Try REBOOTING 100%", "public"),
    ] {
        let a = s
            .post(
                &format!("/v1/tickets/{id}/comments"),
                &agent,
                json!({"body": text, "visibility": visibility}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let q = |q: &str, token: &str| {
        let path = format!(
            "/v1/tickets?q={}",
            q.replace('%', "%25").replace(' ', "%20")
        );
        let token = token.to_owned();
        let s = &s;
        async move { list_path(s, &path, &token).await }
    };
    assert_eq!(q("printer", &agent).await, set(&[&printer]));
    assert_eq!(q("PRINTER toner", &alice).await, set(&[&printer]));
    assert_eq!(q("printer login", &agent).await, BTreeSet::new());
    assert_eq!(q("zebra", &agent).await, set(&[&printer]));
    assert_eq!(
        q("zebra", &alice).await,
        BTreeSet::new(),
        "a private comment is not searchable by a customer"
    );
    assert_eq!(q("rebooting", &alice).await, set(&[&login]));
    assert_eq!(q("100%", &agent).await, set(&[&login]));
    assert_eq!(q("_", &agent).await, BTreeSet::new(), "no wildcards");
    assert_eq!(q("", &agent).await, set(&[&printer, &login]));

    // Edits are searched as they stand now.
    let a = s
        .call(
            Method::PATCH,
            &format!("/v1/tickets/{printer}"),
            Some(&agent),
            Some(json!({"subject": "Scanner jammed"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(q("printer", &agent).await, BTreeSet::new());
    assert_eq!(q("scanner toner", &agent).await, set(&[&printer]));

    let many = vec!["w"; 17].join("%20");
    s.get(&format!("/v1/tickets?q={many}"), &agent)
        .await
        .assert_problem(400, "malformed_request");
}

async fn list_path(s: &TestServer, path: &str, token: &str) -> BTreeSet<String> {
    ids(&s.get(path, token).await).into_iter().collect()
}

/// `q` percent-encoded byte by byte, so any text reaches the service as given.
fn encoded(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids `q` finds for `token` (any other list parameters in `more`).
async fn search(s: &TestServer, q: &str, more: &str, token: &str) -> BTreeSet<String> {
    list_path(s, &format!("/v1/tickets?q={}{more}", encoded(q)), token).await
}

async fn comment(s: &TestServer, id: &str, token: &str, body: &str, visibility: &str) {
    let a = s
        .post(
            &format!("/v1/tickets/{id}/comments"),
            token,
            json!({"body": body, "visibility": visibility}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

/// `q`'s words may each be found in a different part (subject, description, comments), but
/// only in parts the caller may see: a private comment never matches for a customer (not even
/// one word of several), and always does for agents, admins and auditors.
async fn search_across_parts_and_visibility(s: TestServer) {
    let alice = s.customer("alice");
    let colleague = s.token("zoe", Role::Customer, Some("acme"), true);
    let agent = s.agent("agent-1");
    let admin = s.token("root", Role::Admin, None, false);
    let auditor = s.token("aud", Role::Auditor, None, false);
    let staff = [&agent, &admin, &auditor];
    let printer = s
        .open(
            &alice,
            json!({"subject": "Printer offline", "description": "Toner is low"}),
        )
        .await;
    comment(&s, &printer, &agent, "Paper jam in tray two", "public").await;
    comment(
        &s,
        &printer,
        &agent,
        "Firmware bug, see vendor case",
        "private",
    )
    .await;
    comment(&s, &printer, &alice, "Still jammed", "public").await;
    // Another of alice's tickets holds publicly a word the first holds only privately.
    let vendor = s
        .open(&alice, body("Question about the vendor contract"))
        .await;
    // Words split over two tickets match neither.
    let other = s.open(&alice, body("Scanner offline")).await;

    for q in [
        "printer jam",
        "toner tray",
        "offline toner still jammed",
        "PAPER printer",
    ] {
        let want = set(&[&printer]);
        assert_eq!(search(&s, q, "", &alice).await, want, "{q}");
        assert_eq!(search(&s, q, "", &colleague).await, want, "{q}");
        for t in staff {
            assert_eq!(search(&s, q, "", t).await, want, "{q}");
        }
    }
    assert_eq!(
        search(&s, "offline", "", &alice).await,
        set(&[&printer, &other])
    );
    assert_eq!(
        search(&s, "printer scanner", "", &agent).await,
        BTreeSet::new()
    );
    assert_eq!(
        search(&s, "toner contract", "", &agent).await,
        BTreeSet::new()
    );

    // Private words: staff find them, alone or with public words; customers never do.
    for q in ["firmware", "printer firmware", "firmware jam toner"] {
        for t in staff {
            assert_eq!(search(&s, q, "", t).await, set(&[&printer]), "{q}");
        }
        assert_eq!(search(&s, q, "", &alice).await, BTreeSet::new(), "{q}");
        assert_eq!(search(&s, q, "", &colleague).await, BTreeSet::new(), "{q}");
    }
    assert_eq!(search(&s, "vendor", "", &alice).await, set(&[&vendor]));
    assert_eq!(
        search(&s, "vendor", "", &agent).await,
        set(&[&printer, &vendor])
    );

    // An edit replaces the subject's and description's words; the comments' stay.
    let a = s
        .call(
            Method::PATCH,
            &format!("/v1/tickets/{printer}"),
            Some(&agent),
            Some(json!({"description": "Cartridge replaced"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(search(&s, "toner", "", &agent).await, BTreeSet::new());
    assert_eq!(
        search(&s, "cartridge jam", "", &alice).await,
        set(&[&printer])
    );
    assert_eq!(
        search(&s, "cartridge firmware", "", &agent).await,
        set(&[&printer])
    );
    assert_eq!(
        search(&s, "cartridge firmware", "", &alice).await,
        BTreeSet::new()
    );
}

/// With `q`, filters, sorts and keyset paging work as on the whole list.
async fn search_pages_and_filters(s: TestServer) {
    let agent = s.agent("agent-1");
    let mut matching = Vec::new();
    for i in 0..7 {
        let id = s
            .open(
                &agent,
                json!({"subject": format!("Router {i}"), "description": "d", "requester": "c"}),
            )
            .await;
        // Half of the matches only through a comment.
        if i % 2 == 0 {
            comment(&s, &id, &agent, "the ROUTER reboots", "private").await;
        }
        matching.push(id);
        s.open(
            &agent,
            json!({"subject": format!("Switch {i}"), "description": "d", "requester": "c"}),
        )
        .await;
    }
    for sort in ["created", "-created", "-last_activity", "due", "-priority"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/tickets?q=router&sort={sort}&limit=3");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let a = s.get(&path, &agent).await;
            let page = ids(&a);
            assert!(page.len() <= 3);
            seen.extend(page);
            match a.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        if sort == "created" {
            assert_eq!(seen, matching, "created order");
        }
        if sort == "-created" {
            let newest_first: Vec<_> = matching.iter().rev().cloned().collect();
            assert_eq!(seen, newest_first, "-created order");
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{sort}: a ticket came twice");
        assert_eq!(unique, matching.iter().cloned().collect(), "{sort}");
    }
    let a = s
        .post(
            &format!("/v1/tickets/{}/status", matching[1]),
            &agent,
            json!({"status": "resolved"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        search(&s, "router", "&status=resolved", &agent).await,
        set(&[&matching[1]])
    );
    assert_eq!(
        search(&s, "router", "&active=true", &agent).await.len(),
        matching.len() - 1
    );
}

/// `q` is words, never a query language: FTS5 and tsquery syntax, quotes and SQL are text.
/// None of it errors; punctuation around a word does not stop it matching.
async fn search_syntax_is_only_text(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let printer = s
        .open(
            &alice,
            json!({"subject": "Printer on fire", "description": "The toner smells"}),
        )
        .await;
    let scanner = s.open(&alice, body("Scanner broken")).await;
    comment(&s, &scanner, &agent, "internal note", "private").await;
    let hostile = [
        "\"",
        "\"\"",
        "\"printer",
        "printer\"",
        "'",
        "''",
        "\\",
        "*",
        "printer*",
        "*printer",
        "OR",
        "AND",
        "NOT",
        "NEAR",
        "NEAR(printer toner)",
        "NEAR(printer toner, 2)",
        "printer OR scanner",
        "printer AND NOT toner",
        "printer NOT toner",
        "-",
        "-printer",
        "printer -toner",
        ":",
        "subject:printer",
        "{head}:printer",
        "head : printer",
        "private_comments:internal",
        "{private_comments}",
        "^printer",
        "(",
        ")",
        "(printer",
        "printer)",
        "!printer",
        "&",
        "|",
        "printer|scanner",
        "printer&scanner",
        "<->",
        "printer<->toner",
        "printer:*",
        "printer:A",
        "!",
        "+",
        "%",
        "_",
        "\u{0}",
        "printer\u{0}",
        "'; DROP TABLE tickets; --",
        "\"); DELETE FROM ticket_search; --",
        "printer'",
        "[x]",
        "$1",
        "?",
        "??",
        "…",
        "—",
        "\u{200b}",
        "\u{feff}printer",
        "🖨️",
    ];
    for q in hostile {
        for t in [&alice, &agent] {
            let a = s.get(&format!("/v1/tickets?q={}", encoded(q)), t).await;
            assert_eq!(a.status, StatusCode::OK, "q={q:?}: {}", a.body);
        }
    }
    // No operators: OR narrows like any word, NOT and `-` do not exclude, `*` is no prefix.
    for q in [
        "printer OR scanner",
        "printer NOT toner",
        "printer|scanner",
        "print*",
    ] {
        assert_eq!(search(&s, q, "", &agent).await, BTreeSet::new(), "{q}");
    }
    for q in [
        "printer*",
        "-printer",
        "\"printer\"",
        "(printer)",
        "printer:",
        "printer!",
        "#printer",
        "printer.",
        "!printer",
        "printer -toner",
        "printer\u{0}",
    ] {
        assert_eq!(search(&s, q, "", &alice).await, set(&[&printer]), "{q}");
    }
    // A column filter is text too: it does not reach a private comment for a customer.
    for q in [
        "private_comments:internal",
        "{private_comments}:internal",
        "internal",
    ] {
        assert_eq!(search(&s, q, "", &alice).await, BTreeSet::new(), "{q}");
    }
    assert_eq!(search(&s, "internal", "", &agent).await, set(&[&scanner]));
    // Still both tickets afterwards.
    assert_eq!(search(&s, "", "", &alice).await, set(&[&printer, &scanner]));
}

/// Words in any script match case-insensitively; accents are kept (café is not cafe).
async fn search_unicode_words(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let de = s
        .open(
            &alice,
            json!({"subject": "Ärger mit der Übersicht", "description": "Größe falsch — naïve café"}),
        )
        .await;
    let other = s
        .open(
            &alice,
            json!({"subject": "Привет из Москвы", "description": "東京 オフィス"}),
        )
        .await;
    comment(&s, &other, &agent, "Ελληνικά ΚΕΙΜΕΝΑ", "public").await;
    comment(&s, &de, &agent, "Geheimnis über Ärger", "private").await;
    for (q, want) in [
        ("ärger", vec![&de]),
        ("ÄRGER ÜBERSICHT", vec![&de]),
        ("größe", vec![&de]),
        ("GRÖẞE", vec![&de]),
        ("café naïve", vec![&de]),
        ("cafe", vec![]),
        ("привет москвы", vec![&other]),
        ("ПРИВЕТ", vec![&other]),
        ("東京", vec![&other]),
        ("ελληνικά κειμενα", vec![&other]),
        ("geheimnis", vec![]),
    ] {
        assert_eq!(search(&s, q, "", &alice).await, set(&want), "{q}");
    }
    assert_eq!(search(&s, "geheimnis", "", &agent).await, set(&[&de]));
}

/// Both backends split words at punctuation alike: PostgreSQL's parser alone would keep an
/// e-mail address, a path, a version or a hyphenated word whole (so `q=example` found
/// `alice@example.com` on SQLite only), and a query word with punctuation is its words.
async fn search_splits_words_at_punctuation_alike(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let mail = s
        .open(
            &alice,
            json!({"subject": "Mail to alice@example.com bounces",
                   "description": "See /var/log/mail.log on host mx-1.example.org, v2.5.1"}),
        )
        .await;
    let other = s.open(&alice, body("Printer, toner and e-mail")).await;
    comment(
        &s,
        &other,
        &agent,
        "Upgrade to 5.2.2 (don't wait)",
        "public",
    )
    .await;
    for (q, want) in [
        ("example", vec![&mail]),
        ("alice", vec![&mail]),
        ("alice@example.com", vec![&mail]),
        ("ALICE@EXAMPLE.COM bounces", vec![&mail]),
        ("syslog", vec![]),
        ("log", vec![&mail]),
        ("/var/log/mail.log", vec![&mail]),
        ("mx", vec![&mail]),
        ("mx-1.example.org", vec![&mail]),
        ("v2", vec![&mail]),
        ("v2.5.1", vec![&mail]),
        ("printer,toner", vec![&other]),
        ("toner,printer", vec![&other]),
        ("e-mail", vec![&other]),
        ("mail", vec![&mail, &other]),
        ("5.2.2", vec![&other]),
        ("don't", vec![&other]),
        ("dont", vec![]),
    ] {
        assert_eq!(search(&s, q, "", &alice).await, set(&want), "{q}");
        assert_eq!(search(&s, q, "", &agent).await, set(&want), "{q}, staff");
    }
    // The bound on words counts them as typed: a pasted address of many parts is one word.
    let url = "https://support.example.com/hc/en-us/articles/360012345-reset-your-password\
               ?utm_source=portal&utm_medium=email";
    assert!(url.len() > 100);
    assert_eq!(search(&s, url, "", &alice).await, BTreeSet::new());
    let seventeen = vec!["w"; 17].join(" ");
    // 33 distinct words in one typed word of 65 characters.
    let parts = "0123456789abcdefghijklmnopqrstuvw"
        .chars()
        .map(String::from);
    let parts = parts.collect::<Vec<_>>().join(".");
    for q in [seventeen, "x".repeat(101), parts] {
        s.get(&format!("/v1/tickets?q={}", encoded(&q)), &alice)
            .await
            .assert_problem(400, "malformed_request");
    }
    // A withdrawal's comment is a comment too (§4.4), for everyone who sees the ticket.
    let w = s
        .post(
            &format!("/v1/tickets/{mail}/withdraw"),
            &alice,
            json!({"reason": "r", "comment": "Moved to the new helpdesk"}),
        )
        .await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.body);
    for t in [&alice, &agent] {
        assert_eq!(search(&s, "helpdesk", "", t).await, set(&[&mail]));
    }
}

/// A ticket whose comments outgrow what one tsvector can hold (1 MB of words on PostgreSQL)
/// neither stalls the projection nor loses the words indexed before; edits still apply. Also:
/// text PostgreSQL cannot store (NUL) is indexed as a blank.
async fn search_survives_huge_tickets(s: TestServer) {
    let agent = s.agent("agent-1");
    let huge = s
        .open(
            &agent,
            json!({"subject": "Huge thread", "description": "d", "requester": "c"}),
        )
        .await;
    // 70 comments of 2,400 distinct seven-letter words each: 1.2 MB of distinct words.
    let word = |i: usize| -> String {
        (0..7)
            .map(|d| char::from(b'a' + (i / 26usize.pow(d) % 26) as u8))
            .collect()
    };
    for c in 0..70 {
        let text = (0..2400)
            .map(|i| word(c * 2400 + i))
            .collect::<Vec<_>>()
            .join(" ");
        comment(&s, &huge, &agent, &text, "public").await;
    }
    comment(&s, &huge, &agent, "nul\u{0}byte", "public").await;
    let after = s
        .open(
            &agent,
            json!({"subject": "After the flood", "description": "d", "requester": "c"}),
        )
        .await;
    assert_eq!(search(&s, "flood", "", &agent).await, set(&[&after]));
    assert_eq!(search(&s, &word(0), "", &agent).await, set(&[&huge]));
    assert_eq!(search(&s, &word(24_000), "", &agent).await, set(&[&huge]));
    let a = s
        .call(
            Method::PATCH,
            &format!("/v1/tickets/{huge}"),
            Some(&agent),
            Some(json!({"subject": "Gigantic thread"})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(search(&s, "gigantic", "", &agent).await, set(&[&huge]));
    assert_eq!(search(&s, "huge", "", &agent).await, BTreeSet::new());
}

/// An empty or blank `q` is no search at all: the list as without it.
async fn search_empty_is_the_whole_list(s: TestServer) {
    let alice = s.customer("alice");
    let agent = s.agent("agent-1");
    let a1 = s.open(&alice, body("one")).await;
    let b1 = s.open(&s.customer("bob"), body("two")).await;
    for q in ["", " ", "   ", "\t", " \n \r "] {
        assert_eq!(search(&s, q, "", &alice).await, set(&[&a1]), "{q:?}");
        assert_eq!(search(&s, q, "", &agent).await, set(&[&a1, &b1]), "{q:?}");
    }
    let a = s.get("/v1/tickets?q", &agent).await;
    assert_eq!(ids(&a).len(), 2, "{}", a.body);
    // Words without a letter or digit are in no text: a search for only those finds nothing.
    for q in ["-", "\"", "* -", "..."] {
        assert_eq!(search(&s, q, "", &agent).await, BTreeSet::new(), "{q:?}");
    }
}

/// §6.5: counts of events in the window, the backlog and overdue tickets now, and the
/// response and resolution spreads; narrowed by org; staff and auditors only.
async fn analytics_summary(s: TestServer) {
    let agent = s.agent("agent-1");
    let alice = s.customer("alice");
    let ok = |a: ticketd_tests::http::Answer| assert!(a.status.is_success(), "{}", a.body);
    let t1 = s
        .open(
            &agent,
            json!({"subject": "a", "description": "d", "requester": "alice", "org": "acme"}),
        )
        .await;
    let t2 = s
        .open(
            &agent,
            json!({"subject": "b", "description": "d", "requester": "gus", "org": "globex"}),
        )
        .await;
    let t3 = s.open(&alice, body("c")).await;
    s.open(
        &agent,
        json!({"subject": "late", "description": "d", "requester": "alice", "org": "acme",
               "due_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    let p = |id: &str, tail: &str| format!("/v1/tickets/{id}{tail}");
    ok(s.post(&p(&t1, "/comments"), &agent, json!({"body": "hi"}))
        .await);
    ok(s.post(
        &p(&t2, "/comments"),
        &agent,
        json!({"body": "note", "visibility": "private"}),
    )
    .await);
    ok(
        s.post(&p(&t1, "/status"), &agent, json!({"status": "resolved"}))
            .await,
    );
    ok(
        s.post(&p(&t1, "/comments"), &alice, json!({"body": "not fixed"}))
            .await,
    );
    ok(
        s.post(&p(&t3, "/status"), &agent, json!({"status": "closed"}))
            .await,
    );
    ok(
        s.post(&p(&t1, "/escalate"), &alice, json!({"reason": "again"}))
            .await,
    );
    ok(
        s.post(&p(&t2, "/withdraw"), &agent, json!({"reason": "dup"}))
            .await,
    );

    let a = s.get("/v1/analytics/summary", &agent).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let b = &a.body;
    for (k, n) in [
        ("opened", 4),
        ("resolved", 1),
        ("closed", 1),
        ("withdrawn", 1),
        ("escalated", 1),
        ("reopened", 1),
        ("overdue_now", 1),
    ] {
        assert_eq!(b[k], n, "{k}: {b}");
    }
    assert_eq!(
        b["backlog"],
        json!({"open": 1, "in_progress": 0, "awaiting_customer": 0, "on_hold": 0, "escalated": 1})
    );
    let fr = &b["first_response_seconds"];
    assert!(
        fr["p50"].as_f64().is_some_and(|s| s >= 0.0) && fr["p50"] == fr["p90"],
        "{b}"
    );
    assert!(b["resolution_seconds"]["p90"].as_f64().is_some(), "{b}");

    let a = s
        .get(
            "/v1/analytics/summary?org=globex",
            &s.token("aud", Role::Auditor, None, false),
        )
        .await;
    let b = &a.body;
    assert_eq!(a.status, StatusCode::OK, "{b}");
    assert_eq!(
        (
            b["opened"].as_i64(),
            b["withdrawn"].as_i64(),
            b["resolved"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(b["backlog"]["open"], 0);
    assert!(
        b["first_response_seconds"].is_null() && b["resolution_seconds"].is_null(),
        "{b}"
    );

    let a = s
        .get(
            "/v1/analytics/summary?from=2999-01-01T00:00:00Z&to=3000-01-01T00:00:00Z",
            &agent,
        )
        .await;
    assert_eq!(a.body["opened"], 0, "{}", a.body);
    assert_eq!(a.body["backlog"]["escalated"], 1, "the backlog is now");
    // An offset's `+` left unescaped arrives as a space; it is read as the `+` it was.
    let a = s
        .get(
            "/v1/analytics/summary?from=2999-01-01T01:00:00+01:00&to=3000-01-01T00:00:00%2B00:00",
            &agent,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["from"], "2999-01-01T00:00:00Z", "{}", a.body);

    s.get("/v1/analytics/summary", &alice)
        .await
        .assert_problem(403, "forbidden");
    for bad in [
        "from=yesterday",
        "to=2020-01-01",
        "from=2021-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
        "org=",
        "group=org",
    ] {
        s.get(&format!("/v1/analytics/summary?{bad}"), &agent)
            .await
            .assert_problem(400, "malformed_request");
    }
}

http_both_backends!(
    analytics_summary,
    search_respects_comment_visibility,
    search_across_parts_and_visibility,
    search_pages_and_filters,
    search_syntax_is_only_text,
    search_unicode_words,
    search_splits_words_at_punctuation_alike,
    search_empty_is_the_whole_list,
    search_survives_huge_tickets,
    feed_and_read_by,
    list_visibility_by_role,
    list_filters_and_sorts,
    paging_returns_each_ticket_once,
    paging_keeps_its_order_while_sort_keys_change,
    paging_is_exact_while_clients_write,
    feed_visibility_does_not_wait_on_the_tickets_model,
    bad_parameters_are_400,
    a_filter_value_repeated_counts_once,
    one_ticket_with_etag_and_min_position,
);

/// PostgreSQL: a query stuck behind a lock (an operator's `LOCK TABLE`) answers `503` with
/// `Retry-After` at the query timeout and gives its connection back; once the lock is gone,
/// the same queries answer.
#[tokio::test]
async fn postgres_a_query_behind_a_lock_answers_503_at_its_timeout() {
    let Some(t) = ticketd_tests::postgres_store(6).await else {
        return;
    };
    let s = TestServer::start_tuned(t.store.clone(), Default::default(), |state| {
        state.query_timeout = Some(std::time::Duration::from_secs(1));
    })
    .await;
    let alice = s.customer("alice");
    let a = s
        .post(
            "/v1/tickets",
            &alice,
            json!({"subject": "Locked out", "description": "D"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let id = a.body["id"].as_str().expect("id").to_owned();
    let position = a.body["position"].as_str().expect("position").to_owned();
    let list = format!("/v1/tickets?min_position={position}");
    let one = format!("/v1/tickets/{id}");
    let admin = s.token("root", Role::Admin, None, false);
    let summary = "/v1/analytics/summary";
    assert_eq!(ids(&s.get(&list, &alice).await), vec![id.clone()]);

    let (mut operator, _) = ticketd_tests::a_transaction_holding(
        &t.schema.options,
        "LOCK TABLE tickets, analytics_ticket_facts IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    // More queries than the pool has connections: each gives its own back at the timeout.
    for _ in 0..3 {
        for (path, token) in [
            (&list, &alice),
            (&one, &alice),
            (&summary.to_owned(), &admin),
        ] {
            let started = std::time::Instant::now();
            let a = s.get(path, token).await;
            a.assert_problem(503, "unavailable");
            assert!(a.header("retry-after").is_some(), "{path}");
            let took = started.elapsed();
            assert!(
                took >= std::time::Duration::from_millis(900)
                    && took < std::time::Duration::from_secs(4),
                "{path} answered in {took:?}"
            );
        }
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut operator)
        .await
        .expect("unlock");
    assert_eq!(ids(&s.get(&list, &alice).await), vec![id.clone()]);
    assert_eq!(s.get(&one, &alice).await.status, StatusCode::OK);
    assert_eq!(s.get(summary, &admin).await.status, StatusCode::OK);
}

/// The OpenAPI document lists the queries.
#[tokio::test]
async fn openapi_lists_the_queries() {
    let t = ticketd_tests::sqlite_store().await;
    let s = TestServer::start(t.store.clone()).await;
    let a = s.call(Method::GET, "/openapi.json", None, None, &[]).await;
    let paths = &a.body["paths"];
    assert!(paths["/v1/tickets"]["get"].is_object(), "{paths}");
    assert!(paths["/v1/tickets"]["post"].is_object());
    let params = paths["/v1/tickets/{id}"]["get"]["parameters"].to_string();
    assert!(params.contains("min_position"), "{params}");
    assert!(paths["/v1/tickets/{id}/feed"]["get"].is_object());
    assert!(paths["/v1/tickets/{id}/read-by"]["get"].is_object());
    assert!(paths["/v1/analytics/summary"]["get"].is_object());
}
