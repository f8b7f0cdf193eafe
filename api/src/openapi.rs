//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use ticketd_domain::limits;

use crate::auth::{NAME_MAX, ORG_MAX, SUB_MAX};
use crate::dto;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ticketd",
        description = "An event-sourced help-desk ticketing service. Errors are \
            application/problem+json (RFC 9457) with a `code`; every command answers the stream's \
            new `version` and an opaque log `position`. Every POST accepts `Idempotency-Key` \
            (per user, kept 24 h; reusing a key for a different request answers 422), and every \
            command on an existing ticket accepts `If-Match: \"<version>\"` (412 when stale)."
    ),
    paths(
        crate::tickets::open,
        crate::queries::list,
        crate::queries::get_ticket,
        crate::queries::feed,
        crate::queries::read_by,
        crate::queries::analytics_summary,
        crate::tickets::comment,
        crate::tickets::status,
        crate::tickets::withdraw,
        crate::tickets::escalate,
        crate::tickets::read,
        crate::tickets::edit,
        crate::audit::log,
        crate::audit::ticket_events,
        crate::audit::ticket_state,
        crate::audit::verify,
        crate::app::healthz,
        crate::app::readyz,
        crate::metrics::render,
    ),
    components(schemas(
        dto::OpenTicketBody, dto::CommentBody, dto::StatusBody, dto::WithdrawBody,
        dto::EscalateBody, dto::EditBody, dto::TicketView, dto::TicketWithPosition,
        dto::PublicOpened, dto::CommentAdded, dto::StatusAnswer, dto::ReadAnswer,
        crate::queries::TicketPage, crate::queries::FeedPage, crate::queries::ReadByPage,
        crate::queries::Reader, crate::queries::Summary, crate::queries::Spread,
        crate::error::Problem,
        crate::record::AuditEvent, crate::audit::EventPage, crate::audit::EventList,
        crate::audit::VerifyReport, crate::audit::FindingView, crate::audit::Unreadable,
    )),
    modifiers(&BearerAuth),
    tags((name = "tickets", description = "Commands and reads on tickets"),
         (name = "analytics", description = "CONTRACT §6.5, staff and auditors only"),
         (name = "audit", description = "CONTRACT §7, auditors and admins only: the log, a \
            ticket's events and past states, and the hash-chain check"),
         (name = "operations", description = "Health and readiness"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(format!(
                            "HS256 JWT (CONTRACT §1): `sub` of 1–{SUB_MAX} characters, `role`, \
                             `exp` (seconds since the epoch, any JSON number); optional `name` \
                             of at most {NAME_MAX} characters, `org` of at most {ORG_MAX}, \
                             `org_wide`. A longer `name` or `org`, or a control character in \
                             `sub`, `name` or `org`, is a 401: they are copied into events."
                        )))
                        .build(),
                ),
            );
        }
    }
}

/// The document `/openapi.json` serves: the annotations' output, refined with what only the
/// code's constants know (lengths, patterns, enumerations, limits), so that a client generator
/// or a schema-driven fuzzer knows exactly which requests the service accepts.
pub fn document() -> Result<Value, serde_json::Error> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                refine_operation(path, operation);
            }
        }
    }
    refine_bodies(&mut doc);
    Ok(doc)
}

const PROBLEM_REF: &str = "#/components/schemas/Problem";
const PROBLEM_JSON: &str = "application/problem+json";

/// One operation: its parameters' constraints; the refusals every operation of its kind can
/// answer, which the annotations leave out (a JSON body can be too large, 413, of another
/// type, 415, or too slow to arrive, 408; an `Idempotency-Key` reused for a different request
/// is 422); and error bodies
/// as `application/problem+json` (RFC 9457), where the annotations name only the schema.
fn refine_operation(path: &str, operation: &mut Value) {
    let has_body = operation.get("requestBody").is_some();
    let mut has_key = false;
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            let (Some(location), Some(name)) =
                (parameter["in"].as_str(), parameter["name"].as_str())
            else {
                continue;
            };
            has_key |= name == "Idempotency-Key";
            if let Some(schema) = parameter_constraints(path, location, name) {
                parameter["schema"] = schema;
            }
        }
    }
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let problem = json!({"description": "A problem (RFC 9457)",
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}});
    let refusals = [
        ("408", has_body),
        ("413", has_body),
        ("415", has_body),
        ("422", has_key),
    ];
    for (status, _) in refusals.iter().filter(|(_, applies)| *applies) {
        responses.entry(*status).or_insert_with(|| problem.clone());
    }
    for response in responses.values_mut() {
        let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
            continue;
        };
        let is_problem = content
            .get("application/json")
            .is_some_and(|m| m["schema"]["$ref"] == PROBLEM_REF);
        if let Some(media) = is_problem
            .then(|| content.remove("application/json"))
            .flatten()
        {
            content.insert(PROBLEM_JSON.into(), media);
        }
    }
}

/// A position as `Position` prints it (19 digits always fit a u64).
const POSITION: &str = "^[0-9]{1,19}-[0-9]{1,19}$";
/// `after`: a position, or empty for the start of the log.
const POSITION_OR_EMPTY: &str = "^([0-9]{1,19}-[0-9]{1,19})?$";
/// `If-Match` as `extract::IfMatch` reads it.
const IF_MATCH: &str = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#;
/// No control character (C0, DEL or C1), as `char::is_control`.
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// `a,b,c` from `names`, as the comma-separated filters take them.
fn comma_list(names: &[&str]) -> String {
    let one = names.join("|");
    format!("^({one})(,({one}))*$")
}

/// What a parameter accepts beyond its type, by where it is and its name.
fn parameter_constraints(path: &str, location: &str, name: &str) -> Option<Value> {
    use crate::queries::names;
    use ticketd_domain::{Channel, Priority, Status};
    use ticketd_projections::{feed, tickets};
    Some(match (location, name) {
        ("header", "If-Match") => json!({"type": "string", "pattern": IF_MATCH}),
        ("header", "Idempotency-Key") => json!({"type": "string",
            "pattern": format!("^[!-~]{{1,{}}}$", crate::extract::IDEMPOTENCY_KEY_MAX)}),
        ("query", "min_position") => json!({"type": "string", "pattern": POSITION}),
        ("query", "after") => json!({"type": "string", "pattern": POSITION_OR_EMPTY}),
        ("query", "limit") => {
            let max = if path.starts_with("/v1/audit/") {
                crate::audit::MAX_LIMIT
            } else {
                crate::queries::MAX_LIMIT
            };
            json!({"type": "integer", "minimum": 1, "maximum": max})
        }
        ("query", "as_of" | "from" | "to") => json!({"type": "string", "format": "date-time"}),
        ("query", "view") => json!({"type": "string", "enum": tickets::View::NAMES}),
        ("query", "sort") => json!({"type": "string", "enum": tickets::Sort::NAMES}),
        ("query", "status") => json!({"type": "string",
            "pattern": comma_list(&names(Status::ALL, Status::as_str))}),
        ("query", "priority") => json!({"type": "string",
            "pattern": comma_list(&names(Priority::ALL, Priority::as_str))}),
        ("query", "channel") => json!({"type": "string",
            "pattern": comma_list(&names(Channel::ALL, Channel::as_str))}),
        ("query", "types") => json!({"type": "string", "pattern": comma_list(feed::TYPES)}),
        ("query", "org") => json!({"type": "string", "minLength": 1, "pattern": NO_CONTROL}),
        ("query", "active" | "overdue" | "projections") => json!({"type": "boolean"}),
        _ => return None,
    })
}

/// Text a field takes: not blank, at most `max` characters (the domain's `Validator`).
fn text(max: usize) -> Value {
    json!({"minLength": 1, "maxLength": max, "pattern": "\\S"})
}

/// A user or organization id (the domain's `Validator::id`).
fn id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": limits::ID_MAX, "pattern": NO_CONTROL})
}

/// Each request body field's constraints: (schema, field, JSON Schema keywords).
fn body_constraints() -> Vec<(&'static str, &'static str, Value)> {
    use ticketd_domain::Status;
    let settable: Vec<&str> = Status::ALL
        .iter()
        .filter(|s| **s != Status::Withdrawn)
        .map(|s| s.as_str())
        .collect();
    let cc = json!({"maxItems": limits::CC_MAX, "items": id()});
    let value = json!({"type": "string", "maxLength": limits::FIELD_VALUE_MAX});
    let fields = json!({
        "maxProperties": limits::FIELDS_MAX,
        "propertyNames": {"minLength": 1, "maxLength": limits::FIELD_KEY_MAX},
        "additionalProperties": {"anyOf": [
            value,
            {"type": "array", "maxItems": limits::FIELD_LIST_MAX, "items": value},
        ]},
    });
    vec![
        ("OpenTicketBody", "subject", text(limits::SUBJECT_MAX)),
        ("OpenTicketBody", "description", text(limits::TEXT_MAX)),
        ("OpenTicketBody", "cc", cc.clone()),
        ("OpenTicketBody", "org", id()),
        ("OpenTicketBody", "requester", id()),
        ("OpenTicketBody", "fields", fields.clone()),
        (
            "OpenTicketBody",
            "contact_email",
            json!({"maxLength": limits::EMAIL_MAX}),
        ),
        ("CommentBody", "body", text(limits::TEXT_MAX)),
        ("StatusBody", "status", json!({"enum": settable})),
        ("StatusBody", "reason", text(limits::REASON_MAX)),
        ("WithdrawBody", "reason", text(limits::REASON_MAX)),
        ("WithdrawBody", "comment", text(limits::TEXT_MAX)),
        ("EscalateBody", "reason", text(limits::REASON_MAX)),
        ("EditBody", "subject", text(limits::SUBJECT_MAX)),
        ("EditBody", "description", text(limits::TEXT_MAX)),
        ("EditBody", "cc", cc),
        ("EditBody", "assignee", id()),
        ("EditBody", "fields", fields),
    ]
}

fn refine_bodies(doc: &mut Value) {
    for (schema, field, constraints) in body_constraints() {
        let Some(property) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
            .and_then(Value::as_object_mut)
        else {
            // A renamed field: the test below names it.
            continue;
        };
        // A `$ref` (an enumeration type) cannot take siblings in every reader: inline it.
        if property.contains_key("$ref") && constraints.get("enum").is_some() {
            property.remove("$ref");
            property.insert("type".into(), json!("string"));
        }
        if let Some(constraints) = constraints.as_object() {
            for (k, v) in constraints {
                // The generated type stays: it says whether `null` is taken.
                if k == "type" && property.contains_key("type") {
                    continue;
                }
                property.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        document().expect("the document serializes")
    }

    #[test]
    fn every_body_constraint_lands_on_a_field() {
        let doc = doc();
        for (schema, field, constraints) in body_constraints() {
            let property = doc
                .pointer(&format!("/components/schemas/{schema}/properties/{field}"))
                .unwrap_or_else(|| panic!("{schema}.{field} is not in the document"));
            for (k, v) in constraints.as_object().expect("keywords") {
                if k != "type" {
                    assert_eq!(&property[k], v, "{schema}.{field}.{k}");
                }
            }
        }
    }

    #[test]
    fn nullable_fields_stay_nullable() {
        let doc = doc();
        let assignee = &doc["components"]["schemas"]["EditBody"]["properties"]["assignee"];
        assert_eq!(assignee["type"], json!(["string", "null"]), "{assignee}");
        assert_eq!(assignee["maxLength"], limits::ID_MAX);
    }

    #[test]
    fn errors_are_problem_json() {
        let text = doc().to_string();
        let doc: Value = serde_json::from_str(&text).expect("json");
        let mut problems = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    let Some(content) = response["content"].as_object() else {
                        continue;
                    };
                    if let Some(json) = content.get("application/json") {
                        assert_ne!(
                            json["schema"]["$ref"], PROBLEM_REF,
                            "{method} {path} {status}"
                        );
                    }
                    if let Some(p) = content.get("application/problem+json") {
                        assert_eq!(p["schema"]["$ref"], PROBLEM_REF);
                        problems += 1;
                    }
                }
            }
        }
        assert!(problems > 50, "{problems}");
        let responses = &doc["paths"]["/v1/tickets/{id}/comments"]["post"]["responses"];
        for status in ["408", "413", "415", "422"] {
            assert!(responses[status].is_object(), "{status}");
        }
        assert!(doc["paths"]["/v1/tickets/{id}/read"]["post"]["responses"]["422"].is_object());
    }

    fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
    }

    #[test]
    fn parameters_say_what_the_handlers_accept() {
        let doc = doc();
        let schema = |path, method, name| parameter(&doc, path, method, name)["schema"].clone();
        assert_eq!(
            schema("/v1/tickets", "get", "sort")["enum"],
            json!(ticketd_projections::tickets::Sort::NAMES)
        );
        assert_eq!(schema("/v1/tickets", "get", "limit")["maximum"], 200);
        assert_eq!(schema("/v1/audit/events", "get", "limit")["maximum"], 1000);
        assert_eq!(
            schema("/v1/audit/events", "get", "after")["pattern"],
            "^([0-9]{1,19}-[0-9]{1,19})?$"
        );
        assert_eq!(
            schema("/v1/tickets/{id}/comments", "post", "If-Match")["pattern"],
            IF_MATCH
        );
        assert_eq!(
            schema("/v1/tickets", "post", "Idempotency-Key")["pattern"],
            "^[!-~]{1,255}$"
        );
        assert_eq!(
            schema("/v1/analytics/summary", "get", "from")["format"],
            "date-time"
        );
        let status = schema("/v1/tickets", "get", "status")["pattern"]
            .as_str()
            .expect("pattern")
            .to_owned();
        assert!(status.starts_with("^(open|in_progress|"), "{status}");
        for path in [
            "/v1/tickets",
            "/v1/tickets/{id}",
            "/v1/tickets/{id}/feed",
            "/v1/tickets/{id}/read-by",
            "/v1/analytics/summary",
            "/v1/audit/events",
            "/v1/audit/tickets/{id}/events",
            "/v1/audit/tickets/{id}/state",
        ] {
            assert_eq!(
                schema(path, "get", "min_position")["pattern"],
                POSITION,
                "{path}"
            );
        }
    }

    /// The patterns read as the handlers do, checked on samples of both kinds.
    #[test]
    fn patterns_match_what_the_parsers_take() {
        let matches =
            |pattern: &str, s: &str| regex::Regex::new(pattern).expect("pattern").is_match(s);
        for ok in ["\"3\"", "W/\"3\"", "3", "*"] {
            assert!(matches(IF_MATCH, ok), "{ok}");
            assert!(crate::extract::parse_if_match(ok).is_some(), "{ok}");
        }
        for bad in ["\"\"", "\"-1\"", "null", "\"3", "3\""] {
            assert!(!matches(IF_MATCH, bad), "{bad}");
        }
        for ok in ["0-1", "12-3456"] {
            assert!(matches(POSITION, ok));
            assert!(ok.parse::<ticketd_commands::Position>().is_ok());
        }
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3"] {
            assert!(!matches(POSITION, bad), "{bad}");
            assert!(bad.parse::<ticketd_commands::Position>().is_err(), "{bad}");
        }
        assert!(matches(POSITION_OR_EMPTY, "") && matches(POSITION_OR_EMPTY, "0-1"));
        assert!(!matches(POSITION_OR_EMPTY, "1") && !matches(POSITION_OR_EMPTY, "0-1-"));
        assert!(matches(NO_CONTROL, "acme"));
        for bad in ["a\u{0}", "a\u{1f}", "\u{7f}", "\u{85}"] {
            assert!(!matches(NO_CONTROL, bad), "{bad:?}");
        }
        let list = comma_list(&["a", "bc"]);
        assert!(matches(&list, "a,bc") && matches(&list, "bc"));
        assert!(!matches(&list, "") && !matches(&list, "a,") && !matches(&list, "ab"));
    }
}
