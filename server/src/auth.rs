//! Connection and subscription JWT verification. Pure: no IO, time is passed in.
//!
//! Accepted algorithms are exactly HS256/384/512 (with `hmac_secret_key`), RS256/384/512 (with
//! `rsa_public_key`) and ES256/384/512 (with `ecdsa_public_key`; ES512 is verified with `p521`
//! because the JWT library lacks it). The key is chosen by the
//! algorithm family named in the token header, and only that family's key is ever tried, so an
//! RSA public key can never be used as an HMAC secret (key confusion); `alg: none` and every
//! other algorithm are rejected. Time claims must be JSON numbers: a string `exp` or `nbf` makes
//! the token invalid rather than "never expiring".
//!
//! With `jwks_public_endpoint` the key comes from the issuer's JWKS instead, and only from
//! there: [`TokenVerifier::jwks_lookup`] says which key a token needs (its `kid`, and the
//! endpoint template's variables taken from the `issuer_regex`/`audience_regex` captures), the
//! caller fetches it (`crate::jwks`), and [`TokenVerifier::verify_connect_with`] checks the
//! token against it: RSA, EC or OKP keys only, and the token's algorithm must be the key's
//! `alg` or, without one, of the key's family. [`jwks_template_safety`] refuses at startup a
//! template whose variables an attacker could choose (CVE-2026-32301).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use regex::Regex;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::TokenConfig;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, algorithm, format or claims: connection → disconnect 3500.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid but past `exp`: error 109, the SDK fetches a new token.
    #[error("token expired")]
    Expired,
}

fn invalid(reason: impl Into<String>) -> TokenError {
    TokenError::Invalid(reason.into())
}

impl SubscribeClaims {
    /// Whether the token was issued for this channel, user and (if it names one) client;
    /// anything else is a forged or misused token (disconnect 3500).
    pub fn grants(&self, channel: &str, user: &str, client: &str) -> bool {
        self.channel == channel && self.user == user && (self.client.is_empty() || self.client == client)
    }
}

/// `{"value": bool}` wrappers of channel option overrides.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct BoolValue {
    pub value: bool,
}

/// Per-subscription overrides carried by tokens (and the server API).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SubscribeOverride {
    pub presence: Option<BoolValue>,
    pub join_leave: Option<BoolValue>,
    pub force_push_join_leave: Option<BoolValue>,
    pub force_positioning: Option<BoolValue>,
    pub force_recovery: Option<BoolValue>,
}

/// Options of one server-side subscription in a connection token's `subs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSubscription {
    pub info: Bytes,
    pub data: Bytes,
    pub override_options: SubscribeOverride,
}

/// When credentials stop being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// Unix seconds.
    At(i64),
}

/// Verified connection token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectClaims {
    pub user: String,
    pub expiry: Expiry,
    pub info: Bytes,
    /// Server-side subscriptions: from `subs` when present, else `channels`.
    pub subs: BTreeMap<String, ServerSubscription>,
    pub meta: Bytes,
}

/// Verified subscription token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeClaims {
    pub user: String,
    pub channel: String,
    pub client: String,
    pub expiry: Expiry,
    pub info: Bytes,
    pub data: Bytes,
    pub override_options: SubscribeOverride,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SubClaim {
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(rename = "override")]
    override_options: SubscribeOverride,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawClaims {
    sub: Option<Box<RawValue>>,
    exp: Option<Box<RawValue>>,
    nbf: Option<Box<RawValue>>,
    aud: Option<Box<RawValue>>,
    iss: Option<Box<RawValue>>,
    expire_at: Option<Box<RawValue>>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    channels: Option<Vec<String>>,
    subs: Option<BTreeMap<String, SubClaim>>,
    meta: Option<Box<RawValue>>,
    channel: Option<String>,
    client: Option<String>,
    #[serde(rename = "override")]
    override_options: SubscribeOverride,
}

/// Verifies tokens against one `client.token`-style configuration.
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    hmac_previous: Option<(DecodingKey, i64)>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    /// ES512 (P-521), which the JWT library does not cover; verified with `p521` directly.
    ecdsa_p521: Option<p521::ecdsa::VerifyingKey>,
    audience: String,
    audience_regex: Option<Regex>,
    issuer: String,
    issuer_regex: Option<Regex>,
    user_id_claim: String,
    skip_signature: bool,
    /// Keys come from a JWKS (`jwks_public_endpoint`), never from the static keys.
    jwks: bool,
}

/// What fetching a token's JWKS key needs: its key id and the endpoint template's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksLookup {
    pub kid: String,
    pub vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &(self.ecdsa.is_some() || self.ecdsa_p521.is_some()))
            .finish_non_exhaustive()
    }
}

/// A configuration problem found while building a verifier (names the key).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct VerifierConfigError {
    pub key: String,
    pub message: String,
}

impl TokenVerifier {
    /// Builds a verifier; `section` (e.g. `client.token`) prefixes keys in errors.
    pub fn new(
        config: &TokenConfig,
        section: &str,
        skip_signature: bool,
    ) -> Result<Self, VerifierConfigError> {
        let error =
            |key: &str, message: String| VerifierConfigError { key: format!("{section}.{key}"), message };
        let regex = |key: &str, text: &str| -> Result<Option<Regex>, VerifierConfigError> {
            if text.is_empty() {
                return Ok(None);
            }
            Regex::new(text).map(Some).map_err(|e| error(key, e.to_string()))
        };
        if !config.audience.is_empty() && !config.audience_regex.is_empty() {
            return Err(error("audience_regex", "audience and audience_regex are exclusive".into()));
        }
        if !config.issuer.is_empty() && !config.issuer_regex.is_empty() {
            return Err(error("issuer_regex", "issuer and issuer_regex are exclusive".into()));
        }
        let jwks = check_jwks(config).map_err(|message| error("jwks_public_endpoint", message))?;
        if !config.user_id_claim.is_empty()
            && !config.user_id_claim.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
        {
            return Err(error("user_id_claim", "must match ^[a-zA-Z_]+$".into()));
        }
        let rsa = if config.rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.rsa_public_key.as_bytes())
                    .map_err(|e| error("rsa_public_key", format!("invalid RSA public key: {e}")))?,
            )
        };
        let (ecdsa, ecdsa_p521) = if config.ecdsa_public_key.is_empty() {
            (None, None)
        } else {
            let pem = config.ecdsa_public_key.as_str();
            let p521_key = {
                use p521::pkcs8::DecodePublicKey;
                p521::PublicKey::from_public_key_pem(pem).ok().and_then(|key| {
                    use p521::elliptic_curve::sec1::ToEncodedPoint;
                    p521::ecdsa::VerifyingKey::from_encoded_point(&key.to_encoded_point(false)).ok()
                })
            };
            match (p521_key, DecodingKey::from_ec_pem(pem.as_bytes())) {
                (Some(key), _) => (None, Some(key)),
                (None, Ok(key)) => (Some(key), None),
                (None, Err(e)) => {
                    return Err(error("ecdsa_public_key", format!("invalid ECDSA public key: {e}")));
                }
            }
        };
        Ok(Self {
            hmac: (!config.hmac_secret_key.is_empty())
                .then(|| DecodingKey::from_secret(config.hmac_secret_key.as_bytes())),
            hmac_previous: (!config.hmac_previous_secret_key.is_empty()).then(|| {
                (
                    DecodingKey::from_secret(config.hmac_previous_secret_key.as_bytes()),
                    config.hmac_previous_secret_key_valid_until,
                )
            }),
            rsa,
            ecdsa,
            ecdsa_p521,
            audience: config.audience.clone(),
            audience_regex: regex("audience_regex", &config.audience_regex)?,
            issuer: config.issuer.clone(),
            issuer_regex: regex("issuer_regex", &config.issuer_regex)?,
            user_id_claim: config.user_id_claim.clone(),
            skip_signature,
            jwks,
        })
    }

    /// For a JWKS-configured verifier, which key `token` needs; `None` otherwise. The
    /// variables come from the unverified `iss`/`aud`, so a token whose claims do not match
    /// the regexes is refused before anything is fetched.
    pub fn jwks_lookup(&self, token: &str) -> Result<Option<JwksLookup>, TokenError> {
        if !self.jwks || self.skip_signature {
            return Ok(None);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let kid =
            header.kid.filter(|kid| !kid.is_empty()).ok_or_else(|| invalid("no kid in the token header"))?;
        let payload = jsonwebtoken::dangerous::insecure_decode::<Box<RawValue>>(token)
            .map_err(|e| invalid(e.to_string()))?;
        let claims: RawClaims =
            serde_json::from_str(payload.claims.get()).map_err(|e| invalid(format!("claims: {e}")))?;
        let mut vars = BTreeMap::new();
        if let Some(re) = &self.issuer_regex {
            let issuer = string_claim(&claims.iss, "iss")?;
            let captures = re.captures(&issuer).ok_or_else(|| invalid("issuer mismatch"))?;
            named_captures(re, &captures, &mut vars);
        }
        if let Some(re) = &self.audience_regex {
            let audiences = audience_list(&claims.aud)?;
            let captures = audiences
                .iter()
                .find_map(|aud| re.captures(aud))
                .ok_or_else(|| invalid("audience mismatch"))?;
            named_captures(re, &captures, &mut vars);
        }
        Ok(Some(JwksLookup { kid, vars }))
    }

    /// Checks signature and algorithm, returning the raw claims JSON text. A JWKS verifier
    /// takes the key `jwk` its caller fetched, and nothing else.
    fn verified_payload(&self, token: &str, now: i64, jwk: Option<&Jwk>) -> Result<String, TokenError> {
        if self.skip_signature {
            let data = jsonwebtoken::dangerous::insecure_decode::<Box<RawValue>>(token)
                .map_err(|e| invalid(e.to_string()))?;
            return Ok(data.claims.get().to_owned());
        }
        if self.jwks {
            return verify_with_jwk(token, jwk.ok_or_else(|| invalid("no JWKS key for the token"))?);
        }
        if header_alg(token)? == "ES512" {
            return self.verify_es512(token);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let alg = header.alg;
        let keys: Vec<&DecodingKey> = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let mut keys: Vec<&DecodingKey> = self.hmac.iter().collect();
                if let Some((previous, valid_until)) = &self.hmac_previous
                    && now < *valid_until
                {
                    keys.push(previous);
                }
                keys
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.iter().collect(),
            Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.iter().collect(),
            other => return Err(invalid(format!("algorithm {other:?} is not accepted"))),
        };
        if keys.is_empty() {
            return Err(invalid(format!("no key configured for algorithm {alg:?}")));
        }
        let validation = signature_only(alg);
        let mut last_error = None;
        for key in keys {
            match jsonwebtoken::decode::<Box<RawValue>>(token, key, &validation) {
                Ok(data) => return Ok(data.claims.get().to_owned()),
                Err(e) => last_error = Some(e),
            }
        }
        Err(invalid(last_error.map(|e| e.to_string()).unwrap_or_default()))
    }

    /// ES512: SHA-512 ECDSA over P-521 with a fixed-size `r || s` signature (RFC 7518 §3.4).
    fn verify_es512(&self, token: &str) -> Result<String, TokenError> {
        use p521::ecdsa::signature::Verifier;
        let key = self.ecdsa_p521.as_ref().ok_or_else(|| invalid("no P-521 key configured for ES512"))?;
        let (message, signature) = token.rsplit_once('.').ok_or_else(|| invalid("malformed token"))?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid("malformed signature"))?;
        let signature =
            p521::ecdsa::Signature::from_slice(&signature).map_err(|_| invalid("malformed signature"))?;
        key.verify(message.as_bytes(), &signature).map_err(|_| invalid("invalid signature"))?;
        let payload =
            message.split_once('.').map(|(_, payload)| payload).ok_or_else(|| invalid("malformed token"))?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| invalid("malformed payload"))?;
        String::from_utf8(payload).map_err(|_| invalid("payload is not UTF-8"))
    }

    fn parse_claims(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&Jwk>,
    ) -> Result<(RawClaims, String), TokenError> {
        let payload = self.verified_payload(token, now, jwk)?;
        let claims: RawClaims =
            serde_json::from_str(&payload).map_err(|e| invalid(format!("claims: {e}")))?;
        let user = if self.user_id_claim.is_empty() {
            match &claims.sub {
                None => String::new(),
                Some(raw) => {
                    serde_json::from_str::<String>(raw.get()).map_err(|_| invalid("sub must be a string"))?
                }
            }
        } else {
            let value: serde_json::Value =
                serde_json::from_str(&payload).map_err(|e| invalid(format!("claims: {e}")))?;
            match value.get(&self.user_id_claim) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => return Err(invalid("user id claim must be a string")),
            }
        };
        self.check_audience_issuer(&claims)?;
        if let Some(nbf) = numeric_claim(&claims.nbf, "nbf")?
            && now < nbf
        {
            return Err(invalid("token is not valid yet (nbf)"));
        }
        Ok((claims, user))
    }

    fn check_audience_issuer(&self, claims: &RawClaims) -> Result<(), TokenError> {
        if !self.audience.is_empty() || self.audience_regex.is_some() {
            let audiences = audience_list(&claims.aud)?;
            let ok = audiences.iter().any(|aud| {
                if let Some(re) = &self.audience_regex { re.is_match(aud) } else { *aud == self.audience }
            });
            if !ok {
                return Err(invalid("audience mismatch"));
            }
        }
        if !self.issuer.is_empty() || self.issuer_regex.is_some() {
            let issuer = string_claim(&claims.iss, "iss")?;
            let ok =
                if let Some(re) = &self.issuer_regex { re.is_match(&issuer) } else { issuer == self.issuer };
            if !ok {
                return Err(invalid("issuer mismatch"));
            }
        }
        Ok(())
    }

    /// Verifies a connection token at unix time `now` (static keys).
    pub fn verify_connect(&self, token: &str, now: i64) -> Result<ConnectClaims, TokenError> {
        self.verify_connect_with(token, now, None)
    }

    /// Verifies a connection token; `jwk` is the key [`Self::jwks_lookup`] asked for.
    pub fn verify_connect_with(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&Jwk>,
    ) -> Result<ConnectClaims, TokenError> {
        let (claims, user) = self.parse_claims(token, now, jwk)?;
        if claims.channel.is_some() {
            return Err(invalid("a connection token must not carry a channel claim"));
        }
        let expiry = expiry_of(&claims, now)?;
        let info = binary_or_raw(&claims.b64info, &claims.info, "b64info")?;
        let subs = match (&claims.subs, &claims.channels) {
            (Some(subs), _) => subs
                .iter()
                .map(|(channel, sub)| {
                    Ok((
                        channel.clone(),
                        ServerSubscription {
                            info: binary_or_raw(&sub.b64info, &sub.info, "subs.b64info")?,
                            data: binary_or_raw(&sub.b64data, &sub.data, "subs.b64data")?,
                            override_options: sub.override_options,
                        },
                    ))
                })
                .collect::<Result<_, TokenError>>()?,
            (None, Some(channels)) => {
                channels.iter().map(|channel| (channel.clone(), ServerSubscription::default())).collect()
            }
            (None, None) => BTreeMap::new(),
        };
        Ok(ConnectClaims {
            user,
            expiry,
            info,
            subs,
            meta: claims.meta.map(|raw| raw_bytes(&raw)).unwrap_or_default(),
        })
    }

    /// Verifies a subscription token at unix time `now` (static keys).
    pub fn verify_subscribe(&self, token: &str, now: i64) -> Result<SubscribeClaims, TokenError> {
        self.verify_subscribe_with(token, now, None)
    }

    /// Verifies a subscription token; `jwk` is the key [`Self::jwks_lookup`] asked for.
    pub fn verify_subscribe_with(
        &self,
        token: &str,
        now: i64,
        jwk: Option<&Jwk>,
    ) -> Result<SubscribeClaims, TokenError> {
        let (claims, user) = self.parse_claims(token, now, jwk)?;
        let Some(channel) = claims.channel.clone().filter(|c| !c.is_empty()) else {
            return Err(invalid("a subscription token needs a channel claim"));
        };
        let expiry = expiry_of(&claims, now)?;
        Ok(SubscribeClaims {
            user,
            channel,
            client: claims.client.clone().unwrap_or_default(),
            expiry,
            info: binary_or_raw(&claims.b64info, &claims.info, "b64info")?,
            data: binary_or_raw(&claims.b64data, &claims.data, "b64data")?,
            override_options: claims.override_options,
        })
    }
}

/// The `alg` of a token's header, read without the JWT library (which rejects algorithms it
/// does not know, such as ES512, before we can route them).
/// Whether `config` takes its keys from a JWKS endpoint, and whether that endpoint is
/// acceptable: an HTTP(S) URL whose template variables cannot be chosen by a token.
fn check_jwks(config: &TokenConfig) -> Result<bool, String> {
    let endpoint = &config.jwks_public_endpoint;
    if endpoint.is_empty() {
        return Ok(false);
    }
    if !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
        return Err("must be an http:// or https:// URL".into());
    }
    if let Err(problem) = jwks_template_safety(endpoint, &config.issuer_regex, &config.audience_regex) {
        if !config.insecure_skip_jwks_endpoint_safety_check {
            return Err(problem);
        }
        tracing::warn!(%problem, "JWKS endpoint template safety check skipped: this is insecure");
    }
    Ok(true)
}

/// Signature and algorithm checks only: the claims are checked here, by Centrifugo's rules.
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

/// A JSON string claim (absent: empty).
fn string_claim(raw: &Option<Box<RawValue>>, name: &str) -> Result<String, TokenError> {
    match raw {
        None => Ok(String::new()),
        Some(raw) => {
            serde_json::from_str::<String>(raw.get()).map_err(|_| invalid(format!("{name} must be a string")))
        }
    }
}

/// `aud` as a list (a single string is a list of one).
fn audience_list(raw: &Option<Box<RawValue>>) -> Result<Vec<String>, TokenError> {
    match raw {
        None => Ok(Vec::new()),
        Some(raw) => serde_json::from_str::<Vec<String>>(raw.get())
            .or_else(|_| serde_json::from_str::<String>(raw.get()).map(|s| vec![s]))
            .map_err(|_| invalid("aud must be a string or a list of strings")),
    }
}

fn named_captures(re: &Regex, captures: &regex::Captures<'_>, vars: &mut BTreeMap<String, String>) {
    for name in re.capture_names().flatten() {
        if let Some(value) = captures.name(name) {
            vars.insert(name.to_owned(), value.as_str().to_owned());
        }
    }
}

/// Verifies `token` against a JWKS key: RSA, EC or OKP only (never a shared secret from a
/// key set), the algorithm the key names, or one of its family when it names none.
fn verify_with_jwk(token: &str, jwk: &Jwk) -> Result<String, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
        AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
        _ => return Err(invalid("JWKS key type must be RSA, EC or OKP")),
    };
    if !family.contains(&header.alg) {
        return Err(invalid(format!("algorithm {:?} does not fit the JWKS key", header.alg)));
    }
    if let Some(named) = jwk.common.key_algorithm
        && format!("{named:?}") != format!("{:?}", header.alg)
    {
        return Err(invalid(format!("the JWKS key is for {named:?}, the token uses {:?}", header.alg)));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("unusable JWKS key: {e}")))?;
    let validation = signature_only(header.alg);
    jsonwebtoken::decode::<Box<RawValue>>(token, &key, &validation)
        .map(|data| data.claims.get().to_owned())
        .map_err(|e| invalid(e.to_string()))
}

/// The `{{name}}` placeholders of a JWKS endpoint template.
pub fn template_placeholders(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.push(&after[..end]);
        rest = &after[end + 2..];
    }
    names
}

/// CVE-2026-32301: a JWKS endpoint template may only use regex captures that can take a fixed
/// set of values (`(?P<tenant>acme|globex)`), never patterns (`.*`, `[a-z]+`, `\w`), which would
/// let a token's issuer or audience point the server at any URL. As Centrifugo 6.7+.
pub fn jwks_template_safety(endpoint: &str, issuer_regex: &str, audience_regex: &str) -> Result<(), String> {
    let placeholders = template_placeholders(endpoint);
    if placeholders.is_empty() {
        return Ok(());
    }
    for (key, pattern) in [("issuer_regex", issuer_regex), ("audience_regex", audience_regex)] {
        if pattern.is_empty() {
            continue;
        }
        let ast =
            regex_syntax::ast::parse::Parser::new().parse(pattern).map_err(|e| format!("{key}: {e}"))?;
        let mut groups = Vec::new();
        named_groups(&ast, &mut groups);
        for (name, body) in groups {
            if placeholders.contains(&name) && !is_fixed_set(body) {
                return Err(format!(
                    "{key} group {name:?} is used in the JWKS endpoint template; only an explicit list of \
                     allowed values is permitted (e.g. value1|value2)"
                ));
            }
        }
    }
    Ok(())
}

fn named_groups<'a>(ast: &'a regex_syntax::ast::Ast, out: &mut Vec<(&'a str, &'a regex_syntax::ast::Ast)>) {
    use regex_syntax::ast::{Ast, GroupKind};
    match ast {
        Ast::Group(group) => {
            if let GroupKind::CaptureName { name, .. } = &group.kind {
                out.push((name.name.as_str(), &group.ast));
            }
            named_groups(&group.ast, out);
        }
        Ast::Concat(concat) => concat.asts.iter().for_each(|a| named_groups(a, out)),
        Ast::Alternation(alternation) => alternation.asts.iter().for_each(|a| named_groups(a, out)),
        Ast::Repetition(repetition) => named_groups(&repetition.ast, out),
        _ => {}
    }
}

/// Literals, concatenations, alternations and groups of them only: no classes, dots,
/// repetitions or assertions.
fn is_fixed_set(ast: &regex_syntax::ast::Ast) -> bool {
    use regex_syntax::ast::Ast;
    match ast {
        Ast::Empty(_) | Ast::Literal(_) => true,
        Ast::Concat(concat) => concat.asts.iter().all(is_fixed_set),
        Ast::Alternation(alternation) => alternation.asts.iter().all(is_fixed_set),
        Ast::Group(group) => is_fixed_set(&group.ast),
        _ => false,
    }
}

fn header_alg(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let encoded = token.split('.').next().unwrap_or("");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| invalid("malformed header"))?;
    serde_json::from_slice::<Header>(&json).map(|h| h.alg).map_err(|_| invalid("malformed header"))
}

fn raw_bytes(raw: &RawValue) -> Bytes {
    if raw.get() == "null" { Bytes::new() } else { Bytes::from(raw.get().to_owned()) }
}

fn binary_or_raw(b64: &Option<String>, raw: &Option<Box<RawValue>>, name: &str) -> Result<Bytes, TokenError> {
    if let Some(text) = b64.as_ref().filter(|t| !t.is_empty()) {
        return base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|_| invalid(format!("{name} is not valid base64")));
    }
    Ok(raw.as_deref().map(raw_bytes).unwrap_or_default())
}

/// Reads a NumericDate claim: a JSON number (integer or float), never a string.
fn numeric_claim(raw: &Option<Box<RawValue>>, name: &str) -> Result<Option<i64>, TokenError> {
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} is out of range"))),
        _ => Err(invalid(format!("{name} must be a number"))),
    }
}

fn expiry_of(claims: &RawClaims, now: i64) -> Result<Expiry, TokenError> {
    let exp = numeric_claim(&claims.exp, "exp")?;
    if let Some(exp) = exp
        && exp <= now
    {
        return Err(TokenError::Expired);
    }
    Ok(match numeric_claim(&claims.expire_at, "expire_at")? {
        Some(0) => Expiry::Never,
        Some(at) => Expiry::At(at),
        None => exp.map_or(Expiry::Never, Expiry::At),
    })
}

/// Mints an HS256 token (used by `gentoken`/`gensubtoken` and tests).
pub fn mint_hs256(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory key cannot fail")
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;
    #[test]
    fn a_jwks_template_may_only_use_captures_with_a_fixed_set_of_values() {
        let endpoint = "https://{{tenant}}.example.com/.well-known/jwks.json";
        let safe = [
            "^https://(?P<tenant>acme|globex)\\.example\\.com$",
            "(?P<tenant>acme)",
            "(?P<other>.*)(?P<tenant>a|b)",
        ];
        for issuer in safe {
            assert_eq!(jwks_template_safety(endpoint, issuer, ""), Ok(()), "{issuer}");
        }
        let unsafe_ = [
            "(?P<tenant>.*)",
            "(?P<tenant>[a-z]+)",
            "(?P<tenant>\\w+)",
            "(?P<tenant>a|.)",
            "(?P<tenant>(a|b)+)",
        ];
        for issuer in unsafe_ {
            let problem = jwks_template_safety(endpoint, issuer, "").unwrap_err();
            assert!(problem.contains("tenant"), "{issuer}: {problem}");
            assert!(jwks_template_safety(endpoint, "", issuer).is_err(), "audience {issuer}");
        }
        // No placeholder, nothing to check.
        assert_eq!(jwks_template_safety("https://example.com/jwks", "(?P<tenant>.*)", ""), Ok(()));
    }

    #[test]
    fn a_jwks_verifier_names_the_key_and_the_template_variables_a_token_needs() {
        let config = TokenConfig {
            jwks_public_endpoint: "https://{{tenant}}.example.com/jwks".into(),
            issuer_regex: "^(?P<tenant>acme|globex)$".into(),
            ..Default::default()
        };
        let verifier = TokenVerifier::new(&config, "client.token", false).unwrap();
        let token = |header: &str, claims: serde_json::Value| {
            let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            format!("{}.{}.c2ln", b64(header.as_bytes()), b64(claims.to_string().as_bytes()))
        };
        let acme = token(r#"{"alg":"RS256","kid":"k1"}"#, serde_json::json!({"sub": "u", "iss": "acme"}));
        let lookup = verifier.jwks_lookup(&acme).unwrap().unwrap();
        assert_eq!(lookup.kid, "k1");
        assert_eq!(lookup.vars.get("tenant").map(String::as_str), Some("acme"));
        let evil = token(r#"{"alg":"RS256","kid":"k1"}"#, serde_json::json!({"iss": "evil"}));
        assert!(verifier.jwks_lookup(&evil).is_err());
        let no_kid = token(r#"{"alg":"RS256"}"#, serde_json::json!({"iss": "acme"}));
        assert!(verifier.jwks_lookup(&no_kid).is_err());
        // A JWKS verifier never falls back to static keys.
        assert!(verifier.verify_connect(&acme, 0).is_err());
        let unsafe_config = TokenConfig { issuer_regex: "^(?P<tenant>.+)$".into(), ..config };
        let err = TokenVerifier::new(&unsafe_config, "client.token", false).unwrap_err();
        assert_eq!(err.key, "client.token.jwks_public_endpoint");
    }

    fn verifier() -> TokenVerifier {
        let config = TokenConfig { hmac_secret_key: "secret".into(), ..Default::default() };
        TokenVerifier::new(&config, "client.token", false).unwrap()
    }

    fn b64(value: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn accepts_valid_connect_token() {
        let token = mint_hs256(
            "secret",
            &json!({"sub": "42", "exp": NOW + 60, "info": {"name": "Alex"}, "channels": ["news"]}),
        );
        let claims = verifier().verify_connect(&token, NOW).unwrap();
        assert_eq!(claims.user, "42");
        assert_eq!(claims.expiry, Expiry::At(NOW + 60));
        assert_eq!(&claims.info[..], br#"{"name":"Alex"}"#);
        assert!(claims.subs.contains_key("news"));
    }

    #[test]
    fn expired_token_is_expired_not_invalid() {
        let token = mint_hs256("secret", &json!({"sub": "42", "exp": NOW - 1}));
        assert_eq!(verifier().verify_connect(&token, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn expire_at_zero_means_never() {
        let token = mint_hs256("secret", &json!({"sub": "42", "exp": NOW + 5, "expire_at": 0}));
        assert_eq!(verifier().verify_connect(&token, NOW).unwrap().expiry, Expiry::Never);
    }

    #[test]
    fn rejects_wrong_signature_none_and_string_exp() {
        let wrong = mint_hs256("other", &json!({"sub": "42"}));
        assert!(matches!(verifier().verify_connect(&wrong, NOW), Err(TokenError::Invalid(_))));

        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&json!({"sub": "42"})));
        assert!(matches!(verifier().verify_connect(&none, NOW), Err(TokenError::Invalid(_))));

        let string_exp = mint_hs256("secret", &json!({"sub": "42", "exp": "9999999999"}));
        assert!(matches!(verifier().verify_connect(&string_exp, NOW), Err(TokenError::Invalid(_))));
        let string_nbf = mint_hs256("secret", &json!({"sub": "42", "nbf": "0"}));
        assert!(matches!(verifier().verify_connect(&string_nbf, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn rs256_token_without_rsa_key_is_rejected() {
        // A token claiming RS256 must never be checked against the HMAC secret.
        let forged = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256", "typ": "JWT"})),
            b64(&json!({"sub": "42"})),
            "c2lnbmF0dXJl"
        );
        assert!(matches!(verifier().verify_connect(&forged, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn nbf_in_future_and_channel_claim_are_invalid() {
        let early = mint_hs256("secret", &json!({"sub": "42", "nbf": NOW + 100}));
        assert!(matches!(verifier().verify_connect(&early, NOW), Err(TokenError::Invalid(_))));
        let with_channel = mint_hs256("secret", &json!({"sub": "42", "channel": "x"}));
        assert!(matches!(verifier().verify_connect(&with_channel, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn audience_and_issuer_checks() {
        let config = TokenConfig {
            hmac_secret_key: "secret".into(),
            audience: "app".into(),
            issuer: "auth".into(),
            ..Default::default()
        };
        let verifier = TokenVerifier::new(&config, "client.token", false).unwrap();
        let good = mint_hs256("secret", &json!({"sub": "1", "aud": ["x", "app"], "iss": "auth"}));
        assert!(verifier.verify_connect(&good, NOW).is_ok());
        let bad = mint_hs256("secret", &json!({"sub": "1", "aud": "other", "iss": "auth"}));
        assert!(verifier.verify_connect(&bad, NOW).is_err());
    }

    fn asymmetric_verifier(rsa: &str, ecdsa: &str) -> TokenVerifier {
        let config =
            TokenConfig { rsa_public_key: rsa.into(), ecdsa_public_key: ecdsa.into(), ..Default::default() };
        TokenVerifier::new(&config, "client.token", false).unwrap()
    }

    fn sign_with(alg: Algorithm, key: jsonwebtoken::EncodingKey) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &json!({"sub": "9", "exp": NOW + 60}), &key)
            .unwrap()
    }

    #[test]
    fn rsa_and_p256_tokens() {
        let verifier =
            asymmetric_verifier(include_str!("../testdata/rsa.pub"), include_str!("../testdata/ec256.pub"));
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.pem")).unwrap();
            assert_eq!(verifier.verify_connect(&sign_with(alg, key), NOW).unwrap().user, "9");
        }
        let key = jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("../testdata/ec256.pem")).unwrap();
        assert_eq!(verifier.verify_connect(&sign_with(Algorithm::ES256, key), NOW).unwrap().user, "9");
        // An HS256 token must not verify against the RSA public key used as an HMAC secret.
        let confused = mint_hs256(include_str!("../testdata/rsa.pub"), &json!({"sub": "9"}));
        assert!(matches!(verifier.verify_connect(&confused, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn es512_tokens() {
        use p521::ecdsa::signature::Signer;
        use p521::pkcs8::DecodePrivateKey;
        let verifier = asymmetric_verifier("", include_str!("../testdata/ec521.pub"));
        let secret = p521::SecretKey::from_pkcs8_pem(include_str!("../testdata/ec521.pem")).unwrap();
        let signing = p521::ecdsa::SigningKey::from_bytes(&secret.to_bytes()).unwrap();
        let message =
            format!("{}.{}", b64(&json!({"alg": "ES512", "typ": "JWT"})), b64(&json!({"sub": "9"})));
        let signature: p521::ecdsa::Signature = signing.sign(message.as_bytes());
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes());
        let token = format!("{message}.{encoded}");
        assert_eq!(verifier.verify_connect(&token, NOW).unwrap().user, "9");
        let tampered = format!("{}.{}.{encoded}", b64(&json!({"alg": "ES512"})), b64(&json!({"sub": "10"})));
        assert!(matches!(verifier.verify_connect(&tampered, NOW), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn subscription_token_claims() {
        let token = mint_hs256(
            "secret",
            &json!({"sub": "42", "channel": "$chat:x", "exp": NOW + 10, "info": {"role": "a"}}),
        );
        let claims = verifier().verify_subscribe(&token, NOW).unwrap();
        assert_eq!(claims.channel, "$chat:x");
        assert_eq!(&claims.info[..], br#"{"role":"a"}"#);
        let no_channel = mint_hs256("secret", &json!({"sub": "42"}));
        assert!(verifier().verify_subscribe(&no_channel, NOW).is_err());
    }
}
