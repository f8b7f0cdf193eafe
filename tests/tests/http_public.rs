//! CONTRACT §4.1's public form end to end, on SQLite and PostgreSQL: with
//! `TICKETD_PUBLIC_SUBMISSION=true` a request without a token opens a ticket by giving
//! `contact_email`, and gets back only its id, number and position.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use ticketd_tests::http::{Answer, TestServer};
use ticketd_tests::http_both_backends;

fn form(extra: Value) -> Value {
    let mut body = json!({"subject": "Locked out", "description": "I cannot sign in.",
                          "contact_email": "pat@example.com"});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    body
}

/// `POST /v1/tickets` without a token, as the public form sends it.
async fn submit(s: &TestServer, body: Value, headers: &[(&str, &str)]) -> Answer {
    s.call(Method::POST, "/v1/tickets", None, Some(body), headers)
        .await
}

async fn the_public_form_opens_tickets(s: TestServer) {
    let a = submit(&s, form(json!({})), &[]).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let fields: BTreeSet<&str> = a
        .body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(["id", "number", "position"]));
    let id = a.body["id"].as_str().expect("id");
    let at = a.body["position"].as_str().expect("position");
    // No way to read it back without a token; staff see it, the address as its requester.
    s.call(Method::GET, &format!("/v1/tickets/{id}"), None, None, &[])
        .await
        .assert_problem(401, "unauthorized");
    let seen = s
        .get(
            &format!("/v1/tickets/{id}?min_position={at}"),
            &s.agent("agent-1"),
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    assert_eq!(seen.body["requester"], "pat@example.com");
    assert_eq!(seen.body["org"], Value::Null);
    assert_eq!(seen.body["number"], a.body["number"]);
    let before = s.log_upto(&a.body["position"]).await.len();

    // Refused, appending nothing.
    let no_address = json!({"subject": "s", "description": "d"});
    let refused = [
        (no_address, 422, "invalid_request"),
        (
            form(json!({"contact_email": "not an address"})),
            422,
            "invalid_request",
        ),
        (form(json!({"requester": "zed"})), 403, "forbidden"),
        (form(json!({"org": "acme"})), 403, "forbidden"),
        (
            form(json!({"due_at": "2030-01-01T00:00:00Z"})),
            403,
            "forbidden",
        ),
    ];
    for (body, status, code) in refused {
        submit(&s, body, &[]).await.assert_problem(status, code);
    }
    // A bad token is a 401, never the public form.
    s.call(
        Method::POST,
        "/v1/tickets",
        Some("garbage"),
        Some(form(json!({}))),
        &[],
    )
    .await
    .assert_problem(401, "unauthorized");
    // A signed-in caller is the requester; the address is for the form alone.
    s.post("/v1/tickets", &s.customer("alice"), form(json!({})))
        .await
        .assert_problem(422, "invalid_request");

    // Repeats under one key answer alike, per address.
    let key = [("idempotency-key", "form-1")];
    let first = submit(&s, form(json!({})), &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = submit(&s, form(json!({})), &key).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.body, first.body);
    let other = form(json!({"contact_email": "sam@example.com"}));
    let sam = submit(&s, other, &key).await;
    assert_eq!(sam.status, StatusCode::CREATED, "{}", sam.body);
    assert_ne!(sam.body["id"], first.body["id"], "keys are per address");
    // A signed-in user whose id is the address typed has keys of their own: the form's
    // submitter can neither block nor answer theirs.
    let pat = s.customer("pat@example.com");
    let theirs = s
        .call(
            Method::POST,
            "/v1/tickets",
            Some(&pat),
            Some(json!({"subject": "Mine", "description": "d"})),
            &key,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.body);
    assert_ne!(theirs.body["id"], first.body["id"]);
    let after = s.log_upto(&theirs.body["position"]).await.len();
    assert_eq!(
        after,
        before + 3,
        "only the three new tickets were appended"
    );
}

http_both_backends!(public_submission: the_public_form_opens_tickets);
