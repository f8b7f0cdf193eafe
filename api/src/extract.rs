//! The service's own extractors, so that every rejection is problem+json (CONTRACT §2):
//! JSON bodies, ticket ids in the path, `If-Match` and `Idempotency-Key`.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, ProblemField};
use crate::server::{BodyTimeout, Limits};

/// The largest JSON body accepted (CONTRACT §2).
pub const JSON_LIMIT: usize = 1024 * 1024;
/// The longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// A JSON request body: 415 unless `Content-Type` is JSON, 413 over [`JSON_LIMIT`] (however
/// the body is framed), 400 when it is not JSON, 422 when it is JSON of the wrong shape.
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// How much of an oversize body is read and dropped before its 413 is sent, at most. A client
/// is usually still sending when the answer is ready; had the server closed the connection
/// with the body unread, the kernel would reset it under the client's writes, and the client
/// would see a broken pipe instead of the answer. Past these bounds the connection closes
/// anyway: that client sends far more than any body the service takes.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads the body, stopping as soon as it passes `limit`, within the server's body timeout
/// (`server::BodyTimeout`, 30 s without one): a client sending slower would hold one of the
/// server's bounded connections for no request.
pub async fn read_body(req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let within = req
        .extensions()
        .get::<BodyTimeout>()
        .map_or(Limits::default().body_timeout, |t| t.0);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = req.into_body().into_data_stream();
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= (limit + DRAIN_BYTES) as u64 {
            drain(&mut stream).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::malformed("The request body could not be read to its end.")
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let refused = match tokio::time::timeout(within, read).await {
        Ok(Ok(buf)) => return Ok(buf),
        Ok(Err(e)) if e.status() != StatusCode::PAYLOAD_TOO_LARGE => return Err(e),
        Ok(Err(e)) => e,
        Err(_) => ApiError::request_timeout(within),
    };
    // A client still sending gets the answer, not a reset (see `DRAIN_BYTES`); the drain's
    // time is its own, not what was left of the body's.
    drain(&mut stream).await;
    Err(refused)
}

/// Reads and drops the rest of a refused body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(stream: &mut axum::body::BodyDataStream) {
    let drained = async {
        let mut read = 0;
        while read <= DRAIN_BYTES {
            match stream.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => return,
            }
        }
    };
    // Out of time: the connection closes, as it did before.
    let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
}

/// The name a serde message gives in backticks, e.g. "unknown field `foo`, expected …".
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Parses JSON into `T`, telling syntax (400) from shape (422) and naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed(
            "The request body is empty; send a JSON object.",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if !inner.is_data() {
                return Err(ApiError::malformed(format!(
                    "The request body is not valid JSON: {inner}."
                )));
            }
            // serde_json appends " at line L column C"; the field name says more.
            let full = inner.to_string();
            let message = full
                .rsplit_once(" at line ")
                .map_or(full.as_str(), |(m, _)| m)
                .to_owned();
            let field = if path.is_empty() || path == "." {
                quoted_name(&message).unwrap_or("body").to_owned()
            } else {
                path
            };
            return Err(ApiError::invalid(vec![ProblemField { field, message }]));
        }
    };
    de.end().map_err(|e| {
        ApiError::malformed(format!(
            "The request body has data after its JSON value: {e}."
        ))
    })?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "Send the body as JSON with Content-Type: application/json.",
            ));
        }
        let bytes = read_body(req, JSON_LIMIT).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A ticket id from the path; 400 unless it is a UUID.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::malformed("The path does not name a ticket id."))?;
        Uuid::parse_str(&raw).map(IdPath).map_err(|_| {
            ApiError::malformed(format!("{raw:?} in the path is not a UUID ticket id."))
        })
    }
}

/// `If-Match: "<version>"` (also `W/"<version>"` or a bare number); `*` and no header mean
/// no precondition. Anything else is a 400.
pub struct IfMatch(pub Option<u64>);

pub(crate) fn parse_if_match(raw: &str) -> Option<Option<u64>> {
    let raw = raw.trim();
    if raw == "*" {
        return Some(None);
    }
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Some)
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(header::IF_MATCH).iter();
        let Some(value) = values.next() else {
            return Ok(IfMatch(None));
        };
        let bad = || ApiError::malformed("If-Match must be one version in quotes, e.g. \"3\".");
        if values.next().is_some() {
            return Err(bad());
        }
        let raw = value.to_str().map_err(|_| bad())?;
        parse_if_match(raw).map(IfMatch).ok_or_else(bad)
    }
}

/// `Idempotency-Key`: 1–255 visible ASCII characters; absent means none.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        let bad = || {
            ApiError::malformed(format!(
                "Idempotency-Key must be one value of 1–{IDEMPOTENCY_KEY_MAX} visible ASCII \
                 characters."
            ))
        };
        if values.next().is_some() {
            return Err(bad());
        }
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > IDEMPOTENCY_KEY_MAX
            || !bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(bad());
        }
        let key = String::from_utf8(bytes.to_vec()).map_err(|_| bad())?;
        Ok(IdempotencyKey(Some(key)))
    }
}

/// Serde helper for PATCH fields where `null` (clear) differs from absent (leave alone):
/// absent → `None`, `null` → `Some(None)`, a value → `Some(Some(v))`. Use with
/// `#[serde(default, with = "double_option")]`.
pub mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(de).map(Some)
    }

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(ser),
            None => ser.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        tags: Option<Vec<String>>,
    }

    fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> (u16, String) {
        let e = r.expect_err("should fail");
        (e.status().as_u16(), e.detail().to_owned())
    }

    #[test]
    fn syntax_is_400_and_shape_is_422_naming_the_field() {
        assert_eq!(code(parse_json::<Body>(b"{\"name\":")).0, 400);
        assert_eq!(code(parse_json::<Body>(b"   ")).0, 400);
        assert_eq!(code(parse_json::<Body>(b"{\"name\":\"a\"} x")).0, 400);
        let (status, detail) = code(parse_json::<Body>(b"{\"name\":\"a\",\"zzz\":1}"));
        assert_eq!(status, 422);
        assert!(detail.starts_with("zzz:"), "{detail}");
        let (status, detail) = code(parse_json::<Body>(b"{}"));
        assert_eq!(status, 422);
        assert!(detail.starts_with("name:"), "{detail}");
        let (status, detail) = code(parse_json::<Body>(b"{\"name\":\"a\",\"tags\":[1]}"));
        assert_eq!(status, 422);
        assert!(detail.starts_with("tags[0]:"), "{detail}");
        assert_eq!(code(parse_json::<Body>(b"[]")).0, 422);
        assert!(parse_json::<Body>(b" {\"name\":\"a\"} \n").is_ok());
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match("\"3\""), Some(Some(3)));
        assert_eq!(parse_if_match("W/\"3\""), Some(Some(3)));
        assert_eq!(parse_if_match("3"), Some(Some(3)));
        assert_eq!(parse_if_match("*"), Some(None));
        assert_eq!(parse_if_match("\"abc\""), None);
        assert_eq!(parse_if_match("\"\""), None);
        assert_eq!(parse_if_match("\"-1\""), None);
        assert_eq!(parse_if_match("\"99999999999999999999999\""), None);
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
