//! Keys from an issuer's JWKS endpoint (`client.token.jwks_public_endpoint`, and the
//! subscription token's): fetched over HTTP(S) with the system's roots (certificates verified),
//! kept per resolved URL for an hour, fetched again for an unknown `kid` at most once per
//! [`REFETCH_INTERVAL`] per URL, so a flood of tokens with made-up key ids costs the issuer
//! one request per interval, not one per token. Concurrent lookups of one URL share a fetch.
//!
//! Only keys with `"use": "sig"` are kept, as in Centrifugo. The endpoint may be a template
//! (`https://{{tenant}}.example.com/jwks`) filled from a token's issuer/audience captures;
//! `auth::jwks_template_safety` has made sure at startup those captures are a fixed set.

use crate::sync::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use tokio::time::Instant;

use crate::auth::{JwksLookup, template_placeholders};
use crate::config::Tls;
use crate::proxy::{PooledClient, http_client};

/// How long fetched keys are trusted.
const KEY_TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches of one URL caused by unknown key ids.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Per fetch attempt; two attempts.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
const ATTEMPTS: usize = 2;
/// A key set larger than this is refused rather than read.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Keys kept from one set.
const MAX_KEYS: usize = 256;
/// Resolved URLs kept. The startup check makes templates resolve to a fixed set; this bounds
/// the map when `insecure_skip_jwks_endpoint_safety_check` lets any value through.
const MAX_URLS: usize = 1024;

/// Why no key was found.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS URL: {0}")]
    Url(String),
    #[error("fetching the JWKS: {0}")]
    Fetch(String),
    #[error("no signing key with kid {0:?} in the JWKS")]
    UnknownKid(String),
}

/// One URL's keys.
#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, Arc<Jwk>>,
    fetched_at: Option<Instant>,
    /// The last fetch attempt, failed or not: the rate limit counts from here.
    attempted_at: Option<Instant>,
}

impl KeySet {
    /// A key to use: fresh, or stale while a refetch is not allowed or has failed.
    fn get(&self, kid: &str) -> Option<Arc<Jwk>> {
        self.keys.get(kid).cloned()
    }

    fn fresh(&self) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() < KEY_TTL)
    }

    fn may_fetch(&self) -> bool {
        self.attempted_at.is_none_or(|at| at.elapsed() >= REFETCH_INTERVAL)
    }
}

/// One URL: its keys (looked at without waiting) and the gate one fetch at a time passes.
#[derive(Debug, Default)]
struct Source {
    keys: Mutex<KeySet>,
    fetching: tokio::sync::Mutex<()>,
}

/// The JWKS of one token configuration.
#[derive(Debug)]
pub struct Jwks {
    template: String,
    client: PooledClient,
    sources: Mutex<HashMap<String, Arc<Source>>>,
}

impl Jwks {
    /// A client for the endpoint `template` (configured at `key`).
    pub fn new(key: &str, template: &str) -> anyhow::Result<Self> {
        let client = http_client(key, &Tls::default())?;
        Ok(Self { template: template.to_owned(), client, sources: Mutex::new(HashMap::new()) })
    }

    /// The key `lookup` names: from the cache, or fetched. A known key never waits for a
    /// fetch; lookups that find a fetch under way wait for it instead of starting another.
    pub async fn key(&self, lookup: &JwksLookup) -> Result<Arc<Jwk>, JwksError> {
        let url = resolve(&self.template, &lookup.vars)?;
        let source = {
            let mut sources = self.sources.locked();
            if sources.len() >= MAX_URLS && !sources.contains_key(&url) {
                return Err(JwksError::Url(format!("{url:?}: more than {MAX_URLS} distinct JWKS URLs")));
            }
            sources.entry(url.clone()).or_default().clone()
        };
        let unknown = || JwksError::UnknownKid(lookup.kid.clone());
        let attempted = {
            let keys = source.keys.locked();
            match keys.get(&lookup.kid) {
                Some(key) if keys.fresh() || !keys.may_fetch() => return Ok(key),
                None if !keys.may_fetch() => return Err(unknown()),
                _ => keys.attempted_at,
            }
        };
        let _gate = source.fetching.lock().await;
        if source.keys.locked().attempted_at != attempted {
            // Someone fetched while this lookup waited: use what they got.
            return source.keys.locked().get(&lookup.kid).ok_or_else(unknown);
        }
        let fetched = self.fetch(&url).await;
        let mut keys = source.keys.locked();
        keys.attempted_at = Some(Instant::now());
        match fetched {
            Ok(fetched) => {
                keys.keys = fetched;
                keys.fetched_at = keys.attempted_at;
            }
            Err(error) if keys.get(&lookup.kid).is_none() => return Err(error),
            // The issuer is failing: a key it served before stays usable.
            Err(_) => {}
        }
        keys.get(&lookup.kid).ok_or_else(unknown)
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, Arc<Jwk>>, JwksError> {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match tokio::time::timeout(FETCH_TIMEOUT, self.get(url)).await {
                Ok(Ok(body)) => return parse_key_set(&body),
                Ok(Err(error)) => last = error,
                Err(_) => last = format!("no answer within {FETCH_TIMEOUT:?}"),
            }
        }
        tracing::warn!(%url, error = %last, "JWKS fetch failed");
        Err(JwksError::Fetch(last))
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let request = http::Request::get(url).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let body =
            Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.map_err(|e| e.to_string())?;
        Ok(body.to_bytes())
    }
}

/// The signing keys of a key set, by id.
fn parse_key_set(body: &[u8]) -> Result<HashMap<String, Arc<Jwk>>, JwksError> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| JwksError::Fetch(format!("not a JWKS: {e}")))?;
    let keys = set
        .keys
        .into_iter()
        .filter(|key| key.common.public_key_use == Some(PublicKeyUse::Signature))
        .filter_map(|key| Some((key.common.key_id.clone()?, Arc::new(key))))
        .take(MAX_KEYS)
        .collect();
    Ok(keys)
}

/// Fills the template's `{{name}}` placeholders; a path that walks up (`..`, `.`, `//`) is
/// refused, as in Centrifugo.
fn resolve(template: &str, vars: &BTreeMap<String, String>) -> Result<String, JwksError> {
    let mut url = template.to_owned();
    for name in template_placeholders(template) {
        let value = vars.get(name).map(String::as_str).unwrap_or_default();
        url = url.replace(&format!("{{{{{name}}}}}"), value);
    }
    let uri: http::Uri = url.parse().map_err(|e| JwksError::Url(format!("{url:?}: {e}")))?;
    let path = uri.path();
    let walks = path.contains("//") || path.split('/').any(|segment| segment == "." || segment == "..");
    if walks {
        return Err(JwksError::Url(format!("{url:?}: the path walks up")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn templates_are_filled_and_walking_paths_refused() {
        let url = resolve(
            "https://{{tenant}}.example.com/jwks/{{env}}",
            &vars(&[("tenant", "acme"), ("env", "prod")]),
        );
        assert_eq!(url.unwrap(), "https://acme.example.com/jwks/prod");
        for bad in ["..", "."] {
            let url = resolve("https://example.com/jwks/{{v}}/keys", &vars(&[("v", bad)]));
            assert!(matches!(url, Err(JwksError::Url(_))), "{bad}");
        }
        assert!(resolve("https://example.com/a//b", &vars(&[])).is_err());
        assert!(resolve("https://example.com/jwks/", &vars(&[])).is_ok());
    }

    #[test]
    fn only_signing_keys_with_an_id_are_kept() {
        let body = br#"{"keys": [
            {"kty": "RSA", "kid": "sig", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "nouse", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "use": "sig", "n": "AQAB", "e": "AQAB"}
        ]}"#;
        let keys = parse_key_set(body).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["sig"]);
        assert!(parse_key_set(b"{}").is_err());
    }
}
