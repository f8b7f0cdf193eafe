//! CONTRACT §6.1–§6.2 end to end on both backends: the ticket list from the `tickets` read
//! model (visibility by role, filters, sorts, keyset paging), one ticket from it with its ETag,
//! and `min_position`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

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

/// Keyset paging returns every ticket once, also while tickets change between pages.
async fn paging_returns_each_ticket_once(s: TestServer) {
    let agent = s.agent("agent-1");
    let mut opened = Vec::new();
    for i in 0..7 {
        opened.push(
            s.open(
                &agent,
                json!({"subject": format!("t{i}"), "description": "d", "requester": "c"}),
            )
            .await,
        );
    }
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
    let started = Instant::now();
    let a = s
        .call(
            Method::GET,
            &format!("/v1/tickets/{id}?min_position=99999999999-1"),
            Some(&alice),
            None,
            &[],
        )
        .await;
    a.assert_problem(503, "unavailable");
    assert!(a.header("retry-after").is_some());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
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
    feed_and_read_by,
    list_visibility_by_role,
    list_filters_and_sorts,
    paging_returns_each_ticket_once,
    bad_parameters_are_400,
    one_ticket_with_etag_and_min_position,
);

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
