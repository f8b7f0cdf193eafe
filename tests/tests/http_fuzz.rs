//! Random requests against every route, on SQLite and PostgreSQL: whatever a client sends —
//! wrong methods, bad ids, nonsense query parameters, mangled JSON, wrong content types, stale
//! or odd `If-Match` and `Idempotency-Key` headers, any token — the server never answers 5xx,
//! every refusal is problem+json with its own status, and a refused command appends nothing.
//! The generator is seeded, so a failure names the request that replays it.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use ticketd_domain::Role;
use ticketd_tests::history::Rng;
use ticketd_tests::http::{Answer, TestServer};
use ticketd_tests::http_both_backends;

/// Requests per backend and seed.
const REQUESTS: usize = 500;
const SEEDS: [u64; 3] = [7, 1_000_003, 42];

/// One generated request, printable so a failure can be replayed by hand.
struct Request {
    method: Method,
    path: String,
    /// Index into the token list, or `None` for no `Authorization`.
    token: Option<usize>,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    /// The ticket the path names, when it is one the test knows.
    ticket: Option<Uuid>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} token {:?} headers {:?}",
            self.method, self.path, self.token, self.headers
        )?;
        if let Some(body) = &self.body {
            let text = String::from_utf8_lossy(body);
            let cut: String = text.chars().take(400).collect();
            write!(f, " body ({} bytes) {cut:?}", body.len())?;
        }
        Ok(())
    }
}

/// JSON values that are wrong somewhere: every type, empty, huge, control characters.
fn nasty(rng: &mut Rng) -> Value {
    match rng.below(22) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(1e308),
        5 => json!(u64::MAX),
        6 => json!(""),
        7 => json!("   "),
        8 => json!("x".repeat(20_001)),
        9 => json!("nul\u{0}inside"),
        10 => json!("ünïcødé 😀 \u{202e}"),
        11 => json!([]),
        12 => json!({}),
        13 => json!(["a", 1, null]),
        14 => json!({"a": {"b": []}}),
        15 => json!("2026-01-01T00:00:00Z"),
        16 => json!("9999-12-31T23:59:59Z"),
        17 => json!("not-a-date"),
        18 => json!(*rng.pick(&["open", "withdrawn", "resolved", "closed", "escalated"])),
        19 => json!(*rng.pick(&["urgent", "high", "private", "public", "email"])),
        20 => json!("a".repeat(201)),
        _ => json!(vec!["c"; 60]),
    }
}

/// A well-formed body for the command at `path` (random valid values), before mutation.
fn template(rng: &mut Rng, command: &str) -> Value {
    let text = |rng: &mut Rng| json!(format!("text {}", rng.below(1000)));
    match command {
        "open" => json!({
            "subject": text(rng), "description": text(rng),
            "priority": *rng.pick(&["low", "normal", "high", "urgent"]),
            "channel": *rng.pick(&["web", "email", "phone", "chat"]),
            "cc": [*rng.pick(&["bob", "carol", "dave"])],
            "fields": {"product": "router", "tags": ["a", "b"]},
            "requester": "alice", "org": "acme",
            "due_at": "2030-01-01T00:00:00Z",
        }),
        "comments" => json!({"body": text(rng), "visibility": *rng.pick(&["public", "private"])}),
        "status" => json!({
            "status": *rng.pick(&["open", "in_progress", "awaiting_customer", "on_hold",
                                  "escalated", "resolved", "closed", "withdrawn"]),
            "reason": text(rng),
        }),
        "withdraw" => json!({"reason": text(rng), "comment": text(rng)}),
        "escalate" => json!({"reason": text(rng)}),
        "edit" => json!({
            "subject": text(rng), "description": text(rng),
            "priority": *rng.pick(&["low", "normal", "high", "urgent"]),
            "fields": {"product": "modem"}, "cc": ["bob"],
            "assignee": *rng.pick(&[json!("agent-1"), Value::Null]),
            "due_at": *rng.pick(&[json!("2031-01-01T00:00:00Z"), Value::Null]),
        }),
        _ => json!({}),
    }
}

/// The body bytes for `command`: mostly a mutated template, sometimes no JSON at all.
fn body(rng: &mut Rng, command: &str) -> Option<Vec<u8>> {
    let mut value = template(rng, command);
    if let Value::Object(fields) = &mut value {
        let names: Vec<String> = fields.keys().cloned().collect();
        for name in names {
            match rng.below(14) {
                0 => {
                    fields.remove(&name);
                }
                1 => {
                    fields.insert(name, nasty(rng));
                }
                _ => {}
            }
        }
        if rng.below(10) == 0 {
            fields.insert("unexpected".into(), nasty(rng));
        }
    }
    if rng.below(20) == 0 {
        value = nasty(rng);
    }
    let text = serde_json::to_vec(&value).expect("JSON");
    Some(match rng.below(30) {
        0 => return None,
        1 => Vec::new(),
        2 => text[..text.len() / 2].to_vec(),
        3 => vec![0xff, 0xfe, b'{', 0x00, 0x80],
        4 => "[".repeat(5_000).into_bytes(),
        5 => format!(r#"{{"body": "x", "body": "y", "subject": "{}"}}"#, "s").into_bytes(),
        _ => text,
    })
}

/// A path segment standing for a ticket id: a known one, in any spelling, or none at all.
fn id_segment(rng: &mut Rng, known: &[Uuid]) -> (String, Option<Uuid>) {
    let id = *rng.pick(known);
    match rng.below(14) {
        0 => (Uuid::new_v4().to_string(), None),
        1 => (Uuid::nil().to_string(), None),
        2 => ("not-a-uuid".into(), None),
        3 => ("%00".into(), None),
        4 => ("x".repeat(300), None),
        5 => (id.to_string().to_uppercase(), Some(id)),
        6 => (id.simple().to_string(), Some(id)),
        7 => (format!("{id}%20"), Some(id)),
        _ => (id.to_string(), Some(id)),
    }
}

/// Every endpoint's parameters (the list's from the service itself), and some no endpoint takes.
fn params() -> Vec<&'static str> {
    let others = ["types", "from", "to", "after", "as_of", "x", "", "limit[]"];
    ticketd_api::queries::LIST_PARAMS
        .iter()
        .copied()
        .chain(others)
        .collect()
}

/// A query value, already in URL form.
fn param_value(rng: &mut Rng, cursor: &str, position: &str) -> String {
    let raw: String = match rng.below(30) {
        0 => String::new(),
        1 => "0".into(),
        2 => "-1".into(),
        3 => "99999999999999999999999".into(),
        4 => "true".into(),
        5 => "false".into(),
        6 => "x".repeat(5_000),
        7 => return "%00".into(),
        8 => return "%ff%fe".into(),
        9 => return "%zz".into(),
        10 => "a,b,,c".into(),
        11 => cursor.into(),
        12 => position.into(),
        13 => "0-1".into(),
        14 => "ünïcødé 😀".into(),
        15 => "'; DROP TABLE tickets; --".into(),
        16 => "\\ * \" & : ( ) ! | <->".into(),
        17 => "NaN".into(),
        18 => "2026-13-45T00:00:00Z".into(),
        19 => "2026-01-01T00:00:00Z".into(),
        20 => "2026-01-01".into(),
        21 => "mine".into(),
        22 => "org".into(),
        23 => "open,resolved".into(),
        24 => "-priority".into(),
        25 => "due".into(),
        26 => "comment,read".into(),
        27 => "50".into(),
        28 => "text".into(),
        _ => format!("{cursor}{cursor}"),
    };
    encode(&raw)
}

fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(rng: &mut Rng, cursor: &str, position: &str) -> String {
    let n = rng.below(4);
    let parts: Vec<String> = (0..n)
        .map(|_| {
            let name = *rng.pick(&params());
            format!("{name}={}", param_value(rng, cursor, position))
        })
        .collect();
    if parts.is_empty() && rng.below(4) == 0 {
        return "?".into();
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("?{}", parts.join("&"))
}

fn generate(rng: &mut Rng, known: &[Uuid], tokens: usize, cursor: &str, at: &str) -> Request {
    const ROUTES: [(&str, &str); 22] = [
        ("GET", "/v1/tickets"),
        ("GET", "/v1/tickets/{id}"),
        ("GET", "/v1/tickets/{id}/feed"),
        ("GET", "/v1/tickets/{id}/read-by"),
        ("GET", "/v1/analytics/summary"),
        ("GET", "/v1/audit/events"),
        ("GET", "/v1/audit/tickets/{id}/events"),
        ("GET", "/v1/audit/tickets/{id}/state"),
        ("POST", "/v1/audit/verify"),
        ("POST", "/v1/tickets"),
        ("PATCH", "/v1/tickets/{id}"),
        ("POST", "/v1/tickets/{id}/comments"),
        ("POST", "/v1/tickets/{id}/status"),
        ("POST", "/v1/tickets/{id}/withdraw"),
        ("POST", "/v1/tickets/{id}/escalate"),
        ("POST", "/v1/tickets/{id}/read"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("DELETE", "/v1/tickets/{id}"),
        ("PUT", "/v1/tickets/{id}/comments/extra"),
    ];
    let (method, template_path) = *rng.pick(&ROUTES);
    // Sometimes the right path with the wrong method.
    let method = if rng.below(30) == 0 {
        *rng.pick(&["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"])
    } else {
        method
    };
    let (segment, ticket) = if rng.below(2) == 0 {
        let id = *rng.pick(known);
        (id.to_string(), Some(id))
    } else {
        id_segment(rng, known)
    };
    let path = template_path.replace("{id}", &segment);
    let command = match (method, template_path) {
        ("POST", "/v1/tickets") => "open",
        ("PATCH", _) => "edit",
        _ => template_path.rsplit('/').next().unwrap_or(""),
    };
    let body = if method == "GET" && rng.below(10) != 0 {
        None
    } else {
        body(rng, command)
    };
    let mut headers = Vec::new();
    if body.is_some() {
        let ct = match rng.below(24) {
            0 => None,
            1 => Some("text/plain"),
            2 => Some("application/json; charset=utf-8"),
            3 => Some("application/merge-patch+json"),
            4 => Some("multipart/form-data"),
            _ => Some("application/json"),
        };
        if let Some(ct) = ct {
            headers.push(("content-type", ct.to_owned()));
        }
    }
    if rng.below(5) == 0 {
        // `{now}` and `{stale}` become the named ticket's version and the one before it.
        let tag = *rng.pick(&[
            "\"{now}\"",
            "\"{stale}\"",
            "\"{stale}\"",
            "*",
            "W/\"1\"",
            "garbage",
            "\"99999999999999999999999\"",
            "\"-1\"",
            "",
            "\"1\", \"2\"",
        ]);
        headers.push(("if-match", tag.to_owned()));
    }
    if rng.below(5) == 0 {
        let key = match rng.below(5) {
            0 => "x".repeat(300),
            1 => String::new(),
            n => format!("key-{n}"),
        };
        headers.push(("idempotency-key", key));
    }
    if rng.below(10) == 0 {
        let accept = *rng.pick(&[
            "application/x-ndjson",
            "text/html",
            "*/*",
            "application/xml",
        ]);
        headers.push(("accept", accept.to_owned()));
    }
    // Mostly a valid token (the last one is garbage), so commands get past authentication.
    let token = match rng.below(12) {
        0 => None,
        1 => Some(tokens - 1),
        _ => Some(rng.below(tokens as u64 - 1) as usize),
    };
    Request {
        method: Method::from_bytes(method.as_bytes()).expect("method"),
        path: format!("{path}{}", query(rng, cursor, at)),
        token,
        headers,
        body,
        ticket,
    }
}

/// The stream's length as the store has it now (stream reads see every commit at once).
async fn version(s: &TestServer, id: Uuid) -> usize {
    s.store.read_stream(id, 0).await.expect("read stream").len()
}

async fn send(s: &TestServer, tokens: &[String], r: &Request) -> Answer {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let token = r.token.map(|i| tokens[i].as_str());
    s.send(r.method.clone(), &r.path, token, &headers, r.body.clone())
        .await
}

async fn no_input_causes_a_server_error(s: TestServer) {
    let org_wide = s.token("carol", Role::Customer, Some("acme"), true);
    let tokens = vec![
        s.customer("alice"),
        s.customer("bob"),
        org_wide,
        s.token("dave", Role::Customer, Some("globex"), false),
        s.agent("agent-1"),
        s.token("root", Role::Admin, None, false),
        s.token("eve", Role::Auditor, None, false),
        "garbage".to_owned(),
    ];
    let (alice, agent) = (&tokens[0], &tokens[4]);
    let mut known = Vec::new();
    for (i, opener) in [alice, agent, alice, agent, alice, agent]
        .into_iter()
        .enumerate()
    {
        let mut body = json!({"subject": format!("Printer {i}"), "description": "It jams.",
                              "cc": ["bob"]});
        if opener == agent {
            body["requester"] = json!("alice");
        }
        let id = s.open(opener, body).await;
        known.push(id.parse::<Uuid>().expect("uuid"));
    }
    let first = s.get("/v1/tickets?limit=1", agent).await;
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let mut streams: BTreeMap<Uuid, usize> = BTreeMap::new();
    for id in &known {
        streams.insert(*id, version(&s, *id).await);
    }
    let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        for n in 0..REQUESTS {
            let at = s.last_position().to_string();
            let mut r = generate(&mut rng, &known, tokens.len(), &cursor, &at);
            let now = r
                .ticket
                .and_then(|id| streams.get(&id))
                .copied()
                .unwrap_or(1);
            for (_, value) in &mut r.headers {
                *value = value
                    .replace("{now}", &now.to_string())
                    .replace("{stale}", &now.saturating_sub(1).to_string());
            }
            let a = send(&s, &tokens, &r).await;
            let status = a.status.as_u16();
            *answered.entry(status).or_default() += 1;
            let replay = format!("seed {seed}, request {n}: {r}\nanswer {status}: {}", a.body);
            assert!(status < 500, "server error: {replay}");
            if status >= 400 && r.method != Method::HEAD {
                assert_eq!(
                    a.header("content-type"),
                    Some("application/problem+json"),
                    "{replay}"
                );
                assert_eq!(a.body["status"], status, "{replay}");
                assert!(a.body["code"].is_string(), "{replay}");
            }
            if let Some(id) = a.body["id"].as_str().filter(|_| status == 201) {
                let id: Uuid = id.parse().expect("uuid");
                streams.insert(id, version(&s, id).await);
            }
            if let Some(id) = r.ticket {
                let now = version(&s, id).await;
                let before = streams.insert(id, now).expect("known ticket");
                if !a.status.is_success() {
                    assert_eq!(now, before, "a refused request appended: {replay}");
                }
            }
        }
    }
    // Every event in the log belongs to a ticket some request saw answered: nothing refused
    // opened a ticket, and no stream grew unseen.
    let log = ticketd_tests::read_until(s.store.as_ref(), s.last_position()).await;
    let mut in_log: BTreeMap<Uuid, usize> = BTreeMap::new();
    for e in &log {
        *in_log.entry(e.stream_id).or_default() += 1;
    }
    let seen: BTreeSet<&Uuid> = streams.keys().collect();
    assert_eq!(in_log.keys().collect::<BTreeSet<_>>(), seen);
    assert_eq!(in_log, streams);
    // The requests reached past validation: commands succeeded and every kind of refusal came.
    eprintln!("answers by status: {answered:?}");
    for status in [200, 201, 400, 401, 403, 404, 405, 409, 412, 415, 422] {
        assert!(answered.contains_key(&status), "no {status}: {answered:?}");
    }
    assert!(streams.values().sum::<usize>() > 3 * known.len());
}

http_both_backends!(no_input_causes_a_server_error);
