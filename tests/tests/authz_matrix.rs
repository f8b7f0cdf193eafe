//! CONTRACT §5 for every query endpoint of §6, on both backends: who gets 200, 403 or 404, and
//! that a customer never sees a private comment through the feed, the list or search — for a
//! customer as requester, as CC, as an org-wide colleague, as another org's user, and for an
//! agent, an admin and an auditor.

use reqwest::StatusCode;
use serde_json::json;

use ticketd_domain::Role;
use ticketd_tests::http::TestServer;
use ticketd_tests::http_both_backends;

struct Persona {
    who: &'static str,
    token: String,
    /// Sees the ticket (§5).
    sees: bool,
    staff_view: bool,
}

async fn every_query_endpoint_by_persona(s: TestServer) {
    let alice = s.token("alice", Role::Customer, Some("acme"), false);
    let agent = s.agent("agent-1");
    let id = s
        .open(
            &alice,
            json!({"subject": "printer on fire", "description": "smoke", "cc": ["bob"]}),
        )
        .await;
    for (token, body, visibility) in [
        (&agent, "public answer", "public"),
        (&agent, "zebracorn internal note", "private"),
    ] {
        let a = s
            .post(
                &format!("/v1/tickets/{id}/comments"),
                token,
                json!({"body": body, "visibility": visibility}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let a = s
        .post(&format!("/v1/tickets/{id}/read"), &alice, json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    let personas = [
        Persona {
            who: "requester",
            token: alice.clone(),
            sees: true,
            staff_view: false,
        },
        Persona {
            who: "cc",
            token: s.token("bob", Role::Customer, Some("acme"), false),
            sees: true,
            staff_view: false,
        },
        Persona {
            who: "org-wide colleague",
            token: s.token("zoe", Role::Customer, Some("acme"), true),
            sees: true,
            staff_view: false,
        },
        Persona {
            who: "same org, not org-wide",
            token: s.token("yann", Role::Customer, Some("acme"), false),
            sees: false,
            staff_view: false,
        },
        Persona {
            who: "another org's user",
            token: s.token("dave", Role::Customer, Some("globex"), true),
            sees: false,
            staff_view: false,
        },
        Persona {
            who: "agent",
            token: agent.clone(),
            sees: true,
            staff_view: true,
        },
        Persona {
            who: "admin",
            token: s.token("root", Role::Admin, None, false),
            sees: true,
            staff_view: true,
        },
        Persona {
            who: "auditor",
            token: s.token("aud", Role::Auditor, None, false),
            sees: true,
            staff_view: true,
        },
    ];
    for p in &personas {
        let who = p.who;
        let expect = if p.sees {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        for path in [
            format!("/v1/tickets/{id}"),
            format!("/v1/tickets/{id}/feed"),
            format!("/v1/tickets/{id}/feed?types=comment,read"),
            format!("/v1/tickets/{id}/read-by"),
        ] {
            let a = s.get(&path, &p.token).await;
            assert_eq!(a.status, expect, "{who} GET {path}: {}", a.body);
            if !p.sees {
                a.assert_problem(404, "not_found");
                continue;
            }
            if path.contains("/feed") {
                let items = a.body["items"].as_array().expect("items");
                let private = items.iter().any(|e| e["visibility"] == "private");
                assert_eq!(private, p.staff_view, "{who} {path}: {}", a.body);
                assert_eq!(
                    a.body.to_string().contains("zebracorn"),
                    p.staff_view,
                    "{who} {path}"
                );
            }
            if path.ends_with("/read-by") {
                assert_eq!(a.body["items"][0]["user"], "alice", "{who}");
            }
        }

        // The list and search: the ticket is there exactly for those who see it, and the
        // private note's words find it only for staff.
        for (query, listed) in [
            ("", p.sees),
            ("?q=printer", p.sees),
            ("?q=zebracorn", p.sees && p.staff_view),
            ("?q=printer%20zebracorn", p.sees && p.staff_view),
        ] {
            let a = s.get(&format!("/v1/tickets{query}"), &p.token).await;
            assert_eq!(a.status, StatusCode::OK, "{who} list{query}: {}", a.body);
            let found = a.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|t| t["id"] == id.as_str());
            assert_eq!(found, listed, "{who} list{query}: {}", a.body);
        }

        // Analytics: staff and auditors only (§6.5).
        let a = s.get("/v1/analytics/summary", &p.token).await;
        if p.staff_view {
            assert_eq!(a.status, StatusCode::OK, "{who}: {}", a.body);
            assert!(a.body["opened"].as_u64().expect("opened") >= 1);
        } else {
            a.assert_problem(403, "forbidden");
        }
    }

    // No token at all: 401 everywhere.
    for path in [
        format!("/v1/tickets/{id}"),
        format!("/v1/tickets/{id}/feed"),
        format!("/v1/tickets/{id}/read-by"),
        "/v1/tickets".to_owned(),
        "/v1/analytics/summary".to_owned(),
    ] {
        s.call(reqwest::Method::GET, &path, None, None, &[])
            .await
            .assert_problem(401, "unauthorized");
    }
}

http_both_backends!(every_query_endpoint_by_persona);
