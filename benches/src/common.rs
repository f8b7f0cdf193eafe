//! What the HTTP load tools share: tokens, the secret, a deterministic generator, percentiles.

use anyhow::Context;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

/// An HS256 token for `sub` as `role` (in `org`), valid for a day.
pub fn token(secret: &str, sub: &str, role: &str, org: Option<&str>) -> anyhow::Result<String> {
    token_with(secret, sub, role, org, false)
}

/// [`token`], for a customer who sees their whole organization's tickets when `org_wide`.
pub fn token_with(
    secret: &str,
    sub: &str,
    role: &str,
    org: Option<&str>,
    org_wide: bool,
) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 24 * 3600;
    let mut claims = json!({"sub": sub, "name": sub, "role": role, "org": org, "exp": exp});
    if org_wide {
        claims["org_wide"] = json!(true);
    }
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// `--jwt-secret`, or else the contents of `--secret-file` (where the embedded default keeps
/// the secret it generated).
pub fn secret(given: Option<&str>, file: &str) -> anyhow::Result<String> {
    match given {
        Some(s) => Ok(s.to_owned()),
        None => Ok(std::fs::read_to_string(file)
            .with_context(|| format!("reading {file} (or pass --jwt-secret)"))?
            .trim()
            .to_owned()),
    }
}

/// A tiny deterministic PRNG (xorshift64) per client, so runs are comparable.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The `p`th percentile of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}
