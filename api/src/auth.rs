//! JWT bearer authentication (CONTRACT §1): HS256 only, `exp` required, claims checked.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use ticketd_domain::{Actor, Role};

use crate::error::ApiError;

/// The shortest secret accepted, in bytes (CONTRACT §1).
pub const SECRET_MIN: usize = 32;
/// The file under the data directory that holds the generated secret.
pub const SECRET_FILE: &str = "jwt-secret";
pub(crate) const SUB_MAX: usize = 128;
/// Not in the contract: `name` and `org` are copied into events, so they are bounded as the
/// ticket's own fields are (documented in the OpenAPI document's security scheme).
pub(crate) const NAME_MAX: usize = 200;
pub(crate) const ORG_MAX: usize = 128;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_wide: Option<bool>,
    /// Any JSON number (CONTRACT §1; RFC 7519 allows fractions); `Validation` checks it.
    exp: serde_json::Number,
}

/// Verifies and mints tokens with one HS256 secret, and signs the list cursors with a key
/// derived from it.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Keyed with its own key, derived from the secret, so that a cursor's tag is never a
    /// token's signature.
    cursor_mac: Hmac<Sha256>,
}

/// The bytes of a cursor's tag kept (of HMAC-SHA256's 32).
const CURSOR_TAG: usize = 16;

impl Auth {
    /// An authenticator over `secret`, which must be at least [`SECRET_MIN`] bytes.
    pub fn new(secret: Vec<u8>) -> anyhow::Result<Auth> {
        anyhow::ensure!(
            secret.len() >= SECRET_MIN,
            "the JWT secret must be at least {SECRET_MIN} bytes, got {}",
            secret.len()
        );
        // Only HS256 verifies: `alg: none` and every other algorithm are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // A token not valid yet is refused too (RFC 7519 §4.1.5), when it says so.
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let cursor_key = Sha256::new()
            .chain_update(b"ticketd list cursor\0")
            .chain_update(&secret)
            .finalize();
        let cursor_mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&cursor_key).context("a cursor key")?;
        Ok(Auth {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
            cursor_mac,
        })
    }

    /// `cursor` (a list's `next_cursor`) with a tag that shows this service made it:
    /// `<cursor>.<tag>`, both hex. A cursor names where its paging session started, and a
    /// later page reads every ticket changed since then: a made-up start would make one
    /// request read the whole table.
    pub fn sign_cursor(&self, cursor: &str) -> String {
        let tag = self.cursor_mac(cursor).finalize().into_bytes();
        let hex: String = tag[..CURSOR_TAG]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{cursor}.{hex}")
    }

    /// The cursor inside `signed` and whether it carried a tag, or `None` when its tag is not
    /// this service's. Cursors made before they were signed carry none: the caller decides
    /// what those may do.
    pub fn open_cursor<'a>(&self, signed: &'a str) -> Option<(&'a str, bool)> {
        let Some((cursor, hex)) = signed.split_once('.') else {
            return Some((signed, false));
        };
        if hex.len() != 2 * CURSOR_TAG || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag: Vec<u8> = (0..CURSOR_TAG)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<_>>()?;
        self.cursor_mac(cursor)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| (cursor, true))
    }

    fn cursor_mac(&self, cursor: &str) -> Hmac<Sha256> {
        let mut mac = self.cursor_mac.clone();
        mac.update(cursor.as_bytes());
        mac
    }

    /// The secret from `TICKETD_JWT_SECRET` if given, else the one in `data_dir`, created
    /// there with fresh randomness on first start.
    pub fn from_secret_or_dir(secret: Option<&str>, data_dir: &Path) -> anyhow::Result<Auth> {
        match secret {
            Some(s) => Auth::new(s.as_bytes().to_vec()).context("TICKETD_JWT_SECRET"),
            None => Auth::new(load_or_create_secret(data_dir)?)
                .with_context(|| format!("{}", data_dir.join(SECRET_FILE).display())),
        }
    }

    /// Checks a token and returns who it names. Every failure is a 401.
    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "The token has expired; get a new one.",
                    ErrorKind::InvalidSignature => "The token's signature does not verify.",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "The token must be signed with HS256."
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        "The token lacks a required claim (sub, role, exp)."
                    }
                    _ => "The token is malformed; send a HS256 JWT with sub, role and exp.",
                };
                ApiError::unauthorized(why)
            })?;
        let c = data.claims;
        let role = match c.role.as_str() {
            "customer" => Role::Customer,
            "agent" => Role::Agent,
            "admin" => Role::Admin,
            "auditor" => Role::Auditor,
            _ => {
                return Err(ApiError::unauthorized(
                    "The token's role must be customer, agent, admin or auditor.",
                ))
            }
        };
        check_claims(&c.sub, c.name.as_deref(), c.org.as_deref())
            .map_err(ApiError::unauthorized)?;
        Ok(Actor {
            id: c.sub,
            name: c.name.filter(|n| !n.is_empty()),
            role,
            org: c.org.filter(|o| !o.is_empty()),
            org_wide: c.org_wide.unwrap_or(false),
        })
    }

    /// A token for a user, valid for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        name: Option<&str>,
        role: Role,
        org: Option<&str>,
        org_wide: bool,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(role != Role::Public, "tokens cannot carry the public role");
        // What the service would refuse (a 401 on every request) is not minted.
        check_claims(sub, name, org).map_err(anyhow::Error::msg)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?;
        let claims = Claims {
            sub: sub.to_owned(),
            name: name.map(str::to_owned),
            role: role.as_str().to_owned(),
            org: org.map(str::to_owned),
            org_wide: org_wide.then_some(true),
            exp: (now + ttl).as_secs().into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing the token")
    }

    fn caller(&self, parts: &Parts) -> Result<Option<Actor>, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("The Authorization header is not ASCII."))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "Send Authorization: Bearer <token>.",
                ))
            }
        };
        self.verify(token).map(Some)
    }
}

/// What a token's claims must hold beyond its signature, as `verify` checks them and `mint`
/// before it signs.
pub fn check_claims(sub: &str, name: Option<&str>, org: Option<&str>) -> Result<(), String> {
    let sub_len = sub.chars().count();
    if sub_len == 0 || sub_len > SUB_MAX {
        return Err(format!("The token's sub must be 1–{SUB_MAX} characters."));
    }
    if name.is_some_and(|n| n.chars().count() > NAME_MAX) {
        return Err(format!(
            "The token's name must be at most {NAME_MAX} characters."
        ));
    }
    if org.is_some_and(|o| o.chars().count() > ORG_MAX) {
        return Err(format!(
            "The token's org must be at most {ORG_MAX} characters."
        ));
    }
    // They would name nobody, and reach read models whose text columns refuse U+0000.
    let controls = |s: &str| s.chars().any(char::is_control);
    if controls(sub) || name.is_some_and(controls) || org.is_some_and(controls) {
        return Err(
            "The token's sub, name and org must not contain control characters.".to_owned(),
        );
    }
    Ok(())
}

/// `options` creating a file only its owner may read or write (mode 0600 on Unix): a secret,
/// or an export of the log.
pub(crate) fn owner_only(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Reads the generated secret from `data_dir`, or creates it (32 random bytes, hex, mode 0600).
pub fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    owner_only(options.write(true).create_new(true));
    match options.open(&path) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new JWT secret");
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let s = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(s.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The authenticated caller; 401 without a valid bearer token.
pub struct Caller(pub Actor);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        auth.caller(parts)?.map(Caller).ok_or_else(|| {
            ApiError::unauthorized("This request needs Authorization: Bearer <token>.")
        })
    }
}

/// The caller if a token is given; a bad token is still a 401.
pub struct OptionalCaller(pub Option<Actor>);

impl<S> FromRequestParts<S> for OptionalCaller
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        auth.caller(parts).map(OptionalCaller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::new(SECRET.to_vec()).expect("long enough")
    }

    fn sign(claims: serde_json::Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    fn exp() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600
    }

    /// `mint` refuses what `verify` would refuse (its callers need not check first).
    #[test]
    fn claims_the_service_refuses_are_not_minted() {
        let a = auth();
        let long = "x".repeat(SUB_MAX + 1);
        for (sub, name, org) in [
            ("", None, None),
            (long.as_str(), None, None),
            ("a\u{0}b", None, None),
            ("alice", Some("A\nB"), None),
            ("alice", None, Some("ac\tme")),
        ] {
            let minted = a.mint(
                sub,
                name,
                Role::Customer,
                org,
                false,
                Duration::from_secs(60),
            );
            assert!(minted.is_err(), "{sub:?} {name:?} {org:?} was minted");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Auth::new(b"short".to_vec()).is_err());
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let t = a
            .mint(
                "alice",
                Some("Alice"),
                Role::Customer,
                Some("acme"),
                true,
                Duration::from_secs(60),
            )
            .expect("mint");
        let actor = a.verify(&t).expect("valid");
        assert_eq!(actor.id, "alice");
        assert_eq!(actor.name.as_deref(), Some("Alice"));
        assert_eq!(actor.role, Role::Customer);
        assert_eq!(actor.org.as_deref(), Some("acme"));
        assert!(actor.org_wide);
    }

    #[test]
    fn exp_may_be_any_json_number() {
        // CONTRACT §1 types `exp` as a number, and RFC 7519 allows fractions: portals often
        // send `Date.now() / 1000 + 3600`.
        let a = auth();
        let later = exp() as f64 + 0.5;
        for exp in [serde_json::json!(later), serde_json::json!(exp() as f64)] {
            let t = sign(
                serde_json::json!({"sub": "a", "role": "agent", "exp": exp}),
                Algorithm::HS256,
            );
            assert_eq!(a.verify(&t).expect("a fractional exp").id, "a");
        }
        let past = sign(
            serde_json::json!({"sub": "a", "role": "agent", "exp": 1.5}),
            Algorithm::HS256,
        );
        let e = a.verify(&past).expect_err("expired");
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn bad_tokens_are_401() {
        let a = auth();
        let cases = [
            sign(
                serde_json::json!({"sub": "a", "role": "agent", "exp": 1}),
                Algorithm::HS256,
            ),
            sign(
                serde_json::json!({"sub": "a", "role": "agent"}),
                Algorithm::HS256,
            ),
            sign(
                serde_json::json!({"sub": "a", "role": "agent", "exp": exp()}),
                Algorithm::HS384,
            ),
            sign(
                serde_json::json!({"sub": "a", "role": "public", "exp": exp()}),
                Algorithm::HS256,
            ),
            sign(
                serde_json::json!({"sub": "", "role": "agent", "exp": exp()}),
                Algorithm::HS256,
            ),
            sign(
                serde_json::json!({"sub": "a", "exp": exp()}),
                Algorithm::HS256,
            ),
            sign(
                serde_json::json!({"sub": "a".repeat(129), "role": "agent", "exp": exp()}),
                Algorithm::HS256,
            ),
            "not.a.token".to_owned(),
            // alg: none, no signature
            format!(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                base64_url(&serde_json::json!({"sub": "a", "role": "admin", "exp": exp()}))
            ),
        ];
        for t in cases {
            let e = a.verify(&t).expect_err(&t);
            assert_eq!(e.status().as_u16(), 401, "{t}");
        }
        let other = Auth::new(b"another-secret-another-secret-xx".to_vec()).expect("ok");
        let t = other
            .mint("a", None, Role::Agent, None, false, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            a.verify(&t).expect_err("bad signature").status().as_u16(),
            401
        );
    }

    fn base64_url(v: &serde_json::Value) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = serde_json::to_vec(v).expect("json");
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn the_generated_secret_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_secret(dir.path()).expect("create");
        assert_eq!(first.len(), 64);
        let again = load_or_create_secret(dir.path()).expect("load");
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
